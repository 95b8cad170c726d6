"""The CPU backend: NumPy arrays in, Numba kernels, NumPy arrays out.

Each solver family lives in its own module and exposes
``decide(p3, cfg) -> RowDecision`` on a C-contiguous float32/float64
``(B, C, d)`` array; this module turns decisions into masks or labels.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from importlib import import_module

import numba
import numpy as np

from .._decision import RowDecision
from .._layout import check_class_sums
from .._validate import Config, raise_bad_values
from . import _kernels, multiclass

# solver name -> module implementing ``decide`` (imported on first use, so a
# solver's compile cost is only paid by its users).
SOLVER_MODULES = {
    "rma": "rma",
    "exact": "exact",
    "ba": "refined_normal",
    "trna": "refined_normal",
    "ba+trna": "refined_normal",
}


def as_rows(probs: np.ndarray) -> np.ndarray:
    """``(B, C, *spatial)`` -> C-contiguous float32/float64 ``(B, C, d)``; copies only when needed."""
    if probs.dtype.itemsize == 2:  # float16, either byte order: Numba has no float16
        probs = probs.astype(np.float32)
    elif not probs.dtype.isnative:  # e.g. '>f4' from a file: Numba needs native byte order
        probs = probs.astype(probs.dtype.newbyteorder("="))
    b, c = probs.shape[:2]
    d = int(np.prod(probs.shape[2:]))
    return np.ascontiguousarray(probs.reshape(b, c, d))


def decide(p3: np.ndarray, cfg: Config) -> RowDecision:
    module = import_module(f".{SOLVER_MODULES[cfg.solver]}", __name__)
    return module.decide(p3, cfg)


def masks_from(p3: np.ndarray, decision: RowDecision) -> np.ndarray:
    b, c, d = p3.shape
    out = np.empty((b, c, d), dtype=np.bool_)
    _kernels.materialize(
        p3.reshape(b * c, d), decision.threshold.reshape(-1), decision.tie_end.reshape(-1), out.reshape(b * c, d)
    )
    return out


# Below this many probabilities one thread is faster: a parallel region costs
# tens of microseconds, and on a busy machine it waits for a descheduled
# worker (measured: 16 ms instead of 0.14 ms for one 256x256 image).
SERIAL_BELOW = 1 << 20


@contextmanager
def _threads_for(size: int):
    """One Numba thread for small inputs (the setting is per calling thread)."""
    before = numba.get_num_threads()
    if size >= SERIAL_BELOW or before == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def solve(probs: np.ndarray, cfg: Config) -> np.ndarray:
    """Run ``cfg`` on a validated-structure NumPy array; return masks or labels."""
    with _threads_for(probs.size):
        return _solve(probs, cfg)


def _solve(probs: np.ndarray, cfg: Config) -> np.ndarray:
    batch, n_cls = probs.shape[:2]
    spatial = probs.shape[2:]
    p3 = as_rows(probs)
    labels_shape = (batch,) + spatial
    if batch == 0:
        if cfg.output_mode == "multilabel":
            return np.zeros(probs.shape, dtype=np.bool_)
        return np.zeros(labels_shape, dtype=np.int64)
    if cfg.metric == "accuracy":
        return _accuracy(p3, cfg).reshape(probs.shape if cfg.output_mode == "multilabel" else labels_shape)
    decision = decide(p3, cfg)
    if cfg.output_mode == "multilabel":
        return masks_from(p3, decision).reshape(probs.shape)
    class_sums = np.zeros(4)  # checked in the claims pass: a channels-last array is not a batch
    labels = multiclass.resolve(p3, decision, cfg, class_sums)
    check_class_sums(int(class_sums[0]), int(class_sums[1]), class_sums[2], class_sums[3], probs)
    return labels.reshape(labels_shape)


def _accuracy(p3: np.ndarray, cfg: Config) -> np.ndarray:
    b, c, d = p3.shape
    _, _, bad = _kernels.row_stats(p3.reshape(b * c, d))
    if bad.any():
        raise_bad_values(p3)
    if cfg.solver == "tr":
        return p3 > 0.5
    labels = np.argmax(p3, axis=1).astype(np.int64, copy=False)
    if cfg.output_mode == "multiclass":
        return labels
    warnings.warn(
        "solver='argmax' with output_mode='multilabel' returns non-overlapping one-hot masks; "
        "use solver='TR' to threshold each class independently.",
        stacklevel=4,
    )
    return labels[:, None, :] == np.arange(c)[None, :, None]
