"""The few primitives the GPU algorithm needs, in two interchangeable versions.

:class:`XpKernels` writes each primitive once in array-namespace code (the
NumPy/CuPy common API).  It runs under NumPy in CI and under CuPy when fused
kernels are switched off; its temporaries are bounded by processing rows in
blocks of at most :data:`BLOCK_ELEMENTS` elements.

:class:`CupyKernels` replaces the primitives that pay for fusion with
``cupy.ReductionKernel`` / ``cupy.ElementwiseKernel`` versions: every pass of
the threshold search is one read of the probabilities with no temporary, and
the multiclass claims / conflicts are one read each instead of ``C``
elementwise passes.  ``tests/test_gpu.py`` compares the two on a GPU.

Both versions implement exactly the same arithmetic as the Numba CPU kernels
(``rankseg_np/cpu``): comparisons of the input value promoted to float64
against a float64 threshold, float64 accumulation, the increment scores of
MATH section 5 in their factored forms, ties to the lowest class index.  The
CUDA code is compiled with ``--fmad=false`` so that ``a * b - c`` is not
contracted into an FMA, which would round differently from NumPy and Numba.
Sums are accumulated in a different order from the CPU (pairwise on NumPy,
a tree on CUDA, sequential in Numba), so thresholds can differ in the last
bits; that only matters for pixels exactly at a zero-gain threshold, where
both answers have the same objective.

Scratch encoding of the claims (int32, shape ``(B, d)``): ``NONE`` (-2, no
active class claims the pixel), ``MANY`` (-1, two or more claim it), or the
index of the sole claimant.
"""

from __future__ import annotations

from typing import Any

from .._decision import DELTA_TIE_RTOL
from ._rows import errstate

NONE = -2
MANY = -1

# Upper bound on the elements of any full-size temporary of the fallback
# (a few MB): rows are processed in blocks this large.
BLOCK_ELEMENTS = 1 << 22


def _row_blocks(rows: int, d: int, budget: int = BLOCK_ELEMENTS):
    step = max(1, budget // max(d, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


class XpKernels:
    """Primitives in plain array code for the namespace ``xp`` (NumPy or CuPy)."""

    fused = False

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    # -- per-row reductions ---------------------------------------------------
    def masked_sum_count(self, p2: Any, t: Any) -> tuple[Any, Any]:
        """Per row ``r``: float64 sum and count of the entries ``> t[r]`` (count as float64)."""
        xp = self.xp
        rows, d = p2.shape
        s = xp.empty(rows, dtype=xp.float64)
        n = xp.empty(rows, dtype=xp.float64)
        for r0, r1 in _row_blocks(rows, d):
            blk = p2[r0:r1]
            keep = blk > t[r0:r1, None]
            s[r0:r1] = xp.sum(xp.where(keep, blk, 0), axis=1, dtype=xp.float64)
            n[r0:r1] = xp.sum(keep, axis=1, dtype=xp.float64)
        return s, n

    def first_pass(self, p2: Any) -> tuple[Any, Any, Any, Any, Any]:
        """Per row: sum (float64), max, bad (NaN/inf/outside [0, 1]), sum and count above 1/2."""
        xp = self.xp
        mu = xp.sum(p2, axis=1, dtype=xp.float64)
        peak = xp.max(p2, axis=1).astype(xp.float64)
        low = xp.min(p2, axis=1)
        # NaN propagates through min/max and fails both comparisons.
        bad = ~((low >= 0) & (peak <= 1))
        s_half, n_half = self.masked_sum_count(p2, xp.full(p2.shape[0], 0.5))
        return mu, peak, bad, s_half, n_half

    # -- masks and labels -----------------------------------------------------
    def materialize(self, p3: Any, threshold: Any, tie_end: Any) -> Any:
        """``mask[b, c, i] = p > t or (p == t and i < k)`` as bool ``(B, C, d)``."""
        xp = self.xp
        b, c, d = p3.shape
        p2 = p3.reshape(b * c, d)
        t = threshold.reshape(-1)
        k = tie_end.reshape(-1)
        out = xp.empty((b * c, d), dtype=xp.bool_)
        idx = xp.arange(d)
        for r0, r1 in _row_blocks(b * c, d):
            blk = p2[r0:r1]
            tt = t[r0:r1, None]
            out[r0:r1] = (blk > tt) | ((blk == tt) & (idx[None, :] < k[r0:r1, None]))
        return out.reshape(b, c, d)

    def _claimed(self, v: Any, t: Any, k: Any, idx: Any) -> Any:
        return (v > t[:, None]) | ((v == t[:, None]) & (idx[None, :] < k[:, None]))

    def claims(self, p3: Any, threshold: Any, tie_end: Any, active: Any) -> Any:
        """int32 ``(B, d)``: NONE, MANY or the sole active claimant of each pixel."""
        xp = self.xp
        b, c, d = p3.shape
        idx = xp.arange(d)
        state = xp.full((b, d), NONE, dtype=xp.int32)
        for cls in range(c):
            claimed = self._claimed(p3[:, cls], threshold[:, cls], tie_end[:, cls], idx)
            claimed &= active[:, cls, None]
            state = xp.where(claimed, xp.where(state == NONE, cls, MANY), state).astype(xp.int32)
        return state

    def sole_sums(self, p3: Any, state: Any) -> tuple[Any, Any]:
        """tau_c (count) and m_c (float64 sum of p) over the pixels whose sole claimant is c: ``(B, C)``."""
        xp = self.xp
        b, c, _ = p3.shape
        tau = xp.empty((b, c), dtype=xp.float64)
        m = xp.empty((b, c), dtype=xp.float64)
        for cls in range(c):
            own = state == cls
            tau[:, cls] = xp.sum(own, axis=1, dtype=xp.float64)
            m[:, cls] = xp.sum(xp.where(own, p3[:, cls], 0), axis=1, dtype=xp.float64)
        return tau, m

    def increment(self, p: Any, metric: int, smooth: float, tau: Any, mu: Any, m: Any) -> Any:
        """MATH section 5 increment score, factored forms, float64 (same order of operations as Numba)."""
        xp = self.xp
        p = p.astype(xp.float64)
        if metric == 0:
            dd = tau + mu + smooth + 1.0
            # No product dd*dd (overflow for smooth > ~1.3e154); times max(1, smooth): see cpu.multiclass.
            if smooth > 1.0:
                return 2.0 * (p - m / dd) * (smooth / (dd + 1.0)) - (smooth / dd) * (smooth / (dd - 1.0))
            inc = 2.0 * (p - m / dd) / (dd + 1.0)
            if smooth > 0.0:
                inc = inc - (smooth / dd) / (dd - 1.0)
            return inc
        e = tau + mu - m + smooth
        pos = e > 0.0
        a = xp.where(pos, (m + smooth) / xp.where(pos, e, 1.0), 0.0)  # 0/0 := 0
        return (p - a * (1.0 - p)) / (e + 1.0 - p)

    def conflicts(
        self, p3, threshold, tie_end, active, state, tau, mu, m, metric, smooth, void, void_index
    ) -> Any:
        """int64 labels ``(B, d)``: sole claimants keep their pixel, the rest by largest increment.

        Ties: the lowest class whose increment is within ``DELTA_TIE_RTOL``
        (relative) of the best one, as ``cpu.multiclass._first_within``.  Two
        passes over the classes (the best score, then the first class within
        the tolerance) recompute the scores instead of storing ``(B, C, d)``.
        """
        xp = self.xp
        b, c, d = p3.shape
        idx = xp.arange(d)
        many = state == MANY
        none = state == NONE
        any_active = xp.any(active, axis=1)

        def scores(cls):
            v = p3[:, cls]
            claimed = self._claimed(v, threshold[:, cls], tie_end[:, cls], idx) & active[:, cls, None]
            # Only claimants compete for a contested pixel; for an unclaimed
            # one the active classes compete (all classes if none is active).
            unclaimed_ok = active[:, cls] | ~any_active
            eligible = (many & claimed) | (none & unclaimed_ok[:, None])
            with errstate(xp):
                inc = self.increment(v, metric, smooth, tau[:, cls, None], mu[:, cls, None], m[:, cls, None])
            return xp.where(eligible, inc, -xp.inf)

        best = xp.full((b, d), -xp.inf)
        for cls in range(c):
            best = xp.maximum(best, scores(cls))
        floor = best - DELTA_TIE_RTOL * xp.abs(best)
        arg = xp.full((b, d), -1, dtype=xp.int64)
        for cls in range(c):
            arg = xp.where((arg < 0) & (scores(cls) >= floor), cls, arg)
        arg = xp.where(arg < 0, 0, arg)
        labels = xp.where(state >= 0, state.astype(xp.int64), arg)
        if void:
            labels = xp.where(none, xp.asarray(void_index, dtype=xp.int64), labels)
        return labels


# --------------------------------------------------------------------------- #
# Fused CuPy kernels
# --------------------------------------------------------------------------- #

_PREAMBLE = r"""
struct rs_sc { double s; double n; };
__device__ __forceinline__ rs_sc rs_sc_make(double s, double n) { rs_sc r; r.s = s; r.n = n; return r; }
__device__ __forceinline__ rs_sc rs_sc_add(const rs_sc& a, const rs_sc& b) {
    return rs_sc_make(a.s + b.s, a.n + b.n);
}

struct rs_st { double s; double mx; double bad; double sh; double nh; };
__device__ __forceinline__ rs_st rs_st_zero() {
    // mx starts at -1: every probability is >= 0, and rows with values
    // outside [0, 1] are reported through `bad` before mx is used.
    rs_st r; r.s = 0.0; r.mx = -1.0; r.bad = 0.0; r.sh = 0.0; r.nh = 0.0; return r;
}
__device__ __forceinline__ rs_st rs_st_of(double v) {
    rs_st r;
    r.s = v; r.mx = v;
    r.bad = (v >= 0.0 && v <= 1.0) ? 0.0 : 1.0;  // NaN fails both comparisons
    r.sh = v > 0.5 ? v : 0.0;
    r.nh = v > 0.5 ? 1.0 : 0.0;
    return r;
}
__device__ __forceinline__ rs_st rs_st_add(const rs_st& a, const rs_st& b) {
    rs_st r;
    r.s = a.s + b.s;
    r.mx = b.mx > a.mx ? b.mx : a.mx;
    r.bad = a.bad + b.bad;
    r.sh = a.sh + b.sh;
    r.nh = a.nh + b.nh;
    return r;
}

__device__ __forceinline__ double rs_increment(double p, int metric, double smooth,
                                               double tau, double mu, double m) {
    if (metric == 0) {  // Dice
        const double d = tau + mu + smooth + 1.0;
        // No product d*d (overflow for smooth > ~1.3e154); times max(1, smooth): see cpu.multiclass.
        if (smooth > 1.0) return 2.0 * (p - m / d) * (smooth / (d + 1.0)) - (smooth / d) * (smooth / (d - 1.0));
        double inc = 2.0 * (p - m / d) / (d + 1.0);
        if (smooth > 0.0) inc -= (smooth / d) / (d - 1.0);
        return inc;
    }
    const double e = tau + mu - m + smooth;
    const double a = e > 0.0 ? (m + smooth) / e : 0.0;  // 0/0 := 0
    return (p - a * (1.0 - p)) / (e + 1.0 - p);
}
"""

_OPTIONS = ("--fmad=false",)

_CLAIMS_OP = r"""
const ptrdiff_t b = i / d;
const ptrdiff_t px = i - b * d;
int s = -2;
for (ptrdiff_t c = 0; c < n_cls; ++c) {
    const ptrdiff_t r = b * n_cls + c;
    if (!active[r]) continue;
    const double v = (double)p[r * d + px];
    const double t = thr[r];
    if (v > t || (v == t && px < tie[r])) s = (s == -2) ? (int)c : -1;
}
st = s;
"""

_CONFLICTS_OP = r"""
if (st >= 0) {
    lab = st;
} else if (st == -2 && use_void) {
    lab = void_index;
} else {
    const ptrdiff_t b = i / d;
    const ptrdiff_t px = i - b * d;
    bool any_active = false;
    for (ptrdiff_t c = 0; c < n_cls; ++c) any_active = any_active || active[b * n_cls + c];
    // Pass 1: the best increment among the eligible classes.  Pass 2: the
    // lowest eligible class within tie_rtol of it (cpu.multiclass._first_within).
    double best = -__longlong_as_double(0x7ff0000000000000LL);  // -inf
    long long arg = 0;
    for (int pass = 0; pass < 2; ++pass) {
        const double floor_ = best - tie_rtol * fabs(best);
        for (ptrdiff_t c = 0; c < n_cls; ++c) {
            const ptrdiff_t r = b * n_cls + c;
            const double v = (double)p[r * d + px];
            if (st == -1) {  // contested: only claimants compete
                const double t = thr[r];
                if (!(active[r] && (v > t || (v == t && px < tie[r])))) continue;
            } else if (any_active && !active[r]) {  // unclaimed: active classes compete
                continue;
            }
            const double inc = rs_increment(v, metric, smooth, tau[r], mu[r], msum[r]);
            if (pass == 0) {
                best = inc > best ? inc : best;
            } else if (inc >= floor_) {
                arg = c;
                break;
            }
        }
    }
    lab = arg;
}
"""


class CupyKernels(XpKernels):
    """Fused CuPy versions of the primitives (compiled on first use, cached by CuPy).

    The reductions return several outputs through a small struct
    (``reduce_type``), so CuPy runs them with its own block reduction (a fixed
    tree, deterministic for a given shape): its CUB accelerator only takes
    single-input, single-output reductions.  Outputs are passed in
    positionally because a ``ReductionKernel`` call returns only the first.
    """

    fused = True

    def __init__(self, cupy: Any) -> None:
        super().__init__(cupy)
        cp = cupy
        self._masked = cp.ReductionKernel(
            "T x, float64 t",
            "float64 s, float64 n",
            "(double)x > t ? rs_sc_make((double)x, 1.0) : rs_sc_make(0.0, 0.0)",
            "rs_sc_add(a, b)",
            "s = a.s, n = a.n",
            "rs_sc_make(0.0, 0.0)",
            name="rankseg_masked_sum_count",
            reduce_type="rs_sc",
            preamble=_PREAMBLE,
            options=_OPTIONS,
        )
        self._stats = cp.ReductionKernel(
            "T x",
            "float64 mu, float64 peak, float64 nbad, float64 sh, float64 nh",
            "rs_st_of((double)x)",
            "rs_st_add(a, b)",
            "mu = a.s, peak = a.mx, nbad = a.bad, sh = a.sh, nh = a.nh",
            "rs_st_zero()",
            name="rankseg_first_pass",
            reduce_type="rs_st",
            preamble=_PREAMBLE,
            options=_OPTIONS,
        )
        self._sole = cp.ReductionKernel(
            "T p, int32 st, int32 cls",
            "float64 tau, float64 m",
            "st == cls ? rs_sc_make(1.0, (double)p) : rs_sc_make(0.0, 0.0)",
            "rs_sc_add(a, b)",
            "tau = a.s, m = a.n",
            "rs_sc_make(0.0, 0.0)",
            name="rankseg_sole_sums",
            reduce_type="rs_sc",
            preamble=_PREAMBLE,
            options=_OPTIONS,
        )
        self._materialize = cp.ElementwiseKernel(
            "T p, float64 t, int64 k, int64 d",
            "bool o",
            "const double v = (double)p; o = v > t || (v == t && (i % d) < k);",
            name="rankseg_materialize",
            options=_OPTIONS,
        )
        self._claims = cp.ElementwiseKernel(
            "raw T p, raw float64 thr, raw int64 tie, raw bool active, int64 n_cls, int64 d",
            "int32 st",
            _CLAIMS_OP,
            name="rankseg_claims",
            options=_OPTIONS,
        )
        self._conflicts = cp.ElementwiseKernel(
            "int32 st, raw T p, raw float64 thr, raw int64 tie, raw bool active, "
            "raw float64 tau, raw float64 mu, raw float64 msum, int64 n_cls, int64 d, "
            "int32 metric, float64 smooth, bool use_void, int64 void_index, float64 tie_rtol",
            "int64 lab",
            _CONFLICTS_OP,
            name="rankseg_conflicts",
            preamble=_PREAMBLE,
            options=_OPTIONS,
        )

    def masked_sum_count(self, p2, t):
        cp = self.xp
        rows = p2.shape[0]
        s = cp.empty(rows, dtype=cp.float64)
        n = cp.empty(rows, dtype=cp.float64)
        # Outputs are passed positionally: a ReductionKernel returns only its first output.
        self._masked(p2, cp.ascontiguousarray(t, dtype=cp.float64)[:, None], s, n, axis=1)
        return s, n

    def first_pass(self, p2):
        cp = self.xp
        rows = p2.shape[0]
        outs = [cp.empty(rows, dtype=cp.float64) for _ in range(5)]
        self._stats(p2, *outs, axis=1)
        mu, peak, nbad, s_half, n_half = outs
        return mu, peak, nbad > 0, s_half, n_half

    def materialize(self, p3, threshold, tie_end):
        cp = self.xp
        b, c, d = p3.shape
        out = cp.empty((b, c, d), dtype=cp.bool_)
        self._materialize(p3, threshold[:, :, None], tie_end[:, :, None], d, out)
        return out

    def claims(self, p3, threshold, tie_end, active):
        cp = self.xp
        b, c, d = p3.shape
        st = cp.empty((b, d), dtype=cp.int32)
        self._claims(
            p3, cp.ascontiguousarray(threshold), cp.ascontiguousarray(tie_end),
            cp.ascontiguousarray(active), c, d, st,
        )
        return st

    def sole_sums(self, p3, state):
        cp = self.xp
        b, c, _ = p3.shape
        tau = cp.empty((b, c), dtype=cp.float64)
        m = cp.empty((b, c), dtype=cp.float64)
        cls = cp.arange(c, dtype=cp.int32)[None, :, None]
        self._sole(p3, state[:, None, :], cls, tau, m, axis=2)
        return tau, m

    def conflicts(self, p3, threshold, tie_end, active, state, tau, mu, m, metric, smooth, void, void_index):
        cp = self.xp
        b, c, d = p3.shape
        lab = cp.empty((b, d), dtype=cp.int64)
        self._conflicts(
            state, p3, cp.ascontiguousarray(threshold), cp.ascontiguousarray(tie_end),
            cp.ascontiguousarray(active), cp.ascontiguousarray(tau), cp.ascontiguousarray(mu),
            cp.ascontiguousarray(m), c, d, metric, float(smooth), bool(void), int(void_index),
            DELTA_TIE_RTOL, lab,
        )
        return lab
