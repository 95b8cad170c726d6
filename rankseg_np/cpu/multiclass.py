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
from .._solvers import METRIC_CODES
from .._validate import Config

TILE = 4096
NONE = -2
MANY = -1


@njit(parallel=True, cache=True)
def claims(p3, threshold, tie_end, active, labels, tau_part, m_part):
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        i1 = min(d, i0 + TILE)
        # Branch-free per-tile counters (they vectorise): claims and last claimant.
        count = np.zeros(i1 - i0, dtype=np.int32)
        owner = np.zeros(i1 - i0, dtype=np.int32)
        for c in range(n_cls):
            if not active[b, c]:
                continue
            t = threshold[b, c]
            k = tie_end[b, c]
            row = p3[b, c, i0:i1]
            for j in range(i1 - i0):
                v = row[j]
                claimed = v > t or (v == t and i0 + j < k)
                count[j] += claimed
                owner[j] = c if claimed else owner[j]
        lab = labels[b]
        for j in range(i1 - i0):
            if count[j] == 1:
                o = owner[j]
                lab[i0 + j] = o
                tau_part[task, o] += 1.0
                m_part[task, o] += p3[b, o, i0 + j]
            else:
                lab[i0 + j] = NONE if count[j] == 0 else MANY


@njit(cache=True, nogil=True)
def _increment(p, metric, smooth, tau, mu, m):
    """Exact change of class c's RMA objective when pixel p joins U_c (MATH 5, factored)."""
    if metric == 0:  # Dice
        d = tau + mu + smooth + 1.0
        inc = 2.0 * (p * d - m) / (d * (d + 1.0))
        if smooth > 0.0:
            inc -= smooth / ((d - 1.0) * d)
        return inc
    e = tau + mu - m + smooth
    a = (m + smooth) / e if e > 0.0 else 0.0  # 0/0 := 0
    return (p - a * (1.0 - p)) / (e + 1.0 - p)


@njit(parallel=True, cache=True)
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


def resolve(p3: np.ndarray, decision: RowDecision, cfg: Config) -> np.ndarray:
    """Labels ``(B, d)`` int64 from per-class decisions on a C-contiguous ``(B, C, d)`` array."""
    n_img, n_cls, d = p3.shape
    labels = np.empty((n_img, d), dtype=np.int64)
    n_tasks = n_img * ((d + TILE - 1) // TILE)
    tau_part = np.zeros((n_tasks, n_cls))
    m_part = np.zeros((n_tasks, n_cls))
    threshold, tie_end, active, mu = decision
    claims(p3, threshold, tie_end, active, labels, tau_part, m_part)
    tau = tau_part.reshape(n_img, -1, n_cls).sum(axis=1)
    m = m_part.reshape(n_img, -1, n_cls).sum(axis=1)
    conflicts(
        p3, threshold, tie_end, active, labels, tau, mu, m, METRIC_CODES[cfg.metric], cfg.smooth,
        cfg.unassigned_policy == "void", cfg.void_index,
    )
    return labels
