"""The CPU executor: NumPy arrays in, Numba kernels, NumPy arrays out.

Each solver family lives in its own module (named in the capability table,
:mod:`rankseg_np._solvers`) and exposes ``decide(p3, cfg) -> RowDecision`` on
a C-contiguous float32/float64 ``(B, C, d)`` array; the shared pipeline
(:mod:`rankseg_np._pipeline`) turns decisions into masks or labels with the
kernels here.  The names in ``__all__`` are the CPU's public kernels, which
the Dask executor builds on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numba
import numpy as np

from .. import _pipeline
from .._decision import RowDecision
from .._validate import Config, raise_bad_values
from . import _kernels, multiclass
from ._threads import serial_here
from ._kernels import materialize, sum_above

__all__ = ["EXECUTOR", "as_rows", "masks_from", "materialize", "solve", "sum_above"]


def as_rows(probs: np.ndarray) -> np.ndarray:
    """``(B, C, *spatial)`` -> C-contiguous float32/float64 ``(B, C, d)``; copies only when needed."""
    if not probs.dtype.isnative:  # e.g. '>f4' from a file: Numba needs native byte order
        probs = probs.astype(probs.dtype.newbyteorder("="))
    b, c = probs.shape[:2]
    d = int(np.prod(probs.shape[2:]))
    if probs.dtype.itemsize == 2:  # float16: Numba has none, so decode the bits to float32
        half = np.ascontiguousarray(probs).reshape(b, c, d)
        out = np.empty((b, c, d), dtype=np.float32)
        _kernels.half_to_single(half.view(np.uint16).reshape(-1), out.reshape(-1))
        return out
    return np.ascontiguousarray(probs.reshape(b, c, d))


def masks_from(p3: np.ndarray, decision: RowDecision) -> np.ndarray:
    """Boolean masks ``(B, C, d)`` of a decision (see :mod:`rankseg_np._decision`)."""
    b, c, d = p3.shape
    out = np.empty((b, c, d), dtype=np.bool_)
    materialize(
        p3.reshape(b * c, d), decision.threshold.reshape(-1), decision.tie_end.reshape(-1), out.reshape(b * c, d)
    )
    return out


class _CpuExecutor:
    """The CPU's operations for :func:`rankseg_np._pipeline.run`."""

    name = "cpu"
    xp = np

    rows = staticmethod(as_rows)
    masks = staticmethod(masks_from)

    @staticmethod
    def labels(p3: np.ndarray, decision: RowDecision, cfg: Config) -> tuple[np.ndarray, _pipeline.ClassSums]:
        """Labels (MATH 5); the claims pass also checks every pixel's class sum (it is in cache)."""
        sums = np.zeros(4)
        labels = multiclass.resolve(p3, decision, cfg, sums)
        return labels, _pipeline.ClassSums(int(sums[0]), int(sums[1]), float(sums[2]), float(sums[3]))

    @staticmethod
    def check_values(p3: np.ndarray) -> np.ndarray:
        b, c, d = p3.shape
        _, _, bad = _kernels.row_stats(p3.reshape(b * c, d))
        if bad.any():
            raise_bad_values(p3)
        return p3

    @staticmethod
    def decide(module: Any, p3: np.ndarray, cfg: Config) -> RowDecision:
        return module.decide(p3, cfg)

    @staticmethod
    def decide_masks(module: Any, p3: np.ndarray, cfg: Config) -> np.ndarray | None:
        """Masks from a solver that writes each row's mask in its row task (``module.masks``), else None."""
        fused = getattr(module, "masks", None)
        return None if fused is None else fused(p3, cfg)

    @staticmethod
    def whole_images(p3: np.ndarray, cfg: Config) -> None:
        return None  # in memory, every image is whole: the solver runs natively

    @staticmethod
    def reshape(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return out.reshape(shape)

    to_host = from_host = None  # every solver is native on the CPU


EXECUTOR = _CpuExecutor()

# Below this many probabilities the kernels run serially (their serial twins,
# cpu._threads.serial_here): a parallel region costs tens of microseconds, and
# on a busy machine it waits for a descheduled worker; the serial twins also
# compile several times faster, which is what a first call in a fresh
# environment pays.  Chosen from ``benchmarks/bench_threads.py`` on the
# project's shared 2-core machine: quiet (load 1), two threads won from 2^18
# values (about 2x); busy (load 7), they lost up to 8x at 2^20 and first won
# at 2^22.  2^21 keeps the loss on a quiet machine within the thread count's
# factor and the default demo batch (2^20) off the parallel path.
SERIAL_BELOW = 1 << 21


@contextmanager
def _threads_for(size: int):
    """Serial kernels for inputs of fewer than SERIAL_BELOW values (or when Numba has one thread)."""
    if size >= SERIAL_BELOW and numba.get_num_threads() > 1:
        yield
        return
    with serial_here():
        yield


def solve(probs: np.ndarray, cfg: Config) -> np.ndarray:
    """Masks or labels for a validated-structure NumPy array ``(B, C, *spatial)``."""
    with _threads_for(probs.size):
        return _pipeline.run(EXECUTOR, probs, cfg)
