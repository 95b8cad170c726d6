"""Baselines for timing tables: the cost of reading the input once.

Used by ``rankseg-np bench`` and ``benchmarks/bench_rma.py``; not part of the
solvers.  ``np.argmax(probs, axis=1)`` is a weak yardstick (single-threaded,
strided over classes), so the tables also divide by :func:`argmax_once`: a
parallel Numba argmax over classes that reads every probability exactly once
(tiles of pixels of one image, classes in the inner loop, vectorised), the
cheapest pass any method that looks at every value can make.  Like the
solvers, it runs on one thread below ``rankseg_np.cpu.SERIAL_BELOW`` values.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from numba import njit, prange

from ..cpu import SERIAL_BELOW
from ..cpu._threads import parallel_kernel

TILE = 2048  # pixels per task: TILE * C values stay in the L2 cache


@njit(cache=True, nogil=True)
def _argmax_tile(p3, b, i0, i1, best, arg, out):
    n = i1 - i0
    first = p3[b, 0, i0:i1]  # slices indexed from 0: the loops vectorise
    for j in range(n):
        best[j] = first[j]
        arg[j] = 0
    for c in range(1, p3.shape[1]):
        row = p3[b, c, i0:i1]
        for j in range(n):
            v = row[j]
            gt = v > best[j]  # first maximum wins, like np.argmax (inputs hold no NaN)
            best[j] = v if gt else best[j]
            arg[j] = c if gt else arg[j]
    o = out[b, i0:i1]
    for j in range(n):
        o[j] = arg[j]


@parallel_kernel(cache=True)
def _argmax_rows(p3, out):
    n_img, _, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        i1 = min(d, i0 + TILE)
        best = np.empty(i1 - i0, dtype=p3.dtype)
        arg = np.empty(i1 - i0, dtype=np.int32)
        _argmax_tile(p3, b, i0, i1, best, arg, out)


def argmax_once(probs: np.ndarray) -> np.ndarray:
    """Labels ``argmax(probs, axis=1)`` (int64) in one parallel read of a float32/float64 array.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np.cli._baseline import argmax_once
    >>> p = np.array([[[0.2, 0.7], [0.8, 0.3]]], dtype=np.float32)
    >>> argmax_once(p)
    array([[1, 0]])
    """
    if probs.dtype not in (np.float32, np.float64):
        raise TypeError(f"argmax_once reads float32 or float64; got {probs.dtype}")
    b, c = probs.shape[:2]
    p3 = np.ascontiguousarray(probs).reshape(b, c, -1)
    out = np.empty((b, p3.shape[2]), dtype=np.int64)
    # One thread below the size where the solvers switch to one thread too (cpu.SERIAL_BELOW).
    kernel = _argmax_rows if p3.size >= SERIAL_BELOW else _argmax_rows.serial
    kernel(p3, out)
    return out.reshape((b,) + probs.shape[2:])


def best_time(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time (seconds) of ``repeat`` calls after one warm-up call (compilation excluded)."""
    fn()
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_times(
    cases: list[tuple[str, Callable[[], Any]]],
    repeat: Callable[[str], int],
    yardstick: str,
    timer: Callable[[Callable[[], Any], int], float] | None = None,
) -> dict[str, float]:
    """Best times (seconds) of named cases, the ``yardstick`` case timed again after every other.

    The yardstick keeps its best time over the whole table: on a shared
    machine its best of a few runs moved between 2.3 and 5.2 ms from one run
    of ``benchmarks/bench_rma.py`` to the next, and one slow set of yardstick
    runs would flatter every ratio of the table.  ``repeat(name)`` gives each
    case's number of timed calls (after one warm-up call); ``timer(fn, n)``
    times them (default :func:`best_time`, wall clock).
    """
    timer = timer or best_time
    times: dict[str, float] = {}
    again = dict(cases)[yardstick]
    for name, fn in cases:
        times[name] = timer(fn, repeat(name))
        if name != yardstick and yardstick in times:
            times[yardstick] = min(times[yardstick], timer(again, repeat(yardstick)))
    return times
