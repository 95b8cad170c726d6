"""Shared fixtures and Hypothesis strategies for the comparison suite."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings

from rankseg_np import _first_calls

# The suite tests each engine where it says so: the Numba kernels through
# rankseg(), the NumPy code of a process's first calls in test_first_calls.py
# (and test_matrix.py, as the array-namespace executor).
_first_calls.ACCOUNT.stop()

# Numba compiles on first use; the first example of a property test can be slow.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)
