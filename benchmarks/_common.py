"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import time

import numpy as np

import rankseg_np

# Benchmarks time the Numba kernels a long run uses, not the NumPy code that
# answers a process's first small calls (see rankseg_np._first_calls).
rankseg_np.use_numba()


def softmax_probs(shape, seed=0, scale=3.0):
    """float32 softmax over axis 1 of N(0, scale^2) logits, built in place (one array of memory)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def best_time(fn, repeat=3):
    """Best wall time of ``repeat`` calls after one warm-up call (Numba compiles on the warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
