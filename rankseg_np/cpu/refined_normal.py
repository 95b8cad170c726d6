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
  ``j``'s share (O(1) per ``j``); the laws of a chunk of volumes of all rows
  are tabulated in one vectorised call, and ``W_tau(k) = sum_{j<=tau} q_j
  pmf_j(k)`` and the scores are updated in place by a compiled kernel,
  parallel over rows.
* Volumes far beyond the optimum are never scored: every law lives on
  ``k >= lq`` and has mass 1, so ``pi(tau) <= B(tau) = 2 S_tau A(lq + tau) +
  N(lq + tau)``.  ``B`` is non-increasing from the first ``tau`` with
  ``q_{tau+1} (lq + g + 1 + tau) <= S_tau`` on (``phi(tau) = q_{tau+1}(c +
  tau) - S_tau`` is non-increasing because ``q`` is, and ``N`` decreases), so
  the scan stops as soon as that holds and ``B(tau)`` is below the best score
  so far by a margin that covers the rounding of the scores (1e-4 relative
  plus one float32 ulp per accumulated rounding).  It changes no answer, and
  on softmax images it skips most of the volumes below ``up_tau``.

Precision: rankseg's arithmetic, bit for bit
--------------------------------------------
``rankseg`` computes everything in the input's dtype, and on float32 input
two volumes often score within float32 rounding of each other (more often
the larger the image), so its choice depends on exactly how each float32
value was rounded.  This module therefore repeats PyTorch's arithmetic:

* elementwise operations are rounded to the working dtype after each
  operation, in PyTorch's order (a float64 operation on float32 operands,
  rounded once, is the correctly rounded float32 result; numpy's float32
  operations are too); PyTorch evaluates ``scalar / tensor`` as
  ``reciprocal(tensor) * scalar``, and so does this;
* the prefix sums are PyTorch's CPU ``cumsum``: float64 accumulation,
  float32 storage;
* float32 sums (the row moments, the normalisation of every law, the TRNA
  and empty-mask scores) follow ATen's float32 ``sum`` kernel: a cascade of
  partial sums over 8-lane vectors (the width of ATen's AVX2 sum kernel;
  assumed 4 on ARM, where this was not checked), 4 interleaved
  accumulators, then the scalar tail and the lanes in order;
* the BA scores are rankseg's ``conv1d``, which on the CPU accumulates each
  output sequentially over the kernel taps, with separate float32 multiplies
  and adds for inputs of up to 20480 values and with fused multiply-adds
  (oneDNN) above: :func:`_ba` does the same;
* TRNA accumulates ``W_tau`` in float32 over thousands of volumes, as
  rankseg does;
* the law's ``sqrt``, ``erf``, ``exp`` and ``x ** 1.5`` are PyTorch's own
  when PyTorch is importable (``law_math='auto'``, see :class:`TorchMath`):
  they are faithful but not correctly rounded (MKL's vector math), and the
  law is tabulated outside Numba (:func:`_cdf_table`) so that they can be
  called.  Without PyTorch (``law_math='numpy'``) the correctly rounded
  values are used; the law then differs in the last bit of a few values on
  most rows, and rows whose best volumes are tied within float32 rounding
  can differ from rankseg's (measured by ``benchmarks/bench_refined_normal.py
  --agreement``; the tests check that each such row is a tie).

Left out: the sum of a single row of more than 32768 values, which PyTorch
splits across threads (its rounding then depends on the thread count), and
ATen's position-dependent ``x ** 1.5`` when ``B * C > 32768`` (also split).
On float64 input the elementwise operations are followed the same way but
sums run in plain order (ATen's float64 cascade is not imitated): a
difference there needs a tie at 1e-16.
"""

from __future__ import annotations

import math
import platform
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import scipy.special
from numba import njit, prange
from scipy.optimize import brentq

from .._decision import RowDecision
from .._validate import Config, raise_bad_values
from ._kernels import first_pass
from ._threads import parallel_kernel

BA = 0
TRNA = 1

SQRT2 = math.sqrt(2.0)
SQRT_2PI = float(np.sqrt(2 * np.pi))
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
# Volumes per chunk of the BA convolution (between early-stop checks), and
# at most per chunk of TRNA laws.
CHUNK = 256
# Values of F per tabulated chunk of TRNA laws (float32: 4 bytes each, and a
# few temporaries of that size while the table is built).
TABLE_VALUES = 1 << 22
# PyTorch's CPU conv1d goes to oneDNN for float32 inputs longer than this
# (ATen's use_mkldnn heuristic for a 1x1x1xL input).
ONEDNN_MIN_LENGTH = 20480
# Lanes of ATen's float32 sum kernel (Vectorized<float> of its AVX2 / default
# build on x86, NEON on ARM).  Only used to round sums as PyTorch does.
SUM_LANES = 4 if platform.machine().lower() in ("arm64", "aarch64") else 8
_MEASURED_LANES = None  # PyTorch's, once measured (TorchMath.sum_lanes)
# Sorted rows are kept for one block of rows at a time (bytes; the sort
# needs twice that).
BLOCK_BYTES = 1 << 26


# --------------------------------------------------------------------------
# The support: quantiles of the standardised refined normal law (Python)
# --------------------------------------------------------------------------


def _refined_cdf(x: float, skew: float) -> float:
    """F(x) = clip(Phi(x) + skew (1 - x^2) phi(x) / 6, 0, 1) for a standardised x."""
    # SciPy's norm.cdf / norm.pdf, operation for operation (rankseg's interval is SciPy's).
    phi = math.exp(-(x**2) / 2.0) / SQRT_2PI
    v = float(scipy.special.ndtr(x)) + skew * (1 - x**2) * phi / 6
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


class NumpyMath:
    """``sqrt``, ``x ** 1.5``, ``erf`` and ``exp`` correctly rounded to the array's dtype.

    Each function is evaluated in float64 and rounded once, which is the
    correctly rounded float32 result except in cases of probability ~2^-29.
    Used when PyTorch is not importable.
    """

    name = "numpy"

    @staticmethod
    def _apply(f, a):
        a = np.asarray(a)
        return f(a.astype(np.float64)).astype(a.dtype)

    def sqrt(self, a):
        return self._apply(np.sqrt, a)

    def erf(self, a):
        return self._apply(scipy.special.erf, a)

    def exp(self, a):
        return self._apply(np.exp, a)

    def pow15(self, a):
        """``a ** 1.5`` of a whole tensor, as rankseg computes it on the ``(B, C)`` moments."""
        return self._apply(lambda v: v**1.5, a)

    def sum_lanes(self) -> int:
        """Vector width of ATen's float32 ``sum`` assumed for this machine."""
        return SUM_LANES


class TorchMath(NumpyMath):
    """The same functions evaluated by PyTorch's CPU kernels, as ``rankseg`` evaluates them.

    PyTorch's float32 ``sqrt``, ``erf`` and ``exp`` (MKL's vector math) are
    faithful but not correctly rounded (``sqrt`` differs from the correctly
    rounded value on ~17% of arguments, ``erf`` and ``exp`` on ~1%), and on
    large images those last bits decide which of two volumes tied in float32
    wins.  Their result depends only on the argument (checked: one value, a
    short tensor and a long one give the same bits), so calling them on our
    own arrays reproduces rankseg's values.  ``pow15`` is different: ATen
    raises a tensor to 1.5 with a vectorised ``pow`` over whole 16-value
    blocks and the scalar ``pow`` on the tail (correctly rounded on every
    value checked), so the result depends on the position; it is called on
    an array laid out like rankseg's ``(B, C)`` tensor.
    """

    name = "torch"

    def __init__(self, torch):
        self._torch = torch

    def _apply(self, f, a):
        a = np.ascontiguousarray(a)
        with self._torch.no_grad():
            return f(self._torch.from_numpy(a)).numpy()

    def sqrt(self, a):
        return self._apply(self._torch.sqrt, a)

    def erf(self, a):
        return self._apply(self._torch.erf, a)

    def exp(self, a):
        return self._apply(self._torch.exp, a)

    def pow15(self, a):
        return self._apply(lambda t: t**1.5, a)

    def sum_lanes(self) -> int:
        """Vector width of this PyTorch's float32 ``sum`` (8 on AVX2, 16 on AVX-512 kernels).

        Measured once: the width for which :func:`_aten_sum32` reproduces
        ``torch.sum`` on test vectors of several lengths (the machine's
        default if none does).
        """
        global _MEASURED_LANES
        if _MEASURED_LANES is None:
            rng = np.random.default_rng(0)
            tests = [rng.random(n).astype(np.float32) ** 3 for n in (7, 45, 300, 4097, 30000)]
            with self._torch.no_grad():
                want = [self._torch.from_numpy(t).sum().item() for t in tests]
            _MEASURED_LANES = SUM_LANES
            for lanes in (SUM_LANES, 8, 16, 4):
                part = np.zeros(lanes, np.float32)
                if all(float(_aten_sum32(t, t.size, lanes, part)) == w for t, w in zip(tests, want)):
                    _MEASURED_LANES = lanes
                    break
        return _MEASURED_LANES


def law_math(kind: str = "auto") -> NumpyMath:
    """The elementwise functions of the law: PyTorch's when importable (``"auto"``), else NumPy's.

    ``kind`` is ``"auto"``, ``"torch"`` or ``"numpy"`` (the ``law_math``
    solver parameter).
    """
    if kind != "numpy":
        try:
            import torch
        except ImportError as err:
            if kind == "torch":
                raise ImportError("law_math='torch' needs PyTorch: pip install torch") from err
        else:
            return TorchMath(torch)
    return NumpyMath()


def _cdf_table(k_first: np.ndarray, m: int, loc, scale, skew, vm: NumpyMath) -> np.ndarray:
    """F(k) of the refined normal law at ``k = k_first + i``, ``i < m``, in the dtype of ``loc``.

    ``k_first`` has the shape of the parameters, the result one more axis of
    length ``m``.  Operations and roundings are those of rankseg's
    ``RefinedNormalPB.cdf`` through ``torch.distributions.Normal`` (one
    rounding per operation, in the working dtype): ``x = (k + 1/2 - m) / s``,
    ``Phi = 0.5 (1 + erf(x / sqrt 2))``, ``phi = exp(-x^2 / 2 - log sqrt(2 pi))``,
    ``F = clip(Phi + skew (1 - x^2) phi / 6, 0, 1)``.  The arithmetic runs in
    compiled kernels; ``erf`` and ``exp`` are ``vm``'s, on whole arrays.
    """
    loc = np.asarray(loc)
    ft = loc.dtype.type
    shape = loc.shape
    flat = [np.ascontiguousarray(np.broadcast_to(v, shape)).ravel() for v in (k_first, loc, scale, skew)]
    k0, loc, scale, skew = flat
    f32 = ft is np.float32
    x = np.empty((loc.size, m), dtype=ft)
    to_erf = np.empty_like(x)
    to_exp = np.empty_like(x)
    _cdf_arguments(k0.astype(np.int64), loc, scale, f32, x, to_erf, to_exp)
    _cdf_combine(x, vm.erf(to_erf), vm.exp(to_exp), skew, f32)
    return x.reshape(shape + (m,))


@parallel_kernel(cache=True, error_model="numpy")
def _cdf_arguments(k0, loc, scale, f32, x, to_erf, to_exp):
    """x = (k + 1/2 - loc) / scale, and the arguments x / sqrt 2 and -x^2/2 - log sqrt(2 pi)."""
    c_sqrt2 = _r(SQRT2, f32)
    c_log = _r(LOG_SQRT2PI, f32)
    for r in prange(x.shape[0]):
        for i in range(x.shape[1]):
            # PyTorch forms k + 0.5 from an int64 tensor in its default dtype, float32.
            k_half = float(np.float32(float(k0[r] + i) + 0.5))
            v = _r(_r(k_half - loc[r], f32) / scale[r], f32)
            x[r, i] = v
            to_erf[r, i] = _r(v / c_sqrt2, f32)
            to_exp[r, i] = _r(-0.5 * _r(v * v, f32) - c_log, f32)


@parallel_kernel(cache=True, error_model="numpy")
def _cdf_combine(x, erf_v, exp_v, skew, f32):
    """x <- clip(0.5 (1 + erf) + ((skew (1 - x^2)) exp) / 6, 0, 1), in place."""
    for r in prange(x.shape[0]):
        for i in range(x.shape[1]):
            v = float(x[r, i])
            big_phi = _r(0.5 * _r(1.0 + erf_v[r, i], f32), f32)
            term = _r(_r(_r(skew[r] * _r(1.0 - _r(v * v, f32), f32), f32) * exp_v[r, i], f32) / 6.0, f32)
            f = _r(big_phi + term, f32)
            x[r, i] = min(max(f, 0.0), 1.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _law_from_cdf(cdf, n, f32, out, buf, part):
    """Normalised pmf ``max(F(k) - F(k-1), 0)`` on the ``n`` points after ``cdf[0]``, written to ``out``.

    Rounded as rankseg rounds it in the working precision (``f32``).
    Returns the mass before normalisation.  A zero mass leaves NaN in
    ``out``, as the division by a zero sum does in rankseg.
    """
    for i in range(n):
        v = _r(float(cdf[i + 1]) - float(cdf[i]), f32)
        out[i] = v if v > 0.0 else 0.0
    total = _sum(out, n, f32, buf, part)
    for i in range(n):
        out[i] = _r(out[i] / total, f32)
    return total


# --------------------------------------------------------------------------
# Per-row statistics
# --------------------------------------------------------------------------


@parallel_kernel(cache=True)
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
def _empty_score(lq, n, full, smooth, s_r, scaled, f32, prod, buf, part, tau=0):
    """E[N(Gamma + tau)], or 0 when smooth = 0: the score of the empty mask (tau = 0) and the
    smooth term of every TRNA score, rounded as rankseg's ``smooth * sum((1 / (k + g)) * pmf)``."""
    if smooth == 0.0:
        return 0.0
    for i in range(n):
        k = _r(float(lq + i) + tau, f32)
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
        # a score carries the n roundings of its convolution and a few more
        if _stop(q, exact, t0 + 1, lq, smooth, scaled, best, rtol + (n + 4) * (F32_EPS if f32 else F64_EPS)):
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
def _trna_score(w, full, n, lq, tau, smooth, s_r, scaled, f32, prod, buf, part):
    """rankseg's TRNA score of volume ``tau`` from ``W_tau`` (``w``) and the law of Gamma (``full``).

    ``2 sum_k A(k + tau) W_tau(k) + E[N(Gamma + tau)]`` (or ``g (pi - 1)``
    for ``g >= 1``), with rankseg's operations: ``2 / x`` is PyTorch's
    ``reciprocal(x) * 2``, each product is rounded, and the sums are
    ATen's (float32 input).
    """
    for i in range(n):
        k = _r(float(lq + i) + tau, f32)
        if scaled:
            den = _r(1.0 + _r(_r(k + 1.0, f32) / s_r, f32), f32)
        else:
            den = _r(_r(k + s_r, f32) + 1.0, f32)
        prod[i] = _r(_r(_r(1.0 / den, f32) * 2.0, f32) * w[i], f32)
    score = _sum(prod, n, f32, buf, part)
    if smooth > 0.0:
        score = _r(score + _empty_score(lq, n, full, smooth, s_r, scaled, f32, prod, buf, part, tau), f32)
    return score


@parallel_kernel(cache=True, error_model="numpy")
def _trna_chunk(qbuf, exacts, rows, cdf, tau0, lq, uq, up, fulls, w, best, tau, done, smooth, f32, lanes):
    """Scores volumes ``tau0[a] ..`` of the TRNA row ``rows[a]``, one per row of ``cdf[a]``.

    ``cdf[a, c]`` is the law of ``Gamma_{-j}`` for the volume ``tau0[a] + c``
    (``j`` = that volume's last pixel), tabulated by :func:`_cdf_table`;
    everything is rounded as rankseg rounds it in the input dtype, and
    ``W_tau`` (``w``) is rankseg's running sum.  ``best``, ``tau`` and
    ``done`` carry the scan from chunk to chunk.
    """
    scaled = smooth >= SCALED_SMOOTH
    s_r = _r(smooth, f32)
    rtol = STOP_RTOL_F32 if f32 else STOP_RTOL_F64
    ulp = F32_EPS if f32 else F64_EPS
    for a in prange(rows.size):
        i = rows[a]
        q = qbuf[i]
        n = uq[i] - lq[i] + 1
        wi = w[i]
        pmf = np.empty(n)
        prod = np.empty(n)
        buf = np.empty(n, dtype=np.float32)
        part = np.zeros(lanes, np.float32)
        for c in range(cdf.shape[1]):
            t = tau0[a] + c
            # W_tau carries up to t roundings, a score n more.
            margin = rtol + (t + n) * ulp
            if t > up[i] or _stop(q, exacts[i], t, lq[i], smooth, scaled, best[i], margin):
                done[i] = True
                break
            if not _law_from_cdf(cdf[a, c], n, f32, pmf, buf, part) > 0.0:
                # A NaN law makes this score and all later ones NaN;
                # torch.argmax returns the first NaN.
                tau[i] = t
                done[i] = True
                break
            qj = q[t - 1]
            for k in range(n):
                wi[k] = _r(wi[k] + _r(qj * pmf[k], f32), f32)
            score = _trna_score(wi, fulls[i], n, lq[i], t, smooth, s_r, scaled, f32, prod, buf, part)
            if score > best[i]:
                best[i] = score
                tau[i] = t


@parallel_kernel(cache=True, error_model="numpy")
def _solve_rows(qbuf, kinds, cdf, lq, uq, smooth, f32, lanes, exacts, up, fulls, best, tau):
    """Per sorted row: prefix sums, Lemma 3's bound, the law of Gamma and the empty mask's score.

    BA rows are solved here (``tau``); TRNA rows are left to
    :func:`_trna_chunk`, whose laws must be tabulated outside Numba.  A
    row whose law has zero mass gets its answer here too (``up = 0``).
    """
    for i in prange(qbuf.shape[0]):
        q = qbuf[i]
        d = q.size
        # PyTorch's CPU cumsum accumulates in float64 and stores in the input
        # dtype; ``exact`` keeps the float64 sums for the early-stop bound.
        exact = exacts[i]
        prefix = np.empty(d + 1)
        exact[0] = 0.0
        prefix[0] = 0.0
        acc = 0.0
        for k in range(d):
            acc += q[k]
            exact[k + 1] = acc
            prefix[k + 1] = _r(acc, f32)
        up[i] = _up_tau(q, prefix, smooth, f32)
        n = uq[i] - lq[i] + 1
        full = fulls[i, :n]  # _ba convolves with all of it
        prod = np.empty(n)
        buf = np.empty(n, dtype=np.float32)
        part = np.zeros(lanes, np.float32)
        tau[i] = 0
        if not _law_from_cdf(cdf[i], n, f32, full, buf, part) > 0.0:
            # Normalising by a zero sum makes every score with the law in it
            # NaN in rankseg (the empty mask's too when smooth > 0);
            # torch.argmax returns the first NaN.
            tau[i] = 0 if smooth > 0.0 else 1
            up[i] = 0
            continue
        scaled = smooth >= SCALED_SMOOTH
        best[i] = _empty_score(lq[i], n, full, smooth, _r(smooth, f32), scaled, f32, prod, buf, part)
        if kinds[i] == BA:
            rtol = STOP_RTOL_F32 if f32 else STOP_RTOL_F64
            tau[i] = _ba(q, exact, prefix, up[i], lq[i], n, full, smooth, f32, rtol, prod, buf, part)


@parallel_kernel(cache=True)
def _tie_groups(qbuf, tau, need, group):
    """For each sorted row and volume: the top-tau set is ``{p > v}`` plus the first ``need``
    pixels equal to ``v = q_tau``, out of the ``group`` pixels equal to ``v`` (contiguous in
    the sorted row)."""
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


def _law_parameters(var, m3, ids, rows, ft, vm):
    """(scale, skew) of each row's count law, with rankseg's operations and rounding.

    rankseg computes them on its whole ``(B, C)`` tensor of moments; PyTorch's
    ``x ** 1.5`` depends on the position in that tensor (see
    :class:`TorchMath`), so the active rows ``ids`` are placed in an array
    of all ``rows`` before it is called.
    """
    safe = np.maximum(var.astype(ft), ft(np.finfo(ft).eps))
    layout = np.ones(rows, dtype=ft)
    layout[ids] = safe
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = m3.astype(ft) / vm.pow15(layout)[ids]
    return vm.sqrt(safe), skew


def _kinds(solver: str, scale: np.ndarray) -> np.ndarray:
    if solver == "ba":
        return np.full(scale.size, BA, dtype=np.int64)
    if solver == "trna":
        return np.full(scale.size, TRNA, dtype=np.int64)
    # Cohen's d = 1 / sigma, in the input dtype as rankseg compares it.
    ft = scale.dtype.type
    use_ba = (ft(1.0) / np.maximum(scale, ft(SIGMA_FLOOR))) < ft(COHEN_D)
    return np.where(use_ba, BA, TRNA).astype(np.int64)


def _excluded_parameters(q, loc, var, m3, ft, vm):
    """Law parameters of ``Gamma_{-j}`` for pixels of probability ``q``: the row's less pixel j's share.

    In the input dtype ``ft``, as rankseg computes them on 0-d tensors (where
    PyTorch's ``x ** 1.5`` is the scalar ``pow``, correctly rounded on every
    value checked).
    """
    q = q.astype(ft)
    a = q * (ft(1.0) - q)
    loc_j = loc[:, None] - q
    var_j = np.maximum(var[:, None] - a, ft(np.finfo(ft).eps))
    m3_j = m3[:, None] - a * (ft(1.0) - ft(2.0) * q)
    skew_j = m3_j / NumpyMath().pow15(var_j)
    return loc_j, vm.sqrt(var_j), skew_j


def _solve_trna(rows, qbuf, exacts, loc, var, m3, lq, uq, up, fulls, best, tau, smooth, f32, vm):
    """Runs the TRNA scan of ``rows`` chunk by chunk: the laws of a chunk of volumes are
    tabulated (vectorised, with ``vm``'s functions), then scored in Numba."""
    ft = np.float32 if f32 else np.float64
    m = int(np.max(uq[rows] - lq[rows])) + 2  # n + 1 points of F per law
    w = np.zeros(fulls.shape)
    done = np.ones(qbuf.shape[0], dtype=np.bool_)
    done[rows] = False
    tau_next = np.ones(qbuf.shape[0], dtype=np.int64)
    while True:
        act = np.flatnonzero(~done)
        if act.size == 0:
            return
        chunk = int(np.clip(TABLE_VALUES // (act.size * m), 1, CHUNK))
        taus = tau_next[act, None] + np.arange(chunk)
        q = qbuf[act[:, None], np.minimum(taus, up[act, None]) - 1]
        loc_j, scale_j, skew_j = _excluded_parameters(q, loc[act].astype(ft), var[act].astype(ft), m3[act].astype(ft), ft, vm)
        k_first = np.broadcast_to((lq[act] - 1)[:, None], taus.shape)
        cdf = _cdf_table(k_first, m, loc_j, scale_j, skew_j, vm)
        _trna_chunk(
            qbuf, exacts, act, cdf, tau_next[act], lq, uq, up, fulls, w, best, tau, done,
            smooth, f32, vm.sum_lanes(),
        )
        tau_next[act] += chunk


def decide(p3: np.ndarray, cfg: Config) -> RowDecision:
    """BA / TRNA / BA+TRNA decision for every row of a C-contiguous float32/float64 ``(B, C, d)`` array.

    Parameters
    ----------
    p3 : ndarray, shape (B, C, d)
        C-contiguous float32 or float64 probabilities.
    cfg : Config
        Validated configuration; ``cfg.solver`` is ``'ba'``, ``'trna'`` or
        ``'ba+trna'``, ``cfg.eps`` the tail mass left out of the support,
        ``cfg.law_math`` whose ``sqrt``, ``erf``, ``exp`` and ``pow`` the law
        uses (:func:`law_math`).

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
    ft = np.float32 if f32 else np.float64
    vm = law_math("auto")  # law_math leaves the Config (issue 11); this module is being rewritten
    lanes = vm.sum_lanes()
    smooth = float(cfg.smooth)
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
        _moments(qbuf, mean, var, m3, bool(f32), lanes)
        scale, skew = _law_parameters(var, m3, ids, rows, ft, vm)
        loc = mean.astype(ft)
        z_lo, z_hi = _standard_interval(skew.astype(np.float64), cfg.eps)
        with np.errstate(invalid="ignore", over="ignore"):
            # float32 scale times the float64 quantile: promoted to float64.
            lq = np.clip(np.floor(scale * z_lo + mean) - 1.0, 0.0, d).astype(np.int64)
            uq = np.clip(np.ceil(scale * z_hi + mean), 0.0, d).astype(np.int64)
        m = int(np.max(uq - lq)) + 2
        cdf = _cdf_table(lq - 1, m, loc, scale, skew, vm)
        kinds = _kinds(cfg.solver, scale)
        exacts = np.empty((ids.size, d + 1))
        up = np.zeros(ids.size, dtype=np.int64)
        fulls = np.zeros((ids.size, m - 1))
        best = np.zeros(ids.size)
        tau = np.zeros(ids.size, dtype=np.int64)
        _solve_rows(qbuf, kinds, cdf, lq, uq, smooth, bool(f32), lanes, exacts, up, fulls, best, tau)
        trna_rows = np.flatnonzero((kinds == TRNA) & (up > 0))
        if trna_rows.size:
            _solve_trna(trna_rows, qbuf, exacts, loc, var, m3, lq, uq, up, fulls, best, tau, smooth, bool(f32), vm)
        need = np.zeros(ids.size, dtype=np.int64)
        group = np.zeros(ids.size, dtype=np.int64)
        _tie_groups(qbuf, tau, need, group)
        for i in np.flatnonzero(tau > 0):
            r = ids[i]
            v = qbuf[i, tau[i] - 1]
            threshold[r] = v
            # Ties at the cut go to the lowest pixel indices.
            tie_end[r] = d if need[i] == group[i] else int(np.flatnonzero(p2[r] == v)[need[i] - 1]) + 1
    shape = (b, c)
    return RowDecision(threshold.reshape(shape), tie_end.reshape(shape), active.reshape(shape), mu.reshape(shape))
