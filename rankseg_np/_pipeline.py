"""The one pipeline every executor runs: empty input -> rows -> decide -> masks | labels.

An executor (``rankseg_np.cpu``, ``rankseg_np.gpu``, ``rankseg_np.dask``)
supplies a handful of array operations (:class:`Executor`); this module owns
the order of the steps, the output shapes and dtypes, the choice between a
native decision, a host fallback and whole-image processing (read from the
capability table, :mod:`rankseg_np._solvers`), and the accuracy rules of
MATH section 6.  Nothing here depends on the array library.
"""

from __future__ import annotations

import math
import sys
import warnings
from importlib import import_module
from typing import Any, NamedTuple, Protocol

import numpy as np

from ._decision import RowDecision
from ._layout import check_class_sums
from ._solvers import HOST_FALLBACK, NATIVE, SOLVERS, WHOLE_IMAGES
from ._validate import Config


class ClassSums(NamedTuple):
    """What a multiclass executor saw of the per-pixel class sums (see :mod:`rankseg_np._layout`)."""

    n_pixels: int
    n_off: int  # pixels whose class sum is off 1 by more than _layout.SUM_TOL
    lo: float  # smallest and largest sum seen
    hi: float


class Executor(Protocol):
    """What an executor provides to :func:`run`."""

    name: str  # its column of the capability table: 'cpu', 'gpu' or 'dask'
    xp: Any  # its array namespace (numpy, cupy, dask.array)

    def rows(self, probs: Any) -> Any:
        """The probabilities as the rows the executor decides on (``(B, C, d)`` in memory)."""

    def check_values(self, rows: Any) -> Any:
        """Raise (or arrange to raise) the value error for NaN, inf or values outside [0, 1]; return rows."""

    def decide(self, module: Any, rows: Any, cfg: Config) -> Any:
        """The per-row decision of the solver implemented in ``module`` (a ``RowDecision``)."""

    def to_host(self, rows: Any) -> np.ndarray:
        """A NumPy copy of ``rows`` (host fallback)."""

    def from_host(self, decision: RowDecision) -> Any:
        """A host decision moved to the executor's device."""

    def whole_images(self, rows: Any, cfg: Config) -> Any:
        """The answer computed image by image in memory, or ``None`` if the rows split images."""

    def masks(self, rows: Any, decision: Any) -> Any:
        """Boolean masks ``(B, C, d)`` of a decision."""

    # Optional: decide_masks(module, rows, cfg) -> masks (B, C, d), or None where the
    # solver has no fused path (see fused_masks).

    def labels(self, rows: Any, decision: Any, cfg: Config) -> tuple[Any, ClassSums | None]:
        """Labels ``(B, d)`` from the per-class decisions (MATH section 5), and what it saw of the
        class sums (``None``: not checked)."""

    def reshape(self, out: Any, shape: tuple[int, ...]) -> Any:
        """``out`` in the caller's spatial shape."""


def output_shape(shape: tuple[int, ...], cfg: Config) -> tuple[tuple[int, ...], type]:
    """Shape and dtype of the answer for probabilities of shape ``shape``."""
    if cfg.output_mode == "multilabel":
        return tuple(shape), np.bool_
    return (shape[0],) + tuple(shape[2:]), np.int64


def run(ex: Executor, probs: Any, cfg: Config) -> Any:
    """Masks ``(B, C, *spatial)`` bool or labels ``(B, *spatial)`` int64 for a validated-structure array."""
    shape = tuple(int(s) for s in probs.shape)
    out_shape, dtype = output_shape(shape, cfg)
    if math.prod(shape) == 0:  # nothing to decide (and reductions need a pixel)
        return ex.xp.zeros(out_shape, dtype=dtype)
    rows = ex.rows(probs)
    if cfg.metric == "accuracy":
        return ex.reshape(accuracy(ex, rows, cfg), out_shape)
    how = SOLVERS[cfg.solver].executors[ex.name]
    whole = ex.whole_images(rows, cfg)
    if whole is not None:
        return ex.reshape(whole, out_shape)
    if how == WHOLE_IMAGES:  # the executor declined: its whole_images says how to rechunk
        raise AssertionError(f"executor {ex.name!r} must handle solver {cfg.solver!r} on whole images")
    if cfg.output_mode == "multilabel":
        fused = fused_masks(ex, rows, cfg)
        if fused is not None:
            return ex.reshape(fused, out_shape)
    decision = decide(ex, rows, cfg)
    if cfg.output_mode == "multilabel":
        return ex.reshape(ex.masks(rows, decision), out_shape)
    labels, sums = ex.labels(rows, decision, cfg)
    if sums is not None:  # multiclass probabilities sum to 1: a wrong layout does not
        check_class_sums(*sums, probs)
    return ex.reshape(labels, out_shape)


def decide(ex: Executor, rows: Any, cfg: Config) -> Any:
    """The solver's per-row decision, natively or through the host, as the capability table says."""
    solver = SOLVERS[cfg.solver]
    how = solver.executors[ex.name]
    module = import_module(solver.modules[ex.name])
    if how == NATIVE:
        return ex.decide(module, rows, cfg)
    if how == HOST_FALLBACK:
        # The decision is O(B*C): only the probabilities travel, once.
        return ex.from_host(module.decide(np.ascontiguousarray(ex.to_host(rows)), cfg))
    raise AssertionError(f"unknown support {how!r} of solver {cfg.solver!r} on {ex.name!r}")


def fused_masks(ex: Executor, rows: Any, cfg: Config) -> Any:
    """Masks decided and written in one task per row, where the executor offers it for a native
    solver (``decide_masks``; the CPU for RMA), else ``None``: the same masks as ``masks(decide())``."""
    fuse = getattr(ex, "decide_masks", None)
    solver = SOLVERS[cfg.solver]
    if fuse is None or solver.executors[ex.name] != NATIVE:
        return None
    return fuse(import_module(solver.modules[ex.name]), rows, cfg)


def accuracy(ex: Executor, rows: Any, cfg: Config) -> Any:
    """Accuracy is Bayes-optimal by argmax (multiclass) or p > 1/2 (TR), MATH section 6."""
    xp = ex.xp
    rows = ex.check_values(rows)
    if cfg.solver == "tr":
        return rows > 0.5
    labels = xp.argmax(rows, axis=1).astype(xp.int64)
    if cfg.output_mode == "multiclass":
        return labels
    warn_user(
        "solver='argmax' with output_mode='multilabel' returns non-overlapping one-hot masks; "
        "use solver='TR' to threshold each class independently."
    )
    classes = xp.arange(rows.shape[1]).reshape((1, -1) + (1,) * (rows.ndim - 2))
    return xp.expand_dims(labels, 1) == classes


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside rankseg_np (the user's call)."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("rankseg_np"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
