"""RMA (reciprocal moment approximation, MATH section 4) on the CPU, in Numba.

No sort and no index arrays.  For Dice with smooth = 0 and for IoU, the RMA
objective is one ratio of affine functions of the mask indicator ``x``:

    pi(x) = (a.x + alpha) / (b.x + beta),  b >= 0, beta > 0,

and Dinkelbach's iteration solves it exactly: with ``lam = pi(x)``, the mask
maximising ``(a - lam*b).x`` is a threshold on ``p`` (Dice: ``p > lam/2``; IoU:
``p > lam/(1+lam)``); ``lam`` rises strictly until the optimum, where it stops.
Because ``lam`` only rises, so does the threshold: entries at or below a
threshold never count again.  The row kernels read each row once in full
(:func:`~rankseg_np.cpu._kernels.scan_row`: the sum, the validity test, the
count of entries above ``LOW``, and those entries packed into a short array
with vector compress-stores in the same pass), a few per cent of a softmax
row, and every Dinkelbach step reads only that array (a masked sum and a
count) whenever its first threshold is at least ``LOW``.  Rows where packing
would keep much of the row (``PACK_AT_MOST``), or whose first threshold is
lower, iterate on the whole row.  The answer is the *smallest* optimal mask
``{p > lam*/2}`` (ties at the cut stay out), which is also the smallest
optimal top-tau set: the same choice as an ``argmax`` over sorted volumes that
takes the first maximum.

Dice with smooth ``g > 0`` is a sum of two ratios, handled by a band argument
proved in :func:`_dice_smooth_row`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._decision import RowDecision, dice_smooth_step
from .._validate import Config
from ._kernels import (
    as_bits, bit_pattern, decide_rows, mask_row, scan_row, sort_desc_stable, sum_above,
)
from ._threads import parallel_kernel

# Dinkelbach's lam increases strictly at every step and there are finitely
# many threshold masks; in practice it stops after 2-6 steps.  The cap only
# guards against a float64 cycle that exact arithmetic cannot produce.
MAX_STEPS = 200
# Relative widening of the Dice-smooth band bounds: covers float64 rounding in
# the row sums behind lam (relative error ~ 1e-16 * steps of accumulation,
# far below 1e-9 for rows of up to ~1e7 pixels); widening only adds candidates.
BAND_SLACK = 1e-9
# The returned threshold sits this far (relative) above the optimal one, so a
# pixel that ties the threshold in exact arithmetic (it adds exactly nothing to
# the objective) stays out whatever the float64 rounding of the row sums, and
# every backend (whole rows, Dask chunks, GPU) makes the same choice.  A pixel
# within 1e-12 of the cut changes the objective by less than 1e-12 relative.
TIE_SLACK = 1e-12
# Each row's entries above LOW are packed after its first read.  Dinkelbach
# needs nothing else when its first threshold is at least LOW: for Dice
# (threshold lam/2) when the mask {p > 1/2} scores lam >= 1/2, for IoU
# (threshold lam/(1+lam)) when it scores lam >= 1/3: any model whose 1/2-mask
# is roughly right.  Other rows iterate on the whole row.  A lower LOW packs
# more entries of every row.
LOW = 0.25
assert np.float32(LOW) == LOW  # compared in the input's precision (float32 or float64) as is
# The first read packs into a buffer of 1/PACK_AT_MOST of the row (the scratch
# memory of one row task).  Rows with more entries above the cut (few classes,
# or large objects) are iterated on whole: there packing would save less, and
# each entry it keeps is also written once.
PACK_AT_MOST = 8


@njit(cache=True, nogil=True)
def dice_start(alpha, beta, s0, n0):
    """The value (2 S + alpha) / (beta + n) of the starting mask: Dinkelbach's first lam."""
    return (2.0 * s0 + alpha) / (beta + n0)


@njit(cache=True, nogil=True)
def iou_start(smooth, mu, s0, n0):
    """The value (S + g) / (mu + g + n - S) of the starting mask: Dinkelbach's first lam."""
    return (s0 + smooth) / (mu + smooth + n0 - s0)


@njit(cache=True, nogil=True)
def dinkelbach_dice(row, alpha, beta, s0, n0, t0):
    """Maximise (2 S + alpha) / (beta + n) over threshold masks, from the mask {p > t0}.

    Returns (lam*, t*) with the optimum attained by the smallest mask {p > t*}.
    """
    lam = dice_start(alpha, beta, s0, n0)
    t_best = t0
    for _ in range(MAX_STEPS):
        t = 0.5 * lam
        s, n = sum_above(row, t)
        new = (2.0 * s + alpha) / (beta + n)
        if new > lam:
            lam = new
            t_best = t
            continue
        if new == lam:  # same value, smaller mask: prefer it (first-argmax rule)
            t_best = t
        break
    return lam, t_best * (1.0 + TIE_SLACK)


@njit(cache=True, nogil=True)
def dinkelbach_iou(row, smooth, mu, s0, n0, t0):
    """Maximise (S + g) / (mu + g + n - S): keep p > lam/(1+lam) (Dinkelbach)."""
    lam = iou_start(smooth, mu, s0, n0)
    t_best = t0
    for _ in range(MAX_STEPS):
        t = lam / (1.0 + lam)
        s, n = sum_above(row, t)
        new = (s + smooth) / (mu + smooth + n - s)
        if new > lam:
            lam = new
            t_best = t
            continue
        if new == lam:
            t_best = t
        break
    return lam, t_best * (1.0 + TIE_SLACK)


# The step of the Dice-smooth objective (MATH 4), one definition for every executor.
_step = njit(cache=True, nogil=True)(dice_smooth_step)


@njit(cache=True, nogil=True)
def band_best(band, s_top, n_top, mu, smooth):
    """The first maximiser k of f(n_top + k) over the band sorted descending (``band[:k]`` joins
    the mask, whose other pixels sum to ``s_top``), among k = 0 and the ends of tie groups.

    f is compared through its steps (:func:`~rankseg_np._decision.dice_smooth_step`): ``gain`` is
    the sum of the steps since the best volume so far, f(n_top + k) -
    f(n_top + best_k) up to the shared positive factor.  Summing from the best
    volume rather than from k = 0 keeps steps that are tiny next to the rise
    before them (for a huge smooth, those of pixels at 1/2 after one just
    above it): added to that rise they would round away.
    A tie group is never split (see :func:`_dice_smooth_row`).
    """
    n_band = band.size
    best_k = 0
    gain = 0.0
    s = s_top
    for k in range(1, n_band + 1):
        v = band[k - 1]
        lead, rest = _step(v, s, n_top + k - 1, mu, smooth)
        gain += lead + rest
        s += v
        if k < n_band and band[k] == v:
            continue  # inside a tie group: not a candidate (see _dice_smooth_row)
        if gain > 0.0:
            best_k = k
            gain = 0.0
    return best_k


@njit(cache=True, nogil=True)
def _dice_smooth_row(row, packed, mu, smooth, s0, n0):
    """RMA Dice with smooth g > 0: f(tau) = 2 S_tau/(A+tau+1) + g/(A+tau), A = mu + g.

    Proof of the band (q sorted descending, S_tau the top-tau sum):

    * f = g1 + h with g1(tau) = 2 S_tau/(A+tau+1) and h(tau) = g/(A+tau), h
      strictly decreasing.  If tau_U is the largest maximiser of g1, every
      tau > tau_U has g1 < g1(tau_U) and h < h(tau_U): the optimum is <= tau_U.
    * f(tau+1) - f(tau) = 2 phi(tau)/((A+tau+1)(A+tau+2)) - g/((A+tau)(A+tau+1))
      with phi(tau) = q_{tau+1}(A+tau+1) - S_tau, so f rises whenever
      phi(tau) > (g/2)(1 + 2/(A+tau)), in particular whenever phi(tau) > c with
      c = (g/2)(1 + 2/A).  phi is non-increasing (phi(tau+1) - phi(tau) =
      (A+tau+2)(q_{tau+2} - q_{tau+1}) <= 0), so f rises strictly on
      [0, tau_L], tau_L the first tau with phi(tau) <= c: the optimum is >= tau_L.
    * g1 and gc(tau) = 2(S_tau + c)/(A+tau+1) are single ratios:
      gc(tau+1) - gc(tau) has the sign of phi(tau) - c, so tau_L is the smallest
      maximiser of gc.  Dinkelbach gives both: tau_U = |{p >= lam1/2}| and
      tau_L = |{p > lamc/2}|.

    * A tie group is never split: inside a group of equal q, phi is constant
      (q_{tau+2} = q_{tau+1} above), so f rises iff phi > (g/2)(1 + 2/(A+tau)),
      whose right side decreases with tau: once f rises inside the group it
      keeps rising.  f falls then rises across the group, so its maximum over
      the group is at one of the group's two ends.

    Only pixels with lam1/2 <= p <= lamc/2 (the band) need ordering.  The band
    is sorted, f is compared (through its steps, :func:`band_best`) at every
    tie-group end in [tau_L, tau_U], and the first maximum wins.  Returns
    (threshold, tie_end) with whole tie groups only: the mask is ``{p > hi}`` or ``{p >= v}``.
    ``packed`` holds the row's entries above ``LOW`` (in scan_row's reading order).
    """
    a = mu + smooth
    # Both iterations start from the mask {p > 1/2}, the gc one at the higher
    # value, and only rise; the band starts above lam1/2 >= their lowest first
    # threshold.  So when that threshold (less a margin for the band's widening)
    # is at least LOW, every entry that matters is packed.
    low = 0.5 * dice_start(0.0, a + 1.0, s0, n0) * (1.0 - 2.0 * BAND_SLACK)
    rest = packed if low >= LOW else row
    lam1, _ = dinkelbach_dice(rest, 0.0, a + 1.0, s0, n0, 0.5)
    c = 0.5 * smooth * (1.0 + 2.0 / a)
    lamc, _ = dinkelbach_dice(rest, 2.0 * c, a + 1.0, s0, n0, 0.5)
    lo = 0.5 * lam1 * (1.0 - BAND_SLACK)
    hi = 0.5 * lamc * (1.0 + BAND_SLACK)

    # The mask {p > hi} and the band lo <= p <= hi (lo <= hi: lamc >= lam1, as
    # gc >= g1), in vectorised reads rather than branches on every entry.
    s_top, n_top = sum_above(rest, hi)
    # p >= lo iff p > the float64 just below lo (max: never negative, even were lo > hi)
    n_band = max(sum_above(rest, np.nextafter(lo, -np.inf))[1] - n_top, 0)
    band = np.empty(n_band + 1)  # one entry of room: the loop below writes every entry, keeps the band's
    j = 0
    for i in range(rest.size):
        v = np.float64(rest[i])
        band[j] = v
        j += (v >= lo) & (v <= hi)
    band = band[:n_band]
    band, _ = sort_desc_stable(band, np.zeros(n_band, dtype=np.int64))  # descending
    best_k = band_best(band, s_top, n_top, mu, smooth)
    if best_k == 0:
        return hi, 0
    return band[best_k - 1], row.size  # {p > v} and every p == v


@njit(cache=True, nogil=True)
def _open_row(row, bits, r, one, prune, low, threshold, tie_end, active, mu, bad):
    """The one full read of row r (:func:`~rankseg_np.cpu._kernels.scan_row`) and its outputs for an
    inactive row.  Returns (active, sum, sum and count above 1/2, the entries above LOW)."""
    lanes = 64 // row.itemsize
    out = np.empty(row.size // PACK_AT_MOST + lanes, dtype=row.dtype)
    total, top, n_low, k = scan_row(row, bits, low, row.dtype.type(LOW), out)
    mu[r] = total
    bad[r] = top > one  # a negative sign, NaN, inf or a value above 1; or -0.0 (see _solve)
    threshold[r] = np.inf
    tie_end[r] = 0
    active[r] = top > prune and not bad[r]
    if not active[r]:
        return False, total, 0.0, 0, row[:0]
    # Valid values: k == n_low, every entry above LOW, when there are at most row.size // PACK_AT_MOST.
    packed = out[:k] if n_low <= row.size // PACK_AT_MOST else row
    s_half, n_half = sum_above(packed, 0.5)  # every entry above 1/2 > LOW is there
    return True, total, s_half, n_half, packed


@njit(cache=True, nogil=True)
def _write_mask(p2, r, threshold, tie_end, masks):
    """Row r's mask, written while the row is still in cache (``masks`` None: decision only).

    Numba compiles a separate kernel for ``masks=None`` and prunes this branch
    there, so a decision-only call never compiles the mask writing.
    """
    if masks is not None:
        mask_row(p2[r], threshold[r], tie_end[r], masks[r])


# One kernel per objective, so that a first call in a fresh environment
# compiles only the iteration it runs (it pays for every line a kernel could
# run: the Dice-smooth band search, for instance, is never compiled for Dice
# with smooth = 0).
@parallel_kernel(cache=True)
def _dice_rows(p2, bits, one, prune, low, smooth, masks, threshold, tie_end, active, mu, bad):
    """Dice with smooth = 0: Dinkelbach from the mask {p > 1/2}."""
    for r in prange(p2.shape[0]):
        go, total, s_half, n_half, packed = _open_row(
            p2[r], bits[r], r, one, prune, low, threshold, tie_end, active, mu, bad
        )
        if go:
            first = 0.5 * dice_start(0.0, total + 1.0, s_half, n_half)
            source = packed if first >= LOW else p2[r]
            _, threshold[r] = dinkelbach_dice(source, 0.0, total + 1.0, s_half, n_half, 0.5)
        _write_mask(p2, r, threshold, tie_end, masks)


@parallel_kernel(cache=True)
def _iou_rows(p2, bits, one, prune, low, smooth, masks, threshold, tie_end, active, mu, bad):
    """IoU (any smooth): Dinkelbach from the mask {p > 1/2}."""
    for r in prange(p2.shape[0]):
        go, total, s_half, n_half, packed = _open_row(
            p2[r], bits[r], r, one, prune, low, threshold, tie_end, active, mu, bad
        )
        if go:
            lam = iou_start(smooth, total, s_half, n_half)
            source = packed if lam / (1.0 + lam) >= LOW else p2[r]
            _, threshold[r] = dinkelbach_iou(source, smooth, total, s_half, n_half, 0.5)
        _write_mask(p2, r, threshold, tie_end, masks)


@parallel_kernel(cache=True)
def _dice_smooth_rows(p2, bits, one, prune, low, smooth, masks, threshold, tie_end, active, mu, bad):
    """Dice with smooth > 0: the band search of :func:`_dice_smooth_row`."""
    for r in prange(p2.shape[0]):
        go, total, s_half, n_half, packed = _open_row(
            p2[r], bits[r], r, one, prune, low, threshold, tie_end, active, mu, bad
        )
        if go:
            threshold[r], tie_end[r] = _dice_smooth_row(p2[r], packed, total, smooth, s_half, n_half)
        _write_mask(p2, r, threshold, tie_end, masks)


def decide(p3: np.ndarray, cfg: Config) -> RowDecision:
    """RMA decision for every row of a C-contiguous float32/float64 ``(B, C, d)`` array."""
    return _solve(p3, cfg, None)


def masks(p3: np.ndarray, cfg: Config) -> np.ndarray:
    """Boolean masks ``(B, C, d)``: the decision and each row's mask in one task per row,
    the mask written while the row is in cache (saves a read of the input)."""
    b, c, d = p3.shape
    out = np.empty((b * c, d), dtype=np.bool_)
    _solve(p3, cfg, out)
    return out.reshape(b, c, d)


def _solve(p3: np.ndarray, cfg: Config, out: np.ndarray | None) -> RowDecision:
    if cfg.metric == "iou":
        kernel = _iou_rows
    else:
        kernel = _dice_smooth_rows if cfg.smooth > 0.0 else _dice_rows
    one, prune, low = (bit_pattern(t, p3.dtype) for t in (1.0, cfg.pruning_prob, LOW))
    b, c, d = p3.shape
    try:
        return decide_rows(kernel, p3, as_bits(p3).reshape(b * c, d), one, prune, low, cfg.smooth, out)
    except ValueError:  # raised for rows whose top bit pattern is above 1.0's
        if not np.all((p3 >= 0.0) & (p3 <= 1.0)):  # NaN fails both comparisons
            raise
    # Only -0.0 (the sign bit alone) failed the bit test, and it is a valid value:
    # adding +0.0 turns it into 0.0 and leaves every other value unchanged.
    p3 = p3 + p3.dtype.type(0.0)
    return decide_rows(kernel, p3, as_bits(p3).reshape(b * c, d), one, prune, low, cfg.smooth, out)
