"""Per-chunk work of the Dask executor: Numba kernels and the functions each task runs.

Serial, nogil kernels for passes 1 and 2 (Dask runs chunks in parallel
threads, so nesting Numba's own pool inside them would only oversubscribe
the cores), and the output pass, which runs the CPU executor's public
kernels on a chunk with the global decisions translated to it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
from numba import njit

from .. import cpu
from .._layout import check_class_sums
from .._solvers import METRIC_CODES
from .._validate import Config
from ..cpu import multiclass, rma

# --------------------------------------------------------------------------
# Histogram bins: floats with 9 mantissa bits, from 2**-64 up to 1.
# --------------------------------------------------------------------------
MANTISSA_BITS = 9
OCTAVES = 64
NBINS = OCTAVES * (1 << MANTISSA_BITS) + 2  # bin 0: [0, 2**-64); last bin: [1, 1 + 2**-9)
TINY = 2.0**-OCTAVES
# (shift, base): bin = (bits >> shift) - base + 1 for v >= 2**-64, from the
# IEEE bit pattern (monotone in the value for non-negative floats).
BIN_PARAMS = {
    np.dtype(np.float32): (np.uint32(23 - MANTISSA_BITS), (127 - OCTAVES) << MANTISSA_BITS),
    np.dtype(np.float64): (np.uint64(52 - MANTISSA_BITS), (1023 - OCTAVES) << MANTISSA_BITS),
}
# Relative widening of every bracket: the brackets are computed from float64
# sums accumulated in another order than the final ones (relative error far
# below 1e-9 even for 1e9-pixel rows); widening only adds window pixels.
SLACK = 1e-6
# Block of values counted before copying (see window_fill).
FILL_BLOCK = 2048
# Pixels per tile in decided_claims.
TILE = 4096


def _bin_edges() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edge of every bin (values in bin k satisfy lo[k] <= v < hi[k])."""
    k = np.arange(1, NBINS)
    raw = k - 1
    e = raw >> MANTISSA_BITS
    m = raw & ((1 << MANTISSA_BITS) - 1)
    lo = np.empty(NBINS)
    lo[0] = 0.0
    lo[1:] = np.ldexp(1.0 + m / float(1 << MANTISSA_BITS), (e - OCTAVES).astype(np.int64))
    hi = np.empty(NBINS)
    hi[:-1] = lo[1:]
    hi[-1] = 1.0 + 1.0 / (1 << MANTISSA_BITS)
    return lo, hi


BIN_LO, BIN_HI = _bin_edges()
# Valid probabilities never exceed 1: the tightest upper bound of each bin.
BIN_SUP = np.minimum(BIN_HI, 1.0)


# --------------------------------------------------------------------------
# Chunk kernels.  Serial and nogil: Dask runs chunks in parallel threads (or
# processes), so nesting Numba's own thread pool inside them would only
# oversubscribe the cores.
# --------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath={"reassoc"})
def row_scan(row, pruning_prob):
    """One vectorised read: float64 sum, counts above ``pruning_prob``, invalid, and non-finite.

    Reassociation only (NaN and inf keep their meaning): the order of the
    sum is fixed at compile time, so results are deterministic.
    """
    total = 0.0
    n_above = 0
    n_bad = 0
    n_nonfinite = 0
    for i in range(row.size):
        v = row[i]
        total += v
        n_above += v > pruning_prob
        n_bad += not (v >= 0.0 and v <= 1.0)  # NaN fails both comparisons
        n_nonfinite += not np.isfinite(v)
    return total, n_above, n_bad, n_nonfinite


@njit(cache=True, nogil=True)
def hist_counts(row, brow, shift, base, counts):
    """Add a row's values to a histogram of counts over the bins of ``BIN_LO``."""
    nb = counts.size
    for i in range(row.size):
        k = 0
        if row[i] >= TINY:
            k = min(np.int64(brow[i] >> shift) - base + 1, nb - 1)
        counts[k] += 1


@njit(cache=True, nogil=True)
def window_fill(p2, lo, hi, use, start, vals, idx, with_idx):
    """Copy the values in (lo, hi] of each row (and their in-chunk flat indices), in row order.

    Windows are tiny next to the chunk, so the row is scanned in blocks with
    a vectorised count, and only blocks that hold window values are copied,
    branch-free (each value is written, the cursor advances only when it is
    kept; ``vals``/``idx`` have one slot of slack at the end).
    """
    for r in range(p2.shape[0]):
        if not use[r]:
            continue
        row = p2[r]
        a = lo[r]
        b = hi[r]
        j = start[r]
        n = row.size
        for i0 in range(0, n, FILL_BLOCK):
            i1 = min(n, i0 + FILL_BLOCK)
            hits = 0
            for i in range(i0, i1):
                v = row[i]
                hits += (v > a) & (v <= b)
            if hits == 0:
                continue
            for i in range(i0, i1):
                v = row[i]
                vals[j] = v
                if with_idx:
                    idx[j] = i
                j += (v > a) & (v <= b)


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def decided_claims(p3, lo, hi, active, tau, m, undecided):
    """Multiclass claims (MATH 5) of the pixels whose claims the windows already decide.

    Class c claims pixel i iff ``p > t_c`` (or ``p == t_c`` before the tie
    cut), and ``t_c`` lies in ``(lo_c, hi_c]``: ``p > hi_c`` claims, ``p <=
    lo_c`` does not, whatever ``t_c`` is.  Pixels decided for every active
    class add to ``tau``/``m`` when they have a sole claimant (as in
    ``multiclass.claims``); the others are flagged in ``undecided`` and
    resolved once the thresholds are known.  No label array is written.
    Tiles of pixels, classes outside and pixels inside, in branch-free loops
    that vectorise (reassociation only: the order of the sums is fixed at
    compile time, so the result is deterministic).
    """
    n_img, n_cls, d = p3.shape
    count = np.empty(TILE, dtype=np.int32)
    owner = np.empty(TILE, dtype=np.int32)
    for b in range(n_img):
        for i0 in range(0, d, TILE):
            i1 = min(d, i0 + TILE)
            n = i1 - i0
            flags = undecided[b, i0:i1]
            count[:n] = 0
            owner[:n] = 0
            flags[:] = 0
            for c in range(n_cls):
                if not active[b, c]:
                    continue
                row = p3[b, c, i0:i1]
                a = lo[b, c]
                h = hi[b, c]
                for j in range(n):
                    v = row[j]
                    claim = v > h
                    count[j] += claim
                    owner[j] = c if claim else owner[j]
                    flags[j] |= (v > a) & (v <= h)
            for c in range(n_cls):
                if not active[b, c]:
                    continue
                row = p3[b, c, i0:i1]
                n_sole = 0
                s_sole = 0.0
                for j in range(n):
                    sole = (flags[j] == 0) & (count[j] == 1) & (owner[j] == c)
                    n_sole += sole
                    s_sole += row[j] if sole else 0.0
                tau[b, c] += n_sole
                m[b, c] += s_sole


@njit(cache=True, nogil=True)
def band_best(band, s_top, n_top, mu, smooth):
    """First maximiser k of f(n_top + k) over the sorted (ascending) band: ``rma.band_best`` on it
    in descending order."""
    return rma.band_best(band[::-1], s_top, n_top, mu, smooth)


@contextmanager
def cpu_threads(n_tasks: int):
    """Run the CPU path's parallel kernels inside a Dask task with a fair share of the cores.

    Dask already runs ``n_tasks`` chunks side by side; each task gets
    ``cores // n_tasks`` Numba threads (at least one; the setting is local to
    the calling thread).  Without this every task would wake a full Numba
    pool, which costs milliseconds per call on a busy machine and
    oversubscribes the cores.  The kernels themselves are safe to launch from
    several threads and in forked workers (``rankseg_np.cpu._threads``).
    """
    import numba

    share = max(1, int(numba.config.NUMBA_NUM_THREADS) // max(1, int(n_tasks)))
    previous = numba.get_num_threads()
    numba.set_num_threads(min(share, previous))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# --------------------------------------------------------------------------
# Small helpers on chunks.
# --------------------------------------------------------------------------
def chunk_rows(block: np.ndarray) -> np.ndarray:
    """A chunk ``(b, c, *s)`` as C-contiguous float32/float64 ``(b*c, prod(s))`` rows."""
    p3 = cpu.as_rows(np.asarray(block))
    return p3.reshape(p3.shape[0] * p3.shape[1], p3.shape[2])


def local_tie_end(k: int, offsets: tuple[int, ...], chunk: tuple[int, ...], full: tuple[int, ...]) -> int:
    """How many pixels of a chunk have a global flat index below ``k``.

    The global C-order index is strictly increasing in the chunk's own C
    order, so ``{i : global(i) < k}`` is a prefix of the chunk's flat order
    and the global tie rule ``i_global < k`` is the local rule ``i < result``.
    Counted lexicographically, axis by axis.
    """
    size = math.prod(chunk)
    if k <= 0:
        return 0
    if k >= math.prod(full):
        return size
    g = np.unravel_index(k, full)
    count = 0
    for a in range(len(full)):
        rest = math.prod(chunk[a + 1 :])
        ga = int(g[a]) - offsets[a]
        if ga < 0:
            return count
        if ga >= chunk[a]:
            return count + chunk[a] * rest
        count += ga * rest
    return count


def local_tie_ends(tie_end: np.ndarray, threshold: np.ndarray, offsets, chunk, full) -> np.ndarray:
    out = np.zeros(tie_end.shape, dtype=np.int64)
    for pos in zip(*np.nonzero((tie_end > 0) & np.isfinite(threshold))):
        out[pos] = local_tie_end(int(tie_end[pos]), offsets, chunk, full)
    return out


def chunk_offsets(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    return [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]


def global_index(local: np.ndarray, chunk_shape: tuple, offsets: tuple, full: tuple) -> np.ndarray:
    """In-chunk flat pixel index -> flat index in the image's spatial grid (C order)."""
    if local.size == 0:
        return local.astype(np.int64)
    parts = np.unravel_index(local, chunk_shape)
    return np.ravel_multi_index(tuple(ix + o for ix, o in zip(parts, offsets)), full).astype(np.int64)


# --------------------------------------------------------------------------
# Output pass and blockwise paths: the CPU executor's kernels on one chunk.
# --------------------------------------------------------------------------
def chunk_decision(dec: dict, rows_sel, offsets, chunk, full):
    b0, b1, c0, c1 = rows_sel
    threshold = np.ascontiguousarray(dec.threshold[b0:b1, c0:c1])
    tie_end = local_tie_ends(dec.tie_end[b0:b1, c0:c1], threshold, offsets, chunk, full)
    active = np.ascontiguousarray(dec.active[b0:b1, c0:c1])
    return threshold, tie_end, active


def masks_chunk(block, dec, rows_sel, offsets, full, n_tasks) -> np.ndarray:
    p2 = chunk_rows(block)
    threshold, tie_end, _ = chunk_decision(dec, rows_sel, offsets, tuple(block.shape[2:]), full)
    out = np.empty(p2.shape, dtype=np.bool_)
    with cpu_threads(n_tasks):
        cpu.materialize(p2, threshold.reshape(-1), tie_end.reshape(-1), out)
    return out.reshape(block.shape)


def chunk_claims(block, dec, rows_sel, offsets, full, n_tasks):
    """Claims of one chunk (all classes) under the global decisions; its class sums are checked too."""
    p3 = cpu.as_rows(np.asarray(block))
    n_img, n_cls, d = p3.shape
    threshold, tie_end, active = chunk_decision(dec, rows_sel, offsets, tuple(block.shape[2:]), full)
    labels = np.empty((n_img, d), dtype=np.int64)
    n_tasks = n_img * ((d + multiclass.TILE - 1) // multiclass.TILE)
    tau_part = np.zeros((n_tasks, n_cls))
    m_part = np.zeros((n_tasks, n_cls))
    with cpu_threads(n_tasks):
        sums = multiclass.checked_claims(p3, threshold, tie_end, active, labels, tau_part, m_part)
    check_class_sums(*sums, np.asarray(block))  # multiclass: every pixel's classes sum to 1 (see _layout)
    tau = tau_part.reshape(n_img, -1, n_cls).sum(axis=1)
    m = m_part.reshape(n_img, -1, n_cls).sum(axis=1)
    return p3, threshold, tie_end, active, labels, tau, m


def labels_chunk(block, dec, rows_sel, offsets, full, cfg: Config, n_tasks) -> np.ndarray:
    """Labels of one chunk (all classes): the CPU claims and conflicts kernels with the global tau_c, m_c."""
    p3, threshold, tie_end, active, labels, _, _ = chunk_claims(block, dec, rows_sel, offsets, full, n_tasks)
    b0, b1 = rows_sel[0], rows_sel[1]
    tau = np.ascontiguousarray(dec.tau[b0:b1])
    m = np.ascontiguousarray(dec.m[b0:b1])
    mu = np.ascontiguousarray(dec.mu[b0:b1])
    metric = METRIC_CODES[cfg.metric]
    with cpu_threads(n_tasks):
        multiclass.conflicts(
            p3, threshold, tie_end, active, labels, tau, mu, m, metric, cfg.smooth,
            cfg.unassigned_policy == "void", cfg.void_index,
        )
    return labels.reshape((block.shape[0],) + tuple(block.shape[2:]))


def solve_chunk(block: np.ndarray, cfg: Config, n_tasks: int) -> np.ndarray:
    with cpu_threads(n_tasks):
        return cpu.solve(np.asarray(block), cfg)
