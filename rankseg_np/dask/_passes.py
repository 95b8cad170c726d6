"""The reduction strategy: RMA and the multiclass resolution over arbitrary chunks.

Passes 1 (histograms) and 2 (windows, then each row's exact finish), as
described in :mod:`rankseg_np.dask`, and the output pass that turns the
global decisions into masks or labels chunk by chunk.  The passes exchange
the typed messages below, each a tree reduction to ``O(B*C)`` numbers.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import cpu
from .._validate import Config, raise_bad_values
from ..cpu import rma
from ._chunks import (
    BIN_LO, BIN_PARAMS, BIN_SUP, NBINS, SLACK, band_best, decided_claims, global_index, hist_counts,
    chunk_offsets, chunk_rows, labels_chunk, masks_chunk, row_scan, window_fill,
)
from ._graph import Graph, Source, tokenize


# --------------------------------------------------------------------------
# Messages between the passes (per row group, then assembled to (B, C)).
# --------------------------------------------------------------------------
class Histograms(NamedTuple):
    """Pass 1, per chunk (summed over chunks): per row."""

    total: np.ndarray  # float64 sum of the row's values
    above: np.ndarray  # a value exceeds pruning_prob
    bad: np.ndarray  # a value outside [0, 1] (or NaN)
    nonfinite: np.ndarray  # a NaN or inf
    counts: np.ndarray  # (rows, NBINS) histogram of counts


class GroupBrackets(NamedTuple):
    """Pass 1, finished for one row group."""

    total: np.ndarray
    bad: np.ndarray
    nonfinite: np.ndarray
    active: np.ndarray
    bracket: np.ndarray  # (rows, 4): window floor, window top, Dinkelbach start(s)


class RowInfo(NamedTuple):
    """Pass 1's result for the whole array, (B, C) fields: what pass 2 reads."""

    mu: np.ndarray
    active: np.ndarray
    bracket: np.ndarray  # (B, C, 4)
    bad: bool  # some value lies outside [0, 1]: pass 2 only measures the range


class Windows(NamedTuple):
    """Pass 2, per chunk (concatenated over chunks): per row."""

    s_hi: np.ndarray  # sum of the values above the window
    n_hi: np.ndarray  # their count
    pieces: list  # (start, values, global indices) of each chunk's window values
    claims: list  # multiclass: (tau, m, image, global index, class values) of open pixels
    vmin: float  # range of the values (only when RowInfo.bad)
    vmax: float


class GroupDecision(NamedTuple):
    """Pass 2, finished for one row group."""

    threshold: np.ndarray
    tie_end: np.ndarray
    tau: np.ndarray  # multiclass: volume of each class's sole claims (MATH 5)
    m: np.ndarray  # and their probability sum
    vmin: float
    vmax: float


class Decisions(NamedTuple):
    """The global (B, C) decisions the output pass reads."""

    threshold: np.ndarray
    tie_end: np.ndarray
    active: np.ndarray
    mu: np.ndarray
    tau: np.ndarray
    m: np.ndarray


# --------------------------------------------------------------------------
# Pass 1: statistics and histograms.
# --------------------------------------------------------------------------
def _p1_chunk(block: np.ndarray, pruning_prob: float) -> Histograms:
    p2 = chunk_rows(block)
    rows = p2.shape[0]
    shift, base = BIN_PARAMS[p2.dtype]
    bits = p2.view(np.uint32 if p2.dtype == np.float32 else np.uint64)
    total = np.empty(rows)
    above = np.empty(rows, dtype=np.bool_)
    bad = np.empty(rows, dtype=np.bool_)
    nonfinite = np.empty(rows, dtype=np.bool_)
    counts = np.zeros((rows, NBINS), dtype=np.int64)
    for r in range(rows):
        total[r], n_above, n_bad, n_nonfinite = row_scan(p2[r], pruning_prob)
        above[r], bad[r], nonfinite[r] = n_above > 0, n_bad > 0, n_nonfinite > 0
        if not n_bad:  # an invalid row only raises: no histogram needed
            hist_counts(p2[r], bits[r], shift, base, counts[r])
    return Histograms(total, above, bad, nonfinite, counts)


def _p1_combine(parts: list[Histograms]) -> Histograms:
    total, above, bad, nonfinite, counts = (np.array(a, copy=True) for a in parts[0])
    for t, ab, b, nf, n in parts[1:]:
        total += t
        above |= ab
        bad |= b
        nonfinite |= nf
        counts += n
    return Histograms(total, above, bad, nonfinite, counts)


def _ratio_bounds(counts, kind, alpha, beta, smooth, mu):
    """Bracket ``[L, U]`` on the maximum of an RMA ratio over masks, from one row's histogram of counts.

    ``kind='dice'``: ``(2 S(x) + alpha) / (beta + n(x))``; ``kind='iou'``:
    ``(S(x) + smooth) / (mu + smooth + n(x) - S(x))``, where ``S``/``n`` are
    the sum/count of the mask ``x``; both increase with ``S`` at fixed ``n``.
    The maximum is attained by a top-tau set (a threshold mask, MATH 4).

    * ``L``: the mask "every bin from k up" has ``n = N_k`` (known) and
      ``S >= Slo_k`` (each value at its bin's lower edge), so its value, and
      the maximum, is at least the ratio at ``(Slo_k, N_k)``; ``L`` is the
      best such bound over k.
    * ``U``: every top-tau set is "all bins above k plus j of the largest
      values of bin k", ``0 <= j <= n_k``; each value is below its bin's upper
      edge ``sup`` (capped at 1), so its value is at most
      ``g(j) = ratio(Sup_{k+1} + j sup_k, N_{k+1} + j)``, a ratio of affine
      functions of ``j`` with a positive denominator, hence monotone:
      ``g(j) <= max(g(0), g(n_k))``, and those are the bounds at
      ``(Sup_{k+1}, N_{k+1})`` and ``(Sup_k, N_k)``.  ``U`` is the largest
      over k.
    """
    n_k = counts.astype(np.float64)
    n_ge = np.concatenate([np.cumsum(n_k[::-1])[::-1], [0.0]])
    s_lo = np.concatenate([np.cumsum((n_k * BIN_LO)[::-1])[::-1], [0.0]])
    s_up = np.concatenate([np.cumsum((n_k * BIN_SUP)[::-1])[::-1], [0.0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "dice":
            low = (2.0 * s_lo + alpha) / (beta + n_ge)
            up = (2.0 * s_up + alpha) / (beta + n_ge)
        else:
            low = (s_lo + smooth) / (mu + smooth + n_ge - s_lo)
            up = (s_up + smooth) / (mu + smooth + n_ge - s_up)
    return float(np.nanmax(low)), float(np.nanmax(up))


def _threshold_of(lam: float, kind: str) -> float:
    return 0.5 * lam if kind == "dice" else lam / (1.0 + lam)


def _p1_finish_group(part: Histograms, cfg: Config) -> GroupBrackets:
    """Per row of a row group: mu, validity, activity, and the window bracket."""
    total, above, bad, nonfinite, counts = part
    rows = total.shape[0]
    active = (~bad) & above
    # columns: wlo, whi, start (first Dinkelbach problem), start_c (smooth Dice only)
    bracket = np.full((rows, 4), np.nan)
    for r in np.nonzero(active)[0]:
        mu = float(total[r])
        if cfg.metric == "iou":
            low, up = _ratio_bounds(counts[r], "iou", 0.0, 0.0, cfg.smooth, mu)
            start = _threshold_of(low, "iou")
            bracket[r] = (start * (1.0 - SLACK), _threshold_of(up, "iou") * (1.0 + SLACK), start, np.nan)
        elif cfg.smooth == 0.0:
            low, up = _ratio_bounds(counts[r], "dice", 0.0, mu + 1.0, 0.0, mu)
            bracket[r] = (0.5 * low * (1.0 - SLACK), 0.5 * up * (1.0 + SLACK), 0.5 * low, np.nan)
        else:
            # The two single-ratio problems of rma._dice_smooth_row: alpha = 0
            # and alpha = 2c (same beta); the band lies between their optimal
            # thresholds, and 2c > 0 makes the second optimum the larger.
            a = mu + cfg.smooth
            c = 0.5 * cfg.smooth * (1.0 + 2.0 / a)
            low1, _ = _ratio_bounds(counts[r], "dice", 0.0, a + 1.0, 0.0, mu)
            lowc, upc = _ratio_bounds(counts[r], "dice", 2.0 * c, a + 1.0, 0.0, mu)
            bracket[r] = (0.5 * low1 * (1.0 - SLACK), 0.5 * upc * (1.0 + SLACK), 0.5 * low1, 0.5 * lowc)
    return GroupBrackets(total, bad, nonfinite, active, bracket)


def _assemble(groups: list, index: list, shape: tuple[int, int], n_fields: int):
    """Scatter per-group row arrays (row-major over the group's (b, c) block) into (B, C, ...) arrays."""
    out = []
    for f in range(n_fields):
        first = np.asarray(groups[0][f])
        tail = first.shape[1:]
        arr = np.empty(shape + tail, dtype=first.dtype)
        for g, (b0, b1, c0, c1) in zip(groups, index):
            arr[b0:b1, c0:c1] = np.asarray(g[f]).reshape((b1 - b0, c1 - c0) + tail)
        out.append(arr)
    return out


def _p1_global(groups: list[GroupBrackets], index: list, shape: tuple[int, int], compute_dtype: str) -> RowInfo:
    total, bad, nonfinite, active, bracket = _assemble(groups, index, shape, 5)
    if nonfinite.any():
        raise_bad_values(np.array([np.nan], dtype=compute_dtype))
    # Values outside [0, 1]: the in-memory message names the range of the
    # whole array, which pass 2 measures (and pass 2's finish raises).
    return RowInfo(total, active, bracket, bool(bad.any()))


# --------------------------------------------------------------------------
# Pass 2: windows, then the exact finish of every row.
# --------------------------------------------------------------------------
def _p2_chunk(block, info: RowInfo, rows_sel, offsets, full, with_idx, claims) -> Windows:
    """Pass 2 on one chunk: per row the sum/count above the window and the window's
    values; with ``claims`` (multiclass, all classes in the chunk), also the
    claims the windows already decide and the pixels they leave open."""
    (b0, b1, c0, c1) = rows_sel
    p2 = chunk_rows(block)
    rows = p2.shape[0]
    s_hi = np.zeros(rows)
    n_hi = np.zeros(rows, dtype=np.int64)
    if info.bad:  # only the range of the values is needed, for the error
        return Windows(s_hi, n_hi, [], [], float(p2.min()), float(p2.max()))
    active = np.ascontiguousarray(info.active[b0:b1, c0:c1].reshape(-1))
    bracket = info.bracket[b0:b1, c0:c1].reshape(-1, 4)
    lo = np.ascontiguousarray(bracket[:, 0])
    hi = np.ascontiguousarray(bracket[:, 1])
    n_win = np.zeros(rows, dtype=np.int64)
    for r in np.nonzero(active)[0]:
        # Two masked sums (the CPU kernel): above the window, and above its floor.
        s_hi[r], n_hi[r] = cpu.sum_above(p2[r], hi[r])
        n_win[r] = cpu.sum_above(p2[r], lo[r])[1] - n_hi[r]
    start = np.concatenate([[0], np.cumsum(n_win)]).astype(np.int64)
    vals = np.empty(int(start[-1]) + 1, dtype=p2.dtype)  # + 1: window_fill's slack slot
    idx = np.empty(int(start[-1]) + 1 if with_idx else 1, dtype=np.int64)
    if start[-1]:
        window_fill(p2, lo, hi, active & (n_win > 0), start, vals, idx, with_idx)
    vals, idx = vals[:-1], idx[:-1]
    chunk_shape = tuple(block.shape[2:])
    if with_idx:
        idx = global_index(idx, chunk_shape, offsets, full)
    open_claims = []
    if claims:
        n_img, n_cls = b1 - b0, c1 - c0
        p3 = p2.reshape(n_img, n_cls, -1)
        tau = np.zeros((n_img, n_cls))
        m = np.zeros((n_img, n_cls))
        undecided = np.empty((n_img, p3.shape[2]), dtype=np.uint8)
        decided_claims(p3, lo.reshape(n_img, n_cls), hi.reshape(n_img, n_cls),
                        active.reshape(n_img, n_cls), tau, m, undecided)
        img, loc = np.nonzero(undecided)
        open_claims = [(tau, m, img, global_index(loc, chunk_shape, offsets, full), p3[img, :, loc])]
    return Windows(s_hi, n_hi, [(start, vals, idx)], open_claims, np.inf, -np.inf)


def _p2_combine(parts: list[Windows]) -> Windows:
    s_hi = np.array(parts[0].s_hi, copy=True)
    n_hi = np.array(parts[0].n_hi, copy=True)
    for part in parts[1:]:
        s_hi += part.s_hi
        n_hi += part.n_hi
    return Windows(
        s_hi, n_hi,
        [piece for part in parts for piece in part.pieces],
        [claim for part in parts for claim in part.claims],
        min(part.vmin for part in parts),
        max(part.vmax for part in parts),
    )


def _finish_row(window, s_hi, n_hi, mu, bracket, cfg: Config, idx, d: int) -> tuple[float, int]:
    """The in-memory RMA decision of one row from its window and the sum/count above it.

    Why Dinkelbach on the window alone is the in-memory Dinkelbach: it only
    ever needs ``S(t), n(t)`` (sum/count of values ``> t``) for thresholds
    ``t`` it visits, and ``S(t) = s_hi + S_window(t)`` when ``t`` lies in the
    window ``(wlo, whi]``.  Write ``lam0 = L`` (the bracket's lower bound, a
    value attained by a real mask, so ``L <= lam*``).  Dinkelbach's step from
    any ``lam <= lam*`` returns a mask of value ``>= lam`` (the optimal mask
    makes ``max_x (a - lam b).x + alpha - lam beta >= 0``), so starting from
    the mask ``{p > t(L)}`` every value it reaches is ``>= L`` and every
    threshold ``>= t(L) >= wlo`` (equal only when ``L = 0``, which the
    relative slack leaves at 0: a threshold at the window's floor is still
    decided by the window, since values ``<= wlo`` are in neither the window
    nor the mask); values only rise to ``lam* <= U``, so every
    threshold is ``<= t(U) < whi``.  The constants absorb the part above the
    window: Dice ``(2(s_hi + S_w) + alpha)/(beta + n_hi + n_w)`` is
    ``(2 S_w + alpha')/(beta' + n_w)``; IoU ``(s_hi + S_w + g)/(mu + g + n_hi
    + n_w - s_hi - S_w)`` is ``(S_w + g')/(mu' + g' + n_w - S_w)`` with
    ``g' = g + s_hi``, ``mu' = mu + n_hi - 2 s_hi``.  The slack ``SLACK`` on
    both ends absorbs float64 rounding of the bracket.  A final check turns
    any violation into an error instead of a silently different answer.
    """
    wlo, whi, start, start_c = bracket
    if cfg.metric == "iou":
        s0, n0 = cpu.sum_above(window, start)
        _, t = rma.dinkelbach_iou(window, cfg.smooth + s_hi, mu + n_hi - 2.0 * s_hi, s0, n0, start)
        tie = 0
    elif cfg.smooth == 0.0:
        s0, n0 = cpu.sum_above(window, start)
        _, t = rma.dinkelbach_dice(window, 2.0 * s_hi, mu + 1.0 + n_hi, s0, n0, start)
        tie = 0
    else:
        t, tie = _finish_smooth(window, s_hi, n_hi, mu, start, start_c, cfg.smooth, idx, d)
    if not wlo <= t <= whi:
        raise RuntimeError(
            f"rankseg_np.dask: internal error, threshold {t!r} outside its window ({wlo!r}, {whi!r}]; "
            "please report this with the input"
        )
    return t, tie


def _finish_smooth(window, s_hi, n_hi, mu, start1, start_c, smooth, idx, d):
    """``rma._dice_smooth_row`` on a window: the two Dinkelbach problems, then the band."""
    # Comparisons in float64, as the Numba kernels do (NumPy would compare a
    # float32 window with a Python float in float32).
    window = window.astype(np.float64)
    a = mu + smooth
    beta = a + 1.0 + n_hi
    s0, n0 = cpu.sum_above(window, start1)
    lam1, _ = rma.dinkelbach_dice(window, 2.0 * s_hi, beta, s0, n0, start1)
    c = 0.5 * smooth * (1.0 + 2.0 / a)
    s0, n0 = cpu.sum_above(window, start_c)
    lamc, _ = rma.dinkelbach_dice(window, 2.0 * c + 2.0 * s_hi, beta, s0, n0, start_c)
    lo = 0.5 * lam1 * (1.0 - rma.BAND_SLACK)
    hi = 0.5 * lamc * (1.0 + rma.BAND_SLACK)
    above = window > hi
    s_top = s_hi + float(np.sum(window[above]))
    n_top = n_hi + int(above.sum())
    in_band = (window >= lo) & (window <= hi)
    band = np.sort(window[in_band])
    best_k = band_best(band, s_top, n_top, mu, smooth)
    if best_k == 0:
        return hi, 0
    n_band = band.size
    v = band[n_band - best_k]
    n_greater = int((band > v).sum())
    equal = window == v
    n_equal = int(equal.sum())
    need = best_k - n_greater
    if need == n_equal:
        return float(v), d
    # The mask is {p > v} plus the `need` pixels equal to v of lowest global index.
    return float(v), int(np.sort(idx[equal])[need - 1]) + 1


def _p2_finish_group(part: Windows, info: RowInfo, rows_sel, cfg: Config, d: int) -> GroupDecision:
    """Per row of a group: the decision; for multiclass, also tau_c and m_c (MATH 5)."""
    b0, b1, c0, c1 = rows_sel
    active = info.active[b0:b1, c0:c1].reshape(-1)
    mu = info.mu[b0:b1, c0:c1].reshape(-1)
    bracket = info.bracket[b0:b1, c0:c1].reshape(-1, 4)
    rows = active.size
    threshold = np.full(rows, np.inf)
    tie_end = np.zeros(rows, dtype=np.int64)
    tau = np.zeros(rows)
    m = np.zeros(rows)
    if info.bad:
        return GroupDecision(threshold, tie_end, tau, m, part.vmin, part.vmax)
    s_hi, n_hi, pieces = part.s_hi, part.n_hi, part.pieces
    for r in np.nonzero(active)[0]:
        window = np.concatenate([vals[st[r] : st[r + 1]] for st, vals, _ in pieces])
        idx = np.concatenate([ix[st[r] : st[r + 1]] for st, _, ix in pieces]) if cfg.smooth > 0 else None
        threshold[r], tie_end[r] = _finish_row(
            window, float(s_hi[r]), int(n_hi[r]), float(mu[r]), tuple(bracket[r]), cfg, idx, d
        )
    if part.claims:
        tau, m = _resolve_claims(part.claims, threshold, tie_end, active, (b1 - b0, c1 - c0))
    return GroupDecision(threshold, tie_end, tau, m, part.vmin, part.vmax)


def _resolve_claims(claims: list, threshold, tie_end, active, shape) -> tuple[np.ndarray, np.ndarray]:
    """tau_c, m_c of a group: the decided chunk sums, plus the open pixels now that thresholds are known."""
    tau = np.zeros(shape)
    m = np.zeros(shape)
    for t, s, *_ in claims:
        tau += t
        m += s
    img = np.concatenate([c[2] for c in claims])
    if img.size:
        gidx = np.concatenate([c[3] for c in claims])
        vals = np.concatenate([c[4] for c in claims]).astype(np.float64)  # compared in float64, as the kernels do
        t = threshold.reshape(shape)[img]
        k = tie_end.reshape(shape)[img]
        claim = active.reshape(shape)[img] & ((vals > t) | ((vals == t) & (gidx[:, None] < k)))
        sole = claim.sum(axis=1) == 1
        cls = np.argmax(claim[sole], axis=1)
        np.add.at(tau, (img[sole], cls), 1.0)
        np.add.at(m, (img[sole], cls), vals[sole, cls])
    return tau.reshape(-1), m.reshape(-1)


def _p2_global(groups: list[GroupDecision], index: list, shape: tuple[int, int], info: RowInfo,
               compute_dtype: str) -> Decisions:
    if info.bad:
        vmin = min(g.vmin for g in groups)
        vmax = max(g.vmax for g in groups)
        raise_bad_values(np.array([vmin, vmax], dtype=compute_dtype))
    threshold, tie_end, tau, m = _assemble(groups, index, shape, 4)
    return Decisions(threshold, tie_end, info.active, info.mu, tau, m)


# --------------------------------------------------------------------------
# The graph of the reduction strategy.
# --------------------------------------------------------------------------
def _row_groups(x):
    """Row groups = (batch block, class block) pairs, with their slices."""
    ob, oc = chunk_offsets(x.chunks[:2])
    groups = []
    for ib in range(len(x.chunks[0])):
        for ic in range(len(x.chunks[1])):
            groups.append(((ib, ic), (int(ob[ib]), int(ob[ib + 1]), int(oc[ic]), int(oc[ic + 1]))))
    return groups


def _spatial_blocks(x):
    offs = chunk_offsets(x.chunks[2:])
    for sidx in np.ndindex(*x.numblocks[2:]):
        yield sidx, tuple(int(o[i]) for o, i in zip(offs, sidx))


def merge_classes(x):
    """Rechunk so that each chunk holds every class (a pixel's label needs all of them).

    Only the class axis is merged, so each new chunk is made of the class
    chunks of one spatial block: no input chunk feeds two new chunks.
    """
    return x if len(x.chunks[1]) == 1 else x.rechunk({1: -1})


def decision_passes(x, cfg: Config, g: Graph, src: Source, claims: bool = False):
    """Passes 1 and 2 of the reduction strategy; returns the key of the (B, C) row decisions."""
    shape = tuple(int(s) for s in x.shape)
    bc = shape[:2]
    full = shape[2:]
    d = math.prod(full)
    compute_dtype = "float64" if x.dtype == np.float64 else "float32"
    groups = _row_groups(x)
    index = [sel for _, sel in groups]
    blocks = list(_spatial_blocks(x))

    # Pass 1: histograms.
    finished = []
    for (ib, ic), _sel in groups:
        keys = []
        for sidx, _ in blocks:
            k = g.key("hist", ib, ic, *sidx)
            g.layer[k] = (_p1_chunk, src.chunk(x, (ib, ic, *sidx)), cfg.pruning_prob)
            keys.append(k)
        root = g.tree(keys, _p1_combine, ("hist", ib, ic))
        fk = g.key("hist-group", ib, ic)
        g.layer[fk] = (_p1_finish_group, root, cfg)
        finished.append(fk)
    info = g.key("info")
    g.layer[info] = (_p1_global, finished, index, bc, compute_dtype)

    # Pass 2: windows and the per-row finish.
    with_idx = cfg.metric == "dice" and cfg.smooth > 0.0
    finished = []
    for (ib, ic), sel in groups:
        keys = []
        for sidx, offs in blocks:
            k = g.key("window", ib, ic, *sidx)
            g.layer[k] = (_p2_chunk, src.chunk(x, (ib, ic, *sidx)), info, sel, offs, full, with_idx, claims)
            keys.append(k)
        root = g.tree(keys, _p2_combine, ("window", ib, ic))
        fk = g.key("window-group", ib, ic)
        g.layer[fk] = (_p2_finish_group, root, info, sel, cfg, d)
        finished.append(fk)
    dec = g.key("decision")
    g.layer[dec] = (_p2_global, finished, index, bc, info, compute_dtype)
    return dec, groups, blocks


class Plan(NamedTuple):
    """Passes 1 and 2, lazily: the graph that computes the (B, C) :class:`Decisions` of ``x``."""

    x: Any  # the input, classes merged into one chunk for multiclass output
    graph: Graph
    source: Source
    key: Any  # the graph key of the Decisions
    groups: list
    blocks: list
    token: str
    cfg: Config


def plan(x, cfg: Config) -> Plan:
    """The decision passes of the reduction strategy (module docstring) for any chunking."""
    multi = cfg.output_mode == "multiclass"
    if multi:
        x = merge_classes(x)
    src = Source(x)
    token = tokenize(x, cfg, "rankseg_np.dask")
    g = Graph(f"rankseg-{token}", src)
    # Multiclass: pass 2 also sums tau_c and m_c (the classes are in one chunk).
    dec, groups, blocks = decision_passes(x, cfg, g, src, claims=multi)
    return Plan(x, g, src, dec, groups, blocks, token, cfg)


def output(p: Plan):
    """The output pass: masks (multilabel) or labels (multiclass) of every chunk, lazily."""
    x, src, cfg = p.x, p.source, p.cfg
    multi = cfg.output_mode == "multiclass"
    full = tuple(int(s) for s in x.shape[2:])
    n_chunks = len(p.groups) * len(p.blocks)
    name = f"rankseg-out-{p.token}"
    out = {}
    for (ib, ic), sel in p.groups:
        for sidx, offs in p.blocks:
            if multi:  # one class block after merge_classes
                out[(name, ib, *sidx)] = (
                    labels_chunk, src.chunk(x, (ib, ic, *sidx)), p.key, sel, offs, full, cfg, n_chunks,
                )
            else:
                out[(name, ib, ic, *sidx)] = (
                    masks_chunk, src.chunk(x, (ib, ic, *sidx)), p.key, sel, offs, full, n_chunks,
                )
    chunks, dtype = ((x.chunks[0],) + x.chunks[2:], np.int64) if multi else (x.chunks, np.bool_)
    return p.graph.array(name, out, p.key, chunks, dtype)
