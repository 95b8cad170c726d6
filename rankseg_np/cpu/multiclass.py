"""Multiclass (non-overlapping) resolution, MATH section 5, fused in Numba.

Two passes over ``(B, C, d)``, in tasks of one image by one tile of pixels,
and no ``(B, C, d)`` temporary:

1. claims: for every pixel, which active classes claim it (compared in the
   input's precision, see :func:`input_thresholds`), as a count and a sum of
   class indices plus the highest claimant, in branch-free vector loops.  The
   label array doubles as scratch: the sole claimant, ``NONE`` (no claimant),
   ``pair_state(c, k)`` (exactly two, ``c < k``) or ``MANY`` (three or more).
   Sole-claimant pixels add to per-task partial sums of ``tau_c`` and ``m_c``
   (float64, in pixel order); the partials are reduced in a fixed order, so
   the answer does not depend on the thread count.
2. conflicts: only open pixels are revisited.  A pair's two classes are
   scored pixel by pixel (:func:`_pair_labels`); the other open pixels go in a
   list per tile, classes outside and pixels inside so that the increment
   score of MATH section 5 (factored forms, float64; :func:`_increment` is the
   one-pixel reference) is computed in vectorised loops; ties to the lowest
   class index (:func:`_first_within` is the one-pixel reference).

Every shortcut gives the bits of the pixel-by-pixel rule, which
``tests/test_multiclass_kernels.py`` transcribes and checks.  On random
softmax input (21 classes) 13% of the pixels are pairs and 8% unclaimed;
scoring only a pair's two classes, rather than all 21, took conflicts from
18 to 10 ms on one thread on (4, 21, 512, 512).

Compile time counts as much as speed (the first call in a fresh environment
compiles these kernels): per-class constants are prepared in NumPy, the tile
bodies are written in the parallel kernels themselves, and only the two hot
loops are separate functions (written inline, they did not vectorise).  Each
vectorised loop costs LLVM time; measured alternatives that were faster warm
but doubled the compile time (a second, plain-compare claims loop; four-row
gathers in conflicts (one row ahead is still prefetched); vectorised exact
sole sums) are gone.
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
INCREMENTS_AT_MOST = 1 << 20  # float64 increments a task holds (8 MiB): fewer open pixels per block past 1024 classes
NONE = -2
MANY = -1
PAIR_AHEAD = 16  # pixels between a prefetch and its use in _pair_labels
PAIR = -3  # two claimants c < k: the state PAIR - (c + (k << 32)); see pair_state


def pair_state(low: int, high: int) -> int:
    """The claim state of a pixel claimed by exactly two classes ``low < high``.

    Examples
    --------
    >>> pair_state(2, 5) == PAIR - 2 - 5 * 2**32
    True
    """
    return PAIR - (low + (high << 32))


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


@njit(cache=True, nogil=True)
def _claim_rows(r0, r1, r2, r3, c0, c1, c2, c3, t0, t1, t2, t3, k0, k1, k2, k3, claim, last, total, last_value):
    """The claims of four rows (ascending classes; class C: a pad row of
    zeros): ``claim[j]`` gains the key ``k`` of each row whose value is above
    its threshold ``t``, ``last[j]`` becomes its class ``c`` and ``last_value[j]``
    its value (a sole claimant's value, with no second read of its row).

    A key is ``1 + (c << bits)`` (see :func:`_claim_inputs`): the low bits
    count the claimants, the high bits sum their classes (modulo
    ``2**bits``).  With ``last``, the highest claimant, that names both
    claimants of a pixel claimed twice.
    Four rows at a time: four streams from memory at once read about twice as
    fast as one, and the counters are loaded and stored once per four
    classes.  One compare and one add per value: ties are handled by the
    caller through the thresholds (see :func:`_claims`).  (A separate
    function: the same loop written inside the kernel did not vectorise.)
    """
    for j in range(claim.size):
        v0, v1, v2, v3 = r0[j], r1[j], r2[j], r3[j]
        total[j] = total[j] + v0 + v1 + v2 + v3  # class by class, as one row at a time
        a0, a1, a2, a3 = v0 > t0, v1 > t1, v2 > t2, v3 > t3
        claim[j] += (k0 if a0 else 0) + (k1 if a1 else 0) + (k2 if a2 else 0) + (k3 if a3 else 0)
        last[j] = c3 if a3 else (c2 if a2 else (c1 if a1 else (c0 if a0 else last[j])))
        last_value[j] = v3 if a3 else (v2 if a2 else (v1 if a1 else (v0 if a0 else last_value[j])))


@parallel_kernel(cache=True)
def _claims(p3, t_in, t_tie, tie_cut, rows, n_rows, keys, bits, labels, tau_part, m_part, n_off):
    """:func:`claims` on the per-class arrays of :func:`_claim_inputs`, in tasks
    of one image by one tile of pixels (see the module docstring).

    A tie (a value equal to an exact threshold) is claimed before the class's
    tie cut only: each group of four rows is run in segments between the cuts
    that fall inside the tile, each class compared with ``t_tie`` (the value
    below its threshold: ``v > t_tie`` iff ``v >= t``) before its cut and
    ``t_in`` after it.  Most tiles are one segment.

    With an ``n_off`` of one entry per task it also counts the pixels of each
    task whose class sum is off 1 by more than SUM_TOL (``rows`` then lists
    every class: the tile is in cache, so the check costs one extra read of the
    inactive rows only).
    """
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        i1 = min(d, i0 + TILE)
        n = i1 - i0
        # Branch-free per-tile counters (they vectorise): the claim keys; the
        # class sums in the input's precision (a sum of C values errs by ~C
        # ulp, 2.5e-6 for 21 float32 classes, far inside SUM_TOL), in class
        # order; a pad row of zeros (class C).
        claim = np.empty(n, dtype=keys.dtype)
        last = np.empty(n, dtype=np.int32)  # read only where a class claimed: no need to clear it
        total = np.empty(n, dtype=p3.dtype)
        last_value = np.empty(n, dtype=p3.dtype)  # likewise
        pad = np.empty(n, dtype=p3.dtype)
        for j in range(n):
            claim[j] = 0
            total[j] = 0.0
            pad[j] = 0.0
        # Four rows at a time (see _claim_rows), ascending classes, padded with class C.
        for g in range(0, n_rows[b], 4):
            c0, c1, c2, c3 = rows[b, g], rows[b, g + 1], rows[b, g + 2], rows[b, g + 3]
            r0 = p3[b, c0, i0:i1]
            r1 = p3[b, c1, i0:i1] if c1 < n_cls else pad
            r2 = p3[b, c2, i0:i1] if c2 < n_cls else pad
            r3 = p3[b, c3, i0:i1] if c3 < n_cls else pad
            e0 = min(max(tie_cut[b, c0] - i0, 0), n)
            e1 = min(max(tie_cut[b, c1] - i0, 0), n)
            e2 = min(max(tie_cut[b, c2] - i0, 0), n)
            e3 = min(max(tie_cut[b, c3] - i0, 0), n)
            lo = 0
            while lo < n:
                hi = n
                for e in (e0, e1, e2, e3):
                    hi = e if lo < e < hi else hi
                _claim_rows(r0[lo:hi], r1[lo:hi], r2[lo:hi], r3[lo:hi],
                            np.int32(c0), np.int32(c1), np.int32(c2), np.int32(c3),
                            t_tie[b, c0] if hi <= e0 else t_in[b, c0], t_tie[b, c1] if hi <= e1 else t_in[b, c1],
                            t_tie[b, c2] if hi <= e2 else t_in[b, c2], t_tie[b, c3] if hi <= e3 else t_in[b, c3],
                            keys[c0], keys[c1], keys[c2], keys[c3],
                            claim[lo:hi], last[lo:hi], total[lo:hi], last_value[lo:hi])
                lo = hi
        lab = labels[b, i0:i1]
        tau_row = tau_part[task]
        m_row = m_part[task]
        low_bits = (1 << bits) - 1
        for j in range(n):
            count = claim[j] & low_bits
            o = last[j]
            if count == 1:  # in pixel order: m's float64 sums keep their order
                lab[j] = o
                tau_row[o] += 1.0
                m_row[o] += last_value[j]
            elif count == 2:
                lab[j] = PAIR - ((((claim[j] >> bits) - o) & low_bits) + (np.int64(o) << 32))
            else:
                lab[j] = NONE if count == 0 else MANY
        if n_off.size > 0:
            off = 0
            for j in range(n):
                off += abs(total[j] - 1.0) > SUM_TOL
            n_off[task] = off


def _claim_inputs(p3, threshold, tie_end, active, check):
    """Per-class arrays of the claims kernel, prepared in NumPy (no compile cost).

    ``t_in`` (B, C+1): thresholds in the input's dtype (:func:`input_thresholds`),
    +inf for inactive classes and for class C, the pad row of zeros;
    ``t_tie`` (B, C+1): the same, one step lower where the threshold is exact
    (``v > t_tie`` claims the ties too);
    ``tie_cut`` (B, C+1): ``tie_end`` where the threshold is exact, else 0 (no
    ties: a float64 threshold that is no input value ties nothing); ``rows``
    (B, C+3) and ``n_rows`` (B,): the classes each image reads in class order
    (the active ones, or all of them when checking the class sums), padded with
    C to a multiple of four; ``keys`` (C+1,) and ``bits``: the claim keys of
    :func:`_claim_rows`, ``1 + (c << bits)``, int32 with 16 bits (the count and
    the sum of two classes below 2**15 fit) or, for 2**15 classes or more,
    int64 with 32.
    """
    n_img, n_cls, _ = p3.shape
    t, exact = input_thresholds(threshold, p3.dtype)
    t_in = np.full((n_img, n_cls + 1), np.inf, dtype=p3.dtype)
    t_in[:, :n_cls] = np.where(active, t, np.inf)
    tie_cut = np.zeros((n_img, n_cls + 1), dtype=np.int64)
    tie_cut[:, :n_cls] = np.where(active & exact, tie_end, 0)
    t_tie = t_in.copy()
    tied = tie_cut > 0
    t_tie[tied] = np.nextafter(t_in[tied], p3.dtype.type(-np.inf))
    read = np.ones_like(active) if check else active.astype(bool)
    rows = np.full((n_img, n_cls + 3), n_cls, dtype=np.int64)
    n_rows = np.zeros(n_img, dtype=np.int64)
    for b in range(n_img):
        cls = np.flatnonzero(read[b])
        rows[b, : cls.size] = cls
        n_rows[b] = cls.size
    bits = 16 if n_cls < 2**15 else 32
    keys = 1 + (np.arange(n_cls + 1, dtype=np.int64) << bits)
    return t_in, t_tie, tie_cut, rows, n_rows, keys.astype(np.int32 if bits == 16 else np.int64), bits


def claims(p3, threshold, tie_end, active, labels, tau_part, m_part) -> None:
    """Claim states into ``labels`` (B, d) and per-task partial sums into
    ``tau_part``/``m_part`` (one zeroed row of C per image tile, in task order)."""
    no_check = np.empty(0, dtype=np.int64)
    _claims(p3, *_claim_inputs(p3, threshold, tie_end, active, False), labels, tau_part, m_part, no_check)


@njit(cache=True, nogil=True)
def _increment(p, metric, smooth, tau, mu, m):
    """Exact change of class c's RMA objective when pixel p joins U_c (MATH 5, factored).

    The reference form, one pixel at a time; :func:`_increment_terms` and
    :func:`_increments` evaluate the same operations on many pixels at once
    (and must stay in step with it).
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


def _increment_terms(metric, smooth, tau, mu, m):
    """The per-class constants (B, C) of :func:`_increments`'s one formula
    ``((u * (p - v) - w * (1 - p)) / (y - z * p)) * s - h`` for every metric:
    the operations of :func:`_increment` (in NumPy, elementwise, the same float64
    bits) padded with exact identities (``x * 1``, ``x / 1``, ``x - 0``,
    ``0 * (1 - p) = 0``, ``y - 0 * p = y`` for finite p >= 0).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if metric == 0:
            d = tau + mu + smooth + 1.0
            one = np.ones_like(d)
            zero = np.zeros_like(d)
            if smooth > 1.0:
                return 2.0 * one, m / d, zero, one, zero, smooth / (d + 1.0), (smooth / d) * (smooth / (d - 1.0))
            shift = (smooth / d) / (d - 1.0) if smooth > 0.0 else zero
            return 2.0 * one, m / d, zero, d + 1.0, zero, one, shift
        e = tau + mu - m + smooth
        a = np.where(e > 0.0, (m + smooth) / np.where(e > 0.0, e, 1.0), 0.0)  # 0/0 := 0
        one = np.ones_like(e)
        zero = np.zeros_like(e)
        return one, zero, a, e + 1.0, one, one, zero


@njit(cache=True, nogil=True, error_model="numpy")
def _score(p, u, v, w, y, z, s, h):
    """:func:`_increment` of probability ``p`` (float64) on the constants of
    :func:`_increment_terms`: the one formula of the vectorised and the pixel-by-pixel paths."""
    return ((u * (p - v) - w * (1.0 - p)) / (y - z * p)) * s - h


@njit(cache=True, nogil=True, error_model="numpy")
def _pair_labels(flat, d, i0, t, pos, out):
    """Labels of the pixels ``pos`` of a tile (from ``i0``) claimed by exactly
    two classes (state :func:`pair_state`): the higher increment, ties
    (DELTA_TIE_RTOL) to the lower class, as :func:`_first_within` over the two
    claimants.  ``flat``: the image's ``(C, d)`` probabilities, flattened;
    ``t``: the constants of :func:`_increment_terms`, ``(C, 7)``.  (Scalar
    indices only: a slice per pixel costs two atomic reference counts.)
    """
    for q in range(pos.size):
        # The two values lie in two class rows of the tile, far apart: fetch
        # those of the pixel PAIR_AHEAD places on while this one is scored.
        if q + PAIR_AHEAD < pos.size:
            ja = pos[q + PAIR_AHEAD]
            ahead = PAIR - out[ja]
            _prefetch(flat, (ahead & 0xFFFFFFFF) * d + i0 + ja)
            _prefetch(flat, (ahead >> 32) * d + i0 + ja)
        j = pos[q]
        code = PAIR - out[j]
        c = code & 0xFFFFFFFF
        k = code >> 32
        x_low = _score(np.float64(flat[c * d + i0 + j]), t[c, 0], t[c, 1], t[c, 2], t[c, 3], t[c, 4], t[c, 5], t[c, 6])
        x_high = _score(np.float64(flat[k * d + i0 + j]), t[k, 0], t[k, 1], t[k, 2], t[k, 3], t[k, 4], t[k, 5], t[k, 6])
        best = max(x_low, x_high)
        out[j] = c if x_low >= best - DELTA_TIE_RTOL * abs(best) else k


# error_model="numpy": a division by zero gives inf instead of raising, so the
# increment loop (a division per pixel) vectorises.  The IoU divisor e + 1 - p
# is never zero: it is >= 1 - p + tau + (mu - m) with m <= mu, so zero would
# take p = 1 with mu = 0.
@njit(cache=True, nogil=True, error_model="numpy")
def _increments(row, pos, unclaimed, t, cut, terms, inc, best, next_row):
    """``inc[q]`` = :func:`_increment` of one class's probability ``row[pos[q]]``
    (one formula for every metric, on the constants ``terms`` of
    :func:`_increment_terms`), or -inf where the class may not take the pixel
    (a contested pixel it does not claim: p < t, or a tie at or after the cut);
    ``best`` takes the running maximum.  The gather prefetches the same pixels
    of ``next_row`` (the next class's row; rows of a tile lie a whole image row
    apart, and the hardware prefetcher starts cold on each: measured on
    (4, 21, 512, 512), conflicts 15 -> 14 ms).  (A separate function: the same
    loops written inside the kernel did not vectorise.)
    """
    u, v, w, y, z, s, h = terms[0], terms[1], terms[2], terms[3], terms[4], terms[5], terms[6]
    for q in range(pos.size):  # scalar loads first (LLVM skips vector gathers on many CPUs)
        inc[q] = row[pos[q]]
        _prefetch(next_row, pos[q])
    for q in range(pos.size):  # then a vectorised loop
        p = inc[q]
        x = _score(p, u, v, w, y, z, s, h)
        x = x if (unclaimed[q] != 0) | (p > t) | ((p == t) & (pos[q] < cut)) else -np.inf
        inc[q] = x
        best[q] = x if x > best[q] else best[q]


@parallel_kernel(cache=True)
def _conflicts(p3, terms, by_class, plan, n_comp, labels, void, void_index, k_max):
    """:func:`conflicts` on the per-class arrays it prepares, in tasks of one
    image by one tile of pixels."""
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        i1 = min(d, i0 + TILE)
        out = labels[b, i0:i1]
        # Work arrays of fixed sizes (sized by the open pixels: measured slower).
        idx = np.empty(TILE, dtype=np.int32)
        pairs = np.empty(TILE, dtype=np.int32)
        unclaimed = np.empty(k_max, dtype=np.int32)
        label = np.empty(k_max, dtype=np.int32)
        best = np.empty(k_max)
        floor = np.empty(k_max)
        incs = np.empty(n_cls * k_max)  # one block of increments per competing class
        # The open pixels, gathered into lists (branch-free): first all of
        # them, reading the labels only (on a volume they are far bigger than
        # the cache, and writing every one back cost a third of this pass);
        # then those claimed by two classes, and the others; under the void
        # policy unclaimed pixels take void_index at once.
        n_any = 0
        for j in range(i1 - i0):
            pairs[n_any] = j
            n_any += out[j] < 0
        lowest_open = MANY if void else NONE
        n = 0
        n_pairs = 0
        for q in range(n_any):
            j = pairs[q]
            s = out[j]
            idx[n] = j
            n += s >= lowest_open
            pairs[n_pairs] = j  # (n_pairs <= q: the entries still to read are not overwritten)
            n_pairs += s <= PAIR
            out[j] = void_index if void & (s == NONE) else s
        # A pixel claimed by two classes: only those two compete.
        _pair_labels(p3[b].reshape(-1), d, i0, by_class[b], pairs[:n_pairs], out)
        comp = plan[1, b]
        # Blocks of open pixels (k_max, see open_block): their increments stay in cache.
        for q0 in range(0, n, k_max):
            k = min(n, q0 + k_max) - q0
            pos = idx[q0:q0 + k]
            for q in range(k):
                unclaimed[q] = out[pos[q]] == NONE
                best[q] = -np.inf
            # Classes outside, pixels inside: each competing class's increments and the running best.
            for g in range(n_comp[b]):
                c = comp[g]
                _increments(p3[b, c, i0:i1], pos, unclaimed, terms[7, b, c], plan[0, b, c] - i0, terms[:7, b, c],
                            incs[g * k_max:g * k_max + k], best, p3[b, comp[min(g + 1, n_comp[b] - 1)], i0:i1])
            # The lowest competing class within DELTA_TIE_RTOL of the best (as
            # _first_within): classes from the last to the first, each taking
            # the pixels it ties (vectorised).
            for q in range(k):
                floor[q] = best[q] - DELTA_TIE_RTOL * abs(best[q])
                label[q] = 0
            for g in range(n_comp[b] - 1, -1, -1):
                inc = incs[g * k_max:g * k_max + k]
                c = comp[g]
                for q in range(k):
                    label[q] = c if inc[q] >= floor[q] else label[q]
            for q in range(k):
                # best = -inf: no class may take the pixel, every class ties (as
                # _first_within, whose skipped classes hold -inf too): class 0.
                out[pos[q]] = 0 if floor[q] == -np.inf else label[q]


def conflicts(p3, threshold, tie_end, active, labels, tau, mu, m, metric, smooth, void, void_index) -> None:
    """Labels of the pixels claims left open: contested (``pair_state`` or
    ``MANY``: its claimants compete) and ``NONE`` (unclaimed: every active class
    competes, or every class if none is active; ``void_index`` under the void
    policy).  The highest increment wins, ties (DELTA_TIE_RTOL) to the lowest
    class index.

    Per-class inputs are prepared here in NumPy: a contested pixel goes to its
    claimants only (active, p > t or a tie before the cut; compared in float64),
    and a class that may take no pixel is not evaluated (its increments would be -inf).
    """
    n_img, n_cls, _ = p3.shape
    terms = np.empty((8, n_img, n_cls))  # the increment's per-class constants, then the threshold
    terms[:7] = _increment_terms(metric, float(smooth), tau, mu, m)
    terms[7] = np.where(active, threshold, np.inf)
    plan = np.zeros((2, n_img, n_cls), dtype=np.int64)  # tie cuts, then the competing classes
    plan[0] = np.where(active, tie_end, -(2**62))
    competing = active | ~active.any(axis=1, keepdims=True)
    n_comp = competing.sum(axis=1).astype(np.int64)
    for b in range(n_img):
        plan[1, b, : n_comp[b]] = np.flatnonzero(competing[b])
    by_class = np.ascontiguousarray(terms[:7].transpose(1, 2, 0))  # (B, C, 7): one class's constants together
    _conflicts(p3, terms, by_class, plan, n_comp, labels, bool(void), int(void_index), open_block(n_cls))


def open_block(n_cls: int) -> int:
    """Open pixels a conflicts task resolves together: ``OPEN_BLOCK``, fewer when their
    increments (one float64 per class and pixel) would pass ``INCREMENTS_AT_MOST``.

    The labels do not depend on it (each pixel's increments are its own).

    Examples
    --------
    >>> open_block(21), open_block(4096), open_block(2**20)
    (1024, 256, 1)
    """
    return max(1, min(OPEN_BLOCK, INCREMENTS_AT_MOST // max(1, n_cls)))


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
    n_off = np.zeros(tau_part.shape[0], dtype=np.int64)
    _claims(p3, *_claim_inputs(p3, threshold, tie_end, active, True), labels, tau_part, m_part, n_off)
    off = int(n_off.sum())
    if off == 0:  # valid input: no range needed
        return n_img * d, 0, np.inf, -np.inf
    # The range for the message (the failure path only): the kernel's sums
    # (the input's precision, class order) again, in NumPy.
    sums = p3.sum(axis=1, dtype=p3.dtype)
    return n_img * d, off, float(sums.min()), float(sums.max())


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
