"""Dask backend: chunked, out-of-core and distributed RankSEG.

``rankseg(x)`` with a ``dask.array.Array`` ``x`` of shape ``(B, C, *spatial)``
returns a **lazy** Dask array with the in-memory answer.  Nothing is computed
until the caller computes (or stores) the result.  Two strategies, chosen from
the chunk layout (see :func:`strategy`):

``'blockwise'``
    Every chunk holds whole images (chunks along the batch axis only): one
    task per chunk runs the in-memory CPU path (``rankseg_np.cpu.solve``) on
    it.  Any solver.  The answer is the in-memory answer bit for bit, since
    each image goes through the very same kernels on the very same values.

``'reduction'``
    Chunks split the spatial axes (and/or the classes): RMA (MATH section 4)
    and the multiclass resolution (MATH section 5) in three passes over the
    chunks, each a tree reduction to ``O(B*C)`` numbers that the next pass
    receives.  Peak memory is a few chunks per worker thread, plus the
    *window* of each row (below), which is small next to a chunk for any
    realistic map.

The reduction strategy, per ``(image, class)`` row:

1. **Histogram pass.**  Each chunk returns, per row, the float64 sum ``mu``,
   whether a value exceeds ``pruning_prob``, validity flags and a histogram
   of counts over ``NBINS`` bins whose edges are the floats with 9 mantissa
   bits ``2**e * (1 + m/512)`` (``e >= -64``; bin 0 holds ``[0, 2**-64)``),
   0.2 % wide relative to their values at every scale, found from the IEEE
   bit pattern.  From the histogram, a bracket ``[L, U]`` on the optimal RMA
   value ``lam*`` follows (proof in ``_passes._ratio_bounds``), hence a bracket
   ``(wlo, whi]`` on the optimal threshold ``lam*/2`` (Dice) or
   ``lam*/(1+lam*)`` (IoU) a few bins wide.  NaN/inf are reported at the end
   of this pass; values outside [0, 1] at the end of the next one, once the
   range of the whole array is known: the in-memory message, at compute time.
2. **Window pass.**  Each chunk returns, per row, the sum and count of its
   values above the window (``cpu.sum_above``) and the values inside it
   (with their global pixel indices when smooth > 0).  The windows of a row
   are concatenated and the *same Numba Dinkelbach kernel* as the in-memory
   path (``rma.dinkelbach_dice`` / ``dinkelbach_iou``) runs on the window,
   the part above it folded into its constants (``alpha``/``beta``, or
   ``smooth``/``mu``): every threshold Dinkelbach visits lies inside the
   window (proof in ``_passes._finish_row``), so it takes the in-memory steps.
   Dice with smooth > 0 then orders the band of MATH 4 (inside the window)
   exactly as ``rma._dice_smooth_row`` does, a tie group cut at the lowest
   global pixel index.  Multiclass: the same pass sums ``tau_c``/``m_c``
   over the sole-claimed pixels whose claims the windows already decide
   (``_chunks.decided_claims``) and keeps the few pixels they leave open, which
   are resolved once the thresholds are known.
3. **Output pass**, blockwise: masks with the CPU ``materialize`` kernel, or
   labels with the CPU ``multiclass.claims`` + ``conflicts`` kernels and the
   global per-class scalars; the global tie cut is translated to each chunk
   (``_chunks.local_tie_end``).

Each pass recomputes the input chunks (every task computes its own chunk from
the chunk's private sub-graph, see ``_graph.Source``), so an input larger than
memory is streamed once per pass and never held whole.  Persist ``x`` first
(``x = x.persist()``) when it fits in memory and is expensive to compute.

Exactness.  Every decision is the in-memory one computed from the same
values; the only difference is the order in which float64 sums are
accumulated (chunk by chunk instead of along the row), which moves a
threshold by a few units in the last place.  Masks and labels are therefore
identical unless a pixel value lies within that rounding of a threshold (an
exact tie whose in-memory outcome is itself decided by rounding); when the
row sums are exact in float64 (e.g. values on a grid ``k/2**n``) the
thresholds themselves are bit-identical.

Supported: RMA with any chunking; ``solver='exact'``, ``'BA'``, ``'TRNA'``,
``'BA+TRNA'`` when every chunk holds whole images (chunk along the batch axis
only; a class-chunked *multilabel* input is fine too), otherwise a
``NotImplementedError`` says how to rechunk.  Accuracy (``argmax``/``TR``) is
elementwise and runs on any chunking (a lazy argmax over the classes).
Bad values found blockwise are reported with the range of the chunk that
holds them.

Layout: ``_graph`` (the streaming graph, the only user of Dask's private
API), ``_passes`` (the reduction strategy and its typed messages),
``_chunks`` (what each task runs on its chunk: Numba kernels and the CPU
executor's public kernels).  Which solver runs how is read from the
capability table, :mod:`rankseg_np._solvers` (``'whole images only'``: the
blockwise strategy, or a ``NotImplementedError`` saying how to rechunk).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.delayed import Delayed
except ImportError as exc:  # pragma: no cover - exercised only without dask
    raise ImportError(
        "rankseg_np.dask needs dask: pip install 'dask[array]' distributed zarr (the dask extra)"
    ) from exc

from .. import _pipeline
from .._decision import RowDecision
from .._solvers import NATIVE, SOLVERS
from .._validate import Config, check_config, check_probs_structure, raise_bad_values
from ._chunks import chunk_rows, solve_chunk
from ._graph import Graph, Source, tokenize
from . import _passes
from ._passes import Decisions

__all__ = ["row_decisions", "solve", "strategy", "whole_image_chunks"]


def _out_meta(cfg: Config):
    return (np.bool_, False) if cfg.output_mode == "multilabel" else (np.int64, True)


def _blockwise(x, cfg: Config):
    dtype, drop = _out_meta(cfg)
    n = math.prod(x.numblocks)
    if drop:
        meta = np.empty((0,) * (x.ndim - 1), dtype)
        return da.map_blocks(solve_chunk, x, cfg, n, dtype=dtype, drop_axis=1, meta=meta)
    return da.map_blocks(solve_chunk, x, cfg, n, dtype=dtype, meta=np.empty((0,) * x.ndim, dtype))


def _checked_chunk(block: np.ndarray) -> np.ndarray:
    """The chunk itself, after the CPU's value check (NaN, inf, outside [0, 1])."""
    p2 = chunk_rows(block)
    if p2.size and not (np.isfinite(p2).all() and p2.min() >= 0.0 and p2.max() <= 1.0):
        raise_bad_values(p2)
    return block


class _DaskExecutor:
    """The Dask executor's operations for :func:`rankseg_np._pipeline.run` (all lazy)."""

    name = "dask"
    xp = da

    @staticmethod
    def rows(x: Any) -> Any:
        return x  # chunks stay as they are; the passes work per chunk

    @staticmethod
    def check_values(x: Any) -> Any:
        return x.map_blocks(_checked_chunk, dtype=x.dtype)

    @staticmethod
    def whole_images(x: Any, cfg: Config) -> Any:
        if strategy(x, cfg) != "blockwise":
            return None
        if cfg.output_mode == "multiclass" and len(x.chunks[1]) > 1:
            x = x.rechunk({1: -1})  # whole rows, classes in several chunks (exact multiclass)
        return _blockwise(x, cfg)

    @staticmethod
    def decide(module: Any, x: Any, cfg: Config) -> _passes.Plan:
        return _passes.plan(x, cfg)  # RMA is the one solver Dask runs natively (the table says so)

    @staticmethod
    def masks(x: Any, plan: _passes.Plan) -> Any:
        return _passes.output(plan)

    @staticmethod
    def labels(x: Any, plan: _passes.Plan, cfg: Config) -> tuple[Any, None]:
        return _passes.output(plan), None  # class sums: checked chunk by chunk in the output pass

    @staticmethod
    def reshape(out: Any, shape: tuple[int, ...]) -> Any:
        return out

    to_host = from_host = None  # no host fallback: Dask runs the CPU executor itself


_EXECUTOR = _DaskExecutor()


def row_decisions(x: Any, **params: Any) -> Delayed:
    """The per-row RMA decisions of a Dask array, lazily (passes 1 and 2 of the reduction strategy).

    Parameters
    ----------
    x : dask.array.Array, shape (B, C, \\*spatial)
        Probabilities, any chunking.
    **params
        ``metric``, ``smooth``, ``pruning_prob`` (and the other keyword
        arguments of :func:`rankseg_np.rankseg`); ``solver`` must be RMA.

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`rankseg_np._decision.RowDecision` of ``(B, C)``
        NumPy arrays: ``mask[i] = p[i] > threshold or (p[i] == threshold and
        i < tie_end)`` over each image's C-order flat pixel index, the
        activity flags and the row sums; the same decisions as the in-memory
        ``rankseg_np.cpu.rma.decide`` (module docstring).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from rankseg_np.dask import row_decisions
    >>> p = da.from_array(np.array([[[0.9, 0.6, 0.4, 0.1]]]), chunks=(1, 1, 2))
    >>> dec = row_decisions(p, output_mode="multilabel").compute()
    >>> bool(0.1 < dec.threshold[0, 0] < 0.4)          # the 0.4 pixel is kept
    True
    """
    cfg = check_config(int(x.shape[1]), **params)
    if cfg.solver != "rma" or cfg.metric not in ("dice", "iou"):
        raise ValueError(f"row_decisions needs metric 'dice' or 'iou' with solver 'RMA'; got {cfg.metric!r}, {cfg.solver!r}")
    check_probs_structure(x)
    src = Source(x)
    g = Graph(f"rankseg-decisions-{tokenize(x, cfg)}", src)
    dec, _, _ = _passes.decision_passes(x, cfg, g, src)
    return dask.delayed(_as_row_decision)(g.delayed(dec))


def _as_row_decision(dec: Decisions) -> RowDecision:
    return RowDecision(dec.threshold, dec.tie_end, dec.active, dec.mu)


def strategy(x: Any, cfg: Config | None = None, **params: Any) -> str:
    """How :func:`solve` will process a Dask array: ``'blockwise'`` or ``'reduction'``.

    Parameters
    ----------
    x : dask.array.Array, shape (B, C, \\*spatial)
        The probabilities (only ``shape`` and ``chunks`` are looked at).
    cfg : Config, optional
        Validated arguments; built from ``params`` (the keyword arguments of
        :func:`rankseg_np.rankseg`) when omitted.
    **params
        ``metric``, ``smooth``, ``output_mode``, ``solver``, ...

    Returns
    -------
    str
        ``'blockwise'``: one task per chunk through the in-memory CPU path
        (chunks hold whole images, or the metric is accuracy);
        ``'reduction'``: RMA as chunked reductions (module docstring).

    Raises
    ------
    NotImplementedError
        A solver other than RMA on chunks that split images.

    Examples
    --------
    >>> import dask.array as da
    >>> from rankseg_np.dask import strategy
    >>> x = da.random.random((8, 3, 64, 64), chunks=(2, 3, 64, 64))
    >>> strategy(x)
    'blockwise'
    >>> strategy(x.rechunk((8, 3, 32, 32)))
    'reduction'
    """
    if cfg is None:
        cfg = check_config(int(x.shape[1]), **params)
    if cfg.metric == "accuracy":
        return "blockwise"
    spatial_whole = all(len(c) == 1 for c in x.chunks[2:])
    classes_whole = len(x.chunks[1]) == 1
    if spatial_whole and (classes_whole or cfg.output_mode == "multilabel"):
        return "blockwise"
    if SOLVERS[cfg.solver].executors["dask"] == NATIVE:
        return "reduction"
    if spatial_whole:  # whole images, classes in several chunks: merged first (multiclass)
        return "blockwise"
    raise NotImplementedError(
        f"solver={SOLVERS[cfg.solver].name!r} on a Dask array needs chunks that hold whole images (chunks "
        f"along the batch axis only); got chunks {tuple(len(c) for c in x.chunks)} blocks per axis. Rechunk "
        f"with whole_image_chunks(x) (rankseg_np.dask), i.e. x.rechunk({{0: 1, 1: -1, 2: -1, ...}}), "
        f"or use solver='RMA', which supports any chunking."
    )


def whole_image_chunks(x: Any, images_per_chunk: int = 1) -> Any:
    """Rechunk ``x`` along the batch axis only: every chunk holds whole images.

    Parameters
    ----------
    x : dask.array.Array, shape (B, C, \\*spatial)
    images_per_chunk : int, default 1

    Returns
    -------
    dask.array.Array
        The same values, chunks ``(images_per_chunk, C, *spatial)``: the
        layout every solver accepts, processed one task per chunk.

    Examples
    --------
    >>> import dask.array as da
    >>> from rankseg_np.dask import whole_image_chunks
    >>> x = da.random.random((4, 2, 32, 32), chunks=(4, 1, 16, 16))
    >>> whole_image_chunks(x, 2).chunks
    ((2, 2), (2,), (32,), (32,))
    """
    if isinstance(images_per_chunk, bool) or not isinstance(images_per_chunk, (int, np.integer)):
        raise TypeError(f"images_per_chunk must be an int; got {type(images_per_chunk).__name__}")
    if images_per_chunk < 1:
        raise ValueError(f"images_per_chunk must be >= 1; got {images_per_chunk}")
    return x.rechunk({0: int(images_per_chunk), **{a: -1 for a in range(1, x.ndim)}})


def solve(x: Any, cfg: Config) -> Any:
    """Lazy RankSEG on a Dask array ``(B, C, *spatial)``; the backend of :func:`rankseg_np.rankseg`.

    Parameters
    ----------
    x : dask.array.Array
        Probabilities with known chunk sizes, float16/float32/float64.
    cfg : Config
        Validated arguments (``rankseg_np._validate.check_config``).

    Returns
    -------
    dask.array.Array
        Labels ``(B, *spatial)`` int64 or masks ``(B, C, *spatial)`` bool,
        not yet computed; equal to the in-memory answer (module docstring).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from rankseg_np import rankseg
    >>> probs = np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 32, 32)).transpose(0, 3, 1, 2)
    >>> lazy = rankseg(da.from_array(probs, chunks=(1, 3, 16, 16)))   # spatial chunks
    >>> type(lazy).__name__, lazy.shape
    ('Array', (2, 32, 32))
    >>> bool((lazy.compute() == rankseg(probs)).all())
    True
    """
    if any(isinstance(s, float) and math.isnan(s) for s in x.shape):
        raise ValueError("probs is a Dask array with unknown chunk sizes; call probs.compute_chunk_sizes() first")
    check_probs_structure(x)
    return _pipeline.run(_EXECUTOR, x, cfg)
