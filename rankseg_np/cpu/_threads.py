"""Process and thread safety of the parallel Numba kernels, in one place.

Numba runs ``parallel=True`` kernels on a *threading layer* chosen once per
process (``numba.threading_layer()``); the layers differ in what they survive
(Numba's "The Threading Layers" documentation):

=============  ==================================  =====================================
layer          two Python threads at once          a ``fork`` after a parallel kernel
=============  ==================================  =====================================
``tbb``        safe                                safe
``omp``        safe                                GNU OpenMP (Linux): the child is
                                                   killed ("fork() called from a process
                                                   already using GNU OpenMP"), so a
                                                   ``multiprocessing`` pool hangs
``workqueue``  aborts ("Concurrent access has      safe
               been detected")
=============  ==================================  =====================================

The library chooses no layer for the user (that is a process-wide setting
which the user's own Numba code shares); instead every parallel kernel is a
:class:`ParallelKernel`, which

* in a process forked after the parent ran a kernel on GNU OpenMP, runs a
  serial twin of the kernel (the same Python source compiled without
  ``parallel``: ``prange`` becomes ``range``, so the answer is the same; the
  kernels never depend on the thread count), and
* on the ``workqueue`` layer (or before any layer is loaded, when the first
  launch picks one), holds one process-wide lock while the kernel runs, so
  concurrent callers queue instead of aborting.  Each call still uses all
  of Numba's threads, so throughput is unchanged; ``omp`` and ``tbb`` take
  no lock.

Dask's chunk tasks call the same kernels and so get the same guarantees.
"""

from __future__ import annotations

import os
import threading
import types
from contextlib import contextmanager
from typing import Any, Callable

import numba

# One lock for the whole process: the workqueue layer has one global queue.
# Re-entrant so that a caller may hold it around several kernels (see launch_lock).
_LAUNCH_LOCK = threading.RLock()
_state = {"layer": None, "serial": False}
# Per calling thread: run the serial twins (see serial_here).
_local = threading.local()

# Layers on which two threads may launch parallel regions at once.
_THREADSAFE_LAYERS = ("omp", "tbb")


def _layer() -> str | None:
    """The loaded threading layer, or None before the first parallel launch."""
    layer = _state["layer"]
    if layer is None:
        try:
            layer = _state["layer"] = numba.threading_layer()
        except ValueError:  # "Threading layer is not initialized."
            return None
    return layer


def _after_fork_in_child() -> None:
    # GNU OpenMP's thread pool does not survive fork: Numba kills a child that
    # enters a parallel region.  Other layers (tbb, workqueue, Intel/LLVM
    # OpenMP) are fork-safe, and a parent that never launched a kernel lets
    # the child load its own layer.
    if _layer() == "omp":
        from numba.np.ufunc import omppool

        if getattr(omppool, "openmp_vendor", "GNU") == "GNU":
            _state["serial"] = True
    # A lock held by another thread at fork time stays held in the child.
    global _LAUNCH_LOCK
    _LAUNCH_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def serial_only() -> bool:
    """True in a forked child that must not enter a parallel region."""
    return _state["serial"]


@contextmanager
def serial_here():
    """Within this block, this thread runs every kernel's serial twin.

    For small inputs: one thread is faster than a parallel region (which on a
    busy machine waits for a descheduled worker), and the serial twin
    compiles several times faster than the parallel kernel, so a first small
    call in a fresh environment does not pay for the parallel compilation.
    The answer is the same either way (``prange`` runs as ``range``).

    Examples
    --------
    >>> from rankseg_np.cpu._threads import serial_here
    >>> with serial_here():
    ...     pass
    """
    before = getattr(_local, "serial", False)
    _local.serial = True
    try:
        yield
    finally:
        _local.serial = before


def launch_lock():
    """The lock to hold while a parallel kernel runs: the process-wide lock on
    the workqueue layer (or before any layer is loaded), else a no-op.

    Examples
    --------
    >>> from rankseg_np.cpu._threads import launch_lock
    >>> with launch_lock():
    ...     pass
    """
    if _layer() in _THREADSAFE_LAYERS:
        return _NO_LOCK
    return _LAUNCH_LOCK


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_NO_LOCK = _NoLock()


class ParallelKernel:
    """A ``parallel=True`` Numba kernel that is safe in threads and forked children.

    Call it like the kernel.  ``parallel`` is the compiled parallel
    dispatcher; the serial twin is compiled on first use in a forked child or
    under :func:`serial_here` (under its own cache name, so the two never
    share a cache entry).
    """

    def __init__(self, func: Callable, **options: Any) -> None:
        self.py_func = func
        self._options = options
        self.parallel = numba.njit(parallel=True, **options)(func)
        self._serial = None
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__module__ = func.__module__
        self.__wrapped__ = func

    @property
    def serial(self):
        """The same kernel compiled without ``parallel`` (``prange`` runs as ``range``)."""
        if self._serial is None:
            f = self.py_func
            twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
            twin.__qualname__ = f.__qualname__ + "_serial"
            twin.__module__ = f.__module__
            twin.__doc__ = f.__doc__
            self._serial = numba.njit(**self._options)(twin)
        return self._serial

    def __call__(self, *args: Any) -> Any:
        if _state["serial"] or getattr(_local, "serial", False):
            return self.serial(*args)
        with launch_lock():
            return self.parallel(*args)

    def __repr__(self) -> str:
        return f"ParallelKernel({self.__module__}.{self.__qualname__})"


def parallel_kernel(**options: Any) -> Callable[[Callable], ParallelKernel]:
    """Decorator: ``@parallel_kernel(cache=True)`` in place of ``@njit(parallel=True, cache=True)``.

    Examples
    --------
    >>> import numpy as np
    >>> from numba import prange
    >>> from rankseg_np.cpu._threads import parallel_kernel
    >>> @parallel_kernel()
    ... def double(x, out):
    ...     for i in prange(x.size):
    ...         out[i] = 2 * x[i]
    >>> out = np.empty(3)
    >>> double(np.arange(3.0), out)
    >>> out
    array([0., 2., 4.])
    """

    def wrap(func: Callable) -> ParallelKernel:
        return ParallelKernel(func, **options)

    return wrap
