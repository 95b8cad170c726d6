"""Multiclass (non-overlapping) resolution, MATH section 5, fused in Numba.

Two passes over ``(B, C, d)``, in tasks of one image by one tile of pixels,
and no ``(B, C, d)`` temporary:

1. claims: for every pixel, which active classes claim it (compared in the
   input's precision, see :func:`input_thresholds`).  The label array
   doubles as scratch: ``-2`` (no claimant), ``-1`` (two or more), or the sole
   claimant.  Sole-claimant pixels add to per-task partial sums of ``tau_c``
   and ``m_c`` (float64, in pixel order, or vectorised where the sums are
   exact, see ``EXACT_SUM_MIN``); the partials are reduced in a fixed order,
   so the answer does not depend on the thread count.
2. conflicts: only pixels still labelled ``-1``/``-2`` are revisited, per tile
   as a list, classes outside and pixels inside so that the increment score
   of MATH section 5 (factored forms, float64; :func:`_increment` is the
   one-pixel reference) is computed in vectorised loops; ties to the lowest
   class index (:func:`_first_within` is the one-pixel reference).

Every shortcut gives the bits of the pixel-by-pixel rule, which
``tests/test_multiclass_kernels.py`` transcribes and checks.  On random
softmax input the open pixels are so dense that conflicts rereads nearly the
whole input: that read, not the arithmetic, is what it costs.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .._decision import DELTA_TIE_RTOL, RowDecision
from .._layout import SUM_TOL
from .._solvers import METRIC_CODES
from .._validate import Config
from ._threads import parallel_kernel

TILE = 4096
OPEN_BLOCK = 1024  # open pixels resolved together: their C x 1024 increments stay in cache
NONE = -2
MANY = -1


@intrinsic
def _prefetch(typingctx, arr, i):
    """Hint the CPU to bring ``arr[i]`` (1-D, contiguous) into cache; no effect on results."""

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
        )
        # read, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


def input_thresholds(threshold: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The thresholds in the input's precision: (largest ``dtype`` value <= threshold, whether it equals it).

    For float32 input, ``v > t`` (compared in float64) holds iff ``v > t32``
    with ``t32`` the largest float32 <= t, and ``v == t`` only if ``t32 == t``;
    so the claim test runs on float32 (16 lanes, not 8) with the same answer.
    A threshold that is not a float32 has no ties.

    Examples
    --------
    >>> import numpy as np
    >>> t, exact = input_thresholds(np.array([[0.1, 0.5]]), np.dtype(np.float32))
    >>> float(t[0, 0]) <= 0.1 < float(np.nextafter(t[0, 0], np.float32(1))), exact.tolist()
    (True, [[False, True]])
    """
    t_in = threshold.astype(dtype)  # rounds to nearest
    high = t_in > threshold
    t_in[high] = np.nextafter(t_in[high], dtype.type(-np.inf))
    return t_in, t_in == threshold


# Sole claims of one class in one tile sum exactly in float64 when the class's
# threshold is >= 2**-16 and the input is float32: every value added is then a
# float32 >= 2**-16, a multiple of 2**-39, and every partial sum (nonnegative
# values, at most TILE of them, each <= 1) is below 2**13, so it is a multiple
# of 2**-39 below 2**52 * 2**-39: exactly representable.  Exact sums do not
# depend on the order of the additions, so they may be vectorised and still
# give the bits of the pixel-order sum.  (Values above 1 would be refused by
# the decision pass; _claim_tile checks the bound anyway.)
EXACT_SUM_MIN = 2.0**-16
EXACT_SUM_MAX = 2.0**13
# Per-class passes cost ~0.3 cycle per pixel and class; the pixel-order loop
# ~5-7 cycles per pixel (it adds through memory): vectorise for few classes.
EXACT_SUM_CLASSES = 12


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _sole_sum(row, owner, c):
    """(count, float64 sum) of ``row`` where ``owner == c``, in any order: exact sums only (EXACT_SUM_MIN)."""
    n = 0
    s = 0.0
    for j in range(row.size):
        sel = owner[j] == c
        n += sel
        s += np.float64(row[j]) if sel else 0.0
    return float(n), s


@njit(cache=True, nogil=True)
def _claim_rows(r0, r1, r2, r3, c0, c1, c2, c3, t_in, cut, count, owner, value, total):
    """The claims of four rows of a tile (ascending classes; class C: a pad row of zeros) on its counters."""
    t0, t1, t2, t3 = t_in[c0], t_in[c1], t_in[c2], t_in[c3]
    k0, k1, k2, k3 = cut[c0], cut[c1], cut[c2], cut[c3]
    if max(max(k0, k1), max(k2, k3)) <= 0:  # usually: no tie cut in this tile, a plain compare (~10% faster)
        for j in range(r0.size):
            v0, v1, v2, v3 = r0[j], r1[j], r2[j], r3[j]
            total[j] = total[j] + v0 + v1 + v2 + v3  # class by class, as one row at a time
            a0, a1, a2, a3 = v0 > t0, v1 > t1, v2 > t2, v3 > t3
            count[j] += np.int32(a0) + np.int32(a1) + np.int32(a2) + np.int32(a3)
            owner[j] = c3 if a3 else (c2 if a2 else (c1 if a1 else (c0 if a0 else owner[j])))
            value[j] = v3 if a3 else (v2 if a2 else (v1 if a1 else (v0 if a0 else value[j])))
        return
    for j in range(r0.size):
        v0, v1, v2, v3 = r0[j], r1[j], r2[j], r3[j]
        total[j] = total[j] + v0 + v1 + v2 + v3
        a0 = (v0 > t0) | ((v0 == t0) & (j < k0))
        a1 = (v1 > t1) | ((v1 == t1) & (j < k1))
        a2 = (v2 > t2) | ((v2 == t2) & (j < k2))
        a3 = (v3 > t3) | ((v3 == t3) & (j < k3))
        count[j] += np.int32(a0) + np.int32(a1) + np.int32(a2) + np.int32(a3)
        owner[j] = c3 if a3 else (c2 if a2 else (c1 if a1 else (c0 if a0 else owner[j])))
        value[j] = v3 if a3 else (v2 if a2 else (v1 if a1 else (v0 if a0 else value[j])))


@njit(cache=True, nogil=True)
def _claim_tile(p3, b, i0, i1, threshold, exact, tie_end, active, lab, tau_row, m_row, sum_stats):
    """Claims of the pixels [i0, i1) of image b (see the module docstring), under
    thresholds in the input's dtype (see :func:`input_thresholds`).

    With a non-empty ``sum_stats`` (3 floats) it also reads the inactive
    classes and stores (pixels whose class sum is off 1 by more than SUM_TOL,
    smallest sum, largest sum): the tile is in cache, so the check costs one
    extra read of the inactive rows only.
    """
    n_cls = p3.shape[1]
    n = i1 - i0
    check = sum_stats.size > 0
    # Thresholds and tie cuts (relative to i0) by class; one more slot, a pad
    # row of zeros, which claims nothing.
    t_in = np.empty(n_cls + 1, dtype=p3.dtype)
    cut = np.zeros(n_cls + 1, dtype=np.int64)
    t_in[n_cls] = np.inf
    for c in range(n_cls):
        t_in[c] = threshold[b, c]
        cut[c] = tie_end[b, c] - i0 if exact[b, c] else 0
    # The rows to read, in class order: the active classes, and the inactive
    # ones too when checking the class sums (they claim nothing: t = +inf).
    read = np.empty(n_cls + 3, dtype=np.int64)
    n_read = 0
    for c in range(n_cls):
        if check or active[b, c]:
            read[n_read] = c
            n_read += 1
        if not active[b, c]:
            t_in[c] = np.inf
            cut[c] = 0
    # Branch-free per-tile counters (they vectorise): claims and last claimant;
    # the class sums in the input's precision (a sum of C values errs by ~C
    # ulp, 2.5e-6 for 21 float32 classes, far inside SUM_TOL), in class order.
    count = np.zeros(n, dtype=np.int32)
    owner = np.zeros(n, dtype=np.int32)
    value = np.zeros(n, dtype=p3.dtype)  # the last claimant's probability
    total = np.zeros(n, dtype=p3.dtype)
    # Four rows at a time: four streams from memory at once read about twice as
    # fast as one (measured, this class loop alone on (4, 21, 512, 512): 8-10
    # -> 4.5-5 ms), and the counters are loaded and stored once per four classes.
    read[n_read:] = n_cls  # pad rows past the last: zeros that claim nothing (t = +inf)
    pad = np.zeros(n, dtype=p3.dtype)
    for g in range(0, n_read, 4):
        c0, c1, c2, c3 = read[g], read[g + 1], read[g + 2], read[g + 3]
        r0 = p3[b, c0, i0:i1]
        r1 = p3[b, c1, i0:i1] if c1 < n_cls else pad
        r2 = p3[b, c2, i0:i1] if c2 < n_cls else pad
        r3 = p3[b, c3, i0:i1] if c3 < n_cls else pad
        _claim_rows(r0, r1, r2, r3, c0, c1, c2, c3, t_in, cut, count, owner, value, total)
    out = lab[i0:i1]
    for j in range(n):  # branch-free: it vectorises; owner keeps the sole claimants only
        sole = count[j] == 1
        out[j] = owner[j] if sole else (NONE if count[j] == 0 else MANY)
        owner[j] = owner[j] if sole else -1
    # Exact sums (see EXACT_SUM_MIN) for float32 input with few active classes:
    # per-class vectorised passes.  (float16 input arrives as float32.)
    exact_sums = p3.itemsize == 4
    n_active = 0
    for c in range(n_cls):
        if active[b, c]:
            n_active += 1
            exact_sums = exact_sums and t_in[c] >= EXACT_SUM_MIN
    if exact_sums and n_active <= EXACT_SUM_CLASSES:
        for c in range(n_cls):
            if active[b, c]:
                n_sole, s_sole = _sole_sum(value, owner, c)
                if not s_sole < EXACT_SUM_MAX:  # values above 1 (see EXACT_SUM_MIN): the pixel-order sum
                    s_sole = 0.0
                    for j in range(n):
                        if owner[j] == c:
                            s_sole += value[j]
                tau_row[c] += n_sole  # rows start at 0: 0 + s is s, as in the pixel-order loop
                m_row[c] += s_sole
    else:
        for j in range(n):  # in pixel order: m's float64 sums keep their order
            o = owner[j]
            if o >= 0:
                tau_row[o] += 1.0
                m_row[o] += value[j]
    if check:
        off = 0
        for j in range(n):
            off += abs(total[j] - 1.0) > SUM_TOL
        lo = np.inf
        hi = -np.inf
        if off:  # the range only where something is off (the message quotes it): valid input skips it
            for j in range(n):
                lo = min(lo, total[j])
                hi = max(hi, total[j])
        sum_stats[0] = off
        sum_stats[1] = lo
        sum_stats[2] = hi


@parallel_kernel(cache=True)
def _claims(p3, threshold, exact, tie_end, active, labels, tau_part, m_part, sum_stats):
    """:func:`claims` on thresholds in the input's dtype; class sums checked if ``sum_stats`` has a row per task."""
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    check = sum_stats.shape[0] > 0
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        _claim_tile(p3, b, i0, min(d, i0 + TILE), threshold, exact, tie_end, active, labels[b], tau_part[task],
                    m_part[task], sum_stats[task] if check else sum_stats[0:0, 0])


def claims(p3, threshold, tie_end, active, labels, tau_part, m_part) -> None:
    """Claim states into ``labels`` (B, d) and per-task partial sums into
    ``tau_part``/``m_part`` (one zeroed row of C per image tile, in task order)."""
    t_in, exact = input_thresholds(threshold, p3.dtype)
    _claims(p3, t_in, exact, tie_end, active, labels, tau_part, m_part, np.empty((0, 3)))


@njit(cache=True, nogil=True)
def _increment(p, metric, smooth, tau, mu, m):
    """Exact change of class c's RMA objective when pixel p joins U_c (MATH 5, factored).

    The reference form, one pixel at a time; :func:`_increments` evaluates the
    same operations on many pixels at once (and must stay in step with it).
    """
    if metric == 0:  # Dice
        # 2(p d - m)/(d(d+1)) - g/((d-1)d) with no product d*d, which overflows
        # float64 once g > ~1.3e154; every quotient below is <= 1 in size.  For
        # g > 1 the score is multiplied by g (the same positive factor for every
        # class of the pixel: no comparison or relative tie changes), so that
        # it stays far from underflow too, up to g = the largest float64.
        d = tau + mu + smooth + 1.0
        if smooth > 1.0:
            return 2.0 * (p - m / d) * (smooth / (d + 1.0)) - (smooth / d) * (smooth / (d - 1.0))
        inc = 2.0 * (p - m / d) / (d + 1.0)
        if smooth > 0.0:
            inc -= (smooth / d) / (d - 1.0)
        return inc
    e = tau + mu - m + smooth
    a = (m + smooth) / e if e > 0.0 else 0.0  # 0/0 := 0
    return (p - a * (1.0 - p)) / (e + 1.0 - p)


# error_model="numpy": a division by zero gives inf instead of raising, so the
# IoU loop (a division by e + 1 - p per pixel) vectorises.  That divisor is
# never zero: it is >= 1 - p + tau + (mu - m) with m <= mu, so zero would take
# p = 1 with mu = 0.
@njit(cache=True, nogil=True, error_model="numpy")
def _increments(vals, idx, unclaimed, t, cut, metric, smooth, tau, mu, m, out, best):
    """``out[q]`` = :func:`_increment` of one class's probability ``vals[q]`` at
    pixel ``idx[q]`` of the tile, or -inf where the class may not take the pixel
    (a contested pixel it does not claim; see :func:`conflicts`); ``best``
    takes the running maximum (``max`` as Numba's builtin: a select on ``>``).

    The per-class parts of the formula are computed once: the same float64
    operations on the same operands, so the same bits; the loop over pixels
    then vectorises.
    """
    n = idx.size
    if metric == 0:
        d = tau + mu + smooth + 1.0
        q_m = m / d
        if smooth > 1.0:
            scale = smooth / (d + 1.0)
            shift = (smooth / d) * (smooth / (d - 1.0))
            for q in range(n):
                p = np.float64(vals[q])
                x = 2.0 * (p - q_m) * scale - shift
                x = x if unclaimed[q] | (p > t) | ((p == t) & (idx[q] < cut)) else -np.inf
                out[q] = x
                best[q] = x if x > best[q] else best[q]
            return
        d1 = d + 1.0
        # x - 0.0 is x, bit for bit (also for x = -0.0): smooth = 0 subtracts nothing
        shift = (smooth / d) / (d - 1.0) if smooth > 0.0 else 0.0
        for q in range(n):
            p = np.float64(vals[q])
            x = 2.0 * (p - q_m) / d1 - shift
            x = x if unclaimed[q] | (p > t) | ((p == t) & (idx[q] < cut)) else -np.inf
            out[q] = x
            best[q] = x if x > best[q] else best[q]
        return
    e = tau + mu - m + smooth
    a = (m + smooth) / e if e > 0.0 else 0.0  # 0/0 := 0
    e1 = e + 1.0
    for q in range(n):
        p = np.float64(vals[q])
        x = (p - a * (1.0 - p)) / (e1 - p)
        x = x if unclaimed[q] | (p > t) | ((p == t) & (idx[q] < cut)) else -np.inf
        out[q] = x
        best[q] = x if x > best[q] else best[q]


@njit(cache=True, nogil=True)
def _resolve_tile(p3, b, i0, i1, threshold, tie_end, active, out, tau, mu, m, metric, smooth, void, void_index,
                  idx, unclaimed_w, best_w, floor_w, label_w, vals, grp, incs):
    """Labels of the open pixels of [i0, i1) of image b, ``out`` = their labels (see :func:`conflicts`);
    the work arrays come from :func:`conflicts`."""
    n_cls = p3.shape[1]
    # The open pixels, gathered into a list (branch-free); under the void
    # policy unclaimed pixels take void_index at once.
    n = 0
    if void:
        for j in range(i1 - i0):
            s = out[j]
            idx[n] = j
            n += s == MANY
            if s == NONE:
                out[j] = void_index
    else:
        for j in range(i1 - i0):
            idx[n] = j
            n += out[j] < 0
    any_active = False
    for c in range(n_cls):
        any_active = any_active or active[b, c]
    # Blocks of open pixels: their increments (C x OPEN_BLOCK) stay in cache.
    for q0 in range(0, n, OPEN_BLOCK):
        k = min(n, q0 + OPEN_BLOCK) - q0
        pos = idx[q0:q0 + k]
        unclaimed = unclaimed_w[:k]
        best = best_w[:k]
        f0, f1 = p3[b, 0, i0:i1], p3[b, min(1, n_cls - 1), i0:i1]
        f2, f3 = p3[b, min(2, n_cls - 1), i0:i1], p3[b, min(3, n_cls - 1), i0:i1]
        for q in range(k):
            j = pos[q]
            unclaimed[q] = out[j] == NONE
            best[q] = -np.inf
            _prefetch(f0, j)  # the first rows read
            _prefetch(f1, j)
            _prefetch(f2, j)
            _prefetch(f3, j)
        # Classes outside, pixels inside: each class's increments and the running
        # best.  The gathers read four rows at a time (four memory streams) and
        # prefetch the open pixels of the next four rows: the rows of a tile lie
        # a whole image row apart, and the hardware prefetcher starts cold on each
        # (measured on (4, 21, 512, 512): conflicts 14 -> 11.5 ms).
        c = 0
        while c < n_cls:
            n_grp = 0
            while c < n_cls and n_grp < 4:
                if active[b, c] or not any_active:  # others may take no pixel: their increments would be -inf
                    grp[n_grp] = c
                    n_grp += 1
                c += 1
            if n_grp == 0:
                break
            for g in range(n_grp, 4):  # fewer than four left: read the last row again (from cache)
                grp[g] = grp[n_grp - 1]
            r0, r1, r2, r3 = p3[b, grp[0], i0:i1], p3[b, grp[1], i0:i1], p3[b, grp[2], i0:i1], p3[b, grp[3], i0:i1]
            n0, n1 = p3[b, min(c, n_cls - 1), i0:i1], p3[b, min(c + 1, n_cls - 1), i0:i1]
            n2, n3 = p3[b, min(c + 2, n_cls - 1), i0:i1], p3[b, min(c + 3, n_cls - 1), i0:i1]
            for q in range(k):  # scalar loads (LLVM skips vector gathers on many CPUs)
                j = pos[q]
                vals[0, q], vals[1, q], vals[2, q], vals[3, q] = r0[j], r1[j], r2[j], r3[j]
                _prefetch(n0, j)
                _prefetch(n1, j)
                _prefetch(n2, j)
                _prefetch(n3, j)
            for g in range(n_grp):
                cg = grp[g]
                # A contested pixel goes to its claimants only (active, p > t or a tie before the cut).
                t = threshold[b, cg] if active[b, cg] else np.inf
                cut = tie_end[b, cg] - i0 if active[b, cg] else -(2**62)
                _increments(vals[g, :k], pos, unclaimed, t, cut, metric, smooth, tau[cg], mu[cg], m[cg],
                            incs[cg, :k], best)
        # The lowest class within DELTA_TIE_RTOL of the best (as _first_within):
        # classes from the last to the first, each taking the pixels it ties.
        floor = floor_w[:k]
        label = label_w[:k]
        for q in range(k):
            floor[q] = best[q] - DELTA_TIE_RTOL * abs(best[q])
            label[q] = 0
        for c in range(n_cls - 1, -1, -1):
            if any_active and not active[b, c]:
                continue
            inc = incs[c, :k]
            for q in range(k):
                label[q] = c if inc[q] >= floor[q] else label[q]
        for q in range(k):
            # best = -inf: no class may take the pixel, every class ties (as
            # _first_within, whose skipped classes hold -inf too): class 0.
            out[pos[q]] = 0 if floor[q] == -np.inf else label[q]


@parallel_kernel(cache=True)
def conflicts(p3, threshold, tie_end, active, labels, tau, mu, m, metric, smooth, void, void_index):
    """Labels of the pixels claims left open: ``-1`` (contested: its claimants
    compete) and ``-2`` (unclaimed: every active class competes, or every class
    if none is active; ``void_index`` under the void policy).  The highest
    increment wins, ties (DELTA_TIE_RTOL) to the lowest class index."""
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        i1 = min(d, i0 + TILE)
        # Work arrays of fixed sizes, allocated here and passed in (allocated in
        # _resolve_tile, sized by the open pixels: measured 13 -> 17 ms).
        k = OPEN_BLOCK
        _resolve_tile(p3, b, i0, i1, threshold, tie_end, active, labels[b, i0:i1], tau[b], mu[b], m[b],
                      metric, smooth, void, void_index, np.empty(TILE, dtype=np.int64), np.empty(k, dtype=np.bool_),
                      np.empty(k), np.empty(k), np.empty(k, dtype=np.int64), np.empty((4, k), dtype=p3.dtype),
                      np.empty(4, dtype=np.int64), np.empty((n_cls, k)))


@njit(cache=True, nogil=True)
def _first_within(inc, best):
    """Lowest class whose increment ties the best one (to float64 noise, DELTA_TIE_RTOL)."""
    floor = best - DELTA_TIE_RTOL * abs(best)
    for c in range(inc.size):
        if inc[c] >= floor:
            return c
    return 0


def checked_claims(p3, threshold, tie_end, active, labels, tau_part, m_part) -> tuple[int, int, float, float]:
    """:func:`claims`, also checking every pixel's class sum in the same pass.

    Returns (pixels checked, pixels whose sum is off 1 by more than ``SUM_TOL``,
    smallest sum, largest sum), the arguments of ``_layout.check_class_sums``.
    """
    n_img, _, d = p3.shape
    stats = np.zeros((tau_part.shape[0], 3))
    t_in, exact = input_thresholds(threshold, p3.dtype)
    _claims(p3, t_in, exact, tie_end, active, labels, tau_part, m_part, stats)
    return n_img * d, int(stats[:, 0].sum()), float(stats[:, 1].min(initial=np.inf)), float(stats[:, 2].max(initial=-np.inf))


def resolve(p3: np.ndarray, decision: RowDecision, cfg: Config, class_sums: np.ndarray | None = None) -> np.ndarray:
    """Labels ``(B, d)`` int64 from per-class decisions on a C-contiguous ``(B, C, d)`` array.

    With ``class_sums`` (a float64 array of 4) the claims pass also checks every
    pixel's class sum and stores (pixels checked, pixels off 1 by more than
    ``SUM_TOL``, smallest sum, largest sum) there; see :mod:`rankseg_np._layout`.
    """
    n_img, n_cls, d = p3.shape
    labels = np.empty((n_img, d), dtype=np.int64)
    n_tasks = n_img * ((d + TILE - 1) // TILE)
    tau_part = np.zeros((n_tasks, n_cls))
    m_part = np.zeros((n_tasks, n_cls))
    threshold, tie_end, active, mu = decision
    if class_sums is None:
        claims(p3, threshold, tie_end, active, labels, tau_part, m_part)
    else:
        class_sums[:] = checked_claims(p3, threshold, tie_end, active, labels, tau_part, m_part)
    tau = tau_part.reshape(n_img, -1, n_cls).sum(axis=1)
    m = m_part.reshape(n_img, -1, n_cls).sum(axis=1)
    conflicts(
        p3, threshold, tie_end, active, labels, tau, mu, m, METRIC_CODES[cfg.metric], cfg.smooth,
        cfg.unassigned_policy == "void", cfg.void_index,
    )
    return labels
