"""BA, TRNA and BA+TRNA (MATH section 6) on the CPU, in Numba.

These are the refined-normal approximations of Dai & Li (JMLR 2023), kept so
that users of ``rankseg`` 0.0.8 who call them by name get the same masks.
The exact solver supersedes both.  Dice only, one row = one (image, class).

Notation (MATH section 3): ``q_1 >= ... >= q_d`` the sorted row, ``S_tau``
its prefix sums, ``Gamma = sum_j Y_j`` and ``Gamma_{-j} = Gamma - Y_j``.  The
count laws are replaced by the refined normal law (Volkova 1996)

    F(k) = clip(Phi(x) + kappa (1 - x^2) phi(x) / 6, 0, 1),  x = (k + 1/2 - m) / s,
    pmf(k) = max(F(k) - F(k - 1), 0)

with ``m``, ``s^2``, ``kappa`` the mean, variance and skewness of the count,
restricted to the integer support ``[lq, uq]`` of ``Gamma`` that holds its
central ``1 - eps`` mass (quantiles of the standardised law, then
``lq = floor(s z_lo + m) - 1``, ``uq = ceil(s z_hi + m)``, clipped to
``[0, d]``), and renormalised there.  With ``A(n) = 1/(n+g+1)`` and
``N(n) = g/(n+g)`` (``g`` = smooth), the volume scores are

    BA:    pi(tau) = 2 S_tau  E[A(Gamma + tau)]               + E[N(Gamma + tau)]
    TRNA:  pi(tau) = 2 sum_{j<=tau} q_j E[A(Gamma_{-j} + tau)] + E[N(Gamma + tau)]

for ``tau = 1..up_tau`` and ``pi(0) = E[N(Gamma)]`` (0 when ``g = 0``); the
law of ``Gamma_{-j}`` is the refined normal law with the row's moments less
pixel ``j``'s share, evaluated on ``Gamma``'s support.  ``up_tau`` is the
search bound of the paper's Lemma 3: the first ``tau`` with
``S_tau >= (tau + g + d) q_{tau+1}`` (``d`` if none).  The mask is the top-tau
set of the first maximiser.  For ``g >= 1`` the equivalent score
``g (pi - 1)`` is maximised (it keeps differences that ``pi ~ 1`` would round
away), as ``rankseg`` does.  ``BA+TRNA`` uses BA on a row when
``1 / s < 0.2`` (Cohen's d), TRNA otherwise.

What makes it fast
------------------
* ``rankseg`` evaluates the TRNA law of every ``Gamma_{-j}`` in Python, one
  volume at a time (about 30 s for one 128x128 image with 21 classes).  Here
  the law of ``Gamma_{-j}`` comes from the row's three moments less pixel
  ``j``'s share (O(1) per ``j``), ``W_tau(k) = sum_{j<=tau} q_j pmf_j(k)`` is
  updated in place, every score is a dot product with a precomputed weight
  table, and everything is compiled and parallel over rows.
* Volumes far beyond the optimum are never scored: every law lives on
  ``k >= lq`` and has mass 1, so ``pi(tau) <= B(tau) = 2 S_tau A(lq + tau) +
  N(lq + tau)``.  ``B`` is non-increasing from the first ``tau`` with
  ``q_{tau+1} (lq + g + 1 + tau) <= S_tau`` on (``phi(tau) = q_{tau+1}(c +
  tau) - S_tau`` is non-increasing because ``q`` is, and ``N`` decreases), so
  the scan stops as soon as that holds and ``B(tau)`` is below the best score
  so far (with a margin for rounding).  This is a proof, not a heuristic: it
  changes no answer, and on softmax images it skips most of the volumes
  below ``up_tau``.

Precision: following rankseg's arithmetic
------------------------------------------
``rankseg`` computes everything in the input's dtype, and on float32 input
two volumes often score within float32 rounding of each other (more often
the larger the image), so its choice depends on exactly how each float32
value was rounded.  For float32 input this module therefore repeats
PyTorch's float32 arithmetic wherever that is possible to do exactly:

* elementwise operations (the law's parameters and those of every
  ``Gamma_{-j}``, the argument ``x``, the weight tables, the Lemma 3
  comparison, the scores) are rounded to float32 after each operation, in
  PyTorch's order (a float64 operation on float32 operands, rounded once,
  is the correctly rounded float32 result); PyTorch evaluates
  ``scalar / tensor`` as ``reciprocal(tensor) * scalar``, and so does this;
* the prefix sums are PyTorch's CPU ``cumsum``: float64 accumulation,
  float32 storage;
* sums (the row moments; for BA the normalisation of the law and the score
  of the empty mask) follow ATen's float32 ``sum`` kernel: a cascade of
  partial sums over 8-lane vectors (the width of ATen's AVX2 sum kernel,
  which x86 builds also use on AVX-512 machines; assumed 4 on ARM, where
  this was not checked), 4 interleaved
  accumulators, then the scalar tail and the lanes in order;
* the BA scores are rankseg's ``conv1d``, which on the CPU accumulates each
  output sequentially over the kernel taps, with separate float32 multiplies
  and adds for inputs of up to 20480 values and with fused multiply-adds
  (oneDNN) above: :func:`_ba` does the same.

What cannot be repeated are the last bits of PyTorch's vectorised ``erf``,
``exp`` and ``sqrt`` (MKL's vector math: faithful, not correctly rounded;
here the correctly rounded values, which agree with PyTorch's on about
98.5% of ``erf`` arguments and 81% of ``sqrt`` arguments, so the law's scale
differs in the last bit on about one row in five) and the sum of a single
row of more than 32768 values (split across threads by PyTorch).  For BA they change a few values of the
law by an ulp (and sometimes its normalisation), which is enough to reorder
volumes tied within an ulp on large images; for TRNA they make rankseg's float32
running sum ``W_tau`` drift away from any imitation, so TRNA evaluates its
laws and scores in float64 from rankseg's (float32) parameters and rounds
each score to float32 at the end (see :func:`_trna`).  Rows whose top
volumes are tied within that residual noise can differ from ``rankseg``; the
tests check that each such row is a tie at float32 precision and measure
how often it happens.  On float64 input everything runs in float64 and rows
agree except for exact ties.
"""

from __future__ import annotations

import math
import platform
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange
from scipy.optimize import brentq

from .._decision import RowDecision
from .._validate import Config, raise_bad_values
from ._kernels import first_pass

BA = 0
TRNA = 1

SQRT2 = math.sqrt(2.0)
INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
LOG_SQRT2PI = math.log(math.sqrt(2.0 * math.pi))
F32_EPS = float(np.finfo(np.float32).eps)
F64_EPS = float(np.finfo(np.float64).eps)
# rankseg maximises smooth * (pi - 1) for smooth >= 1 (same argmax in exact
# arithmetic), and compares the Lemma 3 bound by division above 1e6.
SCALED_SMOOTH = 1.0
DIVIDE_SMOOTH = 1e6
# Cohen's d switch of BA+TRNA: BA when 1 / max(sigma, 1e-8) < 0.2.
COHEN_D = 0.2
SIGMA_FLOOR = 1e-8
# SciPy's generic ppf: bracket from +-10, widening by 10x, then brentq with
# the rv_continuous default xtol.
PPF_FACTOR = 10.0
PPF_XTOL = 1e-14
# Early stop of the volume scan: stop only when the bound is below the best
# score by this relative margin (float64 scores carry ~1e-15 relative error,
# float32 ones up to ~1e-6).
STOP_RTOL_F64 = 1e-9
STOP_RTOL_F32 = 1e-4
# Volumes per chunk of the BA convolution (between early-stop checks).
CHUNK = 256
# PyTorch's CPU conv1d goes to oneDNN for float32 inputs longer than this
# (ATen's use_mkldnn heuristic for a 1x1x1xL input).
ONEDNN_MIN_LENGTH = 20480
# Lanes of ATen's float32 sum kernel (Vectorized<float> of its AVX2 / default
# build on x86, NEON on ARM).  Only used to round sums as PyTorch does.
SUM_LANES = 4 if platform.machine().lower() in ("arm64", "aarch64") else 8
# Sorted rows are kept for one block of rows at a time (bytes; the sort
# needs twice that).
BLOCK_BYTES = 1 << 26


# --------------------------------------------------------------------------
# The support: quantiles of the standardised refined normal law (Python)
# --------------------------------------------------------------------------


def _refined_cdf(x: float, skew: float) -> float:
    """F(x) = clip(Phi(x) + skew (1 - x^2) phi(x) / 6, 0, 1) for a standardised x."""
    phi = math.exp(-0.5 * x * x) * INV_SQRT2PI
    v = 0.5 * math.erfc(-x / SQRT2) + skew * (1.0 - x * x) * phi / 6.0
    return min(max(v, 0.0), 1.0)


def _ppf(prob: float, skew: float) -> float:
    """Quantile of the refined normal law, located as SciPy's generic ``ppf`` locates it.

    The CDF is clipped and, for large skew, not monotone; which root is
    returned then depends on the bracket, so the bracket is SciPy's.
    """
    if prob <= 0.0:
        return -math.inf
    if prob >= 1.0:
        return math.inf

    def f(x):
        return _refined_cdf(x, skew) - prob

    left, right = -PPF_FACTOR, math.inf
    while f(left) > 0.0:
        left, right = left * PPF_FACTOR, left
    if math.isinf(right):
        right = max(PPF_FACTOR, left)
        while f(right) < 0.0:
            left, right = right, right * PPF_FACTOR
    return brentq(f, left, right, xtol=PPF_XTOL)


def _standard_interval(skew: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Standardised quantiles (z_lo, z_hi) holding the central 1 - eps of each row's law."""
    confidence = 1.0 - eps
    p_lo = (1.0 - confidence) / 2.0
    p_hi = (1.0 + confidence) / 2.0
    lo = np.empty(skew.size)
    hi = np.empty(skew.size)
    cache: dict[float, tuple[float, float]] = {}
    for i, k in enumerate(skew.tolist()):
        if k not in cache:
            cache[k] = (_ppf(p_lo, k), _ppf(p_hi, k))
        lo[i], hi[i] = cache[k]
    return lo, hi


# --------------------------------------------------------------------------
# Float32 arithmetic as PyTorch rounds it
# --------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _r(x, f32):
    """``x`` rounded to float32 when ``f32``, else unchanged.

    Applied after each float64 operation on float32-representable operands,
    this gives exactly the float32 operation's result: +, -, *, / and sqrt
    computed in float64 and rounded once are correctly rounded in float32.
    """
    if f32:
        return float(np.float32(x))
    return x


@njit(cache=True, nogil=True)
def _ceil_log2(x):
    """ceil(log2(x)) for x > 2, and 1 for x <= 2 (ATen's convention)."""
    if x <= 2:
        return 1
    v = x - 1
    bits = 0
    while v > 0:
        v >>= 1
        bits += 1
    return bits


@njit(cache=True, nogil=True)
def _cascade(x, start, stride, size, power):
    """Float32 sum of ``x[start + i * stride]``, i < size, in ATen's cascade (``multi_row_sum``).

    Level 0 takes ``2^power`` items at a time and is then flushed into
    level 1; level ``j`` is flushed into level ``j + 1`` whenever the item
    count is a multiple of ``2^(power (j + 1))``.  So only partial sums of
    similar size are ever added; the levels are added up at the end.
    """
    step = 1 << power
    mask = step - 1
    zero = np.float32(0.0)
    a0 = zero
    a1 = zero
    a2 = zero
    a3 = zero
    i = 0
    while i + step <= size:
        for _ in range(step):
            a0 += x[start + i * stride]
            i += 1
        a1 += a0
        a0 = zero
        if (i & (mask << power)) == 0:
            a2 += a1
            a1 = zero
            if (i & (mask << (2 * power))) == 0:
                a3 += a2
                a2 = zero
    while i < size:
        a0 += x[start + i * stride]
        i += 1
    return ((a0 + a1) + a2) + a3


@njit(cache=True, nogil=True)
def _aten_sum32(x, n, lanes, part):
    """Sum of the float32 array ``x[:n]``, rounded exactly as ATen's CPU float32 ``sum`` rounds it.

    A row of at least ``lanes`` values is read as ``n // lanes`` vectors,
    interleaved 4 ways (vector ``4 i + r`` goes to accumulator ``r``), each
    lane summed by :func:`_cascade`; leftover vectors go to accumulator 0,
    accumulators 1-3 are added to it, then the result is the scalar tail plus
    the lanes in order.  A shorter row is summed the same way as scalars.
    ``part`` is float32 scratch of ``lanes`` values.
    """
    width = lanes if n >= lanes else 1
    items = n // width
    groups = items // 4
    power = max(4, _ceil_log2(groups) // 4)
    for k in range(width):
        acc = _cascade(x, k, 4 * width, groups, power)
        for r in range(1, 4):
            if r == 1:
                # accumulator 0 also receives the leftover items
                for it in range(4 * groups, items):
                    acc += x[it * width + k]
            acc += _cascade(x, r * width + k, 4 * width, groups, power)
        part[k] = acc
    if width == 1:
        return part[0]
    total = np.float32(0.0)
    for i in range(items * width, n):
        total += x[i]
    for k in range(width):
        total += part[k]
    return total


@njit(cache=True, nogil=True)
def _sum(x, n, f32, buf, part):
    """sum(x[:n]): ATen's float32 rounding when ``f32``, else a float64 running sum."""
    if f32:
        for i in range(n):
            buf[i] = x[i]
        return float(_aten_sum32(buf, n, part.size, part))
    total = 0.0
    for i in range(n):
        total += x[i]
    return total


# --------------------------------------------------------------------------
# The refined normal law on the support
# --------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _cdf_at(k, loc, scale, skew, f32, c_sqrt2, c_log):
    """F(k) of the refined normal law at the integer ``k``, one rounding per operation.

    The order is that of rankseg's ``RefinedNormalPB.cdf`` through
    ``torch.distributions.Normal``: Phi = 0.5 (1 + erf(x / sqrt 2)) and
    phi = exp(-x^2 / 2 - log sqrt(2 pi)).
    """
    x = _r(_r(k + 0.5 - loc, f32) / scale, f32)
    big_phi = _r(0.5 * _r(1.0 + _r(math.erf(_r(x / c_sqrt2, f32)), f32), f32), f32)
    x2 = _r(x * x, f32)
    small_phi = _r(math.exp(_r(-0.5 * x2 - c_log, f32)), f32)
    term = _r(_r(_r(skew * _r(1.0 - x2, f32), f32) * small_phi, f32) / 6.0, f32)
    v = _r(big_phi + term, f32)
    if v < 0.0:
        return 0.0
    if v > 1.0:
        return 1.0
    return v


@njit(cache=True, nogil=True, error_model="numpy")
def _law(lq, n, loc, scale, skew, f32, out, buf, part):
    """Normalised pmf of the refined normal law on k = lq .. lq+n-1, written to ``out``.

    Returns the mass before normalisation.  A zero mass leaves NaN in ``out``,
    as the division by a zero sum does in rankseg.
    """
    c_sqrt2 = _r(SQRT2, f32)
    c_log = _r(LOG_SQRT2PI, f32)
    prev = _cdf_at(lq - 1, loc, scale, skew, f32, c_sqrt2, c_log)
    for i in range(n):
        cur = _cdf_at(lq + i, loc, scale, skew, f32, c_sqrt2, c_log)
        v = _r(cur - prev, f32)
        out[i] = v if v > 0.0 else 0.0
        prev = cur
    total = _sum(out, n, f32, buf, part)
    for i in range(n):
        out[i] = _r(out[i] / total, f32)
    return total


# --------------------------------------------------------------------------
# Per-row statistics
# --------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _row_peaks(p2, mu, peak, bad):
    """Per row: float64 sum, maximum, and whether any value is NaN/inf/outside [0, 1]."""
    for r in prange(p2.shape[0]):
        total, mx, b, _, _ = first_pass(p2[r])
        mu[r] = total
        peak[r] = mx
        bad[r] = b


@njit(cache=True)
def _moments(qbuf, mean, var, m3, f32, lanes):
    """The three moments of each sorted row, summed as rankseg sums them.

    rankseg sums ``q``, ``q (1 - q)`` and ``q (1 - q)(1 - 2q)`` over the row
    sorted descending, in the input dtype; for float32 input the elementwise
    products are rounded per operation and the sums follow ATen's float32
    ``sum`` (the order of a float32 sum changes its last bits, and those move
    the support and every law).  For float64 input: plain float64 sums.
    """
    for i in range(qbuf.shape[0]):
        q = qbuf[i]
        d = q.size
        if f32:
            part = np.zeros(lanes, np.float32)
            t = np.empty(d, dtype=np.float32)
            one = np.float32(1.0)
            two = np.float32(2.0)
            for k in range(d):
                t[k] = q[k]
            mean[i] = _aten_sum32(t, d, lanes, part)
            for k in range(d):
                v = np.float32(q[k])
                t[k] = v * (one - v)
            var[i] = _aten_sum32(t, d, lanes, part)
            for k in range(d):
                v = np.float32(q[k])
                t[k] = (v * (one - v)) * (one - two * v)
            m3[i] = _aten_sum32(t, d, lanes, part)
        else:
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            for k in range(d):
                v = float(q[k])
                a = v * (1.0 - v)
                s1 += v
                s2 += a
                s3 += a * (1.0 - 2.0 * v)
            mean[i] = s1
            var[i] = s2
            m3[i] = s3


# --------------------------------------------------------------------------
# The volume search of one row
# --------------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy")
def _up_tau(q, prefix, smooth, f32):
    """Lemma 3's search bound: first tau in 1..d-1 with S_tau >= (tau + g + d) q_{tau+1}, else d.

    The comparison is rankseg's, in the input precision: ``((tau + g) + d) * q``
    against the stored cumsum (by division when g > 1e6).
    """
    d = q.size
    if d == 1:
        return 1
    g = _r(smooth, f32)
    for tau in range(1, d):
        den = _r(_r(tau + g, f32) + d, f32)
        if smooth > DIVIDE_SMOOTH:
            stop = _r(prefix[tau] / den, f32) >= q[tau]
        else:
            stop = prefix[tau] >= _r(den * q[tau], f32)
        if stop:
            return tau
    return d


@njit(cache=True, nogil=True)
def _stop(q, exact, tau, lq, smooth, scaled, best, rtol):
    """True when no volume >= tau can beat ``best`` (the bound of the module docstring)."""
    d = q.size
    q_next = q[tau] if tau < d else 0.0
    s_tau = exact[tau]
    if q_next * (lq + smooth + 1.0 + tau) > s_tau:
        return False  # the bound may still rise
    k = lq + tau
    if scaled:
        a = 2.0 * s_tau / (1.0 + (k + 1.0) / smooth)
        b = -k / (1.0 + k / smooth)
    else:
        a = 2.0 * s_tau / (k + smooth + 1.0)
        b = smooth / (k + smooth) if smooth > 0.0 else 0.0
    return a + b < best - rtol * (abs(a) + abs(b) + abs(best))


@njit(cache=True, nogil=True, error_model="numpy")
def _empty_score(lq, n, full, smooth, s_r, scaled, f32, prod, buf, part):
    """Score of the empty mask, tau = 0: E[N(Gamma)], or 0 when smooth = 0."""
    if smooth == 0.0:
        return 0.0
    for i in range(n):
        k = float(lq + i)
        if scaled:
            t = _r(k / _r(1.0 + _r(k / s_r, f32), f32), f32)
        else:
            t = _r(1.0 / _r(k + s_r, f32), f32)
        prod[i] = _r(t * full[i], f32)
    total = _sum(prod, n, f32, buf, part)
    if scaled:
        return -total
    return _r(s_r * total, f32)


@njit(cache=True, nogil=True)
def _conv32(w, x, t0, t1, fused, out):
    """out[t - t0] = sum_j w[j] x[t + j] for t in [t0, t1), in float32, taps in order.

    ``w`` and ``x`` hold float32 values (in float64 arrays).  Each step is
    computed in float64 (where a product of two float32 values is exact) and
    rounded to float32: after the product and after the sum
    (``fused=False``: PyTorch's own convolution), or once (``fused=True``: a
    fused multiply-add, oneDNN's).  Going through float64 changes no float32
    result unless the exact value lies within 2^-29 ulp of a float32 midpoint.
    """
    m = t1 - t0
    for t in range(m):
        out[t] = 0.0
    for j in range(w.size):
        c = w[j]
        if fused:
            for t in range(m):
                out[t] = float(np.float32(out[t] + c * x[t0 + t + j]))
        else:
            for t in range(m):
                out[t] = float(np.float32(out[t] + float(np.float32(c * x[t0 + t + j]))))


@njit(cache=True, nogil=True)
def _conv64(w, x, t0, t1, out):
    """The same convolution in float64 (float64 input)."""
    m = t1 - t0
    for t in range(m):
        out[t] = 0.0
    for j in range(w.size):
        c = w[j]
        for t in range(m):
            out[t] = out[t] + c * x[t0 + t + j]


@njit(cache=True, nogil=True, error_model="numpy")
def _ba(q, exact, prefix, up, lq, n, full, smooth, f32, rtol, prod, buf, part):
    """First maximiser of the BA score over tau = 0..up.

    rankseg forms all BA scores as one ``conv1d`` of the law with a weight
    table, in the input dtype.  PyTorch's CPU convolution accumulates each
    output sequentially over the taps; for float32 input longer than 20480
    values it hands the work to oneDNN, which does the same with fused
    multiply-adds.  :func:`_conv32` repeats both.  Volumes go in chunks so
    the early stop applies.
    """
    scaled = smooth >= SCALED_SMOOTH
    s_r = _r(smooth, f32)
    # Weight tables, indexed by m = k + tau - 1 - lq (rankseg's conv1d input).
    size = n + up - 1
    xa = np.empty(size)
    xn = np.empty(size)
    for m in range(size):
        k = float(lq + m)
        if scaled:
            xa[m] = _r(1.0 / _r(1.0 + _r(_r(k + 2.0, f32) / s_r, f32), f32), f32)
            xn[m] = _r(-_r(k + 1.0, f32) / _r(1.0 + _r(_r(k + 1.0, f32) / s_r, f32), f32), f32)
        else:
            rd = _r(_r(k + s_r, f32) + 1.0, f32)
            xa[m] = _r(1.0 / _r(rd + 1.0, f32), f32)
            # PyTorch evaluates ``scalar / tensor`` as reciprocal(tensor) * scalar.
            xn[m] = _r(_r(1.0 / rd, f32) * s_r, f32)
    best = _empty_score(lq, n, full, smooth, s_r, scaled, f32, prod, buf, part)
    best_tau = 0
    ma = np.zeros(CHUNK)
    nu = np.zeros(CHUNK)
    fused = size > ONEDNN_MIN_LENGTH
    t0 = 0
    while t0 < up:
        if _stop(q, exact, t0 + 1, lq, smooth, scaled, best, rtol):
            break
        t1 = min(up, t0 + CHUNK)
        if f32:
            _conv32(full, xa, t0, t1, fused, ma)
            if smooth > 0.0:
                _conv32(full, xn, t0, t1, fused, nu)
        else:
            _conv64(full, xa, t0, t1, ma)
            if smooth > 0.0:
                _conv64(full, xn, t0, t1, nu)
        for t in range(t1 - t0):
            tau = t0 + t + 1
            score = _r(_r(2.0 * ma[t], f32) * prefix[tau], f32)
            score = _r(score + nu[t], f32)
            if score > best:
                best = score
                best_tau = tau
        t0 = t1
    return best_tau


@njit(cache=True, nogil=True, error_model="numpy")
def _trna(q, exact, up, lq, n, full, loc, var_raw, m3_raw, smooth, f32, rtol, prod, buf, part):
    """First maximiser of the TRNA score over tau = 0..up.

    The law of each ``Gamma_{-j}`` takes rankseg's parameters (rounded as
    its input-dtype arithmetic rounds them), but the laws, the weights
    ``W_tau`` and the scores are evaluated in float64, and each score is
    rounded to float32 only at the end for float32 input (so that volumes
    tied in float32 go to the first, as in rankseg).  rankseg accumulates
    ``W_tau`` in float32 over thousands of volumes; once a single ``erf`` or
    ``exp`` differs in its last bit (see the module docstring) that running
    sum cannot be followed bit for bit, and the float64 value then predicts
    rankseg's choice better than an imitation: measured on 21-class float32
    softmax images, 89% vs 85% identical rows at 128x128 (both 100% at 64x64).
    """
    scaled = smooth >= SCALED_SMOOTH
    floor = F32_EPS if f32 else F64_EPS
    # Weight tables indexed by m = k + tau - lq (float64).
    size = n + up
    ta = np.empty(size)
    tn = np.empty(size)
    for m in range(size):
        k = float(lq + m)
        if scaled:
            ta[m] = 2.0 / (1.0 + (k + 1.0) / smooth)
            tn[m] = k / (1.0 + k / smooth)
        else:
            ta[m] = 2.0 / (k + smooth + 1.0)
            tn[m] = 1.0 / (k + smooth)
    best = _r(_empty_score(lq, n, full, smooth, smooth, scaled, False, prod, buf, part), f32)
    best_tau = 0
    w = np.zeros(n)
    pmf = np.empty(n)
    for tau in range(1, up + 1):
        if _stop(q, exact, tau, lq, smooth, scaled, best, rtol):
            break
        qj = q[tau - 1]
        # Law of Gamma_{-j}: the row's moments less pixel j's share, with
        # rankseg's operations and (input-dtype) rounding.
        one_m = _r(1.0 - qj, f32)
        a = _r(qj * one_m, f32)
        loc_j = _r(loc - qj, f32)
        var_j = max(_r(var_raw - a, f32), floor)
        scale_j = _r(math.sqrt(var_j), f32)
        m3_j = _r(m3_raw - _r(a * _r(1.0 - _r(2.0 * qj, f32), f32), f32), f32)
        skew_j = _r(m3_j / _r(var_j**1.5, f32), f32)
        mass = _law(lq, n, loc_j, scale_j, skew_j, False, pmf, buf, part)
        if not mass > 0.0:
            return tau  # a NaN score: torch.argmax returns the first NaN
        score = 0.0
        for i in range(n):
            w[i] += qj * pmf[i]
            score += ta[i + tau] * w[i]
        if smooth > 0.0:
            total = 0.0
            for i in range(n):
                total += tn[i + tau] * full[i]
            score += -total if scaled else smooth * total
        score = _r(score, f32)
        if score > best:
            best = score
            best_tau = tau
    return best_tau


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_row(q, kind, loc, scale, skew, var_raw, m3_raw, lq, uq, smooth, f32, lanes):
    """Optimal volume of one active row; ``q`` is the row sorted descending (float64 values)."""
    d = q.size
    # PyTorch's CPU cumsum accumulates in float64 and stores in the input
    # dtype; ``exact`` keeps the float64 sums for the early-stop bound.
    exact = np.empty(d + 1)
    prefix = np.empty(d + 1)
    exact[0] = 0.0
    prefix[0] = 0.0
    acc = 0.0
    for i in range(d):
        acc += q[i]
        exact[i + 1] = acc
        prefix[i + 1] = _r(acc, f32)
    up = _up_tau(q, prefix, smooth, f32)
    n = uq - lq + 1
    full = np.empty(n)
    prod = np.empty(n)
    buf = np.empty(n, dtype=np.float32)
    part = np.zeros(lanes, np.float32)
    # BA imitates rankseg's float32 arithmetic throughout; TRNA only up to
    # its parameters (see _trna).
    emulate = f32 and kind == BA
    if not _law(lq, n, loc, scale, skew, emulate, full, buf, part) > 0.0:
        # Normalising by a zero sum makes every score with the law in it NaN
        # in rankseg (the empty mask's too when smooth > 0); torch.argmax
        # returns the first NaN.
        return 0 if smooth > 0.0 else 1
    rtol = STOP_RTOL_F32 if f32 else STOP_RTOL_F64
    if kind == BA:
        return _ba(q, exact, prefix, up, lq, n, full, smooth, f32, rtol, prod, buf, part)
    return _trna(q, exact, up, lq, n, full, loc, var_raw, m3_raw, smooth, f32, rtol, prod, buf, part)


@njit(parallel=True, cache=True)
def _solve_rows(qbuf, kinds, loc, scale, skew, var_raw, m3_raw, lq, uq, smooth, f32, lanes, tau, need, group):
    """Optimal volume ``tau`` of each sorted row, and its tie group at the cut.

    The top-tau set is ``{p > v}`` plus the first ``need`` pixels equal to
    ``v = q_tau``, out of the ``group`` pixels equal to ``v`` (contiguous in
    the sorted row).
    """
    for i in prange(qbuf.shape[0]):
        q = qbuf[i]
        t = _solve_row(q, kinds[i], loc[i], scale[i], skew[i], var_raw[i], m3_raw[i], lq[i], uq[i], smooth, f32, lanes)
        tau[i] = t
        if t == 0:
            continue
        v = q[t - 1]
        first = t - 1
        while first > 0 and q[first - 1] == v:
            first -= 1
        last = t
        while last < q.size and q[last] == v:
            last += 1
        need[i] = t - first
        group[i] = last - first


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _sorted_desc(rows: np.ndarray) -> np.ndarray:
    """Each row sorted descending, as float64 (exact), sorted in place by NumPy in parallel threads.

    NumPy's sort (SIMD on x86) is several times faster than Numba's and
    releases the GIL; the kernels take float64 so that they are compiled
    once for both input dtypes.
    """
    workers = min(numba.get_num_threads(), rows.shape[0])
    if workers > 1:
        bounds = np.linspace(0, rows.shape[0], workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: rows[bounds[i] : bounds[i + 1]].sort(axis=1), range(workers)))
    else:
        rows.sort(axis=1)
    return rows[:, ::-1].astype(np.float64)


def _law_parameters(mean, var, m3, f32):
    """(scale, skew) of each row's count law, with rankseg's operations and rounding."""
    if f32:
        r = lambda x: np.asarray(x, dtype=np.float32).astype(np.float64)  # noqa: E731
        safe = np.maximum(var, F32_EPS)
        scale = r(np.sqrt(safe))
        skew = r(m3 / r(safe**1.5))
    else:
        safe = np.maximum(var, F64_EPS)
        scale = np.sqrt(safe)
        skew = m3 / safe**1.5
    return scale, skew


def _kinds(solver: str, scale: np.ndarray, f32: bool) -> np.ndarray:
    if solver == "ba":
        return np.full(scale.size, BA, dtype=np.int64)
    if solver == "trna":
        return np.full(scale.size, TRNA, dtype=np.int64)
    # Cohen's d = 1 / sigma, in the input dtype as rankseg compares it.
    ftype = np.float32 if f32 else np.float64
    sigma = np.maximum(scale.astype(ftype), ftype(SIGMA_FLOOR))
    use_ba = (ftype(1.0) / sigma) < ftype(COHEN_D)
    return np.where(use_ba, BA, TRNA).astype(np.int64)


def decide(p3: np.ndarray, cfg: Config) -> RowDecision:
    """BA / TRNA / BA+TRNA decision for every row of a C-contiguous float32/float64 ``(B, C, d)`` array.

    Parameters
    ----------
    p3 : ndarray, shape (B, C, d)
        C-contiguous float32 or float64 probabilities.
    cfg : Config
        Validated configuration; ``cfg.solver`` is ``'ba'``, ``'trna'`` or
        ``'ba+trna'``, ``cfg.eps`` the tail mass left out of the support.

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
    p2 = p3.reshape(b * c, d)
    rows = b * c
    mu = np.empty(rows)
    peak = np.empty(rows)
    bad = np.empty(rows, dtype=np.bool_)
    _row_peaks(p2, mu, peak, bad)
    if bad.any():
        raise_bad_values(p3)

    f32 = p3.dtype == np.float32
    active = peak > cfg.pruning_prob
    threshold = np.full(rows, np.inf)
    tie_end = np.zeros(rows, dtype=np.int64)
    idx = np.flatnonzero(active).astype(np.int64)
    # Sorted rows are held for one block of active rows at a time.
    block = max(1, BLOCK_BYTES // (d * 8))
    for start in range(0, idx.size, block):
        ids = idx[start : start + block]
        qbuf = _sorted_desc(p2[ids])
        mean = np.empty(ids.size)
        var = np.empty(ids.size)
        m3 = np.empty(ids.size)
        _moments(qbuf, mean, var, m3, bool(f32), SUM_LANES)
        scale, skew = _law_parameters(mean, var, m3, f32)
        z_lo, z_hi = _standard_interval(skew, cfg.eps)
        with np.errstate(invalid="ignore", over="ignore"):
            lq = np.clip(np.floor(scale * z_lo + mean) - 1.0, 0.0, d)
            uq = np.clip(np.ceil(scale * z_hi + mean), 0.0, d)
        tau = np.zeros(ids.size, dtype=np.int64)
        need = np.zeros(ids.size, dtype=np.int64)
        group = np.zeros(ids.size, dtype=np.int64)
        _solve_rows(
            qbuf, _kinds(cfg.solver, scale, f32), mean, scale, skew, var, m3,
            lq.astype(np.int64), uq.astype(np.int64), float(cfg.smooth), bool(f32), SUM_LANES,
            tau, need, group,
        )
        for i in np.flatnonzero(tau > 0):
            r = ids[i]
            v = qbuf[i, tau[i] - 1]
            threshold[r] = v
            # Ties at the cut go to the lowest pixel indices.
            tie_end[r] = d if need[i] == group[i] else int(np.flatnonzero(p2[r] == v)[need[i] - 1]) + 1
    shape = (b, c)
    return RowDecision(threshold.reshape(shape), tie_end.reshape(shape), active.reshape(shape), mu.reshape(shape))
