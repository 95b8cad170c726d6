"""Multiclass (non-overlapping) resolution, MATH section 5, fused in Numba.

Two passes over ``(B, C, d)``, in tasks of one image by one tile of pixels,
and no ``(B, C, d)`` temporary:

1. claims: for every pixel, which active classes claim it.  The label array
   doubles as scratch: ``-2`` (no claimant), ``-1`` (two or more), or the sole
   claimant.  Sole-claimant pixels add to per-task partial sums of ``tau_c``
   and ``m_c``; the partials are reduced in a fixed order, so the answer does
   not depend on the thread count.
2. conflicts: only pixels still labelled ``-1``/``-2`` are revisited; the
   increment score of MATH section 5 (factored forms, float64) decides,
   ties to the lowest class index.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._decision import DELTA_TIE_RTOL, RowDecision
from .._layout import SUM_TOL
from .._solvers import METRIC_CODES
from .._validate import Config
from ._threads import parallel_kernel

TILE = 4096
NONE = -2
MANY = -1


@njit(cache=True, nogil=True)
def _claim_tile(p3, b, i0, i1, threshold, tie_end, active, lab, tau_row, m_row, sum_stats):
    """Claims of the pixels [i0, i1) of image b (see the module docstring).

    With a non-empty ``sum_stats`` (3 floats) it also reads the inactive
    classes and stores (pixels whose class sum is off 1 by more than SUM_TOL,
    smallest sum, largest sum): the tile is in cache, so the check costs one
    extra read of the inactive rows only.
    """
    n_cls = p3.shape[1]
    check = sum_stats.size > 0
    # Branch-free per-tile counters (they vectorise): claims and last claimant.
    count = np.zeros(i1 - i0, dtype=np.int32)
    owner = np.zeros(i1 - i0, dtype=np.int32)
    # In the input's precision: a sum of C values errs by ~C ulp (2.5e-6 for 21 float32
    # classes), far inside SUM_TOL, and float32 halves the traffic.
    total = np.zeros(i1 - i0 if check else 0, dtype=p3.dtype)
    for c in range(n_cls):
        row = p3[b, c, i0:i1]
        if not active[b, c]:
            if check:
                for j in range(i1 - i0):
                    total[j] += row[j]
            continue
        t = threshold[b, c]
        k = tie_end[b, c]
        # Usually the tie cut lies before the tile: a plain compare, which
        # vectorises (measured 1.7x faster than the general test).
        if check and k <= i0:  # the same loop, one more add per value read
            for j in range(i1 - i0):
                v = row[j]
                total[j] += v
                claimed = v > t
                count[j] += claimed
                owner[j] = c if claimed else owner[j]
        elif check:
            for j in range(i1 - i0):
                v = row[j]
                total[j] += v
                claimed = v > t or (v == t and i0 + j < k)
                count[j] += claimed
                owner[j] = c if claimed else owner[j]
        elif k <= i0:
            for j in range(i1 - i0):
                claimed = row[j] > t
                count[j] += claimed
                owner[j] = c if claimed else owner[j]
        else:
            for j in range(i1 - i0):
                v = row[j]
                claimed = v > t or (v == t and i0 + j < k)
                count[j] += claimed
                owner[j] = c if claimed else owner[j]
    for j in range(i1 - i0):
        if count[j] == 1:
            o = owner[j]
            lab[i0 + j] = o
            tau_row[o] += 1.0
            m_row[o] += p3[b, o, i0 + j]
        else:
            lab[i0 + j] = NONE if count[j] == 0 else MANY
    if check:
        off = 0
        for j in range(i1 - i0):
            off += abs(total[j] - 1.0) > SUM_TOL
        lo = np.inf
        hi = -np.inf
        if off:  # the range only where something is off (the message quotes it): valid input skips it
            for j in range(i1 - i0):
                lo = min(lo, total[j])
                hi = max(hi, total[j])
        sum_stats[0] = off
        sum_stats[1] = lo
        sum_stats[2] = hi


@parallel_kernel(cache=True)
def claims(p3, threshold, tie_end, active, labels, tau_part, m_part):
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    no_check = np.empty(0)
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        _claim_tile(p3, b, i0, min(d, i0 + TILE), threshold, tie_end, active, labels[b], tau_part[task],
                    m_part[task], no_check)


@parallel_kernel(cache=True)
def _claims_checked(p3, threshold, tie_end, active, labels, tau_part, m_part, sum_stats):
    """:func:`claims` that also checks the class sums (one row of ``sum_stats`` per task)."""
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        _claim_tile(p3, b, i0, min(d, i0 + TILE), threshold, tie_end, active, labels[b], tau_part[task],
                    m_part[task], sum_stats[task])


@njit(cache=True, nogil=True)
def _increment(p, metric, smooth, tau, mu, m):
    """Exact change of class c's RMA objective when pixel p joins U_c (MATH 5, factored)."""
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


@parallel_kernel(cache=True)
def conflicts(p3, threshold, tie_end, active, labels, tau, mu, m, metric, smooth, void, void_index):
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        i1 = min(d, i0 + TILE)
        any_active = False
        for c in range(n_cls):
            any_active = any_active or active[b, c]
        lab = labels[b]
        inc = np.empty(n_cls)
        for i in range(i0, i1):
            state = lab[i]
            if state >= 0:
                continue
            if state == NONE and void:
                lab[i] = void_index
                continue
            best = -np.inf
            for c in range(n_cls):
                inc[c] = -np.inf
                v = p3[b, c, i]
                if state == MANY:  # only claimants compete
                    t = threshold[b, c]
                    if not (active[b, c] and (v > t or (v == t and i < tie_end[b, c]))):
                        continue
                elif any_active and not active[b, c]:  # unclaimed: active classes compete
                    continue
                inc[c] = _increment(v, metric, smooth, tau[b, c], mu[b, c], m[b, c])
                best = max(best, inc[c])
            lab[i] = _first_within(inc, best)


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
    _claims_checked(p3, threshold, tie_end, active, labels, tau_part, m_part, stats)
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
