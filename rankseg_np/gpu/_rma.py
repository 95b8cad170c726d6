"""RMA on the device, written once against an array namespace ``xp``.

Every function here takes ``xp`` (``cupy`` on a GPU, ``numpy`` in CI) and a
kernels object (:mod:`rankseg_np.gpu._kernels`): the fused CuPy kernels, or
the plain array-code fallback.  Nothing here imports a framework, so the very
code that runs on the GPU is exercised by the default test suite on NumPy and
compared with the Numba CPU path.

RMA (MATH section 4) is solved for **all rows at once**: the Dinkelbach
iteration of ``rankseg_np.cpu.rma`` is vectorised over the ``B*C`` rows (a
per-row ``lam``, threshold and "done" flag), each step is one fused
masked-sum-and-count pass over the probabilities, rows that have converged
keep their answer, and the loop stops when every row has.  No sort, no index
array.  Dice with ``smooth > 0`` uses the band argument proved in
``rankseg_np.cpu.rma._dice_smooth_row``: only the pixels between the two
Dinkelbach bounds are gathered, ordered and scanned, all rows of a block in
one padded ``(rows, band)`` matrix.

The answer is a :class:`~rankseg_np._decision.RowDecision` (threshold and tie
cut per row), turned into masks or, for multiclass output, into labels by the
MATH section 5 resolution (claims, sole-claimant sums, conflicts).
"""

from __future__ import annotations

from typing import Any, Callable

from .._decision import RowDecision, dice_smooth_step
from .._validate import Config
from ._rows import errstate, checked_first_pass, first_true, gather_rows, pick

# Same constants as rankseg_np.cpu.rma (tests assert they agree); repeated
# here so that the GPU package does not import Numba.
MAX_STEPS = 200
BAND_SLACK = 1e-9
TIE_SLACK = 1e-12
# Elements of the padded band matrix per block of rows (float64): bounds the
# smooth > 0 path's scratch memory whatever the band widths are.
BAND_BLOCK_ELEMENTS = 1 << 24


def dinkelbach(
    p2: Any,
    kern: Any,
    xp: Any,
    todo: Any,
    value: Callable[[Any, Any], Any],
    cut: Callable[[Any], Any],
    s0: Any,
    n0: Any,
    t0: float = 0.5,
) -> tuple[Any, Any]:
    """Vectorised Dinkelbach iteration over the rows flagged in ``todo``.

    ``value(s, n)`` is the ratio for the mask with masked sum ``s`` and count
    ``n``; ``cut(lam)`` is the threshold that maximises ``(a - lam b).x``.
    Row by row this is exactly ``cpu.rma.dinkelbach_*``: start from the mask
    ``{p > t0}``; while the new ratio is larger, move; on an equal ratio take
    the new (smaller) mask and stop; on a smaller one stop.  Returns
    ``(lam, threshold)``; rows outside ``todo`` get threshold ``t0``.
    """
    with errstate(xp):
        lam = value(s0, n0)
    t_best = xp.full(p2.shape[0], t0, dtype=xp.float64)
    done = ~todo
    for _ in range(MAX_STEPS):
        if bool(xp.all(done)):
            break
        # Finished rows get t = +inf: their pass adds nothing and they keep their answer.
        t = xp.where(done, xp.inf, cut(lam))
        s, n = kern.masked_sum_count(p2, t)
        with errstate(xp):
            new = value(s, n)
        live = ~done
        up = live & (new > lam)
        same = live & (new == lam)  # same value, smaller mask: prefer it (first-argmax rule)
        lam = xp.where(up, new, lam)
        t_best = xp.where(up | same, t, t_best)
        done = done | ~up
    # Exact ties of the cut stay out whatever the rounding (see cpu.rma.TIE_SLACK).
    return lam, xp.where(todo, t_best * (1.0 + TIE_SLACK), t_best)


def _dice_smooth(p2: Any, kern: Any, xp: Any, active: Any, mu: Any, smooth: float, s0: Any, n0: Any):
    """RMA Dice with smooth > 0 for all rows: the band method of ``cpu.rma._dice_smooth_row``.

    Bounds ``tau_L <= tau* <= tau_U`` come from two single-ratio Dinkelbach
    problems (proof in ``cpu.rma._dice_smooth_row``); the pixels in
    ``[lam1/2, lamc/2]`` (widened by ``BAND_SLACK``) are the only ones whose
    order matters.  For a block of rows they are gathered into a padded
    ``(rows, L)`` matrix, sorted descending per row, prefix-summed from the
    sum of the pixels above the band (sequentially along the row, as the CPU
    does), and the objective is evaluated at every candidate volume; the first
    maximum wins.  Ties at the cut value go to the lowest pixel indices.
    """
    rows, d = p2.shape
    a = mu + smooth
    beta = a + 1.0
    lam1, _ = dinkelbach(p2, kern, xp, active, lambda s, n: (2.0 * s + 0.0) / (beta + n), lambda lam: 0.5 * lam, s0, n0)
    c = 0.5 * smooth * (1.0 + 2.0 / a)
    alpha = 2.0 * c
    lamc, _ = dinkelbach(p2, kern, xp, active, lambda s, n: (2.0 * s + alpha) / (beta + n), lambda lam: 0.5 * lam, s0, n0)
    lo = xp.where(active, 0.5 * lam1 * (1.0 - BAND_SLACK), xp.inf)
    hi = xp.where(active, 0.5 * lamc * (1.0 + BAND_SLACK), xp.inf)
    s_top, n_top = kern.masked_sum_count(p2, hi)

    threshold = hi.copy()
    tie_end = xp.zeros(rows, dtype=xp.int64)
    step = max(1, BAND_BLOCK_ELEMENTS // d)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        _band_block(
            p2[r0:r1], lo[r0:r1], hi[r0:r1], s_top[r0:r1], n_top[r0:r1], mu[r0:r1], smooth, xp,
            threshold[r0:r1], tie_end[r0:r1],
        )
    return threshold, tie_end


def _band_block(blk, lo, hi, s_top, n_top, mu, smooth, xp, threshold, tie_end) -> None:
    """Solve the band of every row of ``blk``; write into the views ``threshold`` and ``tie_end``."""
    nrows, d = blk.shape
    inband = (blk >= lo[:, None]) & (blk <= hi[:, None])
    counts = xp.sum(inband, axis=1)
    band_px = gather_rows(blk, inband, xp)
    del inband
    width = band_px.shape[1]
    if width == 0:
        return  # no band anywhere: threshold = hi, tie_end = 0 already
    cols = xp.arange(width)
    valid = cols[None, :] < counts[:, None]
    # Descending per row, -inf padding at the end (sort ascending the negation).
    band = -xp.sort(xp.where(valid, -band_px, xp.inf), axis=1)
    # The objective is compared through its steps (MATH 4), as cpu.rma.band_best does: step k
    # adds band[k-1] to the mask of sum S (s_top + the band before it) and volume tau.
    values = xp.where(valid, band, 0.0).astype(xp.float64)
    before = xp.cumsum(xp.concatenate([s_top[:, None], values[:, :-1]], axis=1), axis=1)
    tau = n_top[:, None] + xp.arange(width)[None, :].astype(xp.float64)
    with errstate(xp):
        lead, rest = dice_smooth_step(values, before, tau, mu[:, None], smooth)
    # The steps' two parts are summed apart: with a huge g the rest of a pixel at 1/2 (whose
    # leading part is exactly 0) is ~1/g, and added to the rise of a pixel just above 1/2 before
    # it, it would round away (cpu.rma.band_best sums from its best volume instead).
    zero = xp.zeros((nrows, 1))
    rise_lead = xp.cumsum(xp.concatenate([zero, xp.where(valid, lead, 0.0)], axis=1), axis=1)
    rise_rest = xp.cumsum(xp.concatenate([zero, xp.where(valid, rest, 0.0)], axis=1), axis=1)
    # Candidates: k = 0 and the ends of tie groups (a group is never split, see cpu.rma).
    k = xp.arange(width + 1)
    edge = xp.ones((nrows, 1), dtype=bool)
    ends = xp.concatenate([edge, band[:, :-1] != band[:, 1:], edge], axis=1)  # -inf padding differs
    candidate = ends & (k[None, :] <= counts[:, None])
    rise = xp.where(candidate, rise_lead + rise_rest, -xp.inf)
    best = xp.max(rise, axis=1)
    ref = first_true(rise == best[:, None], xp, 0)
    # The candidates within rounding of the best are compared again through their differences
    # from it, part by part (equal leading parts cancel exactly, leaving the rests' difference).
    # 1e-14 of the largest rise is well above the cumsums' rounding; a wider set loses nothing,
    # since the gaps compare its members at least as accurately as the rises do.
    near = candidate & (rise >= (best - 1e-14 * xp.max(xp.abs(xp.where(candidate, rise, 0.0)), axis=1))[:, None])
    gap = (rise_lead - pick(rise_lead, ref, xp)[:, None]) + (rise_rest - pick(rise_rest, ref, xp)[:, None])
    gap = xp.where(near, gap, -xp.inf)
    # First maximum (lowest volume), explicitly rather than relying on argmax's tie rule.
    best_k = first_true(gap == xp.max(gap, axis=1)[:, None], xp, width + 1)
    chosen = best_k > 0
    v = pick(band, best_k - 1, xp)
    threshold[...] = xp.where(chosen, v, threshold)
    tie_end[...] = xp.where(chosen, d, tie_end)  # {p >= v}: the whole tie group


def decide(p3: Any, cfg: Config, xp: Any, kern: Any) -> RowDecision:
    """RMA decision for every row of a C-contiguous float32/float64 ``(B, C, d)`` array."""
    b, c, d = p3.shape
    p2 = p3.reshape(b * c, d)
    mu, peak, s_half, n_half = checked_first_pass(p3, xp, kern)
    active = peak > cfg.pruning_prob
    smooth = cfg.smooth
    if not bool(xp.any(active)):
        threshold = xp.full(b * c, xp.inf)
        tie_end = xp.zeros(b * c, dtype=xp.int64)
    elif cfg.metric == "iou":
        _, t = dinkelbach(
            p2, kern, xp, active,
            lambda s, n: (s + smooth) / (mu + smooth + n - s),
            lambda lam: lam / (1.0 + lam),
            s_half, n_half,
        )
        threshold = xp.where(active, t, xp.inf)
        tie_end = xp.zeros(b * c, dtype=xp.int64)
    elif smooth == 0.0:
        beta = mu + 1.0
        _, t = dinkelbach(
            p2, kern, xp, active,
            lambda s, n: (2.0 * s + 0.0) / (beta + n),
            lambda lam: 0.5 * lam,
            s_half, n_half,
        )
        threshold = xp.where(active, t, xp.inf)
        tie_end = xp.zeros(b * c, dtype=xp.int64)
    else:
        threshold, tie_end = _dice_smooth(p2, kern, xp, active, mu, smooth, s_half, n_half)
        threshold = xp.where(active, threshold, xp.inf)
        tie_end = xp.where(active, tie_end, 0)
    shape = (b, c)
    return RowDecision(threshold.reshape(shape), tie_end.reshape(shape), active.reshape(shape), mu.reshape(shape))
