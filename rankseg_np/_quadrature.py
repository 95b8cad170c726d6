"""Constants and quadrature rules of the exact solver, shared by every backend.

The exact solver (MATH section 3, method in ``docs/exact.md``) runs on the CPU
in Numba (:mod:`rankseg_np.cpu.exact`) and on the GPU in array code
(:mod:`rankseg_np.gpu._exact`).  Both read their constants and Gauss rules
from here, so the two executors bracket the same volumes and integrate with
the same nodes; this module imports neither Numba nor a GPU library.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numpy.polynomial.laguerre import laggauss

from ._solvers import DICE, IOU  # noqa: F401  (re-exported for the exact solvers)

# Quadrature nodes per rule.  Measured (docs/exact.md): 24 nodes with the
# rate segmentation below keep the error under ~3e-14 on every volume of
# every test row; 16 nodes do not.
N_NODES = 24
# Gauss-Jacobi in t while the central rate r0 <= SWITCH (it is exact for all
# rates up to 2N - 1 + theta and degrades slowly above); Gauss-Laguerre in u
# above (accurate while the rates stay within a factor ~2 of r0).
SWITCH = 1.5 * N_NODES
# Consecutive candidate volumes share one rule while their central rates stay
# within this factor (the Laguerre rule's comfortable range).
SEG_RATIO = 1.5

# Histogram of the row's values: NB bins of width exactly 1/NB (a power of
# two, so v * NB and its floor are exact and bins never overlap).
NB = 2048
# Bins below SMALL_BIN (p < 1/4) go through power sums when below the band.
SMALL_BIN = NB // 4
# Power-sum terms: the series remainder per pixel is p^(M+1)/((M+1)(1-p)),
# <= 1e-18 for p < 1/4 with M = 27 terms.
M_POW = 27
# Relative slack on the lower bound lam: covers float64 rounding in the row
# sums (<= ~1e-10 relative for rows of 1e6 pixels); slack only adds candidates.
SLACK = 1e-9

# A row whose expected size mu = sum_j p_j is below this (with smooth = 0) is
# decided by its RMA objective.  There every exact score equals its leading
# term to within a factor (1 - theta mu), theta in [0, 1]: Dice
# sum_{j in delta} p_j E[2/(tau + 1 + |Y_-j|)] lies in 2 S_tau/(tau+1) [1 - mu, 1]
# (|Y_-j| >= 1 with probability <= mu), IoU likewise in (S_tau/tau) [1 - mu, 1];
# the RMA objectives 2S/(tau+mu+1) and S/(tau+mu-S) lie in the same ranges.  So
# the two orders of the volumes agree except between volumes within 2 mu
# (< 2^-59, below float64's resolution 2^-53) of each other.  Such rows (all
# values tiny, e.g. subnormal) are where every volume is a candidate and every
# quadrature node did subnormal arithmetic (10 s for a 2e5-pixel subnormal row);
# every executor now decides them with one RMA pass.
TINY_MU = 2.0**-60


def theta_of(smooth: float) -> float:
    """theta in [1/2, 3/2) with ``smooth - theta`` an integer (1 for smooth = 0)."""
    th = smooth - math.floor(smooth - 0.5)
    if not 0.5 <= th < 1.5:  # smooth so large that the subtraction rounds: Laguerre only
        th = 1.0
    return th


@lru_cache(maxsize=None)
def laguerre_rule(n: int = N_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Laguerre nodes ``v`` and ``log(w)``: int_0^inf e^-v f(v) dv ~ sum w f(v)."""
    v, w = laggauss(n)
    return v, np.log(w)


@lru_cache(maxsize=None)
def jacobi_rule(theta: float, n: int = N_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``x`` in (-1, 1) and ``log W`` with int_0^1 t^(theta-1) F dt ~ sum W F((1+x)/2)."""
    from scipy.special import roots_jacobi  # imported here: keeps `import rankseg_np` light

    x, w = roots_jacobi(n, 0.0, theta - 1.0)
    return x, np.log(w) - theta * math.log(2.0)


class QuadratureRule(NamedTuple):
    """The two Gauss rules behind the exact scores, for one ``smooth`` (kernels take it whole)."""

    theta: float  # Jacobi weight exponent: t^(theta-1)
    lag_v: np.ndarray  # Gauss-Laguerre nodes
    lag_lw: np.ndarray  # and log weights
    jac_x: np.ndarray  # Gauss-Jacobi nodes in (-1, 1)
    jac_lw: np.ndarray  # and log weights


def rules(smooth: float) -> QuadratureRule:
    """The :class:`QuadratureRule` ``(theta, lag_v, lag_lw, jac_x, jac_lw)`` for a given ``smooth``."""
    theta = theta_of(smooth)
    lag_v, lag_lw = laguerre_rule()
    jac_x, jac_lw = jacobi_rule(theta)
    return QuadratureRule(theta, lag_v, lag_lw, jac_x, jac_lw)
