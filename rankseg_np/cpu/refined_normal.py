"""BA, TRNA and BA+TRNA (MATH section 6.1) on the CPU, in float64 Numba kernels.

The refined-normal approximations of Dai & Li (JMLR 2023), for users who
call them by name; the exact solver supersedes both.  Dice only, one row =
one (image, class).  Computed in float64 from the values given (float32
input is widened exactly), so the answer depends neither on the machine nor
on which packages are installed.

Notation (MATH section 3): ``q_1 >= ... >= q_d`` the sorted row, ``S_tau``
its prefix sums, ``Gamma = sum_j Y_j``, ``Gamma_{-j} = Gamma - Y_j``, ``g``
the smoothing.  The count laws are the refined normal law on ``Gamma``'s
truncated support ``[lq, uq]`` (``_refined_law.py``).  With
``a(m) = 1/(m + g + 1)`` and ``e(m) = g/(m + g)`` the score of volume tau is

    BA:    pi(tau) = 2 S_tau E[a(Gamma + tau)]                + E[e(Gamma + tau)]
    TRNA:  pi(tau) = 2 sum_{j<=tau} q_j E[a(Gamma_{-j} + tau)] + E[e(Gamma + tau)]

for ``tau = 1..up_tau``, and ``pi(0) = E[e(Gamma)]`` (0 when ``g = 0``).  The
law of ``Gamma_{-j}`` has the row's moments less pixel j's share, on
``Gamma``'s support.  ``up_tau`` is Lemma 3's bound: the first ``tau < d``
with ``S_tau >= (tau + g + d) q_{tau+1}``, else ``d``.  The mask is the
top-tau set of the first maximiser (ties at the cut to the lowest pixel
index).  For ``g >= 1`` the affine equivalent ``g (pi - 1)`` is maximised:
``a(m) = 1/(1 + (m+1)/g)``, ``e(m) = -m/(1 + m/g)``, which keeps the
differences that rounding ``pi ~ 1`` would lose.  BA+TRNA takes BA on rows
with ``1/sigma < 0.2`` (Cohen's d), TRNA otherwise.

Speed: rows run in parallel; the law of ``Gamma_{-j}`` comes from three
moments less one pixel's share (O(1) per j), so TRNA costs O(n) per volume
(n = uq - lq + 1) instead of a pass over the row; BA's scores are one
convolution, computed a chunk of volumes at a time.  And volumes far beyond
the optimum are never scored (:func:`_out_of_reach`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange

from .._decision import RowDecision
from .._validate import Config, raise_bad_values
from ._kernels import first_pass
from ._refined_law import normalised_pmf, parameters, supports
from ._threads import parallel_kernel

BA = 0
TRNA = 1
# BA+TRNA: BA when Cohen's d = 1 / max(sigma, 1e-8) is below 0.2.
COHEN_D = 0.2
SIGMA_FLOOR = 1e-8
# From this smoothing on, g (pi - 1) is maximised instead of pi.
SCALED_SMOOTH = 1.0
# Early stop: the bound must be below the best score by this relative margin
# plus one float64 epsilon per rounding a score carries (n + tau at most: the
# n terms of a sum, the tau terms of TRNA's running W_tau).  A float64 score
# is off by far less, so the stop never changes the answer.
STOP_RTOL = 1e-9
F64_EPS = float(np.finfo(np.float64).eps)
# Volumes per chunk of BA's convolution (between early-stop checks).
CHUNK = 256
# Sorted rows are kept for one block of rows at a time (bytes; with their
# prefix sums and the sort's copy, about three times that).
BLOCK_BYTES = 1 << 26


@njit(cache=True, nogil=True)
def _weights(m, smooth, scaled):
    """(a(m), e(m)) at the count m = k + tau, or the scaled pair for g >= 1."""
    if scaled:
        return 1.0 / (1.0 + (m + 1.0) / smooth), -m / (1.0 + m / smooth)
    return 1.0 / (m + smooth + 1.0), (smooth / (m + smooth) if smooth > 0.0 else 0.0)


@njit(cache=True, nogil=True)
def _search_bound(q, prefix, smooth):
    """Lemma 3's ``up_tau``: the first tau in 1..d-1 with S_tau >= (tau + g + d) q_{tau+1}, else d."""
    d = q.size
    for tau in range(1, d):
        # q = 0 stops whatever the factor (also an infinite one: huge g).
        if q[tau] == 0.0 or prefix[tau] >= (tau + smooth + d) * q[tau]:
            return tau
    return d


@njit(cache=True, nogil=True)
def _out_of_reach(q, prefix, tau, lq, smooth, scaled, best, rounding):
    """True when no volume >= tau can score above ``best``.

    Every law lives on ``k >= lq`` with mass 1 and ``a``, ``e`` decrease, so
    ``pi(t) <= B(t) = 2 S_t a(lq + t) + e(lq + t)``.  The sign of
    ``B(t+1) - B(t)`` is that of ``phi(t) = q_{t+1} (lq + t + g + 1) - S_t``
    (the e part only falls), and ``phi(t+1) - phi(t) = (q_{t+2} - q_{t+1})
    (lq + t + g + 2) <= 0``: once ``phi(tau) <= 0``, B never rises again, so
    ``B(tau) < best`` settles it.
    """
    q_next = q[tau] if tau < q.size else 0.0
    if q_next * (lq + tau + smooth + 1.0) > prefix[tau]:
        return False
    a, e = _weights(float(lq + tau), smooth, scaled)
    overlap = 2.0 * prefix[tau] * a
    margin = (STOP_RTOL + rounding * F64_EPS) * (abs(overlap) + abs(e) + abs(best))
    return overlap + e < best - margin


@njit(cache=True, nogil=True)
def _empty_part(pmf, lq, tau, smooth, scaled):
    """E[e(Gamma + tau)] under the law ``pmf`` on ``lq..``: pi(0) for tau = 0, the smooth term otherwise."""
    total = 0.0
    if smooth > 0.0:
        for i in range(pmf.size):
            total += pmf[i] * _weights(float(lq + i + tau), smooth, scaled)[1]
    return total


@njit(cache=True, nogil=True)
def _ba(q, prefix, up, lq, pmf, smooth):
    """First maximiser of the BA score over tau = 0..up.

    The expectations for a chunk of volumes are one convolution of the law
    with tables of ``a`` and ``e``, summed tap by tap (the inner loop runs over
    volumes, which vectorises).
    """
    n = pmf.size
    scaled = smooth >= SCALED_SMOOTH
    # Weights at the counts m = lq + 1 .. lq + n - 1 + up (index m - lq - 1).
    xa = np.empty(n + up - 1)
    xe = np.empty(n + up - 1)
    for i in range(xa.size):
        xa[i], xe[i] = _weights(lq + 1.0 + i, smooth, scaled)
    best = _empty_part(pmf, lq, 0, smooth, scaled)
    best_tau = 0
    overlap = np.empty(CHUNK)
    empty = np.empty(CHUNK)
    t0 = 1
    while t0 <= up and not _out_of_reach(q, prefix, t0, lq, smooth, scaled, best, n + 8):
        c = min(CHUNK, up - t0 + 1)
        overlap[:c] = 0.0
        empty[:c] = 0.0
        for i in range(n):
            w = pmf[i]
            base = i + t0 - 1  # count lq + i + t0
            for t in range(c):
                overlap[t] += w * xa[base + t]
            if smooth > 0.0:
                for t in range(c):
                    empty[t] += w * xe[base + t]
        for t in range(c):
            score = 2.0 * prefix[t0 + t] * overlap[t] + empty[t]
            if score > best:
                best = score
                best_tau = t0 + t
        t0 += c
    return best_tau


@njit(cache=True, nogil=True)
def _trna(q, prefix, up, lq, pmf, mean, var, m3, smooth):
    """First maximiser of the TRNA score over tau = 0..up.

    ``W_tau(k) = sum_{j<=tau} q_j pmf_j(k)`` is kept as a running float64
    sum.  Equal ``q_j`` share one law.  A law of ``Gamma_{-j}`` without mass
    leaves ``W_tau``, hence ``pi(tau)`` and every later score, undefined: no
    candidates, so the search ends there (MATH section 6).
    """
    n = pmf.size
    scaled = smooth >= SCALED_SMOOTH
    w = np.zeros(n)
    law_j = np.empty(n)
    mass = 0.0
    best = _empty_part(pmf, lq, 0, smooth, scaled)
    best_tau = 0
    for tau in range(1, up + 1):
        if _out_of_reach(q, prefix, tau, lq, smooth, scaled, best, n + tau + 8):
            break
        qj = q[tau - 1]
        if tau == 1 or qj != q[tau - 2]:
            share = qj * (1.0 - qj)
            scale_j, skew_j = parameters(var - share, m3 - share * (1.0 - 2.0 * qj))
            mass = normalised_pmf(lq, mean - qj, scale_j, skew_j, law_j)
        if not mass > 0.0:
            break
        overlap = 0.0
        empty = 0.0
        for i in range(n):
            w[i] += qj * law_j[i]
            a, e = _weights(float(lq + i + tau), smooth, scaled)
            overlap += a * w[i]
            empty += e * pmf[i]
        score = 2.0 * overlap + empty
        if score > best:
            best = score
            best_tau = tau
    return best_tau


@parallel_kernel(cache=True)
def _row_statistics(qbuf, prefix, moments, up, smooth):
    """Per sorted row: prefix sums, the count's mean / variance / third moment, and ``up_tau``."""
    for i in prange(qbuf.shape[0]):
        q = qbuf[i]
        s1 = s2 = s3 = 0.0
        prefix[i, 0] = 0.0
        for k in range(q.size):
            v = q[k]
            share = v * (1.0 - v)
            s1 += v
            s2 += share
            s3 += share * (1.0 - 2.0 * v)
            prefix[i, k + 1] = s1
        moments[i, 0] = s1
        moments[i, 1] = s2
        moments[i, 2] = s3
        up[i] = _search_bound(q, prefix[i], smooth)


@parallel_kernel(cache=True)
def _volumes(qbuf, prefix, moments, scale, skew, lq, uq, up, kinds, smooth, tau):
    """The chosen volume of every sorted row (BA or TRNA by ``kinds``)."""
    for i in prange(qbuf.shape[0]):
        pmf = np.empty(uq[i] - lq[i] + 1)
        mass = normalised_pmf(lq[i], moments[i, 0], scale[i], skew[i], pmf)
        if not mass > 0.0:
            # No law, no defined score but pi(0) = 0 (g = 0): the empty mask.
            tau[i] = 0
        elif kinds[i] == BA:
            tau[i] = _ba(qbuf[i], prefix[i], up[i], lq[i], pmf, smooth)
        else:
            tau[i] = _trna(qbuf[i], prefix[i], up[i], lq[i], pmf, moments[i, 0], moments[i, 1], moments[i, 2], smooth)


@parallel_kernel(cache=True)
def _tie_groups(qbuf, tau, need, group):
    """The top-tau set of a sorted row is ``{p > v}`` plus the first ``need`` of the
    ``group`` pixels equal to ``v = q_tau`` (contiguous in the sorted row)."""
    for i in prange(qbuf.shape[0]):
        t = tau[i]
        if t == 0:
            continue
        q = qbuf[i]
        v = q[t - 1]
        first = t - 1
        while first > 0 and q[first - 1] == v:
            first -= 1
        last = t
        while last < q.size and q[last] == v:
            last += 1
        need[i] = t - first
        group[i] = last - first


@parallel_kernel(cache=True)
def _row_peaks(p2, mu, peak, bad):
    """Per row: float64 sum, maximum, and whether any value is NaN/inf/outside [0, 1]."""
    for r in prange(p2.shape[0]):
        total, mx, b, _, _ = first_pass(p2[r])
        mu[r] = total
        peak[r] = mx
        bad[r] = b


def _sorted_desc(rows: np.ndarray) -> np.ndarray:
    """Each row sorted descending, as float64 (exact), sorted by NumPy in parallel threads.

    NumPy's sort (SIMD on x86) is several times faster than Numba's and
    releases the GIL.
    """
    workers = min(numba.get_num_threads(), rows.shape[0])
    if workers > 1:
        bounds = np.linspace(0, rows.shape[0], workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: rows[bounds[i] : bounds[i + 1]].sort(axis=1), range(workers)))
    else:
        rows.sort(axis=1)
    return np.ascontiguousarray(rows[:, ::-1], dtype=np.float64)


def _kinds(solver: str, scale: np.ndarray) -> np.ndarray:
    if solver == "ba+trna":
        return np.where(1.0 / np.maximum(scale, SIGMA_FLOOR) < COHEN_D, BA, TRNA).astype(np.int64)
    return np.full(scale.size, BA if solver == "ba" else TRNA, dtype=np.int64)


def _block_volumes(qbuf: np.ndarray, cfg: Config) -> np.ndarray:
    """The chosen volume of each sorted float64 row of ``qbuf``."""
    rows, d = qbuf.shape
    smooth = float(cfg.smooth)
    prefix = np.empty((rows, d + 1))
    moments = np.empty((rows, 3))
    up = np.empty(rows, dtype=np.int64)
    _row_statistics(qbuf, prefix, moments, up, smooth)
    scale = np.empty(rows)
    skew = np.empty(rows)
    for i in range(rows):
        scale[i], skew[i] = parameters(moments[i, 1], moments[i, 2])
    lq, uq = supports(moments[:, 0], scale, skew, d, cfg.eps)
    tau = np.zeros(rows, dtype=np.int64)
    _volumes(qbuf, prefix, moments, scale, skew, lq, uq, up, _kinds(cfg.solver, scale), smooth, tau)
    return tau


def decide(p3: np.ndarray, cfg: Config) -> RowDecision:
    """BA / TRNA / BA+TRNA decision for every row of a C-contiguous float32/float64 ``(B, C, d)`` array.

    Parameters
    ----------
    p3 : ndarray, shape (B, C, d)
        C-contiguous float32 or float64 probabilities.
    cfg : Config
        Validated configuration; ``cfg.solver`` is ``'ba'``, ``'trna'`` or
        ``'ba+trna'``, ``cfg.eps`` the tail mass left out of the support,
        ``cfg.smooth`` and ``cfg.pruning_prob`` as for every solver.

    Returns
    -------
    RowDecision
        Per row: threshold and tie cut of the chosen top-tau set (ties at the
        cut go to the lowest pixel index), the active flag, and the row sum.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np._validate import check_config
    >>> from rankseg_np.cpu.refined_normal import decide
    >>> p3 = np.array([[[0.9, 0.6, 0.4, 0.1]]])
    >>> dec = decide(p3, check_config(1, output_mode="multilabel", solver="BA"))
    >>> float(dec.threshold[0, 0]), int(dec.tie_end[0, 0])
    (0.4, 4)
    """
    b, c, d = p3.shape
    rows = b * c
    p2 = p3.reshape(rows, d)
    mu = np.empty(rows)
    peak = np.empty(rows)
    bad = np.empty(rows, dtype=np.bool_)
    _row_peaks(p2, mu, peak, bad)
    if bad.any():
        raise_bad_values(p3)
    active = peak > cfg.pruning_prob
    threshold = np.full(rows, np.inf)
    tie_end = np.zeros(rows, dtype=np.int64)
    idx = np.flatnonzero(active)
    block = max(1, BLOCK_BYTES // (d * 8))
    for start in range(0, idx.size, block):
        ids = idx[start : start + block]
        qbuf = _sorted_desc(p2[ids])
        tau = _block_volumes(qbuf, cfg)
        need = np.zeros(ids.size, dtype=np.int64)
        group = np.zeros(ids.size, dtype=np.int64)
        _tie_groups(qbuf, tau, need, group)
        for i in np.flatnonzero(tau > 0):
            r = ids[i]
            v = qbuf[i, tau[i] - 1]  # an input value, exactly
            threshold[r] = v
            # Ties at the cut go to the lowest pixel indices.
            tie_end[r] = d if need[i] == group[i] else int(np.flatnonzero(p2[r] == v)[need[i] - 1]) + 1
    shape = (b, c)
    return RowDecision(threshold.reshape(shape), tie_end.reshape(shape), active.reshape(shape), mu.reshape(shape))
