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
   value ``lam*`` follows (proof in :func:`_ratio_bounds`), hence a bracket
   ``(wlo, whi]`` on the optimal threshold ``lam*/2`` (Dice) or
   ``lam*/(1+lam*)`` (IoU) a few bins wide.  NaN/inf are reported at the end
   of this pass; values outside [0, 1] at the end of the next one, once the
   range of the whole array is known: the in-memory message, at compute time.
2. **Window pass.**  Each chunk returns, per row, the sum and count of its
   values above the window (``_kernels.sum_above``) and the values inside it
   (with their global pixel indices when smooth > 0).  The windows of a row
   are concatenated and the *same Numba Dinkelbach kernel* as the in-memory
   path (``rma.dinkelbach_dice`` / ``dinkelbach_iou``) runs on the window,
   the part above it folded into its constants (``alpha``/``beta``, or
   ``smooth``/``mu``): every threshold Dinkelbach visits lies inside the
   window (proof in :func:`_finish_row`), so it takes the in-memory steps.
   Dice with smooth > 0 then orders the band of MATH 4 (inside the window)
   exactly as ``rma._dice_smooth_row`` does, a tie group cut at the lowest
   global pixel index.  Multiclass: the same pass sums ``tau_c``/``m_c``
   over the sole-claimed pixels whose claims the windows already decide
   (:func:`_decided_claims`) and keeps the few pixels they leave open, which
   are resolved once the thresholds are known.
3. **Output pass**, blockwise: masks with the CPU ``materialize`` kernel, or
   labels with the CPU ``multiclass.claims`` + ``conflicts`` kernels and the
   global per-class scalars; the global tie cut is translated to each chunk
   (:func:`_local_tie_end`).

Each pass recomputes the input chunks (every task computes its own chunk from
the chunk's private sub-graph, see :class:`_Source`), so an input larger than
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
elementwise and runs blockwise on any chunking (classes are merged for
``argmax``).  Bad values found blockwise are reported with the range of the
chunk that holds them.
"""

from __future__ import annotations

import math
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import numpy as np
from numba import njit

try:
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import Delayed
    import dask.local
    from dask._task_spec import Alias, DataNode, Task
    from dask.highlevelgraph import HighLevelGraph
except ImportError as exc:  # pragma: no cover - exercised only without dask
    raise ImportError(
        "rankseg_np.dask needs dask: pip install 'dask[array]' distributed zarr (the dask extra)"
    ) from exc

from . import cpu
from ._decision import RowDecision
from ._validate import Config, check_config, check_probs_structure, raise_bad_values
from .cpu import _kernels, multiclass, rma

__all__ = ["row_decisions", "solve", "strategy", "whole_image_chunks"]

# --------------------------------------------------------------------------
# Histogram bins: floats with 9 mantissa bits, from 2**-64 up to 1.
# --------------------------------------------------------------------------
MANTISSA_BITS = 9
OCTAVES = 64
NBINS = OCTAVES * (1 << MANTISSA_BITS) + 2  # bin 0: [0, 2**-64); last bin: [1, 1 + 2**-9)
TINY = 2.0**-OCTAVES
# (shift, base): bin = (bits >> shift) - base + 1 for v >= 2**-64, from the
# IEEE bit pattern (monotone in the value for non-negative floats).
_BIN_PARAMS = {
    np.dtype(np.float32): (np.uint32(23 - MANTISSA_BITS), (127 - OCTAVES) << MANTISSA_BITS),
    np.dtype(np.float64): (np.uint64(52 - MANTISSA_BITS), (1023 - OCTAVES) << MANTISSA_BITS),
}
# Relative widening of every bracket: the brackets are computed from float64
# sums accumulated in another order than the final ones (relative error far
# below 1e-9 even for 1e9-pixel rows); widening only adds window pixels.
SLACK = 1e-6
# Fan-in of the tree reductions.
SPLIT_EVERY = 8
# Block of values counted before copying (see _window_fill).
_FILL_BLOCK = 2048
# Pixels per tile in _decided_claims.
_TILE = 4096


def _bin_edges() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edge of every bin (values in bin k satisfy lo[k] <= v < hi[k])."""
    k = np.arange(1, NBINS)
    raw = k - 1
    e = raw >> MANTISSA_BITS
    m = raw & ((1 << MANTISSA_BITS) - 1)
    lo = np.empty(NBINS)
    lo[0] = 0.0
    lo[1:] = np.ldexp(1.0 + m / float(1 << MANTISSA_BITS), (e - OCTAVES).astype(np.int64))
    hi = np.empty(NBINS)
    hi[:-1] = lo[1:]
    hi[-1] = 1.0 + 1.0 / (1 << MANTISSA_BITS)
    return lo, hi


BIN_LO, BIN_HI = _bin_edges()
# Valid probabilities never exceed 1: the tightest upper bound of each bin.
BIN_SUP = np.minimum(BIN_HI, 1.0)


# --------------------------------------------------------------------------
# Chunk kernels.  Serial and nogil: Dask runs chunks in parallel threads (or
# processes), so nesting Numba's own thread pool inside them would only
# oversubscribe the cores.
# --------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _row_scan(row, pruning_prob):
    """One vectorised read: float64 sum, counts above ``pruning_prob``, invalid, and non-finite.

    Reassociation only (NaN and inf keep their meaning): the order of the
    sum is fixed at compile time, so results are deterministic.
    """
    total = 0.0
    n_above = 0
    n_bad = 0
    n_nonfinite = 0
    for i in range(row.size):
        v = row[i]
        total += v
        n_above += v > pruning_prob
        n_bad += not (v >= 0.0 and v <= 1.0)  # NaN fails both comparisons
        n_nonfinite += not np.isfinite(v)
    return total, n_above, n_bad, n_nonfinite


@njit(cache=True, nogil=True)
def _hist_counts(row, brow, shift, base, counts):
    """Add a row's values to a histogram of counts over the bins of ``BIN_LO``."""
    nb = counts.size
    for i in range(row.size):
        k = 0
        if row[i] >= TINY:
            k = min(np.int64(brow[i] >> shift) - base + 1, nb - 1)
        counts[k] += 1


@njit(cache=True, nogil=True)
def _window_fill(p2, lo, hi, use, start, vals, idx, with_idx):
    """Copy the values in (lo, hi] of each row (and their in-chunk flat indices), in row order.

    Windows are tiny next to the chunk, so the row is scanned in blocks with
    a vectorised count, and only blocks that hold window values are copied,
    branch-free (each value is written, the cursor advances only when it is
    kept; ``vals``/``idx`` have one slot of slack at the end).
    """
    for r in range(p2.shape[0]):
        if not use[r]:
            continue
        row = p2[r]
        a = lo[r]
        b = hi[r]
        j = start[r]
        n = row.size
        for i0 in range(0, n, _FILL_BLOCK):
            i1 = min(n, i0 + _FILL_BLOCK)
            hits = 0
            for i in range(i0, i1):
                v = row[i]
                hits += (v > a) & (v <= b)
            if hits == 0:
                continue
            for i in range(i0, i1):
                v = row[i]
                vals[j] = v
                if with_idx:
                    idx[j] = i
                j += (v > a) & (v <= b)


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _decided_claims(p3, lo, hi, active, tau, m, undecided):
    """Multiclass claims (MATH 5) of the pixels whose claims the windows already decide.

    Class c claims pixel i iff ``p > t_c`` (or ``p == t_c`` before the tie
    cut), and ``t_c`` lies in ``(lo_c, hi_c]``: ``p > hi_c`` claims, ``p <=
    lo_c`` does not, whatever ``t_c`` is.  Pixels decided for every active
    class add to ``tau``/``m`` when they have a sole claimant (as in
    ``multiclass.claims``); the others are flagged in ``undecided`` and
    resolved once the thresholds are known.  No label array is written.
    Tiles of pixels, classes outside and pixels inside, in branch-free loops
    that vectorise (reassociation only: the order of the sums is fixed at
    compile time, so the result is deterministic).
    """
    n_img, n_cls, d = p3.shape
    count = np.empty(_TILE, dtype=np.int32)
    owner = np.empty(_TILE, dtype=np.int32)
    for b in range(n_img):
        for i0 in range(0, d, _TILE):
            i1 = min(d, i0 + _TILE)
            n = i1 - i0
            flags = undecided[b, i0:i1]
            count[:n] = 0
            owner[:n] = 0
            flags[:] = 0
            for c in range(n_cls):
                if not active[b, c]:
                    continue
                row = p3[b, c, i0:i1]
                a = lo[b, c]
                h = hi[b, c]
                for j in range(n):
                    v = row[j]
                    claim = v > h
                    count[j] += claim
                    owner[j] = c if claim else owner[j]
                    flags[j] |= (v > a) & (v <= h)
            for c in range(n_cls):
                if not active[b, c]:
                    continue
                row = p3[b, c, i0:i1]
                n_sole = 0
                s_sole = 0.0
                for j in range(n):
                    sole = (flags[j] == 0) & (count[j] == 1) & (owner[j] == c)
                    n_sole += sole
                    s_sole += row[j] if sole else 0.0
                tau[b, c] += n_sole
                m[b, c] += s_sole


@njit(cache=True, nogil=True)
def _band_best(band, s_top, n_top, a, smooth):
    """First maximiser k of f(n_top + k) over the sorted (ascending) band; as in ``rma._dice_smooth_row``."""
    n_band = band.size
    best = rma.dice_smooth_value(s_top, n_top, a, smooth)
    best_k = 0
    s = s_top
    for k in range(1, n_band + 1):
        s += band[n_band - k]
        val = rma.dice_smooth_value(s, n_top + k, a, smooth)
        if val > best:
            best = val
            best_k = k
    return best_k


# Numba's 'workqueue' threading layer must not be entered from two threads at
# once; the CPU kernels are parallel, and Dask calls them from its threads.
_WORKQUEUE_LOCK = threading.Lock()


@contextmanager
def _cpu_threads(n_tasks: int):
    """Run the CPU path's parallel kernels inside a Dask task with a fair share of the cores.

    Dask already runs ``n_tasks`` chunks side by side; each task gets
    ``cores // n_tasks`` Numba threads (at least one; the setting is local to
    the calling thread).  Without this every task would wake a full Numba
    pool, which costs milliseconds per call on a busy machine and
    oversubscribes the cores.
    """
    import numba

    share = max(1, int(numba.config.NUMBA_NUM_THREADS) // max(1, int(n_tasks)))
    previous = numba.get_num_threads()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process
        layer = "unknown"
    lock = _WORKQUEUE_LOCK if layer in ("workqueue", "unknown") else nullcontext()
    numba.set_num_threads(min(share, previous))
    try:
        with lock:
            yield
    finally:
        numba.set_num_threads(previous)


# --------------------------------------------------------------------------
# Small helpers on chunks.
# --------------------------------------------------------------------------
def _rows(block: np.ndarray) -> np.ndarray:
    """A chunk ``(b, c, *s)`` as C-contiguous float32/float64 ``(b*c, prod(s))`` rows."""
    p3 = cpu.as_rows(np.asarray(block))
    return p3.reshape(p3.shape[0] * p3.shape[1], p3.shape[2])


def _local_tie_end(k: int, offsets: tuple[int, ...], chunk: tuple[int, ...], full: tuple[int, ...]) -> int:
    """How many pixels of a chunk have a global flat index below ``k``.

    The global C-order index is strictly increasing in the chunk's own C
    order, so ``{i : global(i) < k}`` is a prefix of the chunk's flat order
    and the global tie rule ``i_global < k`` is the local rule ``i < result``.
    Counted lexicographically, axis by axis.
    """
    size = math.prod(chunk)
    if k <= 0:
        return 0
    if k >= math.prod(full):
        return size
    g = np.unravel_index(k, full)
    count = 0
    for a in range(len(full)):
        rest = math.prod(chunk[a + 1 :])
        ga = int(g[a]) - offsets[a]
        if ga < 0:
            return count
        if ga >= chunk[a]:
            return count + chunk[a] * rest
        count += ga * rest
    return count


def _local_tie_ends(tie_end: np.ndarray, threshold: np.ndarray, offsets, chunk, full) -> np.ndarray:
    out = np.zeros(tie_end.shape, dtype=np.int64)
    for pos in zip(*np.nonzero((tie_end > 0) & np.isfinite(threshold))):
        out[pos] = _local_tie_end(int(tie_end[pos]), offsets, chunk, full)
    return out


def _offsets(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    return [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]


# --------------------------------------------------------------------------
# Pass 1: statistics and histograms.
# --------------------------------------------------------------------------
def _p1_chunk(block: np.ndarray, pruning_prob: float) -> tuple:
    p2 = _rows(block)
    rows = p2.shape[0]
    shift, base = _BIN_PARAMS[p2.dtype]
    bits = p2.view(np.uint32 if p2.dtype == np.float32 else np.uint64)
    total = np.empty(rows)
    above = np.empty(rows, dtype=np.bool_)
    bad = np.empty(rows, dtype=np.bool_)
    nonfinite = np.empty(rows, dtype=np.bool_)
    counts = np.zeros((rows, NBINS), dtype=np.int64)
    for r in range(rows):
        total[r], n_above, n_bad, n_nonfinite = _row_scan(p2[r], pruning_prob)
        above[r], bad[r], nonfinite[r] = n_above > 0, n_bad > 0, n_nonfinite > 0
        if not n_bad:  # an invalid row only raises: no histogram needed
            _hist_counts(p2[r], bits[r], shift, base, counts[r])
    return (total, above, bad, nonfinite, counts)


def _p1_combine(parts: list) -> tuple:
    total, above, bad, nonfinite, counts = (np.array(a, copy=True) for a in parts[0])
    for t, ab, b, nf, n in parts[1:]:
        total += t
        above |= ab
        bad |= b
        nonfinite |= nf
        counts += n
    return (total, above, bad, nonfinite, counts)


def _ratio_bounds(counts, kind, alpha, beta, smooth, mu):
    """Bracket ``[L, U]`` on the maximum of an RMA ratio over masks, from one row's histogram of counts.

    ``kind='dice'``: ``(2 S(x) + alpha) / (beta + n(x))``; ``kind='iou'``:
    ``(S(x) + smooth) / (mu + smooth + n(x) - S(x))``, where ``S``/``n`` are
    the sum/count of the mask ``x``; both increase with ``S`` at fixed ``n``.
    The maximum is attained by a top-tau set (a threshold mask, MATH 4).

    * ``L``: the mask "every bin from k up" has ``n = N_k`` (known) and
      ``S >= Slo_k`` (each value at its bin's lower edge), so its value, and
      the maximum, is at least the ratio at ``(Slo_k, N_k)``; ``L`` is the
      best such bound over k.
    * ``U``: every top-tau set is "all bins above k plus j of the largest
      values of bin k", ``0 <= j <= n_k``; each value is below its bin's upper
      edge ``sup`` (capped at 1), so its value is at most
      ``g(j) = ratio(Sup_{k+1} + j sup_k, N_{k+1} + j)``, a ratio of affine
      functions of ``j`` with a positive denominator, hence monotone:
      ``g(j) <= max(g(0), g(n_k))``, and those are the bounds at
      ``(Sup_{k+1}, N_{k+1})`` and ``(Sup_k, N_k)``.  ``U`` is the largest
      over k.
    """
    n_k = counts.astype(np.float64)
    n_ge = np.concatenate([np.cumsum(n_k[::-1])[::-1], [0.0]])
    s_lo = np.concatenate([np.cumsum((n_k * BIN_LO)[::-1])[::-1], [0.0]])
    s_up = np.concatenate([np.cumsum((n_k * BIN_SUP)[::-1])[::-1], [0.0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "dice":
            low = (2.0 * s_lo + alpha) / (beta + n_ge)
            up = (2.0 * s_up + alpha) / (beta + n_ge)
        else:
            low = (s_lo + smooth) / (mu + smooth + n_ge - s_lo)
            up = (s_up + smooth) / (mu + smooth + n_ge - s_up)
    return float(np.nanmax(low)), float(np.nanmax(up))


def _threshold_of(lam: float, kind: str) -> float:
    return 0.5 * lam if kind == "dice" else lam / (1.0 + lam)


def _p1_finish_group(part: tuple, cfg: Config) -> tuple:
    """Per row of a row group: mu, validity, activity, and the window bracket."""
    total, above, bad, nonfinite, counts = part
    rows = total.shape[0]
    active = (~bad) & above
    # columns: wlo, whi, start (first Dinkelbach problem), start_c (smooth Dice only)
    bracket = np.full((rows, 4), np.nan)
    for r in np.nonzero(active)[0]:
        mu = float(total[r])
        if cfg.metric == "iou":
            low, up = _ratio_bounds(counts[r], "iou", 0.0, 0.0, cfg.smooth, mu)
            start = _threshold_of(low, "iou")
            bracket[r] = (start * (1.0 - SLACK), _threshold_of(up, "iou") * (1.0 + SLACK), start, np.nan)
        elif cfg.smooth == 0.0:
            low, up = _ratio_bounds(counts[r], "dice", 0.0, mu + 1.0, 0.0, mu)
            bracket[r] = (0.5 * low * (1.0 - SLACK), 0.5 * up * (1.0 + SLACK), 0.5 * low, np.nan)
        else:
            # The two single-ratio problems of rma._dice_smooth_row: alpha = 0
            # and alpha = 2c (same beta); the band lies between their optimal
            # thresholds, and 2c > 0 makes the second optimum the larger.
            a = mu + cfg.smooth
            c = 0.5 * cfg.smooth * (1.0 + 2.0 / a)
            low1, _ = _ratio_bounds(counts[r], "dice", 0.0, a + 1.0, 0.0, mu)
            lowc, upc = _ratio_bounds(counts[r], "dice", 2.0 * c, a + 1.0, 0.0, mu)
            bracket[r] = (0.5 * low1 * (1.0 - SLACK), 0.5 * upc * (1.0 + SLACK), 0.5 * low1, 0.5 * lowc)
    return (total, bad, nonfinite, active, bracket)


def _assemble(groups: list, index: list, shape: tuple[int, int], n_fields: int):
    """Scatter per-group row arrays (row-major over the group's (b, c) block) into (B, C, ...) arrays."""
    out = []
    for f in range(n_fields):
        first = np.asarray(groups[0][f])
        tail = first.shape[1:]
        arr = np.empty(shape + tail, dtype=first.dtype)
        for g, (b0, b1, c0, c1) in zip(groups, index):
            arr[b0:b1, c0:c1] = np.asarray(g[f]).reshape((b1 - b0, c1 - c0) + tail)
        out.append(arr)
    return out


def _p1_global(groups: list, index: list, shape: tuple[int, int], compute_dtype: str) -> dict:
    total, bad, nonfinite, active, bracket = _assemble(groups, index, shape, 5)
    if nonfinite.any():
        raise_bad_values(np.array([np.nan], dtype=compute_dtype))
    # Values outside [0, 1]: the in-memory message names the range of the
    # whole array, which pass 2 measures (and pass 2's finish raises).
    return {"mu": total, "active": active, "bracket": bracket, "bad": bool(bad.any())}


# --------------------------------------------------------------------------
# Pass 2: windows, then the exact finish of every row.
# --------------------------------------------------------------------------
def _global_index(local: np.ndarray, chunk_shape: tuple, offsets: tuple, full: tuple) -> np.ndarray:
    """In-chunk flat pixel index -> flat index in the image's spatial grid (C order)."""
    if local.size == 0:
        return local.astype(np.int64)
    parts = np.unravel_index(local, chunk_shape)
    return np.ravel_multi_index(tuple(ix + o for ix, o in zip(parts, offsets)), full).astype(np.int64)


def _p2_chunk(block, info, rows_sel, offsets, full, with_idx, claims) -> dict:
    """Pass 2 on one chunk: per row the sum/count above the window and the window's
    values; with ``claims`` (multiclass, all classes in the chunk), also the
    claims the windows already decide and the pixels they leave open."""
    (b0, b1, c0, c1) = rows_sel
    p2 = _rows(block)
    rows = p2.shape[0]
    s_hi = np.zeros(rows)
    n_hi = np.zeros(rows, dtype=np.int64)
    if info["bad"]:  # only the range of the values is needed, for the error
        return {"s_hi": s_hi, "n_hi": n_hi, "pieces": [], "claims": [],
                "vmin": float(p2.min()), "vmax": float(p2.max())}
    active = np.ascontiguousarray(info["active"][b0:b1, c0:c1].reshape(-1))
    bracket = info["bracket"][b0:b1, c0:c1].reshape(-1, 4)
    lo = np.ascontiguousarray(bracket[:, 0])
    hi = np.ascontiguousarray(bracket[:, 1])
    n_win = np.zeros(rows, dtype=np.int64)
    for r in np.nonzero(active)[0]:
        # Two masked sums (the CPU kernel): above the window, and above its floor.
        s_hi[r], n_hi[r] = _kernels.sum_above(p2[r], hi[r])
        n_win[r] = _kernels.sum_above(p2[r], lo[r])[1] - n_hi[r]
    start = np.concatenate([[0], np.cumsum(n_win)]).astype(np.int64)
    vals = np.empty(int(start[-1]) + 1, dtype=p2.dtype)  # + 1: _window_fill's slack slot
    idx = np.empty(int(start[-1]) + 1 if with_idx else 1, dtype=np.int64)
    if start[-1]:
        _window_fill(p2, lo, hi, active & (n_win > 0), start, vals, idx, with_idx)
    vals, idx = vals[:-1], idx[:-1]
    chunk_shape = tuple(block.shape[2:])
    if with_idx:
        idx = _global_index(idx, chunk_shape, offsets, full)
    part = {"s_hi": s_hi, "n_hi": n_hi, "pieces": [(start, vals, idx)], "claims": [],
            "vmin": np.inf, "vmax": -np.inf}
    if claims:
        n_img, n_cls = b1 - b0, c1 - c0
        p3 = p2.reshape(n_img, n_cls, -1)
        tau = np.zeros((n_img, n_cls))
        m = np.zeros((n_img, n_cls))
        undecided = np.empty((n_img, p3.shape[2]), dtype=np.uint8)
        _decided_claims(p3, lo.reshape(n_img, n_cls), hi.reshape(n_img, n_cls),
                        active.reshape(n_img, n_cls), tau, m, undecided)
        img, loc = np.nonzero(undecided)
        part["claims"] = [(tau, m, img, _global_index(loc, chunk_shape, offsets, full), p3[img, :, loc])]
    return part


def _p2_combine(parts: list) -> dict:
    out = dict(parts[0])
    out["s_hi"] = np.array(out["s_hi"], copy=True)
    out["n_hi"] = np.array(out["n_hi"], copy=True)
    out["pieces"] = list(out["pieces"])
    out["claims"] = list(out["claims"])
    for part in parts[1:]:
        out["s_hi"] += part["s_hi"]
        out["n_hi"] += part["n_hi"]
        out["pieces"].extend(part["pieces"])
        out["claims"].extend(part["claims"])
        out["vmin"] = min(out["vmin"], part["vmin"])
        out["vmax"] = max(out["vmax"], part["vmax"])
    return out


def _finish_row(window, s_hi, n_hi, mu, bracket, cfg: Config, idx, d: int) -> tuple[float, int]:
    """The in-memory RMA decision of one row from its window and the sum/count above it.

    Why Dinkelbach on the window alone is the in-memory Dinkelbach: it only
    ever needs ``S(t), n(t)`` (sum/count of values ``> t``) for thresholds
    ``t`` it visits, and ``S(t) = s_hi + S_window(t)`` when ``t`` lies in the
    window ``(wlo, whi]``.  Write ``lam0 = L`` (the bracket's lower bound, a
    value attained by a real mask, so ``L <= lam*``).  Dinkelbach's step from
    any ``lam <= lam*`` returns a mask of value ``>= lam`` (the optimal mask
    makes ``max_x (a - lam b).x + alpha - lam beta >= 0``), so starting from
    the mask ``{p > t(L)}`` every value it reaches is ``>= L`` and every
    threshold ``>= t(L) > wlo``; values only rise to ``lam* <= U``, so every
    threshold is ``<= t(U) < whi``.  The constants absorb the part above the
    window: Dice ``(2(s_hi + S_w) + alpha)/(beta + n_hi + n_w)`` is
    ``(2 S_w + alpha')/(beta' + n_w)``; IoU ``(s_hi + S_w + g)/(mu + g + n_hi
    + n_w - s_hi - S_w)`` is ``(S_w + g')/(mu' + g' + n_w - S_w)`` with
    ``g' = g + s_hi``, ``mu' = mu + n_hi - 2 s_hi``.  The slack ``SLACK`` on
    both ends absorbs float64 rounding of the bracket.  A final check turns
    any violation into an error instead of a silently different answer.
    """
    wlo, whi, start, start_c = bracket
    if cfg.metric == "iou":
        s0, n0 = _kernels.sum_above(window, start)
        _, t = rma.dinkelbach_iou(window, cfg.smooth + s_hi, mu + n_hi - 2.0 * s_hi, s0, n0, start)
        tie = 0
    elif cfg.smooth == 0.0:
        s0, n0 = _kernels.sum_above(window, start)
        _, t = rma.dinkelbach_dice(window, 2.0 * s_hi, mu + 1.0 + n_hi, s0, n0, start)
        tie = 0
    else:
        t, tie = _finish_smooth(window, s_hi, n_hi, mu, start, start_c, cfg.smooth, idx, d)
    if not wlo < t <= whi:
        raise RuntimeError(
            f"rankseg_np.dask: internal error, threshold {t!r} outside its window ({wlo!r}, {whi!r}]; "
            "please report this with the input"
        )
    return t, tie


def _finish_smooth(window, s_hi, n_hi, mu, start1, start_c, smooth, idx, d):
    """``rma._dice_smooth_row`` on a window: the two Dinkelbach problems, then the band."""
    # Comparisons in float64, as the Numba kernels do (NumPy would compare a
    # float32 window with a Python float in float32).
    window = window.astype(np.float64)
    a = mu + smooth
    beta = a + 1.0 + n_hi
    s0, n0 = _kernels.sum_above(window, start1)
    lam1, _ = rma.dinkelbach_dice(window, 2.0 * s_hi, beta, s0, n0, start1)
    c = 0.5 * smooth * (1.0 + 2.0 / a)
    s0, n0 = _kernels.sum_above(window, start_c)
    lamc, _ = rma.dinkelbach_dice(window, 2.0 * c + 2.0 * s_hi, beta, s0, n0, start_c)
    lo = 0.5 * lam1 * (1.0 - rma.BAND_SLACK)
    hi = 0.5 * lamc * (1.0 + rma.BAND_SLACK)
    above = window > hi
    s_top = s_hi + float(np.sum(window[above]))
    n_top = n_hi + int(above.sum())
    in_band = (window >= lo) & (window <= hi)
    band = np.sort(window[in_band])
    best_k = _band_best(band, s_top, n_top, a, smooth)
    if best_k == 0:
        return hi, 0
    n_band = band.size
    v = band[n_band - best_k]
    n_greater = int((band > v).sum())
    equal = window == v
    n_equal = int(equal.sum())
    need = best_k - n_greater
    if need == n_equal:
        return float(v), d
    # The mask is {p > v} plus the `need` pixels equal to v of lowest global index.
    return float(v), int(np.sort(idx[equal])[need - 1]) + 1


def _p2_finish_group(part: dict, info: dict, rows_sel, cfg: Config, d: int) -> tuple:
    """Per row of a group: the decision; for multiclass, also tau_c and m_c (MATH 5)."""
    b0, b1, c0, c1 = rows_sel
    active = info["active"][b0:b1, c0:c1].reshape(-1)
    mu = info["mu"][b0:b1, c0:c1].reshape(-1)
    bracket = info["bracket"][b0:b1, c0:c1].reshape(-1, 4)
    rows = active.size
    threshold = np.full(rows, np.inf)
    tie_end = np.zeros(rows, dtype=np.int64)
    tau = np.zeros(rows)
    m = np.zeros(rows)
    if info["bad"]:
        return (threshold, tie_end, tau, m, part["vmin"], part["vmax"])
    s_hi, n_hi, pieces = part["s_hi"], part["n_hi"], part["pieces"]
    for r in np.nonzero(active)[0]:
        window = np.concatenate([vals[st[r] : st[r + 1]] for st, vals, _ in pieces])
        idx = np.concatenate([ix[st[r] : st[r + 1]] for st, _, ix in pieces]) if cfg.smooth > 0 else None
        threshold[r], tie_end[r] = _finish_row(
            window, float(s_hi[r]), int(n_hi[r]), float(mu[r]), tuple(bracket[r]), cfg, idx, d
        )
    if part["claims"]:
        tau, m = _resolve_claims(part["claims"], threshold, tie_end, active, (b1 - b0, c1 - c0))
    return (threshold, tie_end, tau, m, part["vmin"], part["vmax"])


def _resolve_claims(claims: list, threshold, tie_end, active, shape) -> tuple[np.ndarray, np.ndarray]:
    """tau_c, m_c of a group: the decided chunk sums, plus the open pixels now that thresholds are known."""
    tau = np.zeros(shape)
    m = np.zeros(shape)
    for t, s, *_ in claims:
        tau += t
        m += s
    img = np.concatenate([c[2] for c in claims])
    if img.size:
        gidx = np.concatenate([c[3] for c in claims])
        vals = np.concatenate([c[4] for c in claims]).astype(np.float64)  # compared in float64, as the kernels do
        t = threshold.reshape(shape)[img]
        k = tie_end.reshape(shape)[img]
        claim = active.reshape(shape)[img] & ((vals > t) | ((vals == t) & (gidx[:, None] < k)))
        sole = claim.sum(axis=1) == 1
        cls = np.argmax(claim[sole], axis=1)
        np.add.at(tau, (img[sole], cls), 1.0)
        np.add.at(m, (img[sole], cls), vals[sole, cls])
    return tau.reshape(-1), m.reshape(-1)


def _p2_global(groups: list, index: list, shape: tuple[int, int], info: dict, compute_dtype: str) -> dict:
    if info["bad"]:
        vmin = min(g[4] for g in groups)
        vmax = max(g[5] for g in groups)
        raise_bad_values(np.array([vmin, vmax], dtype=compute_dtype))
    threshold, tie_end, tau, m = _assemble(groups, index, shape, 4)
    return {"threshold": threshold, "tie_end": tie_end, "active": info["active"], "mu": info["mu"],
            "tau": tau, "m": m}


# --------------------------------------------------------------------------
# Output passes.
# --------------------------------------------------------------------------
def _chunk_decision(dec: dict, rows_sel, offsets, chunk, full):
    b0, b1, c0, c1 = rows_sel
    threshold = np.ascontiguousarray(dec["threshold"][b0:b1, c0:c1])
    tie_end = _local_tie_ends(dec["tie_end"][b0:b1, c0:c1], threshold, offsets, chunk, full)
    active = np.ascontiguousarray(dec["active"][b0:b1, c0:c1])
    return threshold, tie_end, active


def _masks_chunk(block, dec, rows_sel, offsets, full, n_tasks) -> np.ndarray:
    p2 = _rows(block)
    threshold, tie_end, _ = _chunk_decision(dec, rows_sel, offsets, tuple(block.shape[2:]), full)
    out = np.empty(p2.shape, dtype=np.bool_)
    with _cpu_threads(n_tasks):
        _kernels.materialize(p2, threshold.reshape(-1), tie_end.reshape(-1), out)
    return out.reshape(block.shape)


def _chunk_claims(block, dec, rows_sel, offsets, full, n_tasks):
    p3 = cpu.as_rows(np.asarray(block))
    n_img, n_cls, d = p3.shape
    threshold, tie_end, active = _chunk_decision(dec, rows_sel, offsets, tuple(block.shape[2:]), full)
    labels = np.empty((n_img, d), dtype=np.int64)
    n_tasks = n_img * ((d + multiclass.TILE - 1) // multiclass.TILE)
    tau_part = np.zeros((n_tasks, n_cls))
    m_part = np.zeros((n_tasks, n_cls))
    with _cpu_threads(n_tasks):
        multiclass.claims(p3, threshold, tie_end, active, labels, tau_part, m_part)
    tau = tau_part.reshape(n_img, -1, n_cls).sum(axis=1)
    m = m_part.reshape(n_img, -1, n_cls).sum(axis=1)
    return p3, threshold, tie_end, active, labels, tau, m


def _labels_chunk(block, dec, rows_sel, offsets, full, cfg: Config, n_tasks) -> np.ndarray:
    """Labels of one chunk (all classes): the CPU claims and conflicts kernels with the global tau_c, m_c."""
    p3, threshold, tie_end, active, labels, _, _ = _chunk_claims(block, dec, rows_sel, offsets, full, n_tasks)
    b0, b1 = rows_sel[0], rows_sel[1]
    tau = np.ascontiguousarray(dec["tau"][b0:b1])
    m = np.ascontiguousarray(dec["m"][b0:b1])
    mu = np.ascontiguousarray(dec["mu"][b0:b1])
    metric = 1 if cfg.metric == "iou" else 0
    with _cpu_threads(n_tasks):
        multiclass.conflicts(
            p3, threshold, tie_end, active, labels, tau, mu, m, metric, cfg.smooth,
            cfg.unassigned_policy == "void", cfg.void_index,
        )
    return labels.reshape((block.shape[0],) + tuple(block.shape[2:]))


# --------------------------------------------------------------------------
# Blockwise paths.
# --------------------------------------------------------------------------
def _solve_chunk(block: np.ndarray, cfg: Config, n_tasks: int) -> np.ndarray:
    with _cpu_threads(n_tasks):
        return cpu.solve(np.asarray(block), cfg)


def _onehot_chunk(block: np.ndarray, cfg: Config, n_tasks: int) -> np.ndarray:
    """argmax labels as one-hot masks (the in-memory multilabel argmax), without its warning."""
    labels = _solve_chunk(block, replace(cfg, output_mode="multiclass"), n_tasks)
    classes = np.arange(block.shape[1]).reshape((1, -1) + (1,) * (block.ndim - 2))
    return labels[:, None] == classes


# --------------------------------------------------------------------------
# Graph building.
# --------------------------------------------------------------------------
class _Recipe:
    """How to compute one input chunk: its private sub-graph, run inside the task that reads it.

    An opaque object, so the scheduler neither traverses nor schedules the
    sub-graph: the chunk exists only while the task that needs it runs.
    """

    __slots__ = ("graph", "key", "external")

    def __init__(self, graph: dict, key: Any, external: list):
        self.graph = graph
        self.key = key
        self.external = external

    def __repr__(self) -> str:
        return f"_Recipe({self.key!r}, {len(self.graph)} tasks)"


def _run_recipe(recipe: _Recipe, external_values: list) -> Any:
    graph = dict(recipe.graph)
    for k, v in zip(recipe.external, external_values):
        graph[k] = DataNode(k, v)
    return dask.local.get_sync(graph, recipe.key)


class _Source:
    """The input array as per-chunk recipes, for passes that each stream the whole input.

    A multi-pass algorithm must not let the scheduler keep input chunks from
    one pass to the next (that is the whole image in memory), nor compute
    them ahead of the pass that needs them.  Each pass's task therefore
    computes its chunk itself from the chunk's own sub-graph (the input's
    optimised graph culled to that chunk).  Keys shared by more than
    ``MAX_FAN`` chunks (a global scalar such as a normalisation constant) and
    already-computed data (``from_array``, persisted chunks, a Zarr handle)
    are *external*: ordinary graph keys, computed once and passed in.
    (``dask.graph_manipulation.bind`` would be the obvious tool, but Dask's
    array optimisation can drop the dependency it adds, and the next pass's
    chunks are then computed during the first pass and held.)
    """

    MAX_FAN = 4

    def __init__(self, x):
        from dask.core import flatten, get_dependencies

        keys = list(flatten(x.__dask_keys__()))
        dsk = dict(x.__dask_optimize__(x.__dask_graph__(), keys))
        deps = {k: set(getattr(v, "dependencies", None) or get_dependencies(dsk, k)) for k, v in dsk.items()}
        missing = set().union(*deps.values()) - set(dsk)
        if missing:  # e.g. persisted chunks (Futures), which optimisation leaves out
            raw = dict(x.__dask_graph__())
            for k in missing:
                dsk[k] = raw[k]
                deps[k] = set()
        ancestors = {}
        fan: dict = {}
        for ck in keys:
            seen = set()
            stack = [ck]
            while stack:
                k = stack.pop()
                if k in seen:
                    continue
                seen.add(k)
                stack.extend(deps[k])
            ancestors[ck] = seen
            for k in seen:
                fan[k] = fan.get(k, 0) + 1
        external = {k for k in dsk if not isinstance(dsk[k], (Task, Alias)) or fan.get(k, 0) > self.MAX_FAN}
        # Everything an external key needs is external too.
        stack = list(external)
        while stack:
            for dep in deps[stack.pop()]:
                if dep not in external:
                    external.add(dep)
                    stack.append(dep)
        self.layer = {k: dsk[k] for k in external}
        self.args = {}
        for ck in keys:
            if ck in external:
                self.args[ck] = ck  # an ordinary dependency
                continue
            private = {k: dsk[k] for k in ancestors[ck] if k not in external}
            ext = sorted((k for k in ancestors[ck] if k in external and k in set().union(*(deps[j] for j in private))), key=str)
            self.args[ck] = (_run_recipe, _Recipe(private, ck, ext), list(ext))
        self.name = f"rankseg-input-{tokenize(x)}"

    def chunk(self, x, idx: tuple) -> Any:
        """The task argument that evaluates to chunk ``idx`` of ``x``."""
        return self.args[(x.name,) + tuple(idx)]


class _Graph:
    """Accumulates the tasks of one strategy in one layer and wraps keys as Delayed."""

    def __init__(self, name: str, source: _Source):
        self.name = name
        self.layer: dict = dict(source.layer)

    def key(self, *parts) -> tuple:
        return (self.name,) + parts

    def tree(self, keys: list, combine, tag: Any) -> Any:
        level = 0
        while len(keys) > 1:
            nxt = []
            for j in range(0, len(keys), SPLIT_EVERY):
                k = self.key("combine", tag, level, j // SPLIT_EVERY)
                self.layer[k] = (combine, list(keys[j : j + SPLIT_EVERY]))
                nxt.append(k)
            keys = nxt
            level += 1
        return keys[0]

    def graph(self) -> HighLevelGraph:
        return HighLevelGraph.from_collections(self.name, self.layer, dependencies=[])

    def delayed(self, key) -> Delayed:
        return Delayed(key, self.graph(), layer=self.name)


def _row_groups(x):
    """Row groups = (batch block, class block) pairs, with their slices."""
    ob, oc = _offsets(x.chunks[:2])
    groups = []
    for ib in range(len(x.chunks[0])):
        for ic in range(len(x.chunks[1])):
            groups.append(((ib, ic), (int(ob[ib]), int(ob[ib + 1]), int(oc[ic]), int(oc[ic + 1]))))
    return groups


def _spatial_blocks(x):
    offs = _offsets(x.chunks[2:])
    for sidx in np.ndindex(*x.numblocks[2:]):
        yield sidx, tuple(int(o[i]) for o, i in zip(offs, sidx))


def _merge_classes(x):
    """Rechunk so that each chunk holds every class (a pixel's label needs all of them).

    Only the class axis is merged, so each new chunk is made of the class
    chunks of one spatial block: no input chunk feeds two new chunks.
    """
    return x if len(x.chunks[1]) == 1 else x.rechunk({1: -1})


def _decision_passes(x, cfg: Config, g: _Graph, src: _Source, claims: bool = False):
    """Passes 1 and 2 of the reduction strategy; returns the key of the (B, C) row decisions."""
    shape = tuple(int(s) for s in x.shape)
    bc = shape[:2]
    full = shape[2:]
    d = math.prod(full)
    compute_dtype = "float64" if x.dtype == np.float64 else "float32"
    groups = _row_groups(x)
    index = [sel for _, sel in groups]
    blocks = list(_spatial_blocks(x))

    # Pass 1: histograms.
    finished = []
    for (ib, ic), _sel in groups:
        keys = []
        for sidx, _ in blocks:
            k = g.key("hist", ib, ic, *sidx)
            g.layer[k] = (_p1_chunk, src.chunk(x, (ib, ic, *sidx)), cfg.pruning_prob)
            keys.append(k)
        root = g.tree(keys, _p1_combine, ("hist", ib, ic))
        fk = g.key("hist-group", ib, ic)
        g.layer[fk] = (_p1_finish_group, root, cfg)
        finished.append(fk)
    info = g.key("info")
    g.layer[info] = (_p1_global, finished, index, bc, compute_dtype)

    # Pass 2: windows and the per-row finish.
    with_idx = cfg.metric == "dice" and cfg.smooth > 0.0
    finished = []
    for (ib, ic), sel in groups:
        keys = []
        for sidx, offs in blocks:
            k = g.key("window", ib, ic, *sidx)
            g.layer[k] = (_p2_chunk, src.chunk(x, (ib, ic, *sidx)), info, sel, offs, full, with_idx, claims)
            keys.append(k)
        root = g.tree(keys, _p2_combine, ("window", ib, ic))
        fk = g.key("window-group", ib, ic)
        g.layer[fk] = (_p2_finish_group, root, info, sel, cfg, d)
        finished.append(fk)
    dec = g.key("decision")
    g.layer[dec] = (_p2_global, finished, index, bc, info, compute_dtype)
    return dec, groups, blocks


def _reduce_rma(x, cfg: Config):
    """The reduction strategy (module docstring): lazy RMA over arbitrary chunks."""
    multi = cfg.output_mode == "multiclass"
    if multi:
        x = _merge_classes(x)
    src = _Source(x)
    token = tokenize(x, cfg, "rankseg_np.dask")
    g = _Graph(f"rankseg-{token}", src)
    # Multiclass: pass 2 also sums tau_c and m_c (the classes are in one chunk).
    dec, groups, blocks = _decision_passes(x, cfg, g, src, claims=multi)
    full = tuple(int(s) for s in x.shape[2:])
    n_chunks = len(groups) * len(blocks)
    name = f"rankseg-out-{token}"
    out = {}
    for (ib, ic), sel in groups:
        for sidx, offs in blocks:
            if multi:  # one class block after _merge_classes
                out[(name, ib, *sidx)] = (
                    _labels_chunk, src.chunk(x, (ib, ic, *sidx)), dec, sel, offs, full, cfg, n_chunks,
                )
            else:
                out[(name, ib, ic, *sidx)] = (
                    _masks_chunk, src.chunk(x, (ib, ic, *sidx)), dec, sel, offs, full, n_chunks,
                )
    chunks, dtype = ((x.chunks[0],) + x.chunks[2:], np.int64) if multi else (x.chunks, np.bool_)
    hlg = HighLevelGraph.from_collections(name, out, dependencies=[g.delayed(dec)])
    return da.Array(hlg, name, chunks, dtype=dtype)


def _out_meta(cfg: Config):
    return (np.bool_, False) if cfg.output_mode == "multilabel" else (np.int64, True)


def _blockwise(x, cfg: Config):
    dtype, drop = _out_meta(cfg)
    n = math.prod(x.numblocks)
    if drop:
        meta = np.empty((0,) * (x.ndim - 1), dtype)
        return da.map_blocks(_solve_chunk, x, cfg, n, dtype=dtype, drop_axis=1, meta=meta)
    return da.map_blocks(_solve_chunk, x, cfg, n, dtype=dtype, meta=np.empty((0,) * x.ndim, dtype))


def _accuracy(x, cfg: Config):
    if cfg.solver == "tr":  # elementwise: any chunking
        n = math.prod(x.numblocks)
        return da.map_blocks(_solve_chunk, x, cfg, n, dtype=np.bool_, meta=np.empty((0,) * x.ndim, np.bool_))
    x = _merge_classes(x)
    if cfg.output_mode == "multiclass":
        return _blockwise(x, cfg)
    warnings.warn(
        "solver='argmax' with output_mode='multilabel' returns non-overlapping one-hot masks; "
        "use solver='TR' to threshold each class independently.",
        stacklevel=4,
    )
    n = math.prod(x.numblocks)
    return da.map_blocks(_onehot_chunk, x, cfg, n, dtype=np.bool_, meta=np.empty((0,) * x.ndim, np.bool_))


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
    src = _Source(x)
    g = _Graph(f"rankseg-decisions-{tokenize(x, cfg)}", src)
    dec, _, _ = _decision_passes(x, cfg, g, src)
    return dask.delayed(_as_row_decision)(g.delayed(dec))


def _as_row_decision(dec: dict) -> RowDecision:
    return RowDecision(dec["threshold"], dec["tie_end"], dec["active"], dec["mu"])


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
    if cfg.solver == "rma":
        return "reduction"
    if spatial_whole:  # exact multiclass with class chunks: merge the classes
        return "blockwise"
    raise NotImplementedError(
        f"solver={cfg.solver!r} on a Dask array needs chunks that hold whole images (chunks along the "
        f"batch axis only); got chunks {tuple(len(c) for c in x.chunks)} blocks per axis. Rechunk "
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
    batch = int(x.shape[0])
    dtype, drop = _out_meta(cfg)
    if batch == 0:
        shape = (0,) + tuple(x.shape[2:]) if drop else tuple(x.shape)
        return da.zeros(shape, dtype=dtype)
    if cfg.metric == "accuracy":
        return _accuracy(x, cfg)
    how = strategy(x, cfg)
    if how == "blockwise":
        if cfg.output_mode == "multiclass" and len(x.chunks[1]) > 1:
            x = x.rechunk({1: -1})  # whole rows, classes in several chunks (exact multiclass)
        return _blockwise(x, cfg)
    return _reduce_rma(x, cfg)
