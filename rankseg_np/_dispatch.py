"""Array type -> backend, in one place.

``prepare(probs)`` looks only at the type (its module) of ``probs`` and returns
``(native, solve, restore)``: the array in the backend's own type, the
backend's ``solve(native, cfg)``, and a function that turns the backend's
answer back into the caller's array type and device.  Solver code never knows
which framework the caller uses.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

Solve = Callable[[Any, Any], Any]
Restore = Callable[[Any], Any]

ACCEPTED = (
    "numpy.ndarray, cupy.ndarray, dask.array.Array, torch.Tensor, jax.Array, "
    "tensorflow.Tensor, or any array supporting __dlpack__ / the array API"
)


def _identity(x: Any) -> Any:
    return x


def _cpu_solve(native: np.ndarray, cfg: Any) -> np.ndarray:
    from . import cpu

    return cpu.solve(native, cfg)


def prepare(probs: Any) -> tuple[Any, Solve, Restore]:
    """Pick the backend for ``probs`` by its type."""
    if isinstance(probs, np.ndarray) and type(probs) is not np.matrix:
        return probs, _cpu_solve, _identity
    raise TypeError(f"probs must be an array ({ACCEPTED}); got {type(probs).__module__}.{type(probs).__name__}")
