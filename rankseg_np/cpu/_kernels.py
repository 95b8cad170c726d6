"""Small Numba kernels shared by every CPU solver.

Rows are the (image, class) pairs of a ``(B, C, d)`` array viewed as
``(B*C, d)``.  Every sum is accumulated in float64, sequentially within a row,
so results do not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._decision import RowDecision
from .._validate import raise_bad_values
from ._threads import parallel_kernel

# Pixels per parallel task when a kernel splits rows into blocks: large enough
# to amortise scheduling, small enough to balance a handful of huge rows.
BLOCK = 1 << 16


@njit(cache=True, nogil=True)
def first_pass(row):
    """One read of a row: (sum, max, any value outside [0, 1] or NaN, sum and count above 1/2)."""
    total = 0.0
    peak = -np.inf
    bad = False
    s_half = 0.0
    n_half = 0
    for i in range(row.size):
        v = row[i]
        # NaN fails both comparisons, so this one test also catches NaN and inf.
        if not (v >= 0.0 and v <= 1.0):
            bad = True
        total += v
        if v > peak:
            peak = v
        if v > 0.5:
            s_half += v
            n_half += 1
    return total, peak, bad, s_half, n_half


# Reductions below may be reassociated ("reassoc" only: NaN and inf keep their
# IEEE meaning, so the validity test still sees them) so that LLVM vectorises
# them; the order is fixed at compile time, so results stay identical across
# runs and thread counts (float64 accumulation either way).
REASSOC = {"reassoc"}


@njit(cache=True, nogil=True, fastmath=REASSOC)
def scan(row, pruning_prob):
    """One vectorised read of a row for the solvers.

    Returns (sum, whether max > pruning_prob, any value NaN/inf/outside [0, 1],
    sum and count above 1/2).  ``max > pruning_prob`` is tested as a count,
    which vectorises where a NaN-aware running maximum does not.
    """
    total = 0.0
    n_bad = 0
    n_above = 0
    s_half = 0.0
    n_half = 0
    for i in range(row.size):
        v = row[i]
        n_bad += not (v >= 0.0 and v <= 1.0)  # NaN fails both comparisons
        total += v
        n_above += v > pruning_prob
        s_half += v if v > 0.5 else 0.0
        n_half += v > 0.5
    return total, n_above > 0, n_bad > 0, s_half, n_half


@njit(cache=True, nogil=True, fastmath=REASSOC)
def sum_above(row, t):
    """Sum and count of the entries strictly above ``t`` (float64 accumulation)."""
    s = 0.0
    n = 0
    for i in range(row.size):
        v = row[i]
        s += v if v > t else 0.0
        n += v > t
    return s, n


@njit(cache=True, nogil=True)
def sort_desc_stable(v, idx):
    """Sort ``v`` descending, ties keeping their order, carrying ``idx`` (bottom-up merge sort).

    Hand-written because Numba's ``np.sort`` / ``np.argsort`` add seconds to a
    kernel's first compilation; the bands sorted here are small, so simplicity
    costs nothing.  Used by the RMA Dice-smooth band and the exact solver.
    """
    n = v.size
    src_v = v.copy()
    src_i = idx.copy()
    dst_v = np.empty(n)
    dst_i = np.empty(n, dtype=np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            a = lo
            b = mid
            for k in range(lo, hi):
                # take from the right run only when strictly larger: stable
                if b < hi and (a >= mid or src_v[b] > src_v[a]):
                    dst_v[k] = src_v[b]
                    dst_i[k] = src_i[b]
                    b += 1
                else:
                    dst_v[k] = src_v[a]
                    dst_i[k] = src_i[a]
                    a += 1
        src_v, dst_v = dst_v, src_v
        src_i, dst_i = dst_i, src_i
        width *= 2
    return src_v, src_i


@parallel_kernel(cache=True)
def half_to_single(bits, out):
    """``out[i]`` = the float16 whose bit pattern is ``bits[i]`` (uint16), as float32, exactly.

    Numba has no float16.  Decoding the bits here runs in parallel and
    vectorises, several times faster than NumPy's single-threaded cast; every
    float16 is exactly a float32, so the answer is NumPy's ``astype`` bit for
    bit (NaN payloads included, ``test_half_to_single_every_pattern``).
    """
    n = bits.size
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in prange(nblk):
        i0 = blk * BLOCK
        i1 = min(n, i0 + BLOCK)
        _half_block(bits[i0:i1], out[i0:i1].view(np.uint32), out[i0:i1])


@njit(cache=True, nogil=True)
def _half_block(h, out_bits, out):
    for j in range(h.size):  # the normal numbers, infinities and NaNs: move the fields
        x = np.uint32(h[j])
        exp = (x >> 10) & 0x1F
        body = ((x & 0x3FF) << 13) | ((exp + 112) << 23)
        body = (body | 0x7F800000) if exp == 0x1F else body  # inf/NaN keep an all-ones exponent
        out_bits[j] = ((x & 0x8000) << 16) | body
    for j in range(h.size):  # zeros and subnormals: mantissa * 2^-24, exact in float32
        x = h[j]
        if (x & 0x7C00) == 0:
            mag = np.float32(x & 0x3FF) * np.float32(2.0**-24)
            out[j] = -mag if x & 0x8000 else mag


@parallel_kernel(cache=True)
def row_stats(p2):
    """Per row: sum (float64), maximum, and whether any value is NaN/inf/outside [0, 1]."""
    rows = p2.shape[0]
    mu = np.zeros(rows)
    peak = np.zeros(rows)
    bad = np.zeros(rows, dtype=np.bool_)
    for r in prange(rows):
        total, mx, b, _, _ = first_pass(p2[r])
        mu[r] = total
        peak[r] = mx
        bad[r] = b
    return mu, peak, bad


@njit(cache=True, nogil=True)
def _mask_block(row, t, k, out):
    """out[j] = row[j] > t or (row[j] == t and j < k): one block, indexed from 0.

    Indexing slices from 0 lets Numba prove the indices non-negative, and LLVM
    then vectorises the loop (it does not for ``range(i0, i1)``: measured 4-5x
    slower).  The tie cut is usually before the block, leaving ``p > t``.
    """
    if k <= 0:
        for j in range(row.size):
            out[j] = row[j] > t
    else:
        for j in range(row.size):
            v = row[j]
            out[j] = v > t or (v == t and j < k)


@parallel_kernel(cache=True)
def materialize(p2, threshold, tie_end, out):
    """out[r, i] = p2[r, i] > t_r or (p2[r, i] == t_r and i < k_r), in (row, block) tasks."""
    rows, d = p2.shape
    nblk = (d + BLOCK - 1) // BLOCK
    for task in prange(rows * nblk):
        r = task // nblk
        i0 = (task % nblk) * BLOCK
        i1 = min(d, i0 + BLOCK)
        _mask_block(p2[r, i0:i1], threshold[r], tie_end[r] - i0, out[r, i0:i1])


def decide_rows(row_kernel, p3, *args):
    """Run ``row_kernel(p2, *args, threshold, tie_end, active, mu, bad)`` over the rows of
    a C-contiguous ``(B, C, d)`` array and wrap its outputs as a :class:`RowDecision`
    (raising the value error if any row held NaN/inf/out-of-range values)."""
    b, c, d = p3.shape
    rows = b * c
    threshold = np.empty(rows)
    tie_end = np.empty(rows, dtype=np.int64)
    active = np.empty(rows, dtype=np.bool_)
    mu = np.empty(rows)
    bad = np.empty(rows, dtype=np.bool_)
    row_kernel(p3.reshape(rows, d), *args, threshold, tie_end, active, mu, bad)
    if bad.any():
        raise_bad_values(p3)
    return RowDecision(*(x.reshape(b, c) for x in (threshold, tie_end, active, mu)))
