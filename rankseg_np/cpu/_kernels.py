"""Small Numba kernels shared by every CPU solver.

Rows are the (image, class) pairs of a ``(B, C, d)`` array viewed as
``(B*C, d)``.  Every sum is accumulated in float64, sequentially within a row,
so results do not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

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


# Values per chunk of the first read of a row: the chunk is summed, then its
# entries above the cut are packed, while it is still in the L1 cache (4-8 KiB).
CHUNK = 1024


@njit(cache=True, nogil=True)
def open_row(row, low):
    """The first (and for RMA, only full) read of a row.

    Returns ``(sum, maximum, bad, rest)``: the float64 sum, the largest entry,
    whether any entry is NaN, infinite or outside [0, 1], and the entries
    strictly above ``low`` in their order (see :func:`entries_above`).  The
    sum is accumulated chunk by chunk (:data:`CHUNK`), a fixed order that
    does not depend on the thread count.

    The maximum and the validity test come from the largest bit pattern read
    as an unsigned integer: for non-negative floats that order is the order
    of values, and a negative sign, NaN or infinity all give a pattern above
    that of 1.0.  Only then is the row read again value by value (which also
    accepts -0.0, whose pattern is the sign bit alone).
    """
    bits = _bits_view(row)
    cut = _round_down(low, row)
    lanes = 64 // row.itemsize
    out = np.empty(min(row.size, row.size // 16 + lanes), dtype=row.dtype)
    total = 0.0
    top = bits.dtype.type(0)
    k = 0
    for c0 in range(0, row.size, CHUNK):
        c1 = min(row.size, c0 + CHUNK)
        part, part_top = _sum_and_top(row[c0:c1], bits[c0:c1])
        total += part
        top = max(top, part_top)
        if out.size - k < c1 - c0:  # room for the whole chunk, so _pack never stops inside it
            more = np.empty(min(row.size, max(2 * out.size, k + c1 - c0)), dtype=row.dtype)
            more[:k] = out[:k]
            out = more
        _, k = _pack(row[:c1], c0, out, k, cut)
    one = _bits_view(np.ones(1, dtype=row.dtype))[0]
    if top <= one:
        return total, np.float64(_from_bits(top, row)), False, out[:k]
    _, peak, bad, _, _ = first_pass(row)
    return total, peak, bad, out[:k]


@njit(cache=True, nogil=True, fastmath=REASSOC)
def _sum_and_top(chunk, bits):
    """Sum (float64) and largest bit pattern of a chunk: both reductions vectorise."""
    total = 0.0
    top = bits.dtype.type(0)
    for i in range(chunk.size):
        total += chunk[i]
        top = max(top, bits[i])
    return total, top


def _bits_view(row):
    """``row`` viewed as unsigned integers of its width (uint32 for float32, uint64 for float64)."""
    raise NotImplementedError  # compiled only, see the overload below


@overload(_bits_view)
def _bits_view_impl(row):
    unsigned = np.uint32 if row.dtype.bitwidth == 32 else np.uint64

    def impl(row):
        return row.view(unsigned)

    return impl


@njit(cache=True, nogil=True)
def _from_bits(pattern, row):
    """The value of ``row``'s dtype whose bit pattern is ``pattern``."""
    box = np.empty(1, dtype=row.dtype)
    _bits_view(box)[0] = pattern
    return box[0]


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
def entries_above(row, t):
    """The entries of ``row`` strictly above ``t`` (a float64), in their order, as a new array.

    One read of the row, in 64-byte blocks: each block's entries above ``t``
    are packed with one vector compress-store (AVX-512's ``vcompressps`` /
    ``vcompresspd``; on CPUs without it LLVM emits scalar code, still correct),
    where a branch per entry would cost several times more.
    """
    cut = _round_down(t, row)  # for an entry v of the row's dtype: v > t  <=>  v > cut
    lanes = 64 // row.itemsize
    # Room for a sixteenth of the row, doubled when full: a row-sized buffer
    # would cost a fresh mapping (and its page faults) for every long row,
    # while the entries above a first threshold are usually a few per cent.
    out = np.empty(min(row.size, row.size // 16 + lanes), dtype=row.dtype)
    i, k = _pack(row, 0, out, 0, cut)
    while i < row.size:
        more = np.empty(min(row.size, 2 * out.size), dtype=row.dtype)
        more[:k] = out[:k]
        out = more
        i, k = _pack(row, i, out, k, cut)
    return out[:k]


@njit(cache=True, nogil=True)
def _pack(row, i, out, k, cut):
    """Pack the entries above ``cut`` of ``row[i:]`` at ``out[k:]`` while ``out`` has room for a block.

    Returns where it stopped: (next entry of ``row``, next free slot of ``out``).
    """
    lanes = 64 // row.itemsize
    whole = row.size // lanes * lanes
    while i < whole and k + lanes <= out.size:
        k += _compress_above(row, i, out, k, cut)
        i += lanes
    if i < whole:
        return i, k
    while i < row.size and k < out.size:  # the last partial block, entry by entry
        if row[i] > cut:
            out[k] = row[i]
            k += 1
        i += 1
    return i, k


@njit(cache=True, nogil=True)
def _round_down(t, row):
    """The largest value of ``row``'s dtype that is <= ``t``."""
    cut = row.dtype.type(t)
    if np.float64(cut) > t:
        cut = np.nextafter(cut, row.dtype.type(-np.inf))
    return cut


@intrinsic
def _compress_above(typingctx, src, i, dst, k, cut):
    """``dst[k:]`` <- the entries of the 64-byte block ``src[i:]`` above ``cut``, in order; returns their count.

    ``llvm.masked.compressstore`` writes only the selected lanes, so ``dst``
    needs room for the count returned, not for a whole block.
    """
    if not (
        isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == dst.ndim == 1
        and src.layout == dst.layout == "C" and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64)
    ):
        return None
    value = src.dtype

    def codegen(context, builder, sig, args):
        src_arr, start, dst_arr, at, bound = args
        lanes = 64 // (value.bitwidth // 8)
        scalar = context.get_value_type(value)
        vec = ir.VectorType(scalar, lanes)
        mask_ty = ir.VectorType(ir.IntType(1), lanes)
        src_ptr = builder.gep(context.make_array(sig.args[0])(context, builder, src_arr).data, [start])
        dst_ptr = builder.gep(context.make_array(sig.args[2])(context, builder, dst_arr).data, [at])
        block = builder.load(builder.bitcast(src_ptr, vec.as_pointer()), align=value.bitwidth // 8)
        splat = ir.Constant(vec, ir.Undefined)
        for lane in range(lanes):
            splat = builder.insert_element(splat, bound, ir.Constant(ir.IntType(32), lane))
        mask = builder.fcmp_ordered(">", block, splat)  # NaN is never above
        store = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [vec, scalar.as_pointer(), mask_ty]),
            f"llvm.masked.compressstore.v{lanes}f{value.bitwidth}",
        )
        builder.call(store, [block, dst_ptr, mask])
        popcount = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(lanes), [ir.IntType(lanes)]), f"llvm.ctpop.i{lanes}"
        )
        return builder.zext(builder.call(popcount, [builder.bitcast(mask, ir.IntType(lanes))]), ir.IntType(64))

    return types.int64(src, types.int64, dst, types.int64, value), codegen


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
