"""Shared fixtures and Hypothesis strategies for the comparison suite."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings

import rankseg_np

# The suite tests each engine where it says so: the Numba kernels through
# rankseg(), the NumPy code of a process's first calls in test_first_calls.py
# (and test_matrix.py, as the array-namespace executor).
rankseg_np.use_numba()

# Numba compiles on first use; the first example of a property test can be slow.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)
