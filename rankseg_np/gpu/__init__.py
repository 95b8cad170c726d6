"""The GPU backend: CuPy arrays in, CuPy arrays out.

The algorithm (:mod:`rankseg_np.gpu._core`) is written once against an array
namespace and a small set of primitives (:mod:`rankseg_np.gpu._kernels`).  On
a GPU it runs with ``xp = cupy`` and fused CuPy kernels; in CI the same code
runs with ``xp = numpy`` (see :func:`solve_with`) and is compared with the
Numba CPU backend.

RMA (:mod:`rankseg_np.gpu._rma`) and the exact solver
(:mod:`rankseg_np.gpu._exact`) run on the device.  Solvers without a device
version (``'BA'``, ``'TRNA'``, ``'BA+TRNA'``; the capability table
:mod:`rankseg_np._solvers` marks them "host fallback") copy the probabilities
to the host once, take the CPU solver's per-row decision (O(B*C) numbers)
back, and materialise masks or labels on the device.
"""

from __future__ import annotations

import os
from typing import Any

from .._validate import Config
from . import _core
from ._kernels import CupyKernels, XpKernels

__all__ = ["solve", "solve_with", "kernels_for", "is_available"]

_FUSED_CACHE: dict[int, CupyKernels] = {}


def is_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device.

    Examples
    --------
    >>> from rankseg_np.gpu import is_available
    >>> isinstance(is_available(), bool)
    True
    """
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA library that fails to load
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def kernels_for(xp: Any, fused: bool | None = None) -> XpKernels:
    """The primitives for namespace ``xp``: fused CuPy kernels, or the array-code fallback.

    ``fused=None`` means fused on CuPy unless the environment variable
    ``RANKSEG_NP_GPU_FUSED=0`` is set; NumPy always uses the fallback.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np.gpu import kernels_for
    >>> kernels_for(np).fused
    False
    """
    is_cupy = getattr(xp, "__name__", "") == "cupy"
    if fused is None:
        fused = is_cupy and os.environ.get("RANKSEG_NP_GPU_FUSED", "1") != "0"
    if not fused:
        return XpKernels(xp)
    if not is_cupy:
        raise ValueError("fused=True needs xp=cupy; fused kernels exist only for CuPy")
    key = id(xp)
    if key not in _FUSED_CACHE:
        _FUSED_CACHE[key] = CupyKernels(xp)
    return _FUSED_CACHE[key]


def solve_with(probs: Any, cfg: Config, xp: Any, fused: bool | None = None) -> Any:
    """Run the GPU algorithm with namespace ``xp`` on ``probs`` of that namespace.

    This is the entry the tests use to run the GPU code on NumPy.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np._validate import check_config
    >>> from rankseg_np.gpu import solve_with
    >>> probs = np.array([[[0.9, 0.6, 0.4, 0.1]]])
    >>> solve_with(probs, check_config(1, output_mode="multilabel"), np)
    array([[[ True,  True,  True, False]]])
    """
    return _core.solve(probs, cfg, xp, kernels_for(xp, fused))


def solve(probs: Any, cfg: Config) -> Any:
    """Solve on the GPU for a CuPy array; returns a CuPy array on the same device.

    Parameters
    ----------
    probs : cupy.ndarray, shape (B, C, \\*spatial)
        Structure already validated (see ``rankseg_np._validate``).
    cfg : Config
        Validated arguments.

    Returns
    -------
    cupy.ndarray
        Bool masks ``(B, C, *spatial)`` or int64 labels ``(B, *spatial)``.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np.gpu import is_available
    >>> if is_available():  # doctest: +SKIP
    ...     import cupy
    ...     from rankseg_np import rankseg
    ...     labels = rankseg(cupy.asarray(np.random.rand(2, 3, 8, 8)))
    """
    import cupy

    with probs.device:
        return _core.solve(probs, cfg, cupy, kernels_for(cupy))
