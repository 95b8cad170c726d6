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
* :func:`refined_normal_curve` -- the BA/TRNA scores of every searched
  volume (MATH section 6) in plain float64 NumPy/SciPy: the support from
  SciPy's generic ``rv_continuous.ppf``, the law by ``scipy.stats.norm``,
  every score as a matrix product.
* :func:`expected_score_mp` -- for long rows (d up to 1e6 and beyond) made of a
  few distinct values (:func:`palette_row`): the integral of MATH section 3
  evaluated by mpmath's adaptive quadrature at 30 digits, sharing no code,
  rule or float64 arithmetic with the solver's fixed 24-node rules.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import scipy.stats


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


# The refined normal law of BA/TRNA (MATH section 6)

class _RefinedNormal(scipy.stats.rv_continuous):
    """Volkova's refined normal law, standardised; SciPy supplies the quantiles."""

    def _argcheck(self, skew):
        return np.isfinite(skew)

    def _cdf(self, x, skew):
        f = scipy.stats.norm.cdf(x) + skew * (1.0 - x**2) * scipy.stats.norm.pdf(x) / 6.0
        return np.clip(f, 0.0, 1.0)


_RN = _RefinedNormal(name="refined_normal")


def _moments(q):
    return q.sum(), np.sum(q * (1.0 - q)), np.sum(q * (1.0 - q) * (1.0 - 2.0 * q))


def _pmf(k, loc, scale, skew):
    """Normalised pmf on the integers ``k`` (MATH section 6), float64."""

    def cdf(v):
        x = (v + 0.5 - loc) / scale
        return np.clip(scipy.stats.norm.cdf(x) + skew * (1.0 - x**2) * scipy.stats.norm.pdf(x) / 6.0, 0.0, 1.0)

    mass = np.clip(cdf(k) - cdf(k - 1.0), 0.0, 1.0)
    return mass / mass.sum()


def refined_normal_curve(p, solver, smooth, eps):
    """Float64 BA/TRNA scores of every searched volume tau = 0..up_tau of one row."""
    q = np.sort(np.asarray(p, dtype=np.float64))[::-1]
    d = q.size
    mu, var, m3 = _moments(q)
    floor = np.finfo(np.float64).eps
    scale = math.sqrt(max(var, floor))
    skew = m3 / max(var, floor) ** 1.5
    if solver == "BA+TRNA":
        solver = "BA" if 1.0 / max(scale, 1e-8) < 0.2 else "TRNA"
    z_lo, z_hi = _RN.interval(1.0 - eps, skew)
    lq = int(min(max(math.floor(scale * z_lo + mu) - 1, 0), d))
    uq = int(min(max(math.ceil(scale * z_hi + mu), 0), d))
    k = np.arange(lq, uq + 1, dtype=np.float64)
    full = _pmf(k, mu, scale, skew)

    s = np.concatenate([[0.0], np.cumsum(q)])
    tau_all = np.arange(1, d)
    hit = s[1:d] >= (tau_all + smooth + d) * q[1:]
    up = int(tau_all[hit][0]) if hit.any() else d
    tau = np.arange(1, up + 1, dtype=np.float64)

    a = 1.0 / (k[None, :] + tau[:, None] + smooth + 1.0)  # (up, n)
    if smooth > 0:
        nu = (smooth / (k[None, :] + tau[:, None] + smooth)) @ full
        empty = float(smooth / (k + smooth) @ full)
    else:
        nu = np.zeros(up)
        empty = 0.0
    if solver == "BA":
        overlap = s[1 : up + 1] * (a @ full)
    else:
        qj = q[:up, None]
        loc_j = mu - qj
        var_j = np.maximum(var - qj * (1.0 - qj), floor)
        m3_j = m3 - qj * (1.0 - qj) * (1.0 - 2.0 * qj)
        laws = np.vstack([_pmf(k, loc_j[i, 0], math.sqrt(var_j[i, 0]), m3_j[i, 0] / var_j[i, 0] ** 1.5) for i in range(up)])
        weights = np.cumsum(qj * laws, axis=0)  # W_tau(k) = sum_{j <= tau} q_j pmf_j(k)
        overlap = np.sum(weights * a, axis=1)
    curve = np.concatenate([[empty], 2.0 * overlap + nu])
    # A law without mass on the support leaves scores undefined (NaN here; in
    # TRNA every later one too, through W_tau): they are not candidates.
    return np.where(np.isnan(curve), -np.inf, curve)


def palette_row(d: int, rng: np.random.Generator, k: int = 24, low: float = 0.0):
    """A row of ``d`` pixels drawn from ``k`` distinct values in [low, 1), shuffled, and a mask.

    Returns ``(values, n_in, n_out, p, mask)``: value ``values[i]`` appears
    ``n_in[i]`` times inside the mask and ``n_out[i]`` times outside, which is all
    :func:`expected_score_mp` needs, so a 1e6-pixel row costs it k terms per node.
    """
    values = np.sort(low + (1.0 - low) * rng.uniform(0, 1, k) ** rng.uniform(1, 6))
    counts = rng.multinomial(d, rng.dirichlet(np.ones(k)))
    frac_in = rng.uniform(0, 1, k) * (values > np.quantile(values, rng.uniform(0.2, 0.9)))
    n_in = rng.binomial(counts, frac_in)
    n_out = counts - n_in
    p = np.repeat(values, counts)
    mask = np.concatenate([np.arange(c) < a for a, c in zip(n_in, counts)])
    perm = rng.permutation(d)
    return values, n_in, n_out, p[perm], mask[perm]


def expected_score_mp(values, n_in, n_out, metric: str, smooth: float, dps: int = 30):
    """E[metric(mask, Y)] in mpmath at ``dps`` digits, for a row given by value counts.

    Independent of the library's quadrature: adaptive tanh-sinh (``mpmath.quad``)
    on the integrals of MATH section 3 after ``t = exp(-u)``, split at multiples
    of ``1/r0`` where the integrand lives, with ``log G`` summed exactly per
    distinct value (``n log1p(-v s)``).  The mask may be any mask (``n_in`` of
    each value inside); ``0/0 := 0`` is not handled (needs a non-empty mask or
    ``smooth > 0``).
    """
    import mpmath as mp

    with mp.workdps(dps):
        v = [mp.mpf(float(x)) for x in values]
        g = mp.mpf(float(smooth))
        tau = int(sum(int(a) for a in n_in))
        s_in = mp.fsum(int(a) * x for a, x in zip(n_in, v))
        mu = s_in + mp.fsum(int(b) * x for b, x in zip(n_out, v))

        def integrand(u):
            t = mp.exp(-u)
            s = -mp.expm1(-u)
            if metric == "dice":
                lg = mp.fsum((int(a) + int(b)) * mp.log1p(-x * s) for a, b, x in zip(n_in, n_out, v) if a + b)
                frac = mp.fsum(int(a) * x / (1 - x * s) for a, x in zip(n_in, v) if a)
                return mp.exp(-u * (tau + g) + lg) * (2 * t * frac + g)
            lg = mp.fsum(int(b) * mp.log1p(-x * s) for b, x in zip(n_out, v) if b)
            return mp.exp(-u * (tau + g) + lg)

        r0 = float(tau + smooth + mu)
        cuts = [mp.mpf(k) / r0 for k in (0.01, 0.1, 0.3, 1, 2, 4, 8, 16, 32, 64, 128)]
        value = mp.quad(integrand, [0] + cuts + [mp.inf])
        if metric == "iou":
            value *= s_in + g
        return value
