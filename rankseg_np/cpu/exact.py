"""The exact Bayes-optimal solver (MATH section 3) on the CPU, in Numba.

For every active (image, class) row this returns the top-tau set whose exact
expected Dice or IoU, under independent ``Y_j ~ Bernoulli(p_j)``, is the
largest over all ``d + 1`` volumes; by the ranking theorem (MATH section 2)
that is the largest over all ``2^d`` masks.  The method, with the error bounds
and what was measured, is written up in ``docs/exact.md``; in brief:

1. **Which volumes can win (no sort).**  Jensen's inequality and the bound
   ``E[1/(a+X)] <= 1/(a - 1 + E X)`` (``a >= 1``, from the reciprocal identity
   and ``1 - s <= exp(-s)``) sandwich the exact score of every top-tau set
   between the RMA objective ``L(tau)`` and an upper bound ``U(tau)``:

   - Dice: ``L = 2S/(tau+g+mu+1) + g/(tau+g+mu)``,  ``U = (2S+g)/(tau+g+mu-1)``;
   - IoU:  ``L = (S+g)/(tau+g+mu-S)``,             ``U = (S+g)/(tau+g+mu-S-1)``.

   With ``lam`` = the best ``L`` over threshold masks (read off a 2048-bin
   histogram), every ``tau >= 1`` with
   ``U(tau) < lam`` loses to that mask.  ``U(tau) >= lam`` reads
   ``h(tau) = sum_{j<=tau} (alpha q_j - lam) >= ell``, and ``h`` is concave
   along the sorted order, so the survivors form one interval of volumes.
   Histogram bins locate it; only the pixels of the bins around it (the
   *band*) are gathered and sorted.  The bracket is then checked in exact
   float64 sums and widened if the check fails.  ``tau = 0`` (only a
   candidate when ``g > 0``) is bounded separately by
   ``exp(-mu) + 2g/(g+mu)``.
2. **Exact scores of the survivors.**  The reciprocal identity turns each
   score into ``int_0^1 t^(a-1) H(t) dt`` where ``H`` is a positive mixture of
   powers ``t^k``; ``H`` involves ``G(t) = prod_j (1 - p_j(1-t))``.  Rows whose
   rates ``a + X`` are small use Gauss-Jacobi in ``t`` with weight
   ``t^(theta-1)`` (exact for every rate up to ``2N - 1 + theta``); larger
   rows use Gauss-Laguerre in ``u = -log t`` scaled by the central rate
   ``r0``.  The candidate volumes are split into segments whose rates vary by
   at most a factor 1.5, each with its own rule.  ``N = 24`` nodes.
3. **Cheap rows.**  The first read (:func:`~rankseg_np.cpu._kernels.scan_row`,
   as in RMA) gives the sum, the validity test and the entries above 1/4
   packed; when the band lies above 1/4 the histogram, the band and every
   pixel above 1/4 come from those few per cent of the row.  Pixels in every
   candidate mask or in none with ``p s_max < 1/4`` (``s_max`` the largest
   node ``s`` of the row's rules) enter through power sums ``sum_j p_j^m``,
   with the fewest terms whose remainder is below 1e-18 per pixel (5 for a
   512x512 softmax row); those at or below 1/4 in one more vectorised read
   of the row.  Per node only the band and at most a few hundred pixels are
   visited.

Measured quadrature error against float64 Poisson-binomial oracles: below
1e-13 absolute on every volume tested (``tests/test_exact.py``,
``docs/exact.md``).  Ties: the mask is ``{p > v}`` plus the lowest-index
pixels equal to ``v``, like every other solver (see :mod:`.._decision`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .._decision import RowDecision
from .._quadrature import (  # noqa: F401  (re-exported: tests and benchmarks read them here)
    TINY_MU,
    DICE,
    IOU,
    M_POW,
    N_NODES,
    NB,
    SEG_RATIO,
    SLACK,
    SMALL_BIN,
    SWITCH,
    jacobi_rule,
    laguerre_rule,
    rules,
    theta_of,
)
from .._validate import Config
from ._kernels import as_bits, bit_pattern, decide_rows, scan_row, sort_desc_stable, sum_above
from .rma import dinkelbach_dice, dinkelbach_iou
from ._threads import parallel_kernel

# CPU-only refinement of the power sums: fewer terms for smaller pixels
# (remainder p^(M+1)/((M+1)(1-p)) <= 1e-18 for p < 2^-20 with 2 terms,
# p < 1/64 with 9, p < 1/8 with 18, p < 1/4 with M_POW = 27).
TINY_BIN = NB // 64
MIDSMALL_BIN = NB // 8


# --------------------------------------------------------------------------
# Quadrature nodes (the rules themselves are built in rankseg_np._quadrature).


@njit(cache=True, nogil=True)
def make_rule(r0, rule, lt, lw, t, s):
    """Fill nodes for ``int_0^1 t^(a-1) H(t) dt ~ sum_k exp(lw_k + (a - c) lt_k) H(t_k)``; return c.

    ``rule`` is a :class:`~rankseg_np._quadrature.QuadratureRule`; rates up to
    SWITCH use its Gauss-Jacobi nodes, larger ones its Gauss-Laguerre nodes
    scaled by ``r0``.  ``s = 1 - t`` is stored separately, computed without
    cancellation.
    """
    theta, lag_v, lag_lw, jac_x, jac_lw = rule
    k_n = lag_v.size
    if r0 <= SWITCH:
        for k in range(k_n):
            x = jac_x[k]
            t[k] = 0.5 * (1.0 + x)
            s[k] = 0.5 * (1.0 - x)
            lt[k] = math.log(t[k])
            lw[k] = jac_lw[k]
        return theta
    lr = math.log(r0)
    for k in range(k_n):
        u = lag_v[k] / r0
        t[k] = math.exp(-u)
        s[k] = -math.expm1(-u)
        lt[k] = -u
        lw[k] = lag_lw[k] + lag_v[k] - lr
    return 0.0


# --------------------------------------------------------------------------
# Pieces of log G(t) and A(t) = sum_j q_j / (1 - q_j s).


# Power-sum terms by size class (see the remainder bound above).  The
# smallest pixels get only 2 terms: their remainder p^3/3 < 1e-18 already, and
# higher powers would sink into subnormal numbers (very slow arithmetic).
MICRO = 2.0**-20
N_MICRO, N_TINY, N_MIDSMALL = 2, 9, 18
POW_BLOCK = 256


@njit(cache=True, nogil=True)
def size_class(v):
    """0: p < 2^-20, 1: < 1/64, 2: < 1/8, 3: < 1/4 (2, 9, 18 and 27 power-sum terms)."""
    if v < TINY_BIN / NB:
        return 0 if v < MICRO else 1
    if v < MIDSMALL_BIN / NB:
        return 2
    return 3


@njit(cache=True, nogil=True)
def neumaier(total, comp, x):
    """``total + x`` with the rounding error added to ``comp`` (Neumaier's compensated sum).

    The sum's error stays ~1 ulp of the result, however many terms: the naive
    running sum's grows like sqrt(d) ulp, which put ``expected_metric`` at 3e-12
    for rows of 1e6 pixels.  (Not in a fastmath function: reassociation would
    cancel the correction.)
    """
    t = total + x
    if abs(total) >= abs(x):
        comp += (total - t) + x
    else:
        comp += (x - t) + total
    return t, comp


@njit(cache=True, nogil=True)
def _power_sums_exact_order(vals, n_terms, pows):
    """Power sums ``pows[m-1] += sum vals^m`` of one block without reassociation: the same rounding in every build
    (the parallel kernel and its serial twin may inline a reassociated loop differently)."""
    w = vals.copy()
    for m in range(n_terms):
        acc = 0.0
        for i in range(vals.size):
            acc += w[i]
            w[i] *= vals[i]
        pows[m] += acc


@njit(cache=True, nogil=True)
def class_power_sums_compensated(buf, starts, ends, pows):
    """Power sums of four size classes (class k in ``buf[starts[k]:ends[k]]``, 2, 9, 18 and 27 terms), Neumaier-compensated across blocks of POW_BLOCK pixels."""
    comp = np.zeros(M_POW)
    blk = np.empty(M_POW)
    terms = (N_MICRO, N_TINY, N_MIDSMALL, M_POW)
    for k in range(4):
        for start in range(starts[k], ends[k], POW_BLOCK):
            blk[:] = 0.0
            _power_sums_exact_order(buf[start : min(ends[k], start + POW_BLOCK)], terms[k], blk)
            for m in range(terms[k]):
                pows[m], comp[m] = neumaier(pows[m], comp[m], blk[m])
    for m in range(M_POW):
        pows[m] += comp[m]


@njit(cache=True, nogil=True)
def series_log(pows, s):
    """sum_j log(1 - p_j s) = -sum_m s^m P_m / m over the power-summed pixels (Horner)."""
    acc = 0.0
    for m in range(pows.size, 0, -1):
        acc = (acc + pows[m - 1] / m) * s
    return -acc


@njit(cache=True, nogil=True)
def series_frac(pows, s):
    """sum_j p_j / (1 - p_j s) = sum_m s^(m-1) P_m over the power-summed pixels."""
    acc = 0.0
    for m in range(pows.size, 0, -1):
        acc = acc * s + pows[m - 1]
    return acc


@njit(cache=True, nogil=True)
def one_minus(q, t, s):
    """1 - q s without cancellation: direct for q <= 1/2, t + (1-q) s above (1-q exact there)."""
    if q <= 0.5:
        return 1.0 - q * s
    return t + (1.0 - q) * s


@njit(cache=True, nogil=True)
def log_one_minus(q, t, s):
    """log(1 - q s) to a small *relative* error.

    ``log(one_minus(q, t, s))`` errs by up to ~1 ulp of 1 (1e-16) however small
    ``q s`` is, and a row adds d such logs: their errors reached 1e-12 in the
    score at d = 1e6.  ``log1p(-q s)`` errs by ~1 ulp of the result itself;
    ``t + (1 - q) s`` (no cancellation) takes over where ``q s > 1/2``.
    """
    x = q * s
    if x <= 0.5:
        return math.log1p(-x)
    return math.log(t + (1.0 - q) * s)


@njit(cache=True, nogil=True)
def rma_value(metric, s, n, mu, smooth):
    """The RMA objective L of a top-n set with sum s (MATH 4): a lower bound of the exact score."""
    if metric == DICE:
        v = 2.0 * s / (n + smooth + mu + 1.0)
        if smooth > 0.0:
            v += smooth / (n + smooth + mu)
        return v
    den = n + smooth + mu - s
    return (s + smooth) / den if den > 0.0 else 0.0


# --------------------------------------------------------------------------
# One row.


@njit(cache=True, nogil=True)
def _zero_score(smooth, rule, mu, lp0, pows, others, n_one):
    """Exact g E[1/(g + Gamma)] (the empty mask, g > 0) = P0 + g int t^(g-1) (G - P0) dt.

    Subtracting P0 = P(Gamma = 0) leaves rates >= g + 1 >= theta, so the
    Jacobi rule stays exact for small rates even when g < 1/2.
    """
    k_n = rule.lag_v.size
    lt = np.empty(k_n)
    lw = np.empty(k_n)
    t = np.empty(k_n)
    s = np.empty(k_n)
    c = make_rule(smooth + mu, rule, lt, lw, t, s)
    p0 = math.exp(lp0) if n_one == 0 else 0.0
    acc = 0.0
    for k in range(k_n):
        lg = series_log(pows, s[k]) + n_one * lt[k]
        for i in range(others.size):
            lg += log_one_minus(others[i], t[k], s[k])
        acc += math.exp(lw[k] + (smooth - c) * lt[k]) * (math.exp(lg) - p0)
    return p0 + smooth * acc


# The row solver, phase by phase: one vectorised read (sum, validity, count
# above 1/4) -> the entries above 1/4 packed -> their histogram -> lower bound
# -> bracket (bins) -> gather the band -> sharper bound and candidate volumes
# -> segments and the largest s of their rules -> power sums (the row's pixels
# at or below 1/4 in one vectorised read; the others by value) -> exact scores
# (the empty mask; segments of candidate volumes) -> the mask's threshold.

# The first read counts the entries above PACK_CUT, and they are packed (a few
# per cent of a softmax row) when they are at most 1/PACK_AT_MOST of the row,
# as in RMA (rankseg_np.cpu.rma).  Every later step but one vectorised read of
# the row (the power sums of the pixels at or below PACK_CUT) then reads the
# packed entries only, as long as the band lies above PACK_CUT's bin: the best
# masks' thresholds (about lam/2 for Dice, lam/(1+lam) for IoU) are above 1/4
# when they score above about 1/2 (Dice) or 1/3 (IoU).  Other rows read the
# whole row.
PACK_CUT = SMALL_BIN / NB
ABOVE_PACK_CUT = float(np.nextafter(PACK_CUT, 1.0))  # v <= PACK_CUT iff v < ABOVE_PACK_CUT
PACK_AT_MOST = 8

# Power sums (docs/exact.md section 3).  Each pixel's series is cut where its
# remainder is at most TRUNC at every node of the row's rules (s <= s_max);
# only pixels with p * s_max < X_SERIES use series (at most 27 terms for
# log(1 - p s), 31 for p / (1 - p s)); the others are visited per node.
TRUNC = 1e-18
X_SERIES = 0.25
M_MAX = 32
# Pixels below NANO keep one term (remainder (ps)^2/(2(1-ps)) < 2^-61) and
# those below MICRO two (< 2^-60/3): below TRUNC, and no product of subnormal
# numbers (very slow arithmetic) is ever formed.
NANO = 2.0**-30


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def range_power_sums(vals, hi, n_terms, pows):
    """pows[m-1] += sum of v^m over the entries v < hi of vals, m = 1..n_terms (float64).

    Terms m >= 2 skip v < NANO and terms m >= 3 skip v < MICRO (see NANO):
    right for ``log(1 - v s)``, whose remainder is absolute, and harmless for
    ``v / (1 - v s)`` (relative remainder) only because the pixels summed for it
    (those above the band) are at least 1/NB.
    The entries are selected, not gathered, so the loops vectorise: one read of
    ``vals`` in blocks of POW_BLOCK, then n_terms - 2 passes over each block in
    cache.  Reassociation lets the sums vectorise; they stay deterministic
    (fixed order for a given build) and float64.
    """
    n = vals.size
    x = np.empty(POW_BLOCK)
    y = np.empty(POW_BLOCK)
    for start in range(0, n, POW_BLOCK):
        k = min(n, start + POW_BLOCK) - start
        blk = vals[start : start + k]
        a1 = 0.0
        a2 = 0.0
        for i in range(k):
            v = np.float64(blk[i])
            v = v if v < hi else 0.0
            a1 += v
            v2 = v if v >= NANO else 0.0
            a2 += v2 * v2
            w = v if v >= MICRO else 0.0
            x[i] = w
            y[i] = w * w
        pows[0] += a1
        if n_terms >= 2:
            pows[1] += a2
        for m in range(2, n_terms):
            acc = 0.0
            for i in range(k):
                y[i] *= x[i]
                acc += y[i]
            pows[m] += acc


@njit(cache=True, nogil=True)
def series_terms(x, frac):
    """Fewest series terms M leaving at most TRUNC per pixel wherever p s <= x (x <= X_SERIES).

    ``log(1 - ps) = -sum_m (ps)^m / m`` leaves ``<= x^(M+1) / ((M+1)(1-x))``;
    ``p / (1 - ps) = p sum_m (ps)^(m-1)`` (``frac``) leaves a relative ``x^M / (1-x)``.
    """
    xm = x
    for m in range(1, M_MAX + 1):
        rem = xm / (1.0 - x) if frac else xm * x / ((m + 1) * (1.0 - x))
        if rem <= TRUNC:
            return m
        xm *= x
    return M_MAX


@njit(cache=True, nogil=True)
def _largest_s(r0, rule):
    """The largest ``s = 1 - t`` among the nodes :func:`make_rule` builds for central rate ``r0``."""
    largest = 0.0
    for k in range(rule.lag_v.size):  # loops: np.min / np.max add compilation
        if r0 <= SWITCH:
            s = 0.5 * (1.0 - rule.jac_x[k])
        else:
            s = -math.expm1(-rule.lag_v[k] / r0)
        largest = max(largest, s)
    return largest


@njit(cache=True, nogil=True)
def _histogram(vals):
    """NB-bin counts and float64 sums of values in [0, 1]."""
    counts = np.zeros(NB, dtype=np.int64)
    sums = np.zeros(NB)
    for i in range(vals.size):
        v = vals[i]
        b = min(int(v * NB), NB - 1)
        counts[b] += 1
        sums[b] += v
    return counts, sums


@njit(cache=True, nogil=True)
def _edge_bound(counts, sums, metric, mu, smooth):
    """Lower bound lam: the best RMA objective over the histogram-edge masks (and the empty mask)."""
    lam = smooth / (smooth + mu) if smooth > 0.0 else -np.inf
    acc_s = 0.0
    acc_n = 0
    for b in range(NB - 1, -1, -1):
        if counts[b] == 0:
            continue
        acc_s += sums[b]
        acc_n += counts[b]
        val = rma_value(metric, acc_s, acc_n, mu, smooth)
        if val > lam:
            lam = val
    return lam


@njit(cache=True, nogil=True)
def _test_terms(lam, metric, mu, smooth):
    """(lamp, alpha, ell, zero_cand) of the survival test h(tau) = alpha S - lamp tau >= ell."""
    lamp = lam * (1.0 - SLACK)
    alpha = 2.0 if metric == DICE else 1.0 + lamp
    ell = lamp * (smooth + mu - 1.0) - smooth
    zero_cand = smooth > 0.0 and math.exp(-mu) + 2.0 * smooth / (smooth + mu) >= lamp
    return lamp, alpha, ell, zero_cand


@njit(cache=True, nogil=True)
def _bracket(counts, sums, lamp, alpha, ell):
    """(b*, b_lo, b_hi): the bins outside [b_lo, b_hi] hold no candidate's cut (h concave)."""
    bstar = int((lamp / alpha) * NB)
    if bstar >= NB:
        bstar = NB - 1
    if bstar < 0:
        bstar = 0
    hmax = 0.0
    acc_s = 0.0
    acc_n = 0
    for b in range(NB - 1, -1, -1):
        acc_s += sums[b]
        acc_n += counts[b]
        hb = alpha * acc_s - lamp * acc_n
        if hb > hmax:
            hmax = hb
    hmax += alpha * counts[bstar] / NB  # the part of bin b* above the zero of g
    margin = max(hmax - ell, 0.0)
    margin = margin * (1.0 + 1e-7) + 1e-300
    b_hi = NB - 1
    deficit = 0.0
    for b in range(bstar + 1, NB):
        deficit += alpha * sums[b] - lamp * counts[b]
        if deficit > margin:
            b_hi = b
            break
    b_lo = 0
    deficit = 0.0
    for b in range(bstar - 1, -1, -1):
        deficit += lamp * counts[b] - alpha * sums[b]
        if deficit > margin:
            b_lo = b
            break
    return bstar, b_lo, b_hi


@njit(cache=True, nogil=True)
def _bin_bracket(vals, metric, mu, smooth):
    """The histogram of ``vals``, the bound lam and the bracket of bins around the candidates."""
    counts, sums = _histogram(vals)
    lam = _edge_bound(counts, sums, metric, mu, smooth)
    lamp, alpha, ell, _ = _test_terms(lam, metric, mu, smooth)
    bstar, b_lo, b_hi = _bracket(counts, sums, lamp, alpha, ell)
    return counts, sums, lam, bstar, b_lo, b_hi


@njit(cache=True, nogil=True)
def _widen(counts, sums, d, bstar, b_lo, b_hi, lamp, alpha, ell, floor):
    """(b_lo, b_hi) widened until the bins' float64 sums show h < ell at both band ends.

    ``h`` is concave, so then no volume outside the band survives; the
    histogram's estimate in :func:`_bracket` is a heuristic, this is the check.
    ``d`` is the row's length (the band may end at the last pixel).  Returns
    early once ``b_lo <= floor``: a histogram of packed entries knows nothing
    below the pack cut (and could widen forever), so the caller reads the whole
    row from there; ``floor = -1`` for a whole row's histogram, where the check
    holds at the latest for the band of all bins.
    """
    while True:
        n_top = 0
        s_top = 0.0
        for b in range(b_hi + 1, NB):
            n_top += counts[b]
            s_top += sums[b]
        n_in = n_top
        s_in = s_top
        for b in range(b_lo, b_hi + 1):
            n_in += counts[b]
            s_in += sums[b]
        ok_top = n_top == 0 or alpha * s_top - lamp * n_top < ell
        ok_bot = n_in == d or alpha * s_in - lamp * n_in < ell
        if ok_top and ok_bot:
            return b_lo, b_hi
        if not ok_top:
            b_hi = min(NB - 1, b_hi + max(1, b_hi - bstar))
        if not ok_bot:
            b_lo = max(0, b_lo - max(1, bstar - b_lo))
            if b_lo <= floor:
                return b_lo, b_hi


@njit(cache=True, nogil=True)
def _gather(src, counts, b_lo, b_hi, r_bin):
    """Split ``src`` by bins: above the band (top, and its sum), the band (values, positions in
    ``src``), and below it down to bin ``r_bin`` (mid); lower entries are not kept."""
    n_top = 0
    for b in range(b_hi + 1, NB):
        n_top += counts[b]
    w_n = 0
    for b in range(b_lo, b_hi + 1):
        w_n += counts[b]
    n_mid = 0
    for b in range(r_bin, b_lo):
        n_mid += counts[b]
    top_v = np.empty(n_top)
    band_v = np.empty(w_n)
    band_i = np.empty(w_n, dtype=np.int64)
    mid_v = np.empty(n_mid)
    s_top = 0.0
    jt = 0
    jb = 0
    jm = 0
    for i in range(src.size):
        v = src[i]
        b = min(int(v * NB), NB - 1)
        if b > b_hi:
            top_v[jt] = v
            s_top += v
            jt += 1
        elif b >= b_lo:
            band_v[jb] = v
            band_i[jb] = i
            jb += 1
        elif b >= r_bin:
            mid_v[jm] = v
            jm += 1
    return top_v, s_top, band_v, band_i, mid_v


@njit(cache=True, nogil=True)
def _band_bound(cum, n_top, lam, metric, mu, smooth):
    """A sharper lam: the best RMA objective over the band's own volumes.

    The histogram edges are poor masks when most of the row shares a bin
    (all values tiny: every pixel in bin 0, so lam came from the full mask
    alone and every volume passed the survival test).  Any larger lower bound
    keeps the candidates a subset of the bracketed ones: the band still holds them.
    """
    for i in range(cum.size):
        tau = n_top + i
        if tau >= 1:
            val = rma_value(metric, cum[i], tau, mu, smooth)
            if val > lam:
                lam = val
    return lam


@njit(cache=True, nogil=True)
def _candidates(cum, n_top, alpha, lamp, ell, zero_cand):
    """(c0, c1): the interval of volumes tau >= 1 where h = alpha S_tau - lamp tau >= ell (h is concave)."""
    c0 = -1
    c1 = -1
    best_h = -np.inf
    arg_h = -1
    for i in range(cum.size):
        tau = n_top + i
        if tau < 1:
            continue
        h = alpha * cum[i] - lamp * tau
        if h >= ell:
            if c0 < 0:
                c0 = tau
            c1 = tau
        if h > best_h:
            best_h = h
            arg_h = tau
    if c0 < 0 and not zero_cand:  # only float64 noise can get here: keep the best bound
        c0 = arg_h
        c1 = arg_h
    return c0, c1


@njit(cache=True, nogil=True)
def _rate(metric, tau, smooth, mu, s_tau):
    """Central rate a + E[X] of the integrals behind the score of volume tau."""
    if metric == DICE:
        return tau + smooth + mu + 0.5
    return tau + smooth + mu - s_tau


@njit(cache=True, nogil=True)
def _segments(metric, smooth, mu, c0, c1, n_top, cum):
    """Runs of candidate volumes whose central rates stay within SEG_RATIO: (starts, ends, r0),
    ``r0`` the geometric mean of a run's end rates (each run gets its own rule)."""
    n_c = c1 - c0 + 1
    starts = np.empty(n_c, dtype=np.int64)
    ends = np.empty(n_c, dtype=np.int64)
    r0 = np.empty(n_c)
    n = 0
    seg_s = c0
    while seg_s <= c1:
        r_s = _rate(metric, seg_s, smooth, mu, cum[seg_s - n_top])
        seg_e = seg_s
        while seg_e + 1 <= c1 and _rate(metric, seg_e + 1, smooth, mu, cum[seg_e + 1 - n_top]) <= SEG_RATIO * r_s:
            seg_e += 1
        starts[n] = seg_s
        ends[n] = seg_e
        r0[n] = math.sqrt(r_s * _rate(metric, seg_e, smooth, mu, cum[seg_e - n_top]))
        n += 1
        seg_s = seg_e + 1
    return starts[:n], ends[:n], r0[:n]


@njit(cache=True, nogil=True)
def _largest_below(vals, cut):
    """The largest entry of ``vals`` below ``cut`` (0 if none)."""
    x = 0.0
    for i in range(vals.size):
        if vals[i] < cut and vals[i] > x:
            x = vals[i]
    return x


@njit(cache=True, nogil=True)
def _per_node(vals, cut):
    """(the entries at or above ``cut`` but below 1, in order; how many entries equal 1):
    the pixels visited per node (those equal to 1 give ``log(1 - s) = log t`` exactly)."""
    n_node = 0
    n_one = 0
    for i in range(vals.size):
        if vals[i] >= cut:  # below it, 1 itself is in the power sums
            n_node += 1
            n_one += vals[i] == 1.0
    node = np.empty(n_node - n_one)
    j = 0
    for i in range(vals.size):
        if vals[i] >= cut and vals[i] < 1.0:
            node[j] = vals[i]
            j += 1
    return node, n_one


@njit(cache=True, nogil=True)
def _exact_scores(metric, smooth, rule, starts, ends, r0, c0, c1, n_top, pows_out, o_node, o_one, pows_top, t_node,
                  n_one, bv, w_in):
    """f[tau - c0] for tau in [c0, c1]: exact scores (IoU: before the factor S_tau + g), segment by segment.

    Per node: the pixels outside every candidate mask through ``pows_out``,
    ``o_node`` and ``o_one`` (pixels equal to 1); for Dice the pixels inside every one (above the band) through
    ``pows_top``, ``t_node`` and ``n_one`` (pixels equal to 1); the band's
    first ``w_in`` pixels one by one, then each volume in O(1).
    """
    n_c = c1 - c0 + 1
    f = np.zeros(n_c)
    k_n = rule.lag_v.size
    lt = np.empty(k_n)
    lw = np.empty(k_n)
    tt = np.empty(k_n)
    ss = np.empty(k_n)
    den = np.empty(w_in)
    for g in range(starts.size):
        seg_s = starts[g]
        seg_e = ends[g]
        c = make_rule(r0[g], rule, lt, lw, tt, ss)
        i_s = seg_s - n_top  # band pixels [0, i_s) are inside every mask of the segment
        for k in range(k_n):
            t = tt[k]
            s = ss[k]
            lg = series_log(pows_out, s) + o_one * lt[k]
            for i in range(o_node.size):
                lg += log_one_minus(o_node[i], t, s)
            if metric == DICE:
                lg += series_log(pows_top, s) + n_one * lt[k]
                a_sum = series_frac(pows_top, s) + n_one / t
                for i in range(t_node.size):
                    q = t_node[i]
                    lg += log_one_minus(q, t, s)
                    a_sum += q / one_minus(q, t, s)
                for i in range(w_in):
                    den[i] = one_minus(bv[i], t, s)
                    lg += log_one_minus(bv[i], t, s)
                for i in range(i_s):
                    a_sum += bv[i] / den[i]
                e = math.exp(lw[k] + (seg_s + smooth - c) * lt[k] + lg)
                for tau in range(seg_s, seg_e + 1):
                    f[tau - c0] += e * (2.0 * t * a_sum + smooth)
                    if tau < seg_e:
                        i = tau - n_top
                        a_sum += bv[i] / den[i]
                        e *= t
            else:
                for i in range(i_s, w_in):
                    den[i] = one_minus(bv[i], t, s)
                    lg += log_one_minus(bv[i], t, s)
                e = math.exp(lw[k] + (seg_s + smooth - c) * lt[k] + lg)
                for tau in range(seg_s, seg_e + 1):
                    f[tau - c0] += e
                    if tau < seg_e:
                        e *= t / den[tau - n_top]
    return f


@njit(cache=True, nogil=True)
def _concat(a, b, c):
    """a, b and c end to end (element loops: slice assignments compile for seconds)."""
    out = np.empty(a.size + b.size + c.size)
    for i in range(a.size):
        out[i] = a[i]
    for i in range(b.size):
        out[a.size + i] = b[i]
    for i in range(c.size):
        out[a.size + b.size + i] = c[i]
    return out


@njit(cache=True, nogil=True)
def _tie_end(row, bv, bi, i, packed):
    """One past the row index of the last pixel of the mask ``bv[:i + 1]`` (the band sorted
    descending) that equals ``v = bv[i]``, when the mask keeps some of the pixels equal to ``v``
    and not others: the mask keeps the lowest-index ones.

    ``bi`` holds row indices when the band was gathered from the row (in row order, and the
    sort keeps ties in that order), positions among the packed entries when ``packed``:
    ``scan_row`` packs in its reading order, not in row order, so the row is searched for
    the n-th pixel equal to ``v`` (every pixel equal to ``v`` is in the band).
    """
    if not packed:
        return bi[i] + 1
    v = bv[i]
    first = i
    while first > 0 and bv[first - 1] == v:
        first -= 1
    n = i - first + 1  # pixels equal to v in the mask
    for j in range(row.size):
        if row[j] == v:
            n -= 1
            if n == 0:
                return j + 1
    return row.size  # not reached: every pixel equal to v is in the row


@njit(cache=True, nogil=True)
def _scored_volumes(row, packed_v, n_low, mu, metric, smooth, rule):
    """The candidate volumes of an active row and their exact scores.

    ``n_low`` counts the entries above PACK_CUT, ``packed_v`` holds them (in
    ``scan_row``'s reading order) when ``0 < n_low <= d // PACK_AT_MOST``,
    ``mu`` is the row's sum.
    Returns ``(zero, c0, f, n_top, bv, bi, packed, b_hi)``: ``zero`` the
    empty mask's score (-inf when it is no candidate), ``f[tau - c0]`` the
    score of volume ``tau`` in ``[c0, c0 + f.size)`` (``c0 = -1``, ``f``
    empty: none), ``bv``/``bi`` the band sorted (values descending, positions
    in the packed entries when ``packed``, else in the row), ``n_top`` the
    pixels above it (bins above ``b_hi``).
    """
    d = row.size
    # Bracket on the packed entries; on the whole row when the band reaches
    # PACK_CUT's bin (then also bin 512 would hold unpacked entries equal to 1/4).
    # One call site per kernel: each inlined copy adds compilation time.
    packed = 0 < n_low <= d // PACK_AT_MOST  # no entry above the cut: no bound from packed entries
    src = packed_v if packed else row
    while True:
        counts, sums, lam, bstar, b_lo, b_hi = _bin_bracket(src, metric, mu, smooth)
        lamp, alpha, ell, zero_cand = _test_terms(lam, metric, mu, smooth)
        if not (packed and b_lo <= SMALL_BIN):
            b_lo, b_hi = _widen(counts, sums, d, bstar, b_lo, b_hi, lamp, alpha, ell, SMALL_BIN if packed else -1)
        if packed and b_lo <= SMALL_BIN:
            packed = False
            src = row
            continue
        break

    # Pixels below the band and at or below PACK_CUT (below r_hi) never enter
    # the gathered arrays: only power sums of the whole row read them.
    r_bin = 0 if packed else SMALL_BIN
    r_hi = ABOVE_PACK_CUT if packed else min(b_lo, SMALL_BIN) / NB
    top_v, s_top, band_v, band_i, mid_v = _gather(src, counts, b_lo, b_hi, r_bin)
    n_top = top_v.size
    w_n = band_v.size
    bv, bi = sort_desc_stable(band_v, band_i)  # descending; ties keep their order (see _tie_end)
    cum = np.empty(w_n + 1)  # S_tau for tau = n_top + i
    cum[0] = s_top
    for i in range(w_n):
        cum[i + 1] = cum[i] + bv[i]

    lam = _band_bound(cum, n_top, lam, metric, mu, smooth)
    lamp, alpha, ell, zero_cand = _test_terms(lam, metric, mu, smooth)
    c0, c1 = _candidates(cum, n_top, alpha, lamp, ell, zero_cand)

    # The rules of the segments (and of the empty mask) fix the largest s at
    # which the power sums must hold, hence their number of terms.  Band
    # pixels past the last candidate volume are outside every mask scored.
    w_in = c1 - n_top if c0 >= 1 else 0
    if c0 >= 1:
        starts, ends, r0 = _segments(metric, smooth, mu, c0, c1, n_top, cum)
    else:
        starts, ends, r0 = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0)
    s_max = 0.0
    for g in range(r0.size):
        s_max = max(s_max, _largest_s(r0[g], rule))
    if zero_cand:
        s_max = 1.0  # P(Gamma = 0) = G at s = 1
    cut = X_SERIES / s_max  # pixels at or above it are visited per node

    pows_out = np.zeros(M_MAX)
    m_row = series_terms(r_hi * s_max, False)
    range_power_sums(row, r_hi, m_row, pows_out)
    out_v = _concat(mid_v, bv[w_in:], bv[:0])
    pows_top = np.zeros(M_MAX)
    in_every = top_v if metric == DICE or zero_cand else top_v[:0]  # IoU's scores never see them
    m_out = series_terms(_largest_below(out_v, cut) * s_max, False)
    m_top = series_terms(_largest_below(in_every, cut) * s_max, True)
    for k in range(2):  # one call site (see above)
        range_power_sums((out_v, in_every)[k], cut, (m_out, m_top)[k], (pows_out, pows_top)[k])
    o_node, o_one = _per_node(out_v, cut)
    t_node, n_one = _per_node(in_every, cut)
    pows_out = pows_out[: max(m_row, m_out)]
    pows_top = pows_top[:m_top]

    zero = -np.inf
    if zero_cand:
        others = _concat(o_node, t_node, bv[:w_in])
        pows_all = np.zeros(max(pows_out.size, pows_top.size))
        for m in range(pows_out.size):
            pows_all[m] += pows_out[m]
        for m in range(pows_top.size):
            pows_all[m] += pows_top[m]
        lp0 = series_log(pows_all, 1.0)
        for i in range(others.size):  # a pixel equal to 1 (in the band) makes P0 = 0
            lp0 += math.log1p(-others[i]) if others[i] < 1.0 else -np.inf
        zero = _zero_score(smooth, rule, mu, lp0, pows_all, others, n_one + o_one)
    if c0 < 1:
        return zero, -1, np.empty(0), n_top, bv, bi, packed, b_hi
    f = _exact_scores(metric, smooth, rule, starts, ends, r0, c0, c1, n_top, pows_out, o_node, o_one, pows_top,
                      t_node, n_one, bv, w_in)
    if metric == IOU:
        for tau in range(c0, c1 + 1):
            f[tau - c0] *= cum[tau - n_top] + smooth
    return zero, c0, f, n_top, bv, bi, packed, b_hi


@njit(cache=True, nogil=True)
def _exact_row(row, bits, one, prune, low, metric, smooth, rule):
    """(threshold, tie_end, active, mu, bad) for one row; see the module docstring."""
    d = row.size
    out = np.empty(d // PACK_AT_MOST + 64 // row.itemsize, dtype=row.dtype)  # room for scan_row's packing
    mu, top, n_low, k = scan_row(row, bits, low, row.dtype.type(PACK_CUT), out)
    if top > one:  # a negative sign, NaN, inf or a value above 1 (or -0.0: see decide)
        return np.inf, 0, False, mu, True
    if not top > prune:
        return np.inf, 0, False, mu, False
    if smooth == 0.0 and mu < TINY_MU:  # exact = RMA to below float64 resolution (see TINY_MU)
        s_half, n_half = sum_above(row, 0.5)
        if metric == DICE:
            _, th = dinkelbach_dice(row, 0.0, mu + 1.0, s_half, n_half, 0.5)
        else:
            _, th = dinkelbach_iou(row, 0.0, mu, s_half, n_half, 0.5)
        return th, 0, True, mu, False

    zero, c0, f, n_top, bv, bi, packed, b_hi = _scored_volumes(row, out[:k], n_low, mu, metric, smooth, rule)
    best = zero
    best_tau = 0 if zero > -np.inf else -1
    for j in range(f.size):  # the first maximum
        if f[j] > best:
            best = f[j]
            best_tau = c0 + j
    w_n = bv.size

    if best_tau <= 0:
        return np.inf, 0, True, mu, False
    if best_tau == n_top:
        # Only the float64-noise fallback above can pick the top set itself:
        # {p >= (b_hi + 1) / NB}, the pixels of the bins above the band.
        return (b_hi + 1) / NB, d, True, mu, False
    # The mask: {p > v} plus the lowest-index pixels equal to v (all ties sit
    # in the band; _tie_end finds them in row order).  Only a cut inside a
    # group of ties needs the index of its last included pixel.
    i = best_tau - n_top - 1
    v = bv[i]
    if i + 1 < w_n and bv[i + 1] == v:
        return v, _tie_end(row, bv, bi, i, packed), True, mu, False
    return v, d, True, mu, False


@parallel_kernel(cache=True)
def _exact_rows(p2, bits, one, prune, low, metric, smooth, rule, threshold, tie_end, active, mu, bad):
    for r in prange(p2.shape[0]):
        th, te, ac, m, bd = _exact_row(p2[r], bits[r], one, prune, low, metric, smooth, rule)
        threshold[r] = th
        tie_end[r] = te
        active[r] = ac
        mu[r] = m
        bad[r] = bd


# --------------------------------------------------------------------------
# Exact expected score of an arbitrary mask (rankseg_np.expected_metric).


@njit(cache=True, nogil=True)
def expected_row(p, m, metric, smooth, rule):
    """(exact expected score, bad-value flag) of mask ``m`` on row ``p``."""
    d = p.size
    mu, mu_c = 0.0, 0.0
    s_in, s_in_c = 0.0, 0.0
    tau = 0
    n_big = 0
    n_cls = np.zeros((2, 4), dtype=np.int64)  # small pixels by (outside/inside, size class)
    bad = False
    for i in range(d):
        v = p[i]
        if not (v >= 0.0 and v <= 1.0):
            bad = True
            continue
        mu, mu_c = neumaier(mu, mu_c, v)
        if m[i]:
            s_in, s_in_c = neumaier(s_in, s_in_c, v)
            tau += 1
        if v >= 0.25:
            n_big += 1
        elif v > 0.0:
            n_cls[1 if m[i] else 0, size_class(v)] += 1
    if bad:
        return 0.0, True
    mu += mu_c
    s_in += s_in_c
    if tau == 0 and smooth == 0.0:
        return 0.0, False  # Dice = 0 and IoU = 0 for the empty mask (0/0 := 0)

    # Power sums of the small pixels (inside and outside the mask); the others are kept.
    # One buffer, eight segments: (outside, inside) x size class.
    starts = np.zeros((2, 4), dtype=np.int64)
    acc_n = 0
    for a in range(2):
        for k in range(4):
            starts[a, k] = acc_n
            acc_n += n_cls[a, k]
    small_buf = np.empty(acc_n)
    ends = starts.copy()
    big = np.empty(n_big)
    big_in = np.empty(n_big, dtype=np.bool_)
    n_one = 0
    n_one_in = 0
    j = 0
    lp0, lp0_c = 0.0, 0.0
    for i in range(d):
        v = p[i]
        if v >= 0.25:
            if v == 1.0:
                n_one += 1
                if m[i]:
                    n_one_in += 1
                continue
            big[j] = v
            big_in[j] = m[i]
            lp0, lp0_c = neumaier(lp0, lp0_c, math.log1p(-v))
            j += 1
        elif v > 0.0:
            a = 1 if m[i] else 0
            k = size_class(v)
            small_buf[ends[a, k]] = v
            ends[a, k] += 1
    n_big = j
    pows_out = np.zeros(M_POW)
    pows_in = np.zeros(M_POW)
    class_power_sums_compensated(small_buf, starts[0], ends[0], pows_out)
    class_power_sums_compensated(small_buf, starts[1], ends[1], pows_in)
    pows = pows_out + pows_in
    lp0 += lp0_c + series_log(pows, 1.0)

    if tau == 0:  # smooth > 0: g E[1/(g + Gamma)], as for the empty mask in the solver
        others = big[:n_big].copy()
        return _zero_score(smooth, rule, mu, lp0, pows, others, n_one), False

    k_n = rule.lag_v.size
    lt = np.empty(k_n)
    lw = np.empty(k_n)
    tt = np.empty(k_n)
    ss = np.empty(k_n)
    if metric == DICE:
        r0 = tau + smooth + mu + 0.5
    else:
        r0 = tau + smooth + mu - s_in
    c = make_rule(r0, rule, lt, lw, tt, ss)
    acc = 0.0
    for k in range(k_n):
        t = tt[k]
        s = ss[k]
        if metric == DICE:
            # G over every pixel; A = sum over the mask of p/(1 - p s).
            lg, lg_c = series_log(pows, s), n_one * lt[k]
            a_sum, a_c = series_frac(pows_in, s), n_one_in / t
            for i in range(n_big):
                lg, lg_c = neumaier(lg, lg_c, log_one_minus(big[i], t, s))
                if big_in[i]:
                    a_sum, a_c = neumaier(a_sum, a_c, big[i] / one_minus(big[i], t, s))
            expo = (lw[k] + (tau + smooth - c) * lt[k]) + (lg + lg_c)
            acc += math.exp(expo) * (2.0 * t * (a_sum + a_c) + smooth)
        else:
            # Only the pixels outside the mask.
            lg, lg_c = series_log(pows_out, s), (n_one - n_one_in) * lt[k]
            for i in range(n_big):
                if not big_in[i]:
                    lg, lg_c = neumaier(lg, lg_c, log_one_minus(big[i], t, s))
            acc += math.exp((lw[k] + (tau + smooth - c) * lt[k]) + (lg + lg_c))
    if metric == IOU:
        acc *= s_in + smooth
    return acc, False


@parallel_kernel(cache=True)
def expected_rows(p2, m2, metric, smooth, rule, out, bad):
    for r in prange(p2.shape[0]):
        out[r], bad[r] = expected_row(p2[r], m2[r], metric, smooth, rule)


def decide(p3: np.ndarray, cfg: Config) -> RowDecision:
    """Exact decision for every row of a C-contiguous float32/float64 ``(B, C, d)`` array."""
    metric = IOU if cfg.metric == "iou" else DICE
    b, c, d = p3.shape
    one, prune, low = (bit_pattern(t, p3.dtype) for t in (1.0, cfg.pruning_prob, PACK_CUT))
    args = (one, prune, low, metric, cfg.smooth, rules(cfg.smooth))
    try:
        return decide_rows(_exact_rows, p3, as_bits(p3).reshape(b * c, d), *args)
    except ValueError:  # raised for rows whose top bit pattern is above 1.0's
        if not np.all((p3 >= 0.0) & (p3 <= 1.0)):  # NaN fails both comparisons
            raise
    # Only -0.0 (the sign bit alone) failed the bit test, and it is a valid value:
    # adding +0.0 turns it into 0.0 and leaves every other value unchanged.
    p3 = p3 + p3.dtype.type(0.0)
    return decide_rows(_exact_rows, p3, as_bits(p3).reshape(b * c, d), *args)
