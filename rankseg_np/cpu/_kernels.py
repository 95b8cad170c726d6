"""Small Numba kernels shared by every CPU solver.

Rows are the (image, class) pairs of a ``(B, C, d)`` array viewed as
``(B*C, d)``.  Every sum is accumulated in float64 within one row task, so
results do not depend on the number of threads; the row sums of the RMA
decision (:func:`scan_row`, :func:`sum_above`) add their lanes in a fixed
order written out in LLVM IR, so they do not depend on the CPU's vector width
either.
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




def bit_pattern(t: float, dtype: np.dtype) -> np.unsignedinteger:
    """The bit pattern of the largest value of ``dtype`` at most ``t``, as an unsigned integer.

    For an entry ``v >= 0`` of that dtype: ``v > t`` exactly when its pattern is above this one.
    The result is a NumPy ``uint32``/``uint64`` scalar, so that a kernel receives it with the type
    of the patterns it is compared with (a Python int arrives as int64, and Numba compares
    uint64 with int64 in float64, which loses the last bits).

    Examples
    --------
    >>> import numpy as np
    >>> hex(bit_pattern(1.0, np.dtype(np.float32)))
    '0x3f800000'
    """
    value = np.asarray(t, dtype=dtype)
    if float(value) > t:
        value = np.nextafter(value, dtype.type(-np.inf))
    return value.view(np.uint32 if dtype.itemsize == 4 else np.uint64)[()]


def as_bits(a: np.ndarray) -> np.ndarray:
    """A float32/float64 array viewed as unsigned integers of the same width (no copy)."""
    return a.view(np.uint32 if a.dtype.itemsize == 4 else np.uint64)


@njit(cache=True, nogil=True)
def dtype_floor(t, row):
    """The largest value of ``row``'s dtype at most the float64 ``t``.

    For an entry ``v`` of the row, ``v > t`` exactly when ``v > dtype_floor(t, row)``
    (no value of the dtype lies between them), so a float32 row is compared in float32:
    16 lanes of a 64-byte block at once instead of 8.  (:func:`bit_pattern` and
    :func:`rankseg_np.cpu.multiclass.input_thresholds` do the same in NumPy.)
    """
    t_in = row.dtype.type(t)  # rounded to nearest
    if t_in > t:
        t_in = np.nextafter(t_in, row.dtype.type(-np.inf))
    return t_in


@njit(cache=True, nogil=True)
def sum_above(row, t):
    """Sum and count of the entries strictly above ``t`` (the float64 ``t``: compared exactly,
    summed in float64).

    The sum's order is :func:`scan_row`'s (per-lane sums of 64-byte blocks, one
    for each quarter of the row in :func:`_block_loop`'s order, a fixed tree,
    then the tail in order), so it has the same bits on every CPU.
    """
    row = np.ascontiguousarray(row)  # a no-op for the contiguous rows of the solvers
    lanes = 64 // row.itemsize
    n_blocks = row.size // lanes
    s, n = _sum_above_blocks(row, n_blocks, dtype_floor(t, row))
    for i in range(n_blocks * lanes, row.size):
        v = row[i]
        if v > t:  # the same test as the blocks' (see dtype_floor)
            s += v
            n += 1
    return s, n


def _reduce_lanes(builder, vectors, combine):
    """Halves combined lane by lane (lanes 0..7 with 8..15, then 0..3 with 4..7, ...), for each
    vector with its own ``combine``; returns lane 0 of each: a fixed order on every CPU."""
    i32 = ir.IntType(32)
    n = vectors[0].type.count
    while n > 1:
        h = n // 2
        lo = ir.Constant(ir.VectorType(i32, h), list(range(h)))
        hi = ir.Constant(ir.VectorType(i32, h), list(range(h, n)))
        vectors = [
            fn(builder, builder.shuffle_vector(x, x, lo), builder.shuffle_vector(x, x, hi))
            for x, fn in zip(vectors, combine)
        ]
        n = h
    return [builder.extract_element(x, ir.Constant(i32, 0)) for x in vectors]


def _splat(builder, x, ty):
    v = ir.Constant(ty, ir.Undefined)
    for lane in range(ty.count):
        v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), lane))
    return v


def _fadd(builder, a, b):
    return builder.fadd(a, b)


def _iadd(builder, a, b):
    return builder.add(a, b)


def _umax(builder, a, b):
    return builder.select(builder.icmp_unsigned(">", b, a), b, a)


def _block_loop(builder, n_blocks, state, step):
    """Emit ``state = step(builder, b, q, state)`` for the 64-byte blocks ``b`` of a row in
    their fixed order, ``q`` the quarter of the row ``b`` lies in, and return the final state.

    The order: with ``Q = n_blocks // 4``, blocks ``i, Q + i, 2Q + i, 3Q + i`` (quarters
    ``q = 0, 1, 2, 3``) for ``i = 0 .. Q-1``, then blocks ``4Q ..`` in turn (``q = 0``).
    Reading the four quarters of a row side by side keeps four streams from memory in
    flight, which reads a row about 1.7x as fast as one stream (measured here: a plain
    sum of 88 MB on two threads, 5.3 -> 3.1 ms).  Sums keep one accumulator per quarter
    (:func:`_quarter_sums`): four independent chains of additions instead of one.
    ``step`` may branch (it ends in any block).
    """
    i64 = ir.IntType(64)
    quarter = builder.lshr(n_blocks, ir.Constant(i64, 2))
    leftover = builder.mul(quarter, ir.Constant(i64, 4))  # the first block after the quarters
    entry = builder.block
    head4, body4, head1, body1, done = (builder.append_basic_block(f"blocks.{n}") for n in
                                        ("head4", "body4", "head1", "body1", "done"))
    builder.branch(head4)

    builder.position_at_end(head4)  # four quarters side by side
    i = builder.phi(i64)
    phis = [builder.phi(x.type) for x in state]
    i.add_incoming(ir.Constant(i64, 0), entry)
    for phi, x in zip(phis, state):
        phi.add_incoming(x, entry)
    builder.cbranch(builder.icmp_signed("<", i, quarter), body4, head1)
    builder.position_at_end(body4)
    now = phis
    for q in range(4):
        now = step(builder, builder.add(builder.mul(quarter, ir.Constant(i64, q)), i), q, now)
    i.add_incoming(builder.add(i, ir.Constant(i64, 1)), builder.block)
    for phi, x in zip(phis, now):
        phi.add_incoming(x, builder.block)
    builder.branch(head4)

    builder.position_at_end(head1)  # the blocks left over, in turn
    j = builder.phi(i64)
    rest = [builder.phi(x.type) for x in state]
    j.add_incoming(leftover, head4)
    for phi, x in zip(rest, phis):
        phi.add_incoming(x, head4)
    builder.cbranch(builder.icmp_signed("<", j, n_blocks), body1, done)
    builder.position_at_end(body1)
    now = step(builder, j, 0, rest)
    j.add_incoming(builder.add(j, ir.Constant(i64, 1)), builder.block)
    for phi, x in zip(rest, now):
        phi.add_incoming(x, builder.block)
    builder.branch(head1)

    builder.position_at_end(done)
    return rest


def _load_block(builder, ptr, b, vec, width):
    """Block ``b`` (64 bytes: ``vec.count`` values of ``width`` bits) of the row at ``ptr``."""
    at = builder.gep(ptr, [builder.mul(b, ir.Constant(ir.IntType(64), vec.count))])
    return builder.load(builder.bitcast(at, vec.as_pointer()), align=width // 8)


def _popcount(builder, lanes):
    """LLVM's population count of a ``lanes``-bit mask (a compare of a block, bitcast)."""
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.IntType(lanes), [ir.IntType(lanes)]), f"llvm.ctpop.i{lanes}"
    )


def _quarter_sums(builder, sums):
    """The four per-quarter accumulators of a sum added in a fixed tree, ``(s0 + s1) + (s2 + s3)``."""
    return builder.fadd(builder.fadd(sums[0], sums[1]), builder.fadd(sums[2], sums[3]))


@intrinsic
def _sum_above_blocks(typingctx, src, n_blocks, t):
    """The 64-byte blocks of :func:`sum_above` in :func:`_block_loop`'s order: entries above ``t``
    (a value of the row's dtype) counted, and summed in float64 per lane and per quarter, then
    reduced in a fixed tree (no fast-math flags: LLVM keeps the order)."""
    if not (
        isinstance(src, types.Array) and src.ndim == 1 and src.layout == "C"
        and src.dtype in (types.float32, types.float64) and t == src.dtype
    ):
        return None
    value = src.dtype
    width = value.bitwidth

    def codegen(context, builder, sig, args):
        src_arr, nblk, t_v = args
        lanes = 512 // width
        i64, f64 = ir.IntType(64), ir.DoubleType()
        vec, dvec = ir.VectorType(context.get_value_type(value), lanes), ir.VectorType(f64, lanes)
        src_ptr = context.make_array(sig.args[0])(context, builder, src_arr).data
        t_s = _splat(builder, t_v, vec)
        zero = ir.Constant(dvec, [0.0] * lanes)
        popcount = _popcount(builder, lanes)

        def step(builder, b, q, state):
            sums, cnt = state[:4], state[4]
            v = _load_block(builder, src_ptr, b, vec, width)
            above = builder.fcmp_ordered(">", v, t_s)  # in the row's precision: one compare for the block
            vd = builder.fpext(v, dvec) if width == 32 else v
            sums[q] = builder.fadd(sums[q], builder.select(above, vd, zero))
            kept = builder.zext(builder.call(popcount, [builder.bitcast(above, ir.IntType(lanes))]), i64)
            return sums + [builder.add(cnt, kept)]

        *sums, cnt = _block_loop(builder, nblk, [zero] * 4 + [ir.Constant(i64, 0)], step)
        (acc,) = _reduce_lanes(builder, [_quarter_sums(builder, sums)], [_fadd])
        return context.make_tuple(builder, sig.return_type, [acc, cnt])

    return types.Tuple([types.float64, types.int64])(src, types.int64, t), codegen


@intrinsic
def _scan_blocks(typingctx, src, n_blocks, low, cut, dst, cap):
    """The 64-byte blocks of :func:`scan_row`, in :func:`_block_loop`'s order: returns (sum, top
    pattern, count of patterns above ``low``, entries packed into ``dst``).

    The float64 sum is kept in one accumulator per lane and quarter of the
    row, and the quarters (:func:`_quarter_sums`) and lanes are added in a
    fixed tree at the end, written out in IR without fast-math
    flags: LLVM may not reorder it, so the sum has the same bits on every CPU
    (AVX-512, AVX2 or none; ``tests/test_rma.py`` checks it against a NumPy
    transcription of the order).  While at most ``cap`` entries are packed,
    each block's entries above ``cut`` are appended to ``dst`` with one
    compress-store (``llvm.masked.compressstore``: AVX-512's
    ``vcompressps``/``vcompresspd``, scalar code elsewhere), which writes only
    the entries it keeps; ``dst`` needs ``cap`` + one block of room.
    """
    if not (
        isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == dst.ndim == 1
        and src.layout == dst.layout == "C" and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64)
    ):
        return None
    value = src.dtype
    width = value.bitwidth
    pattern = types.uint32 if width == 32 else types.uint64

    def codegen(context, builder, sig, args):
        src_arr, nblk, low_v, cut_v, dst_arr, cap_v = args
        lanes = 512 // width
        i1, i64, iw = ir.IntType(1), ir.IntType(64), ir.IntType(width)
        scalar = context.get_value_type(value)
        vec, ivec = ir.VectorType(scalar, lanes), ir.VectorType(iw, lanes)
        dvec, qvec = ir.VectorType(ir.DoubleType(), lanes), ir.VectorType(i64, lanes)

        src_ptr = context.make_array(sig.args[0])(context, builder, src_arr).data
        dst_ptr = context.make_array(sig.args[4])(context, builder, dst_arr).data
        low_s, cut_s = _splat(builder, low_v, ivec), _splat(builder, cut_v, vec)
        compress = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vec, scalar.as_pointer(), ir.VectorType(i1, lanes)]),
            f"llvm.masked.compressstore.v{lanes}f{width}",
        )
        popcount = _popcount(builder, lanes)

        def step(builder, b, q, state):  # per-lane sums (one per quarter), tops and counts, entries packed
            sums, (top, cnt, k) = state[:4], state[4:]
            v = _load_block(builder, src_ptr, b, vec, width)
            bits = builder.bitcast(v, ivec)
            sums[q] = builder.fadd(sums[q], builder.fpext(v, dvec) if width == 32 else v)
            top = builder.select(builder.icmp_unsigned(">", bits, top), bits, top)
            # Per-lane counts in the patterns' width: 32 bits for float32 rows, exact up to
            # 2^32 blocks (6.9e10 values in one row, 275 GB).
            cnt = builder.add(cnt, builder.zext(builder.icmp_unsigned(">", bits, low_s), ivec))
            body = builder.block
            pack, cont = (builder.append_basic_block(f"scan.{n}") for n in ("pack", "cont"))
            builder.cbranch(builder.icmp_signed("<=", k, cap_v), pack, cont)

            builder.position_at_end(pack)
            mask = builder.fcmp_ordered(">", v, cut_s)  # NaN is never above
            builder.call(compress, [v, builder.gep(dst_ptr, [k]), mask])
            kept = builder.zext(builder.call(popcount, [builder.bitcast(mask, ir.IntType(lanes))]), i64)
            k_packed = builder.add(k, kept)
            builder.branch(cont)

            builder.position_at_end(cont)
            k_next = builder.phi(i64)
            k_next.add_incoming(k_packed, pack)
            k_next.add_incoming(k, body)
            return sums + [top, cnt, k_next]

        start = [ir.Constant(dvec, [0.0] * lanes)] * 4 + [
            ir.Constant(ivec, [0] * lanes), ir.Constant(ivec, [0] * lanes), ir.Constant(i64, 0)]
        *sums, top, cnt, k = _block_loop(builder, nblk, start, step)
        acc = _quarter_sums(builder, sums)
        out = _reduce_lanes(builder, [acc, top, builder.zext(cnt, qvec)], [_fadd, _umax, _iadd])
        return context.make_tuple(builder, sig.return_type, out + [k])

    return types.Tuple([types.float64, pattern, types.int64, types.int64])(
        src, types.int64, pattern, value, dst, types.int64
    ), codegen


@njit(cache=True, nogil=True)
def scan_row(row, bits, low, cut, out):
    """One read of a row: its float64 sum, its largest bit pattern, how many patterns exceed
    ``low``, and its entries above ``cut`` packed into ``out`` in reading order.

    ``bits`` is ``row`` viewed as unsigned integers of the same width (see
    :func:`bit_pattern`).  For non-negative floats the order of bit patterns
    is the order of values, and a negative sign, NaN or infinity all give a
    pattern above that of 1.0: so the row holds only values in [0, 1] when
    the top pattern is at most ``bit_pattern(1.0)`` (the converse fails only
    for -0.0, whose pattern is the sign bit alone); then its maximum exceeds
    ``t`` exactly when the top pattern exceeds ``bit_pattern(t)``, and the
    count is that of the entries above ``t`` for ``low = bit_pattern(t)``.
    Unlike a float maximum, the integer one vectorises.

    Returns ``(sum, top, n_low, k)``; ``out[:k]`` holds the entries above
    ``cut``, all of them when ``k`` is at most ``out.size`` less one 64-byte
    block (packing stops past that; the count goes on).  Reading order: the
    64-byte blocks in :func:`_block_loop`'s order (the row's four quarters
    side by side), then the tail in turn; the solvers use the packed entries
    as a set (sums, counts, a sort), never their positions.  Sum order:
    per-lane sums of the blocks in that order, one for each quarter, a fixed
    tree (:func:`_scan_blocks`), then the tail in order.
    """
    lanes = 64 // row.itemsize
    n_blocks = row.size // lanes
    cap = out.size - lanes
    total, top, n_low, k = _scan_blocks(row, n_blocks, low, cut, out, cap)
    packing = k <= cap
    for i in range(n_blocks * lanes, row.size):
        v = row[i]
        total += v
        top = max(top, bits[i])
        n_low += bits[i] > low
        if packing and v > cut:
            out[k] = v
            k += 1
    return total, top, n_low, k


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


@intrinsic
def _mask_blocks(typingctx, src, n_blocks, t, dst):
    """``dst[j] = src[j] > t`` (``t`` a value of the row's dtype) for the 64-byte blocks of
    ``src``, in :func:`_block_loop`'s order (four streams): one compare of a whole block
    and one store of its booleans.  (LLVM's own vectorisation of the same loop compares
    eight lanes at a time and stores eight bytes: measured 19 -> 15 us per 2^18 float32
    values in cache.)"""
    if not (
        isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == dst.ndim == 1
        and src.layout == dst.layout == "C" and src.dtype in (types.float32, types.float64)
        and t == src.dtype and dst.dtype == types.boolean
    ):
        return None
    width = src.dtype.bitwidth

    def codegen(context, builder, sig, args):
        src_arr, nblk, t_v, dst_arr = args
        lanes = 512 // width
        i64 = ir.IntType(64)
        vec = ir.VectorType(context.get_value_type(src.dtype), lanes)
        bvec = ir.VectorType(ir.IntType(8), lanes)
        src_ptr = context.make_array(sig.args[0])(context, builder, src_arr).data
        dst_ptr = context.make_array(sig.args[3])(context, builder, dst_arr).data
        t_s = _splat(builder, t_v, vec)

        def step(builder, b, q, state):
            v = _load_block(builder, src_ptr, b, vec, width)
            above = builder.zext(builder.fcmp_ordered(">", v, t_s), bvec)
            at = builder.gep(dst_ptr, [builder.mul(b, ir.Constant(i64, lanes))])
            builder.store(above, builder.bitcast(at, bvec.as_pointer()), align=1)
            return state

        _block_loop(builder, nblk, [], step)
        return context.get_dummy_value()

    return types.void(src, types.int64, t, dst), codegen


def _mask_above(row, t_in, out):
    """``out[j] = row[j] > t_in`` for ``t_in`` a value of the row's dtype (in kernels only)."""
    raise NotImplementedError("called from Numba kernels only")


@overload(_mask_above)
def _mask_above_by_layout(row, t_in, out):
    if row.layout == "C" and out.layout == "C":
        def by_blocks(row, t_in, out):
            lanes = 64 // row.itemsize
            n_blocks = row.size // lanes
            _mask_blocks(row, n_blocks, t_in, out)
            for j in range(n_blocks * lanes, row.size):
                out[j] = row[j] > t_in
        return by_blocks

    def strided(row, t_in, out):  # views of other layouts: LLVM's own loop
        for j in range(row.size):
            out[j] = row[j] > t_in
    return strided


@njit(cache=True, nogil=True)
def mask_row(row, t, k, out):
    """out[j] = row[j] > t or (row[j] == t and j < k): one block, indexed from 0.

    The tie cut is usually before the block, leaving ``p > t``: compared in the
    row's precision (:func:`dtype_floor`), whole 64-byte blocks at a time
    (:func:`_mask_blocks`).  Indexing slices from 0 lets Numba prove the
    indices non-negative, so the loop with ties vectorises too (it does not
    for ``range(i0, i1)``: measured 4-5x slower).
    """
    t_in = dtype_floor(t, row)
    if k <= 0 or t_in != t:  # a threshold that is no value of the dtype ties nothing
        _mask_above(row, t_in, out)
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
        mask_row(p2[r, i0:i1], threshold[r], tie_end[r] - i0, out[r, i0:i1])


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
