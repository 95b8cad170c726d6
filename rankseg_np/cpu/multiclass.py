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
from ._threads import parallel_kernel

TILE = 4096
NONE = -2
MANY = -1


@njit(cache=True, nogil=True)
def _count_claims(p3, b, i0, i1, threshold, tie_end, active, count, owner):
    """For the pixels [i0, i1) of image b: how many active classes claim each, and the last claimant.

    The loops index slices from 0 (Numba then knows the indices are not
    negative and LLVM vectorises them, which it does not for
    ``range(i0, i1)``); a class whose tie cut lies before the tile tests only
    ``p > t``.
    """
    n = i1 - i0
    for j in range(n):
        count[j] = 0
        owner[j] = 0
    for c in range(p3.shape[1]):
        if not active[b, c]:
            continue
        t = threshold[b, c]
        k = tie_end[b, c]
        row = p3[b, c, i0:i1]
        if k <= i0:
            for j in range(n):
                claimed = row[j] > t
                count[j] += claimed
                owner[j] = c if claimed else owner[j]
        else:
            for j in range(n):
                v = row[j]
                claimed = v > t or (v == t and i0 + j < k)
                count[j] += claimed
                owner[j] = c if claimed else owner[j]


@njit(cache=True, nogil=True)
def _sole_claims(p3, b, i0, count, owner, lab, tau_part, m_part):
    """Labels of a tile from its claim counts; sole claims add to ``tau_part``, ``m_part`` in pixel order."""
    for j in range(count.size):
        if count[j] == 1:
            o = owner[j]
            lab[i0 + j] = o
            tau_part[o] += 1.0
            m_part[o] += p3[b, o, i0 + j]
        else:
            lab[i0 + j] = NONE if count[j] == 0 else MANY


@parallel_kernel(cache=True)
def claims(p3, threshold, tie_end, active, labels, tau_part, m_part):
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        i0 = (task % n_tiles) * TILE
        i1 = min(d, i0 + TILE)
        # Branch-free per-tile counters (they vectorise): claims and last claimant.
        count = np.empty(i1 - i0, dtype=np.int32)
        owner = np.empty(i1 - i0, dtype=np.int32)
        _count_claims(p3, b, i0, i1, threshold, tie_end, active, count, owner)
        _sole_claims(p3, b, i0, count, owner, labels[b], tau_part[task], m_part[task])


@njit(cache=True, nogil=True)
def _increment(p, metric, smooth, tau, mu, m):
    """Exact change of class c's RMA objective when pixel p joins U_c (MATH 5, factored).

    Computed as per-class terms (:func:`_increment_terms`) and a per-pixel part
    (:func:`_increment_from`); the conflicts kernel computes the terms once per
    class, with the same operations in the same order, so the same bits.
    """
    k1, k2, k3 = _increment_terms(metric, smooth, tau, mu, m)
    return _increment_from(p, metric, smooth, k1, k2, k3)


@njit(cache=True, nogil=True)
def _increment_terms(metric, smooth, tau, mu, m):
    """The per-class terms (k1, k2, k3) of the increment (see :func:`_increment_from`)."""
    if metric == 0:  # Dice
        # 2(p d - m)/(d(d+1)) - g/((d-1)d) with no product d*d, which overflows
        # float64 once g > ~1.3e154; every quotient below is <= 1 in size.  For
        # g > 1 the score is multiplied by g (the same positive factor for every
        # class of the pixel: no comparison or relative tie changes), so that
        # it stays far from underflow too, up to g = the largest float64.
        d = tau + mu + smooth + 1.0
        if smooth > 1.0:
            return m / d, smooth / (d + 1.0), (smooth / d) * (smooth / (d - 1.0))
        return m / d, d + 1.0, (smooth / d) / (d - 1.0) if smooth > 0.0 else 0.0
    e = tau + mu - m + smooth
    a = (m + smooth) / e if e > 0.0 else 0.0  # 0/0 := 0
    return a, e, 0.0


@njit(cache=True, nogil=True)
def _increment_from(p, metric, smooth, k1, k2, k3):
    """The increment of a pixel of value p from its class's terms: one division at most.

    Dice: ``2(p - m/d)/(d+1) - (g/d)/(d-1)`` (``x - 0.0`` is ``x`` bit for bit
    when g = 0), or ``2(p - m/d)(g/(d+1)) - (g/d)(g/(d-1))`` for g > 1; IoU:
    ``(p - a(1-p))/(e+1-p)``.
    """
    if metric == 0:
        if smooth > 1.0:
            return 2.0 * (p - k1) * k2 - k3
        return 2.0 * (p - k1) / k2 - k3
    return (p - k1 * (1.0 - p)) / (k2 + 1.0 - p)


@parallel_kernel(cache=True)
def conflicts(p3, threshold, tie_end, active, labels, tau, mu, m, metric, smooth, void, void_index):
    n_img, n_cls, d = p3.shape
    n_tiles = (d + TILE - 1) // TILE
    terms = np.empty((n_img, n_cls, 3))  # per class: computed once, not once per pixel
    for b in range(n_img):
        for c in range(n_cls):
            terms[b, c, 0], terms[b, c, 1], terms[b, c, 2] = _increment_terms(
                metric, smooth, tau[b, c], mu[b, c], m[b, c]
            )
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
            for c in range(n_cls):  # branch-free: the claims are unpredictable
                v = p3[b, c, i]
                if state == MANY:  # only claimants compete
                    t = threshold[b, c]
                    ok = active[b, c] & ((v > t) | ((v == t) & (i < tie_end[b, c])))
                else:  # unclaimed: the active classes compete (all of them if none is active)
                    ok = active[b, c] | (not any_active)
                x = _increment_from(v, metric, smooth, terms[b, c, 0], terms[b, c, 1], terms[b, c, 2])
                # Increments are never NaN (p in [0, 1], positive denominators),
                # so max(best, -inf) == best: the same maximum as skipping the class.
                inc[c] = x if ok else -np.inf
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
