"""The exact solver (MATH section 3) in array code: all rows of a block at once.

This is the method of :mod:`rankseg_np.cpu.exact` (written up in
``docs/exact.md``), restated for an array namespace ``xp`` (CuPy on a GPU,
NumPy in CI): the per-row loops of the Numba kernel become operations on
``(rows, ...)`` matrices, with the same constants and Gauss rules
(:mod:`rankseg_np._quadrature`).  For a block of rows:

1. a 2048-bin histogram per row (``bincount`` on ``row * NB + bin``) gives
   the lower bound ``lam`` (best RMA objective over bin-edge masks) and the
   bracket of bins that can hold a candidate volume, checked with the
   histogram's suffix sums and widened until the check holds;
2. the pixels of the bracket (the *band*) are gathered into a padded
   ``(rows, W)`` matrix and sorted; the candidate volumes are the ``tau``
   with ``h(tau) = alpha S_tau - lam' tau >= ell`` (one interval per row);
3. pixels below the band with ``p < 1/4`` enter ``log G`` through 27 power
   sums; the other pixels above or below the band are gathered into padded
   matrices and visited once per node, the band once per node and volume;
4. candidate volumes are split into segments whose rates vary by at most
   ``SEG_RATIO`` (greedily from the smallest, as on the CPU), each segment is
   integrated with its own 24-node rule, and the first maximum wins, the
   empty mask (``smooth > 0``) first.

Padding is 0 everywhere: a pixel of value 0 contributes ``log(1 - 0 s) = 0``
and ``0 / (1 - 0 s) = 0``, so padded matrices need no masks in the sums.

Determinism: the only scattered additions (the histogram's bin sums, atomic
on CUDA) are made in fixed point, exact in any order; every other sum is a
reduction or scan of fixed order, so a given input and device give the same
answer on every run.  Sums are accumulated in a different order from the
CPU's sequential loops, so scores agree with the CPU to float64 rounding
(~1e-15 relative), not bit for bit: two volumes whose exact scores tie to
that precision may be chosen differently (``tests/test_gpu.py`` checks that
masks are equal, or tie in exact score).
"""

from __future__ import annotations

from typing import Any

from .._decision import RowDecision
from .._quadrature import DICE, IOU, M_POW, NB, SEG_RATIO, SLACK, SMALL_BIN, SWITCH, TINY_MU, rules
from .._validate import Config
from ._rows import checked_first_pass, errstate, first_true, gather_rows, last_true, pick, pick_cols, tie_cut

# Elements of the float64 row block (rows x max(pixels, NB)) processed at
# once; every full-size temporary is a small multiple of it (a row longer than
# this is one block).
BLOCK_ELEMENTS = 1 << 24
# Elements of the (rows, nodes, pixels) tensors of the per-node sums.
NODE_ELEMENTS = 1 << 23
# Sub-histograms per row (see _bracket): at most SPLITS, one per SPLIT_PIXELS
# pixels or more, so that rows * splits * NB stays within rows * d / 2.
SPLITS = 64
SPLIT_PIXELS = 4096


# --------------------------------------------------------------------------- #
# Pieces of the integrand, for (rows, nodes) at once
# --------------------------------------------------------------------------- #

def _nodes(r0: Any, theta: float, quad: tuple, xp: Any):
    """Per row, the rule for central rate ``r0``: ``(t, s, lt, lw)`` of shape (rows, K) and ``c``.

    Row by row this is :func:`rankseg_np.cpu.exact.make_rule`: Gauss-Jacobi
    in ``t`` for ``r0 <= SWITCH``, Gauss-Laguerre in ``u = -log t`` scaled by
    ``r0`` above, and ``s = 1 - t`` computed without cancellation.
    """
    lag_v, lag_lw, jac_x, jac_lw = (xp.asarray(a)[None, :] for a in quad)
    jac = (r0 <= SWITCH)[:, None]
    r = xp.where(jac, 1.0, r0[:, None])  # keeps log(r0) finite on Jacobi rows
    u = lag_v / r
    t = xp.where(jac, 0.5 * (1.0 + jac_x), xp.exp(-u))
    s = xp.where(jac, 0.5 * (1.0 - jac_x), -xp.expm1(-u))
    lt = xp.where(jac, xp.log(0.5 * (1.0 + jac_x)), -u)
    lw = xp.where(jac, jac_lw, lag_lw + lag_v - xp.log(r))
    c = xp.where(jac[:, 0], theta, 0.0)
    return t, s, lt, lw, c


def _log_one_minus(q: Any, t: Any, s: Any, xp: Any):
    """``log(1 - q s)`` and ``1 - q s``, without cancellation (``t + (1 - q) s`` for q > 1/2).

    One ``log`` of the accurate ``1 - q s``: only the log's *absolute* error
    reaches the score (through ``exp``), and it is a few ulps of 1 here,
    because ``1 - q s >= 1/2`` on the direct branch and is formed with a
    small relative error on the other.
    """
    den = xp.where(q <= 0.5, 1.0 - q * s, t + (1.0 - q) * s)
    return xp.log(den), den


def _node_sums(vals: Any, t: Any, s: Any, xp: Any, frac_cols: Any = None):
    """``sum_j log(1 - q_j s_k)`` per row and node, and ``sum_{j < frac_cols} q_j / (1 - q_j s_k)``.

    ``vals`` is a 0-padded (rows, n) matrix; ``frac_cols`` (an int, or one
    per row) limits the second sum to the first columns, and ``None`` skips
    it.  The (rows, K, n) terms are formed in column chunks of at most
    ``NODE_ELEMENTS``.
    """
    rows, n = vals.shape
    k = t.shape[1]
    logs = xp.zeros((rows, k))
    fracs = None if frac_cols is None else xp.zeros((rows, k))
    limit = None if frac_cols is None else xp.reshape(xp.asarray(frac_cols), (-1, 1, 1))
    step = max(1, NODE_ELEMENTS // max(1, rows * k))
    tt, ss = t[:, :, None], s[:, :, None]
    for j in range(0, n, step):
        q = vals[:, None, j : j + step]
        lg, den = _log_one_minus(q, tt, ss, xp)
        logs += xp.sum(lg, axis=2)
        if limit is not None:
            cols = xp.arange(j, j + q.shape[2])[None, None, :]
            fracs += xp.sum(xp.where(cols < limit, q / den, 0.0), axis=2)
    return logs, fracs


def _series_log(pows: Any, s: Any) -> Any:
    """``sum_j log(1 - p_j s) = -sum_m s^m P_m / m`` over the power-summed pixels (Horner)."""
    acc = 0.0
    for m in range(M_POW, 0, -1):
        acc = (acc + pows[:, m - 1, None] / m) * s
    return -acc


def _rma_value(metric: int, s: Any, n: Any, mu: Any, smooth: float, xp: Any) -> Any:
    """The RMA objective of a top-n set with sum s: a lower bound of its exact score."""
    if metric == DICE:
        v = 2.0 * s / (n + smooth + mu + 1.0)
        return v + smooth / (n + smooth + mu) if smooth > 0.0 else v
    den = n + smooth + mu - s
    return xp.where(den > 0.0, (s + smooth) / xp.where(den > 0.0, den, 1.0), 0.0)


# --------------------------------------------------------------------------- #
# One block of active rows
# --------------------------------------------------------------------------- #

def _bracket(x: Any, mu: Any, metric: int, smooth: float, xp: Any):
    """Histogram, lower bound and checked band of bins ``[b_lo, b_hi]`` for every row of ``x``."""
    rows, d = x.shape
    bins = xp.minimum((x * NB).astype(xp.int64), NB - 1)  # v * NB is exact: NB is a power of two
    # SPLITS sub-histograms per row (one per stretch of pixels), added up
    # afterwards: on CUDA, bincount's atomic adds then spread over SPLITS
    # addresses where a softmax row would pile nearly all its pixels into bin 0.
    splits = min(SPLITS, max(1, d // SPLIT_PIXELS))
    part = (xp.arange(d, dtype=xp.int64) * splits) // d
    keys = ((xp.arange(rows, dtype=xp.int64)[:, None] * splits + part[None, :]) * NB + bins).ravel()
    size = rows * splits * NB
    # Counts through the weighted path too (exact: integers below 2^53): CuPy
    # sends an unweighted bincount to CUB's histogram, whose scratch grows
    # with blocks x bins, far too large for rows * splits * NB bins.
    ones = xp.ones(keys.shape[0])
    counts = xp.bincount(keys, weights=ones, minlength=size).reshape(rows, splits, NB).sum(axis=1)
    counts = counts.astype(xp.int64)
    del ones
    # Bin sums in fixed point: each value rounded down to a multiple of ulp =
    # 2^-k, with d * 2^k < 2^52, so every bin sum and suffix sum is an exact
    # integer in float64 whatever order the (atomic, on CUDA) additions take:
    # the bracket is deterministic.  Rounding down keeps lam a lower bound (the
    # RMA objective grows with S); the check below adds the rounding back.
    ulp = 2.0 ** -(52 - max(d, 1).bit_length())
    fixed = xp.floor(x.ravel() / ulp)
    sums = xp.bincount(keys, weights=fixed, minlength=size).reshape(rows, splits, NB).sum(axis=1) * ulp
    del keys, fixed
    # Suffix sums: column b holds the count / sum of the pixels in bins >= b (column NB: none).
    zero_col = xp.zeros((rows, 1))
    suf_n = xp.concatenate([xp.cumsum(counts[:, ::-1], axis=1)[:, ::-1], zero_col.astype(xp.int64)], axis=1)
    suf_s = xp.concatenate([xp.cumsum(sums[:, ::-1], axis=1)[:, ::-1], zero_col], axis=1)

    mu_c = mu[:, None]
    with errstate(xp):
        edge = _rma_value(metric, suf_s[:, :NB], suf_n[:, :NB], mu_c, smooth, xp)
    lam = xp.max(xp.where(counts > 0, edge, -xp.inf), axis=1)
    if smooth > 0.0:
        lam = xp.maximum(lam, smooth / (smooth + mu))
    lamp = lam * (1.0 - SLACK)
    alpha = xp.full(rows, 2.0) if metric == DICE else 1.0 + lamp
    ell = lamp * (smooth + mu - 1.0) - smooth
    zero_cand = (xp.exp(-mu) + 2.0 * smooth / (smooth + mu) >= lamp) if smooth > 0.0 else xp.zeros(rows, dtype=bool)

    # h(tau) = alpha S - lamp tau peaks in bin b*; walk away from it until the deficit exceeds the margin.
    bstar = xp.clip((lamp / alpha * NB).astype(xp.int64), 0, NB - 1)
    a_c, l_c = alpha[:, None], lamp[:, None]
    hmax = xp.maximum(xp.max(a_c * suf_s[:, :NB] - l_c * suf_n[:, :NB], axis=1), 0.0)
    hmax = hmax + alpha * pick(counts, bstar, xp) / NB
    margin = xp.maximum(hmax - ell, 0.0) * (1.0 + 1e-7) + 1e-300
    col = xp.arange(NB)[None, :]
    above = col > bstar[:, None]
    below = col < bstar[:, None]
    up = xp.cumsum(xp.where(above, a_c * sums - l_c * counts, 0.0), axis=1)
    b_hi = first_true(above & (up > margin[:, None]), xp, NB - 1)
    down = xp.cumsum(xp.where(below, l_c * counts - a_c * sums, 0.0)[:, ::-1], axis=1)[:, ::-1]
    b_lo = last_true(below & (down > margin[:, None]), xp, 0)

    # The check: h below ell at both ends of the band (h is concave, so every
    # candidate is inside); widen the failing side until it holds.  Sums are
    # taken at their upper bound (each value is below its fixed-point part + ulp).
    while True:
        n_top, n_in = pick(suf_n, b_hi + 1, xp), pick(suf_n, b_lo, xp)
        s_top = pick(suf_s, b_hi + 1, xp) + n_top * ulp
        s_in = pick(suf_s, b_lo, xp) + n_in * ulp
        ok_top = (n_top == 0) | (alpha * s_top - lamp * n_top < ell)
        ok_bot = (n_in == d) | (alpha * s_in - lamp * n_in < ell)
        if bool(xp.all(ok_top & ok_bot)):
            break
        b_hi = xp.where(ok_top, b_hi, xp.minimum(NB - 1, b_hi + xp.maximum(1, b_hi - bstar)))
        b_lo = xp.where(ok_bot, b_lo, xp.maximum(0, b_lo - xp.maximum(1, bstar - b_lo)))
    return bins, b_lo, b_hi, lamp, alpha, ell, zero_cand


def _block(x: Any, mu: Any, cfg: Config, xp: Any):
    """``(threshold, tie_end)`` for a float64 block ``x`` of active rows (row sums ``mu``)."""
    rows, d = x.shape
    metric = IOU if cfg.metric == "iou" else DICE
    g = cfg.smooth
    theta, *quad = rules(g)
    bins, b_lo, b_hi, lamp, alpha, ell, zero_cand = _bracket(x, mu, metric, g, xp)
    lo_c, hi_c = b_lo[:, None], b_hi[:, None]

    top = bins > hi_c
    n_top = xp.sum(top, axis=1)
    s_top = xp.sum(xp.where(top, x, 0.0), axis=1)
    n_one = xp.sum(top & (x == 1.0), axis=1).astype(xp.float64)

    # The band, sorted descending per row (0 padding at the end).
    in_band = (bins >= lo_c) & ~top
    w_n = xp.sum(in_band, axis=1)
    band_px, band_ix = gather_rows(x, in_band, xp, with_index=True)  # pixel order
    band = -xp.sort(-band_px, axis=1)
    width = band.shape[1]
    k = xp.arange(width + 1)[None, :]  # volume tau = n_top + k takes band[:k]
    cum = xp.cumsum(xp.concatenate([s_top[:, None], band], axis=1), axis=1)  # S_tau
    tau = (n_top[:, None] + k).astype(xp.float64)
    valid = (k <= w_n[:, None]) & (tau >= 1.0)
    # A sharper lower bound: the best RMA objective over the band's own volumes
    # (as in cpu.exact).  The histogram edges are poor masks when most of a row
    # shares a bin (all values tiny), and then every volume passed the test
    # below; a larger bound only drops candidates, so the band still holds them.
    with errstate(xp):
        own = xp.max(xp.where(valid, _rma_value(metric, cum, tau, mu[:, None], g, xp), -xp.inf), axis=1)
    better = own * (1.0 - SLACK) > lamp
    lamp = xp.where(better, own * (1.0 - SLACK), lamp)
    alpha = xp.full(rows, 2.0) if metric == DICE else 1.0 + lamp
    ell = lamp * (g + mu - 1.0) - g
    zero_cand = zero_cand & ((xp.exp(-mu) + 2.0 * g / (g + mu) >= lamp) if g > 0.0 else zero_cand)
    h = alpha[:, None] * cum - lamp[:, None] * tau
    cand = valid & (h >= ell[:, None])
    c0 = first_true(cand, xp, -1)
    c1 = last_true(cand, xp, -1)
    # No candidate and no empty mask: only float64 noise gets here; keep the best bound.
    fallback = (c0 < 0) & ~zero_cand & xp.any(valid, axis=1)
    h_best = first_true(valid & (h == xp.max(xp.where(valid, h, -xp.inf), axis=1)[:, None]), xp, -1)
    c0 = xp.where(fallback, h_best, c0)
    c1 = xp.where(fallback, h_best, c1)

    # Pixels outside the band: small ones below it by power sums, the rest gathered.
    small = (bins < xp.minimum(lo_c, SMALL_BIN)) & (x > 0.0)
    w = xp.where(small, x, 0.0)
    pows = xp.empty((rows, M_POW))
    for m in range(M_POW):
        pows[:, m] = xp.sum(w, axis=1)
        if m + 1 < M_POW:
            w *= x
    del w, small
    mid = gather_rows(x, (bins < lo_c) & (bins >= SMALL_BIN), xp)
    need_top = metric == DICE or bool(xp.any(zero_cand))
    top_v = gather_rows(x, top & (x < 1.0), xp) if need_top else None
    del bins, top

    with errstate(xp):
        scores = _volume_scores(metric, g, theta, quad, mu, n_top, n_one, band, cum, tau, c0, c1, pows, mid, top_v, xp)
        score0 = xp.full(rows, -xp.inf)
        if bool(xp.any(zero_cand)):
            z = _empty_score(g, theta, quad, mu, n_one, pows, (top_v, band, mid), xp)
            score0 = xp.where(zero_cand, z, -xp.inf)

    # First maximum over (empty mask, then volumes in increasing order).
    table = xp.concatenate([score0[:, None], scores], axis=1)
    best = xp.max(table, axis=1)
    first_max = first_true(table == best[:, None], xp, 0)
    kk = first_max - 1  # band prefix length of the chosen volume; -1: the empty mask
    chosen = (kk >= 0) & xp.isfinite(best)
    threshold = xp.full(rows, xp.inf)
    tie_end = xp.zeros(rows, dtype=xp.int64)
    # kk == 0 (the top set itself, reachable only through the fallback): {p >= (b_hi + 1) / NB}.
    top_only = chosen & (kk == 0)
    threshold = xp.where(top_only, (b_hi + 1) / NB, threshold)
    tie_end = xp.where(top_only, d, tie_end)
    cut = chosen & (kk > 0)
    if bool(xp.any(cut)):
        v = xp.where(cut, pick(band, kk - 1, xp), xp.inf)
        threshold = xp.where(cut, v, threshold)
        # Ties at v all sit in the band (one bin); take the first `need` of them in pixel order.
        real = k[:, 1:] <= w_n[:, None]  # band columns holding a pixel (not padding)
        need = kk - xp.sum((band > v[:, None]) & real, axis=1)
        tie_end = xp.where(cut, tie_cut(band_px, band_ix, real, v, need, xp), tie_end)
    return threshold, tie_end


def _volume_scores(metric, g, theta, quad, mu, n_top, n_one, band, cum, tau, c0, c1, pows, mid, top_v, xp):
    """Exact scores of the candidate volumes, as a (rows, W + 1) table (-inf elsewhere).

    Column ``k`` is the volume ``n_top + k`` (the top set plus ``band[:k]``).
    Candidates ``[c0, c1]`` are cut into segments greedily from ``c0``: a
    segment ends before the first volume whose rate exceeds ``SEG_RATIO``
    times the rate at its start (:func:`rankseg_np.cpu.exact._rate`); each
    segment gets the rule of the geometric mean of its end rates.  One pass
    of the loop handles one segment of every row that still has candidates,
    on those rows only; the band enters through column-chunked sums, except
    the segment's own window, which is laid out as (rows, nodes, window).
    """
    rows, width = band.shape
    k = xp.arange(width + 1)[None, :]
    if metric == DICE:
        rate = tau + g + mu[:, None] + 0.5
    else:
        rate = tau + g + mu[:, None] - cum
    scores = xp.full((rows, width + 1), -xp.inf)
    cur = xp.where(c0 >= 0, c0, width + 1)
    last = xp.where(c0 >= 0, c1, -1)
    col = xp.arange(width)[None, :]
    while True:
        live = xp.nonzero(cur <= last)[0]
        if int(live.shape[0]) == 0:
            return scores
        lc, ll, lrate = cur[live], last[live], rate[live]
        r_s = pick(lrate, lc, xp)
        viol = (k > lc[:, None]) & (k <= ll[:, None]) & (lrate > SEG_RATIO * r_s[:, None])
        le = first_true(viol, xp, ll + 1) - 1  # the segment: volumes k in [lc, le]
        t, s, lt, lw, c = _nodes(xp.sqrt(r_s * pick(lrate, le, xp)), theta, quad, xp)
        lband = band[live]
        log_out = _series_log(pows[live], s) + _node_sums(mid[live], t, s, xp)[0]
        if metric == DICE:
            # Every pixel is in log G; A(k) = top + band[:k] fractions.
            top_logs, top_fracs = _node_sums(top_v[live], t, s, xp, top_v.shape[1])
            band_logs, before = _node_sums(lband, t, s, xp, lc)  # fractions of band[:lc] only
            base = (log_out + top_logs + band_logs + n_one[live, None] * lt)[:, :, None]
            a_base = (top_fracs + n_one[live, None] / t + before)[:, :, None]
        else:
            # Only the pixels outside the mask: band[k:] = band[k:le] + band[le:].
            after = _node_sums(xp.where(col >= le[:, None], lband, 0.0), t, s, xp)[0]
            base = (log_out + after)[:, :, None]

        # The window: volumes k = lc + m and band pixels lc + m, m < span.
        span = int(xp.max(le - lc)) + 1
        m = xp.arange(span)[None, :]
        kw = lc[:, None] + m
        inside = kw <= le[:, None]
        qw = xp.where(kw < le[:, None], pick_cols(lband, kw, xp), 0.0)  # pixels entering within the segment
        f = xp.empty((int(live.shape[0]), span))
        step = max(1, NODE_ELEMENTS // max(1, span * t.shape[1]))
        for a0 in range(0, f.shape[0], step):
            sl = slice(a0, a0 + step)
            tt, ss, ltt = t[sl, :, None], s[sl, :, None], lt[sl, :, None]
            q = qw[sl, None, :]
            lden, den = _log_one_minus(q, tt, ss, xp)
            taus = (n_top[live][sl, None] + kw[sl]).astype(xp.float64)[:, None, :]
            expo = lw[sl, :, None] + (taus + g - c[sl, None, None]) * ltt
            if metric == DICE:
                frac = xp.cumsum(q / den, axis=2)[:, :, :-1]  # shifted below: band[lc : k], exclusive
                frac = xp.concatenate([xp.zeros_like(tt), frac], axis=2)
                terms = xp.exp(expo + base[sl]) * (2.0 * tt * (a_base[sl] + frac) + g)
                f[sl] = xp.sum(terms, axis=1)
            else:
                tail = xp.cumsum(lden[:, :, ::-1], axis=2)[:, :, ::-1]  # band[k : le]
                f[sl] = xp.sum(xp.exp(expo + base[sl] + tail), axis=1) * (pick_cols(cum[live][sl], kw[sl], xp) + g)
        rr, mm = xp.nonzero(inside)
        scores[live[rr], kw[rr, mm]] = f[rr, mm]
        cur[live] = le + 1


def _empty_score(g, theta, quad, mu, n_one, pows, parts, xp):
    """Exact ``g E[1/(g + Gamma)]`` of the empty mask: ``P0 + g int t^(g-1) (G - P0) dt``.

    As :func:`rankseg_np.cpu.exact._zero_score`: subtracting ``P0 = P(Gamma =
    0)`` leaves rates ``>= g + 1``, so the Jacobi rule stays exact for small
    rates.  ``parts`` are the 0-padded matrices of the pixels that are not
    power-summed (ones excluded, counted in ``n_one``).
    """
    t, s, lt, lw, c = _nodes(g + mu, theta, quad, xp)
    lg = _series_log(pows, s) + n_one[:, None] * lt
    lp0 = _series_log(pows, xp.ones((1, 1)))[:, 0]
    for vals in parts:
        lg += _node_sums(vals, t, s, xp)[0]
        lp0 += xp.sum(xp.log1p(-vals), axis=1)
    p0 = xp.where(n_one == 0, xp.exp(lp0), 0.0)
    acc = xp.sum(xp.exp(lw + (g - c[:, None]) * lt) * (xp.exp(lg) - p0[:, None]), axis=1)
    return p0 + g * acc


# --------------------------------------------------------------------------- #
# Entry
# --------------------------------------------------------------------------- #

def decide(p3: Any, cfg: Config, xp: Any, kern: Any) -> RowDecision:
    """Exact decision for every row of a C-contiguous float32/float64 ``(B, C, d)`` array of ``xp``."""
    b, c, d = p3.shape
    p2 = p3.reshape(b * c, d)
    mu, peak, _, _ = checked_first_pass(p3, xp, kern)
    active = peak > cfg.pruning_prob
    threshold = xp.full(b * c, xp.inf)
    tie_end = xp.zeros(b * c, dtype=xp.int64)
    if cfg.smooth == 0.0 and bool(xp.any(active & (mu < TINY_MU))):
        # Rows of expected size below TINY_MU: exact = RMA to below float64 resolution.
        from . import _rma

        tiny = active & (mu < TINY_MU)
        rma = _rma.decide(p3, cfg, xp, kern)
        threshold = xp.where(tiny, rma.threshold.reshape(-1), threshold)
        tie_end = xp.where(tiny, rma.tie_end.reshape(-1), tie_end)
        active_big = active & ~tiny
    else:
        active_big = active
    rows = xp.nonzero(active_big)[0]
    step = max(1, BLOCK_ELEMENTS // max(d, NB))  # the per-row histograms are (rows, NB) too
    for r0 in range(0, int(rows.shape[0]), step):
        idx = rows[r0 : r0 + step]
        th, te = _block(p2[idx].astype(xp.float64), mu[idx], cfg, xp)
        threshold[idx] = th
        tie_end[idx] = te
    shape = (b, c)
    return RowDecision(threshold.reshape(shape), tie_end.reshape(shape), active.reshape(shape), mu.reshape(shape))
