"""The refined normal law of a count on its truncated support (MATH section 6), in float64.

A count ``X = sum_j Y_j`` of independent ``Y_j ~ Bernoulli(p_j)`` with mean
``m``, variance ``s^2`` and skewness ``kappa`` is approximated by Volkova's
refined normal law

    F(k) = clip(G((k + 1/2 - m) / s), 0, 1),  G(z) = Phi(z) + kappa (1 - z^2) phi(z) / 6,
    pmf(k) = max(F(k) - F(k - 1), 0),

restricted to the integers ``[lq, uq]`` that hold its central ``1 - eps``
mass and renormalised there.  Everything is computed in float64 from the
values given; the rules of MATH section 6.1 (variance floor, quantile root,
ends of the support, a law without mass) are restated where they apply.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.special
from numba import njit
from scipy.optimize import brentq

# A variance below this (a row of (almost) only 0s and 1s) is raised to it
# before the law's scale and skewness are formed: float64's machine epsilon,
# the floor rankseg uses for float64 input.
VAR_FLOOR = float(np.finfo(np.float64).eps)
INV_SQRT2 = 1.0 / math.sqrt(2.0)
SQRT_2PI = math.sqrt(2.0 * math.pi)
# Root search of a quantile: SciPy's generic ``rv_continuous.ppf`` bracket
# (start at -+10, widen tenfold) and tolerance; see standard_quantile.
BRACKET = 10.0
XTOL = 1e-14


@njit(cache=True, nogil=True)
def parameters(var, m3):
    """(scale, skewness) of a count with variance ``var`` and third central moment ``m3``."""
    safe = max(var, VAR_FLOOR)
    return math.sqrt(safe), m3 / safe**1.5


def _standard_cdf(z: float, skew: float) -> float:
    """G(z) clipped to [0, 1]: the standardised law, with SciPy's ``norm.cdf`` and ``norm.pdf``."""
    phi = math.exp(-0.5 * z * z) / SQRT_2PI
    return min(max(float(scipy.special.ndtr(z)) + skew * (1.0 - z * z) * phi / 6.0, 0.0), 1.0)


def standard_quantile(prob: float, skew: float) -> float:
    """A root ``z`` of ``clip(G(z), 0, 1) = prob``, for ``0 < prob < 1``.

    ``G`` need not be monotone (its derivative ``phi(z)(1 + kappa (z^3 - 3z)/6)``
    changes sign far out, and near the centre when ``|kappa|`` is large), so
    the root is pinned down by how it is searched: the bracket ``[-10, 10]``,
    widened tenfold on the side that does not yet straddle ``prob``, then
    Brent's method to ``xtol = 1e-14``.  This is the root SciPy's generic
    ``rv_continuous.ppf`` returns, hence the one ``rankseg`` uses.
    """

    def excess(z):
        return _standard_cdf(z, skew) - prob

    left, right = -BRACKET, math.inf
    while excess(left) > 0.0:
        left, right = left * BRACKET, left
    if math.isinf(right):
        right = max(BRACKET, left)
        while excess(right) < 0.0:
            left, right = right, right * BRACKET
    return brentq(excess, left, right, xtol=XTOL)


def supports(
    mean: np.ndarray, scale: np.ndarray, skew: np.ndarray, d: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Integer support ``[lq, uq]`` of each row's law: its central ``1 - eps``, widened outwards.

    With ``z_lo, z_hi`` the standardised quantiles of ``eps/2`` and
    ``1 - eps/2`` (as ``(1 -+ (1 - eps)) / 2``), ``lq = floor(s z_lo + m) - 1``
    and ``uq = ceil(s z_hi + m)``, both clipped to ``[0, d]``.  The ``- 1``
    keeps one more point below: ``F(k)`` is evaluated at ``k + 1/2``.
    """
    confidence = 1.0 - eps
    p_lo, p_hi = (1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0
    cache: dict[float, tuple[float, float]] = {}
    z_lo = np.empty(skew.size)
    z_hi = np.empty(skew.size)
    for i, k in enumerate(skew.tolist()):
        if k not in cache:  # rows of one image often share a skewness (e.g. 0)
            cache[k] = (standard_quantile(p_lo, k), standard_quantile(p_hi, k))
        z_lo[i], z_hi[i] = cache[k]
    lq = np.clip(np.floor(scale * z_lo + mean) - 1.0, 0, d).astype(np.int64)
    uq = np.clip(np.ceil(scale * z_hi + mean), 0, d).astype(np.int64)
    return lq, uq


@njit(cache=True, nogil=True)
def cdf(k, mean, scale, skew):
    """F(k) = clip(G((k + 1/2 - mean) / scale), 0, 1)."""
    z = (k + 0.5 - mean) / scale
    value = 0.5 * math.erfc(-z * INV_SQRT2) + skew * (1.0 - z * z) * (math.exp(-0.5 * z * z) / SQRT_2PI) / 6.0
    return min(max(value, 0.0), 1.0)


@njit(cache=True, nogil=True)
def normalised_pmf(lq, mean, scale, skew, out):
    """``out[i] = pmf(lq + i) / mass`` for ``i < out.size``; returns ``mass = sum_i pmf(lq + i)``.

    When the mass is not positive (``F`` flat over the whole support) the law
    is undefined; ``out`` is then left unnormalised and the caller decides.
    """
    prev = cdf(lq - 1.0, mean, scale, skew)
    mass = 0.0
    for i in range(out.size):
        cur = cdf(lq + i, mean, scale, skew)
        step = cur - prev
        out[i] = step if step > 0.0 else 0.0
        mass += out[i]
        prev = cur
    if mass > 0.0:
        for i in range(out.size):
            out[i] /= mass
    return mass
