"""Independent oracles for exact expected Dice/IoU (MATH sections 1-3).

Nothing here shares code or formulas with the solver: the solver integrates
the reciprocal identity with quadrature; these enumerate outcomes.

* :func:`brute_scores` -- every mask against every outcome, for tiny ``d``:
  ``E[metric(delta, Y)] = sum_y P(y) metric(delta, y)`` over all ``2^d``
  outcomes, for all ``2^d`` masks at once (exact up to float64 rounding).
* :func:`pb_pmf` -- the Poisson-binomial pmf by the O(d^2) recursion.
* :func:`topk_curve` -- the exact expected score of every top-tau set,
  ``tau = 0..d``, from the joint law of ``I = |delta & Y|`` (pmf of the top
  tau pixels) and ``B = |Y \\ delta|`` (pmf of the others), which are
  independent: ``E[(2I + g) / (tau + g + I + B)]`` and
  ``E[(I + g) / (tau + g + B)]`` as double sums.  O(d^3) in all; fine for
  ``d`` in the hundreds.
* :func:`mask_score` -- the same double sum for one arbitrary mask.
"""

from __future__ import annotations

import itertools

import numpy as np


def pb_pmf(p: np.ndarray) -> np.ndarray:
    """pmf of sum_j Bernoulli(p_j), length len(p) + 1, by the O(d^2) recursion in float64."""
    f = np.zeros(len(p) + 1)
    f[0] = 1.0
    for i, x in enumerate(np.asarray(p, dtype=np.float64)):
        f[1 : i + 2] = f[1 : i + 2] * (1.0 - x) + f[0 : i + 1] * x
        f[0] *= 1.0 - x
    return f


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)  # 0/0 := 0


def _joint_score(pmf_in: np.ndarray, pmf_out: np.ndarray, tau: int, metric: str, smooth: float) -> float:
    i = np.arange(pmf_in.size, dtype=np.float64)[:, None]
    b = np.arange(pmf_out.size, dtype=np.float64)[None, :]
    if metric == "dice":
        val = _ratio(2.0 * i + smooth + 0.0 * b, tau + smooth + i + b)
    else:
        val = _ratio(i + smooth + 0.0 * b, tau + smooth + b + 0.0 * i)
    return float(np.sum(pmf_in[:, None] * pmf_out[None, :] * val))


def mask_score(p: np.ndarray, mask: np.ndarray, metric: str, smooth: float) -> float:
    """Exact expected Dice/IoU of one arbitrary mask (double sum over the independent I and B)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool).ravel()
    return _joint_score(pb_pmf(p[mask]), pb_pmf(p[~mask]), int(mask.sum()), metric, smooth)


def topk_curve(p: np.ndarray, metric: str, smooth: float) -> np.ndarray:
    """Exact expected score of the top-tau set (sorted by p descending), for tau = 0..d."""
    q = np.sort(np.asarray(p, dtype=np.float64).ravel())[::-1]
    d = q.size
    suffix = [None] * (d + 1)  # pmf of the pixels ranked after tau
    suffix[d] = np.array([1.0])
    for t in range(d - 1, -1, -1):
        prev = suffix[t + 1]
        f = np.zeros(prev.size + 1)
        f[:-1] += prev * (1.0 - q[t])
        f[1:] += prev * q[t]
        suffix[t] = f
    prefix = np.array([1.0])
    out = np.empty(d + 1)
    for t in range(d + 1):
        if t > 0:
            f = np.zeros(prefix.size + 1)
            f[:-1] += prefix * (1.0 - q[t - 1])
            f[1:] += prefix * q[t - 1]
            prefix = f
        out[t] = _joint_score(prefix, suffix[t], t, metric, smooth)
    return out


def all_outcomes(d: int) -> np.ndarray:
    """All 2^d binary vectors, shape (2^d, d), bool."""
    return np.array(list(itertools.product([False, True], repeat=d)), dtype=bool).reshape(-1, d)


def brute_scores(p: np.ndarray, metric: str, smooth: float) -> tuple[np.ndarray, np.ndarray]:
    """(masks (2^d, d), exact expected score of each) by enumerating all 2^d outcomes."""
    p = np.asarray(p, dtype=np.float64).ravel()
    d = p.size
    ys = all_outcomes(d)  # outcomes
    prob = np.prod(np.where(ys, p, 1.0 - p), axis=1)  # P(Y = y)
    masks = ys  # the same enumeration, read as masks
    inter = masks.astype(np.float64) @ ys.T.astype(np.float64)  # |delta & y|, (masks, outcomes)
    size_m = masks.sum(axis=1, dtype=np.float64)[:, None]
    size_y = ys.sum(axis=1, dtype=np.float64)[None, :]
    if metric == "dice":
        score = _ratio(2.0 * inter + smooth, size_m + size_y + smooth)
    else:
        score = _ratio(inter + smooth, size_m + size_y - inter + smooth)
    return masks, score @ prob
