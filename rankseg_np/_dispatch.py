"""Array type -> backend, in one place.

``prepare(probs)`` looks only at the type of ``probs`` (its module, as
opt_einsum's dispatch does) and returns ``(native, solve, restore)``: the
array in the backend's own type, the backend's ``solve(native, cfg)``, and a
function that turns the backend's answer back into the caller's array type
and device.  Solver code never knows which framework the caller uses, and no
framework is imported unless ``probs`` comes from it.

=====================================  =====================================================
input                                  route
=====================================  =====================================================
``numpy.ndarray``                      CPU (Numba), NumPy out; a process's first small
                                       calls run in NumPy (``rankseg_np._first_calls``)
``cupy.ndarray``                       GPU (CuPy), CuPy out, same device
``dask.array.Array``                   ``rankseg_np.dask.solve`` (lazy Dask array out)
``torch.Tensor``                       DLPack -> NumPy (CPU) or CuPy (CUDA), zero-copy;
                                       back with ``torch.from_numpy`` / ``torch.from_dlpack``
``jax.Array``                          DLPack -> NumPy / CuPy; back with ``jax.device_put`` /
                                       ``jax.dlpack.from_dlpack`` on the same device
``tensorflow.Tensor`` (eager)          ``.numpy()`` (CPU) or DLPack -> CuPy (GPU); back as
                                       a ``tf.Tensor`` on the same device
array-API / ``__dlpack__`` arrays      DLPack -> NumPy / CuPy; back with the array's own
(e.g. ``array_api_strict``)            namespace (``asarray`` / ``from_dlpack``)
=====================================  =====================================================

Output dtypes are those of the NumPy path (bool masks, int64 labels), except
JAX without ``jax_enable_x64``, which has no int64: labels come back int32.
bfloat16 inputs (PyTorch, JAX, TensorFlow) are upcast to float32 first (a
copy), since NumPy and CuPy have no bfloat16.  The caller's array is never
modified: tensors that require grad are detached (no copy), read-only and
non-contiguous inputs are read as they are, and a backend copies only when it
needs a contiguous layout.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import _first_calls

Solve = Callable[[Any, Any], Any]
Restore = Callable[[Any], Any]

ACCEPTED = (
    "numpy.ndarray, cupy.ndarray, dask.array.Array, torch.Tensor, jax.Array, "
    "tensorflow.Tensor, or any array supporting DLPack (__dlpack__), such as array-API arrays"
)

# DLPack device types (dlpack.h, DLDeviceType).
_DL_CPU = 1
_DL_CUDA = 2
_DL_CUDA_HOST = 3
_DL_ROCM = 10
_DL_CUDA_MANAGED = 13
_HOST_DEVICES = (_DL_CPU, _DL_CUDA_HOST)
_GPU_DEVICES = (_DL_CUDA, _DL_ROCM, _DL_CUDA_MANAGED)

# Objects that are array-like but not arrays: say what to pass instead.
_HINTS = {
    "pandas": "pass df.to_numpy() reshaped to (batch, classes, *spatial)",
    "polars": "pass df.to_numpy() reshaped to (batch, classes, *spatial)",
    "xarray": "pass the underlying array (da.data or da.values)",
    "onnxruntime": "pass the NumPy array from session.run(...) or OrtValue.numpy()",
    "PIL": "convert with numpy.asarray(image) and build (batch, classes, *spatial) probabilities",
}


def _identity(x: Any) -> Any:
    return x


def _module_root(obj: Any) -> str:
    return (type(obj).__module__ or "").partition(".")[0]


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _unsupported(probs: Any, hint: str = "") -> TypeError:
    extra = f" ({hint})" if hint else ""
    return TypeError(f"probs must be an array: {ACCEPTED}; got {_type_name(probs)}{extra}")


def _require_cupy(what: str):
    try:
        import cupy
    except ImportError:
        raise ImportError(
            f"{what} lives on a GPU; rankseg_np needs CuPy for GPU arrays: pip install cupy-cuda12x"
        ) from None
    return cupy


# --------------------------------------------------------------------------- #
# Backends
# --------------------------------------------------------------------------- #

def _cpu_solve(native: np.ndarray, cfg: Any) -> np.ndarray:
    if _first_calls.ACCOUNT.rent(native.size, cfg.solver):
        # Small first calls of a process: the array-namespace executor on NumPy,
        # which compiles nothing (see rankseg_np._first_calls).
        from . import gpu

        return gpu.solve_with(native, cfg, np)
    from . import cpu

    return cpu.solve(native, cfg)


def _gpu_solve(native: Any, cfg: Any) -> Any:
    from . import gpu

    return gpu.solve(native, cfg)


def _dask_solve(native: Any, cfg: Any) -> Any:
    # Hook for the Dask backend (rankseg_np/dask.py): imported only for Dask input.
    from . import dask as dask_backend

    return dask_backend.solve(native, cfg)


def _solver_for(native: Any) -> Solve:
    """NumPy arrays go to the CPU, CuPy arrays to the GPU (after a DLPack import)."""
    return _cpu_solve if isinstance(native, np.ndarray) else _gpu_solve


def _import_dlpack(obj: Any, device_type: int, what: str) -> Any:
    """``obj`` (anything with ``__dlpack__``) as a NumPy or CuPy array, zero-copy."""
    try:
        if device_type in _HOST_DEVICES:
            return np.from_dlpack(obj)
        if device_type in _GPU_DEVICES:
            return _require_cupy(what).from_dlpack(obj)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise TypeError(
            f"probs ({what}) could not be read through DLPack: {exc}. "
            "rankseg_np accepts float16, float32 or float64 arrays"
        ) from exc
    raise TypeError(
        f"probs ({what}) is on a DLPack device of type {device_type}; rankseg_np reads arrays on the "
        "CPU (NumPy) or on CUDA/ROCm GPUs (CuPy); move it to one of those first"
    )


# --------------------------------------------------------------------------- #
# Framework adapters: each returns (native, solve, restore)
# --------------------------------------------------------------------------- #

def _prepare_numpy(probs: np.ndarray):
    if isinstance(probs, np.matrix):
        raise _unsupported(probs, "np.matrix is 2-D only; use a plain (batch, classes, *spatial) ndarray")
    if isinstance(probs, np.ma.MaskedArray):
        raise _unsupported(probs, "the mask would be ignored; pass probs.filled(0.0) or probs.data")
    native = probs if type(probs) is np.ndarray else probs.view(np.ndarray)
    return native, _cpu_solve, _identity


def _prepare_torch(probs: Any):
    import torch

    if not isinstance(probs, torch.Tensor):
        raise _unsupported(probs)
    if probs.layout != torch.strided:
        raise _unsupported(probs, f"{probs.layout} tensors are not supported; call .to_dense() first")
    if probs.device.type == "meta":
        raise _unsupported(probs, "meta tensors have no data")
    x = probs.detach()  # a view: never copies, never touches autograd state of the input
    if x.dtype == torch.bfloat16:
        x = x.to(torch.float32)  # NumPy/CuPy have no bfloat16: upcast (a copy)
    device = probs.device
    if device.type == "cpu":
        native = _import_dlpack(x, _DL_CPU, "a CPU torch.Tensor")
        return native, _cpu_solve, torch.from_numpy
    if device.type == "cuda":
        native = _import_dlpack(x, _DL_CUDA, "a CUDA torch.Tensor")
        return native, _gpu_solve, torch.from_dlpack
    # Other devices (mps, xpu, ...): no DLPack route to NumPy/CuPy; go through the host.
    native = x.cpu().numpy()
    return native, _cpu_solve, lambda out: torch.from_numpy(out).to(device)


def _prepare_jax(probs: Any):
    import jax
    import jax.numpy as jnp

    if isinstance(probs, jax.core.Tracer) or not isinstance(probs, jax.Array):
        raise _unsupported(
            probs, "a traced JAX value: call rankseg outside jax.jit / vmap / grad, on concrete arrays"
        )
    x = probs
    if x.dtype == jnp.bfloat16:
        x = x.astype(jnp.float32)  # NumPy/CuPy have no bfloat16: upcast (a copy)
    devices = list(x.devices())
    device = devices[0] if len(devices) == 1 else None
    platform = device.platform if device is not None else "cpu"
    # JAX without jax_enable_x64 has no int64: return int32 labels rather than
    # let JAX truncate with a warning.
    label_dtype = jax.dtypes.canonicalize_dtype(np.int64)

    if platform in ("gpu", "cuda", "rocm"):
        native = _import_dlpack(x, _DL_CUDA if platform != "rocm" else _DL_ROCM, "a GPU jax.Array")

        def restore_gpu(out):
            if out.dtype == np.int64 and label_dtype != np.int64:
                out = out.astype(label_dtype)
            return jax.dlpack.from_dlpack(out)

        return native, _gpu_solve, restore_gpu

    if device is not None and platform == "cpu":
        try:
            native = np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            native = np.asarray(x)
    else:  # sharded over several devices, or TPU: gather on the host
        native = np.asarray(x)

    def restore_host(out):
        if out.dtype == np.int64 and label_dtype != np.int64:
            out = out.astype(label_dtype)
        return jax.device_put(out, device) if device is not None else jnp.asarray(out)

    return native, _cpu_solve, restore_host


def _prepare_tensorflow(probs: Any):
    import tensorflow as tf

    if isinstance(probs, tf.Variable):
        probs = tf.convert_to_tensor(probs)
    if not isinstance(probs, tf.Tensor) or not hasattr(probs, "numpy"):
        raise _unsupported(probs, "a symbolic TensorFlow tensor: call rankseg eagerly, outside tf.function")
    x = probs
    if x.dtype == tf.bfloat16:
        x = tf.cast(x, tf.float32)  # NumPy/CuPy have no bfloat16: upcast (a copy)
    device = x.device
    if ":GPU:" in device.upper():
        cupy = _require_cupy("a GPU tf.Tensor")
        capsule = tf.experimental.dlpack.to_dlpack(x)
        try:
            native = cupy.from_dlpack(capsule)
        except TypeError:  # CuPy versions that only take legacy capsules through fromDlpack
            native = cupy.fromDlpack(capsule)

        def restore_gpu(out):
            with tf.device(device):
                return tf.experimental.dlpack.from_dlpack(out.toDlpack())

        return native, _gpu_solve, restore_gpu

    def restore_host(out):
        with tf.device(device):
            return tf.convert_to_tensor(out)

    return x.numpy(), _cpu_solve, restore_host


def _prepare_dlpack(probs: Any):
    """Any other array with ``__dlpack__``: back through its own array namespace when it has one."""
    device_type = _DL_CPU
    if hasattr(probs, "__dlpack_device__"):
        device_type = int(probs.__dlpack_device__()[0])
    native = _import_dlpack(probs, device_type, _type_name(probs))
    solve = _solver_for(native)

    namespace = getattr(probs, "__array_namespace__", None)
    if namespace is None:
        # No way to build the caller's type: return the NumPy (host) or CuPy (device) answer.
        return native, solve, _identity
    xp = namespace()
    device = getattr(probs, "device", None)

    def restore(out):
        if _module_root(probs) == "array_api_strict" or not hasattr(xp, "from_dlpack"):
            return xp.asarray(out, device=device) if device is not None else xp.asarray(out)
        try:
            result = xp.from_dlpack(out)
        except (BufferError, RuntimeError, TypeError, ValueError):
            result = xp.asarray(out)
        if device is not None and hasattr(result, "to_device") and getattr(result, "device", None) != device:
            result = result.to_device(device)
        return result

    return native, solve, restore


def _prepare_cupy(probs: Any):
    return probs, _gpu_solve, _identity


def _prepare_dask(probs: Any):
    if not type(probs).__module__.startswith("dask.array"):
        raise _unsupported(probs, "only dask.array.Array is accepted from Dask")
    return probs, _dask_solve, _identity


# Module root of the input's type -> adapter.  Checked by name only, so a
# framework is imported only when probs comes from it.
_BY_MODULE: dict[str, Callable[[Any], tuple[Any, Solve, Restore]]] = {
    "cupy": _prepare_cupy,
    "dask": _prepare_dask,
    "torch": _prepare_torch,
    "jax": _prepare_jax,
    "jaxlib": _prepare_jax,
    "tensorflow": _prepare_tensorflow,
}


def backend_of(probs: Any) -> str:
    """Name of the route ``probs`` takes: 'numpy', 'cupy', 'dask', 'torch', 'jax', 'tensorflow' or 'dlpack'.

    Raises ``TypeError`` for anything that is not an accepted array.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np._dispatch import backend_of
    >>> backend_of(np.zeros((1, 2, 3)))
    'numpy'
    >>> backend_of([[0.5]])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: probs must be an array: ...; got list (convert it with numpy.asarray(...))
    """
    if isinstance(probs, np.ndarray):
        if isinstance(probs, (np.matrix, np.ma.MaskedArray)):
            _prepare_numpy(probs)  # raises with a hint
        return "numpy"
    root = _module_root(probs)
    adapter = _BY_MODULE.get(root)
    if adapter is not None:
        return adapter.__name__.removeprefix("_prepare_")
    if root in _HINTS:
        raise _unsupported(probs, _HINTS[root])
    if root == "builtins" or probs is None:
        hint = "convert it with numpy.asarray(...)" if isinstance(probs, (list, tuple)) else ""
        raise _unsupported(probs, hint)
    if callable(getattr(type(probs), "__dlpack__", None)):
        return "dlpack"
    raise _unsupported(probs, "convert it with numpy.asarray(...)" if hasattr(probs, "__array__") else "")


def prepare(probs: Any) -> tuple[Any, Solve, Restore]:
    """Pick the backend for ``probs`` by its type; see the module docstring for the routes.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np._dispatch import prepare
    >>> native, solve, restore = prepare(np.zeros((1, 2, 3)))
    >>> type(native).__name__
    'ndarray'
    """
    route = backend_of(probs)
    if route == "numpy":
        return _prepare_numpy(probs)
    if route == "dlpack":
        return _prepare_dlpack(probs)
    return _BY_MODULE[_module_root(probs)](probs)


def array_module(native: Any) -> Any:
    """The namespace of a backend-native array: ``numpy`` for NumPy, ``cupy`` for CuPy.

    Code written once against ``xp`` (calibration, evaluation) uses this to run
    on the host or on the GPU without importing CuPy itself.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np._dispatch import array_module
    >>> array_module(np.zeros(3)).__name__
    'numpy'
    """
    if isinstance(native, np.ndarray):
        return np
    if _module_root(native) == "cupy":
        return _require_cupy("a CuPy array")
    raise TypeError(f"expected a NumPy or CuPy array; got {_type_name(native)}")
