"""Which engine answers the first NumPy calls of a process: NumPy now, or Numba after compiling.

Numba compiles a solver's kernels on their first call, once per environment
(they are then cached on disk): about 4 s for RMA in a fresh environment
(new container, CI job, a user's first try), and still about 0.5 s to load
them from the disk cache in every new process.  Until then the same decision
is available without compiling: the array-namespace executor
(:mod:`rankseg_np.gpu`, which runs the GPU algorithm on any namespace) on
NumPy, at about 15-70 ns per probability on one core (0.3 ms for a tiny
call) against Numba's few.  These figures are measured by
``benchmarks/bench_cold_start.py`` (``benchmarks/results/bench_cold_start.md``).

So a process starts by *renting*: it answers RMA and accuracy calls with the
NumPy code while those calls stay small, and *buys* (compiles or loads the
Numba kernels) once its calls have added up to about the cost of buying.  This
is the ski-rental rule, which never pays more than about twice the better of
the two choices made in hindsight:

* every call is charged its number of probabilities, and at least
  ``MIN_CHARGE`` (NumPy's fixed cost per call);
* calls are rented while the total stays within ``BUDGET`` (about 0.1-0.6 s
  of NumPy work: the cost of loading the kernels from the disk cache, and a
  fraction of a fresh compilation);
* one call of more than ``AT_MOST`` probabilities, or the first call that
  would exceed the budget, buys: from then on every call uses Numba;
* other solvers (exact, BA, TRNA) always use Numba, and empty batches run no
  kernel; neither ends renting.

Both engines implement MATH sections 4-5 with float64 sums and the same tie
rules, and the test suite compares each with the reference
(``tests/test_matrix.py``) and with each other (``tests/test_first_calls.py``).
Their sums are accumulated in different orders, so, as between any two
executors (CPU, GPU, Dask), a pixel lying within float64 rounding (~1e-16,
relative) of a row's cut may fall on different sides; the cut already sits
``TIE_SLACK`` (1e-12) above exact ties, so this takes values placed there on
purpose.  The routing
depends only on the sizes of the earlier calls, never on time, so a program's
answers are reproducible.

:func:`use_numba` (public as ``rankseg_np.use_numba``), or the environment
variable ``RANKSEG_NP_FIRST_CALLS=numba`` set before importing rankseg_np,
turns renting off: every call uses Numba.  The CLI's ``demo`` and ``bench``
do the same, since they time the kernels a long run uses.
"""

from __future__ import annotations

import os
import threading

# Probabilities: the budget of rented calls in all, the largest call rented,
# and the least a call is charged (a tiny call costs about what 2^12
# probabilities do).  See the module docstring for the measurements behind
# them.  AT_MOST also bounds the NumPy code's temporaries (up to ~4x the input
# for two classes, about 1x for many).
BUDGET = 1 << 23
AT_MOST = 1 << 22
MIN_CHARGE = 1 << 12

# Solvers whose NumPy version is fast enough to rent (the capability table's keys).
RENTED_SOLVERS = frozenset({"rma", "argmax", "tr"})


class FirstCalls:
    """Thread-safe renting account of one process (see the module docstring).

    Examples
    --------
    >>> account = FirstCalls(budget=100_000, at_most=50_000, min_charge=10_000)
    >>> account.rent(40_000, "rma"), account.rent(40_000, "rma")
    (True, True)
    >>> account.rent(40_000, "rma")  # over the budget: buy
    False
    >>> account.rent(10, "rma")  # bought: Numba from now on
    False
    """

    def __init__(
        self, budget: int = BUDGET, at_most: int = AT_MOST, min_charge: int = MIN_CHARGE, renting: bool = True
    ) -> None:
        self.budget = budget
        self.at_most = at_most
        self.min_charge = min_charge
        self.spent = 0
        self.renting = renting
        self._lock = threading.Lock()

    def rent(self, size: int, solver: str) -> bool:
        """True when a call of ``size`` probabilities for ``solver`` should run in NumPy (and charge it)."""
        if solver not in RENTED_SOLVERS or size == 0:  # an empty batch runs no kernel either way
            return False
        with self._lock:
            if not self._fits(size):
                self.renting = False
                return False
            self.spent += max(int(size), self.min_charge)
            return True

    def would_rent(self, size: int, solver: str) -> bool:
        """What :meth:`rent` would answer now, without charging anything."""
        with self._lock:
            return solver in RENTED_SOLVERS and size > 0 and self._fits(size)

    def _fits(self, size: int) -> bool:
        charge = max(int(size), self.min_charge)
        return self.renting and size <= self.at_most and self.spent + charge <= self.budget

    def stop(self) -> None:
        """Buy now: every later call uses Numba."""
        with self._lock:
            self.renting = False


def use_numba() -> None:
    """Answer every later NumPy call of this process with the Numba kernels.

    A process's first small calls otherwise run in plain NumPy while compiling
    would not pay yet (see the module :mod:`rankseg_np._first_calls`).  Call
    this before a warm-up call when you want the kernels compiled (or loaded
    from the disk cache) at start-up, e.g. in a server or before timing; the
    environment variable ``RANKSEG_NP_FIRST_CALLS=numba``, set before
    ``rankseg_np`` is imported, does the same.  The answers do not change.

    Examples
    --------
    >>> import numpy as np
    >>> import rankseg_np
    >>> rankseg_np.use_numba()
    >>> warm_up = rankseg_np.rankseg(np.full((1, 2, 4, 4), 0.5))  # compiles (or loads) the kernels now
    """
    ACCOUNT.stop()


def _renting_by_default() -> bool:
    return os.environ.get("RANKSEG_NP_FIRST_CALLS", "").strip().lower() != "numba"


# The process's account, read by the dispatch layer (rankseg_np._dispatch).
ACCOUNT = FirstCalls(renting=_renting_by_default())


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time stays held in the child.
    ACCOUNT._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
