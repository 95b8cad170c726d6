"""The exact solver's row kernels (rankseg_np/cpu/exact.py) against brute force, and the
paths they open (docs/exact.md sections 1 and 3).

* ``range_power_sums`` = ``math.fsum`` of the selected powers;
* ``series_terms`` is the fewest terms within the truncation bound, and the
  truncated series stay within it against ``log1p`` / direct sums;
* ``_largest_s`` is the largest ``s`` of the nodes ``make_rule`` builds;
* ``_widen`` returns a bracket outside which no volume survives (brute force
  over the sorted row); ``_tie_end`` = the lowest-index ties by ``np.flatnonzero``;
* a mask cutting through a group of ties on a packed row has the volume the
  solver's own scores chose, with the lowest-index ties;
* the solver's own scores of its candidate volumes (``_scored_volumes``) =
  the oracle's within 1e-12 absolute (the bound of docs/exact.md), on medium
  rows (every candidate) and on packed rows (a sample of candidates);
* end to end, on rows of a few thousand pixels whose entries above 1/4 are
  packed (the top pixels then go through power sums or are split between power
  sums and per-node visits, pixels equal to 1 included): the solver's volume
  scores no lower than its neighbours by the Poisson-binomial oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import mask_score, topk_curve
from rankseg_np import rankseg
from rankseg_np._quadrature import rules
from rankseg_np.cpu import exact as E
from strategies import medium_rows

METRIC_CODES = {"dice": E.DICE, "iou": E.IOU}


@st.composite
def value_arrays(draw):
    """Values in [0, 1] from families that reach every branch of range_power_sums."""
    n = draw(st.integers(0, 700))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "powered", "tiny", "subnormal", "mixed"]))
    if kind == "uniform":
        v = rng.uniform(0, 1, n)
    elif kind == "powered":
        v = rng.uniform(0, 1, n) ** rng.uniform(1, 30)
    elif kind == "tiny":  # around NANO and MICRO
        v = 2.0 ** rng.uniform(-40, -10, n)
    elif kind == "subnormal":
        v = rng.integers(0, 2**40, n) * 5e-324
    else:
        v = rng.choice([0.0, 1.0, 0.25, 2.0**-20, 2.0**-30, 1e-300], n) * (rng.random(n) < 0.8)
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return v.astype(dtype)


@settings(max_examples=60, deadline=None)
@given(value_arrays(), st.floats(0.0, 1.5), st.integers(1, E.M_MAX))
def test_range_power_sums_equals_fsum(vals, hi, n_terms):
    pows = np.zeros(E.M_MAX)
    E.range_power_sums(vals, hi, n_terms, pows)
    v = vals.astype(np.float64)
    v = v[v < hi]
    for m in range(1, E.M_MAX + 1):
        # terms m >= 2 skip v < NANO, m >= 3 skip v < MICRO (their remainders are below TRUNC)
        kept = v if m == 1 else v[v >= (E.NANO if m == 2 else E.MICRO)]
        want = math.fsum(kept**m) if m <= n_terms else 0.0
        # reassociated float64 sums of positive terms: a few ulp per block of POW_BLOCK
        assert pows[m - 1] == pytest.approx(want, rel=1e-13, abs=0.0)


@pytest.mark.parametrize("frac", [False, True])
def test_series_terms_is_the_fewest_within_the_bound(frac):
    def remainder(x, m):
        return x**m / (1 - x) if frac else x ** (m + 1) / ((m + 1) * (1 - x))

    for x in np.r_[0.0, np.geomspace(1e-12, E.X_SERIES, 400)]:
        m = E.series_terms(x, frac)
        assert remainder(x, m) <= E.TRUNC
        assert m == 1 or remainder(x, m - 1) > E.TRUNC
    # at the series cut itself: 27 terms for log(1 - ps), 31 for p/(1 - ps) (docs/exact.md)
    assert E.series_terms(E.X_SERIES, frac) == (31 if frac else 27)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(1e-6, E.X_SERIES))
def test_truncated_series_within_the_bound(seed, x):
    """log G and A of power-summed pixels (p s <= x) against log1p and direct sums."""
    rng = np.random.default_rng(seed)
    s_max = rng.uniform(x, 1.0)
    cut = x / s_max
    p = cut * rng.uniform(0, 1, 500) ** rng.uniform(0.2, 3)
    for frac in (False, True):
        n_terms = E.series_terms(x, frac)
        pows = np.zeros(n_terms)
        E.range_power_sums(p, np.inf, n_terms, pows)
        for s in np.r_[s_max, rng.uniform(0, s_max, 5)]:
            if frac:
                # only pixels above the band use it: they are >= 1/NB, above NANO and MICRO
                big = p[p >= 1.0 / E.NB]
                pows = np.zeros(n_terms)
                E.range_power_sums(big, np.inf, n_terms, pows)
                want = math.fsum(big / (1 - big * s))
                assert abs(E.series_frac(pows, s) - want) <= want * (E.TRUNC + 1e-14)
            else:
                want = math.fsum(np.log1p(-p * s))
                assert abs(E.series_log(pows, s) - want) <= p.size * E.TRUNC + 1e-14 * abs(want) + 1e-300


@pytest.mark.parametrize("smooth", [0.0, 0.3, 2.0])
def test_largest_s_is_the_rules_largest(smooth):
    rule = rules(smooth)
    k = rule.lag_v.size
    lt, lw, t, s = (np.empty(k) for _ in range(4))
    for r0 in np.r_[np.geomspace(0.5, 1e7, 200), E.SWITCH, np.nextafter(E.SWITCH, np.inf)]:
        E.make_rule(r0, rule, lt, lw, t, s)
        assert E._largest_s(r0, rule) == s.max()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3000), st.sampled_from([np.float32, np.float64]))
def test_tie_end(seed, n, dtype):
    """A mask that keeps some pixels of a tie group keeps the lowest-index ones: _tie_end gives one
    past the last, from a band gathered in scan_row's reading order (packed) or in row order."""
    from rankseg_np.cpu._kernels import as_bits, bit_pattern, scan_row

    rng = np.random.default_rng(seed)
    row = rng.choice([0.1, 0.25, 0.3, 0.9], n).astype(dtype)
    out = np.empty(n + 64, dtype=dtype)
    cut = dtype(0.25)
    k = scan_row(row, as_bits(row), bit_pattern(0.25, row.dtype), cut, out)[3]
    for packed, band, where in ((True, out[:k], np.arange(k)), (False, row[row > cut], np.flatnonzero(row > cut))):
        bv, bi = E.sort_desc_stable(band.astype(np.float64), where.astype(np.int64))
        for i in range(bv.size):
            v = bv[i]
            kept = int(np.count_nonzero(bv[: i + 1] == v))  # pixels equal to v in the mask bv[:i + 1]
            assert E._tie_end(row, bv, bi, i, packed) == np.flatnonzero(row == v)[kept - 1] + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_cut_inside_a_tie_group_of_packed_rows(metric, dtype):
    """Packed rows (entries above 1/4 read in scan_row's block order, not row order) whose chosen
    volume cuts through a group of ties: the mask rankseg writes has exactly that volume, and keeps
    the lowest-index ties.

    With a huge smooth a pixel at 1/2 moves the score by less than float64 resolves, so the first
    maximum of the solver's scores lands inside the group of 1/2s on many rows; a value between
    1/4 and 1/2 keeps the band above 1/4 (the packed path).  Both are counted: the test must
    reach the cut on packed rows.  The volume comes from the solver's own scores
    (``_scored_volumes`` on the entries scan_row packs, as ``_exact_row`` calls it): every such
    volume is optimal to float64 noise, so only the solver itself says which one the mask must have.
    """
    from rankseg_np.cpu._kernels import as_bits, bit_pattern, scan_row

    rng = np.random.default_rng(7)
    d, smooth = 1000, 1e9
    rows = rng.uniform(0.0, 0.25, (32, d)) ** rng.uniform(1, 3, (32, 1))  # at or below 1/4: not packed
    for row in rows:
        hi = rng.choice(d, int(rng.integers(40, d // E.PACK_AT_MOST)), replace=False)
        row[hi] = rng.choice([0.35, 0.5, 0.5, 0.8], hi.size)
    rows = rows.astype(dtype)
    masks = rankseg(rows[None], metric=metric, smooth=smooth, solver="exact", output_mode="multilabel")[0]
    cuts = 0
    for row, mask in zip(rows, masks):
        out = np.empty(d // E.PACK_AT_MOST + 64 // row.itemsize, dtype=dtype)
        mu, _, n_low, k = scan_row(row, as_bits(row), bit_pattern(E.PACK_CUT, row.dtype), dtype(E.PACK_CUT), out)
        zero, c0, f, _, _, _, packed, _ = E._scored_volumes(row, out[:k], n_low, mu, METRIC_CODES[metric], smooth,
                                                             rules(smooth))
        tau = c0 + int(np.argmax(f))  # the first maximum, as _exact_row
        assert f.size and f.max() > zero
        assert np.array_equal(mask, np.isin(np.arange(d), np.argsort(-row, kind="stable")[:tau]))
        cuts += packed and bool(np.any(row[~mask] == row[mask].min()))  # pixels equal to the cut value left out
    assert cuts >= 10, cuts


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([E.DICE, E.IOU]), st.sampled_from([0.0, 0.5, 3.0]),
       st.booleans())
def test_widen_gives_a_valid_bracket(seed, metric, smooth, packed):
    """From the narrowest bracket (b* alone), the widened one leaves every volume outside it
    below the survival threshold: h(tau) < ell for tau <= #top and tau >= #(top + band)."""
    rng = np.random.default_rng(seed)
    d = int(rng.integers(20, 3000))
    row = rng.uniform(0, 1, d) ** rng.uniform(0.3, 8)
    row[0] = max(row.max(), 0.6)
    mu = row.sum()
    src = row[row > 0.25] if packed else row
    counts, sums, lam, bstar, _, _ = E._bin_bracket(src, metric, mu, smooth)
    lamp, alpha, ell, _ = E._test_terms(lam, metric, mu, smooth)
    b_lo, b_hi = E._widen(counts, sums, d, bstar, bstar, bstar, lamp, alpha, ell, E.SMALL_BIN if packed else -1)
    if packed and b_lo <= E.SMALL_BIN:  # the solver reads the whole row from here
        counts, sums = E._histogram(row)
        b_lo, b_hi = E._widen(counts, sums, d, bstar, b_lo, b_hi, lamp, alpha, ell, -1)
    q = np.sort(row)[::-1]
    h = alpha * np.r_[0.0, np.cumsum(q)] - lamp * np.arange(d + 1)
    bins = np.minimum((q * E.NB).astype(int), E.NB - 1)
    n_top = int((bins > b_hi).sum())
    n_in = int((bins >= b_lo).sum())
    tol = 1e-12 * (alpha * mu + lamp * d)  # the bins' sums and the sorted cumsum round differently
    assert np.all(h[: n_top + 1][1:] < ell + tol) if n_top else True
    assert np.all(h[n_in:] < ell + tol) if n_in < d else True


def packed_rows(rng, d, n_high, n_one, top_lo):
    """A row with n_high entries in (top_lo, 1), n_one ones, the rest below 1/4: packed when
    n_high + n_one <= d / 8."""
    p = np.r_[rng.uniform(top_lo, 1, n_high), np.ones(n_one), 0.25 * rng.uniform(0, 1, d - n_high - n_one) ** 3]
    rng.shuffle(p)
    return p


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("case", ["top in series", "top split", "band below 1/4"])
def test_packed_rows_pick_the_best_nearby_volume(metric, smooth, case):
    """Rows of a few thousand pixels, entries above 1/4 packed: the solver's volume scores
    at least as high (oracle, 1e-10) as every top-tau set within 3 of it."""
    rng = np.random.default_rng({"top in series": 1, "top split": 2, "band below 1/4": 3}[case])
    for _ in range(2):
        if case == "top in series":  # rates ~ 700: s_max ~ 0.11, every top pixel in power sums
            p = packed_rows(rng, 3000, 300, 5, 0.3)
        elif case == "top split":  # rates ~ 200: the top pixels above 1/(4 s_max) per node
            p = packed_rows(rng, 1600, 120, 3, 0.3)
        else:  # few confident pixels: the band reaches below 1/4 and the whole row is read
            p = packed_rows(rng, 1200, 10, 1, 0.3)
        ours = rankseg(p[None, None], metric=metric, smooth=smooth, solver="exact", output_mode="multilabel")[0, 0]
        tau = int(ours.sum())
        order = np.argsort(-p, kind="stable")
        assert np.array_equal(ours, np.isin(np.arange(p.size), order[:tau]))
        mine = mask_score(p, ours, metric, smooth)
        for other in range(max(0 if smooth > 0 else 1, tau - 3), min(p.size, tau + 3) + 1):
            mask = np.zeros(p.size, dtype=bool)
            mask[order[:other]] = True
            assert mine >= mask_score(p, mask, metric, smooth) - 1e-10


def solver_scores(p, metric, smooth):
    """(empty-mask score or -inf, first candidate volume, scores) as the row solver computes them."""
    p = np.ascontiguousarray(p, dtype=np.float64)
    n_low = int((p > E.PACK_CUT).sum())
    zero, c0, f, *_ = E._scored_volumes(p, p[p > E.PACK_CUT], n_low, p.sum(), METRIC_CODES[metric], smooth,
                                        rules(smooth))
    return zero, c0, f


@settings(max_examples=25, deadline=None)
@given(medium_rows(), st.sampled_from(["dice", "iou"]), st.sampled_from([0.0, 0.05, 1.0, 4.5]))
def test_solver_scores_on_every_candidate(p, metric, smooth):
    zero, c0, f = solver_scores(p, metric, smooth)
    curve = topk_curve(p, metric, smooth)
    if zero > -np.inf:
        assert abs(zero - curve[0]) <= 1e-12
    np.testing.assert_allclose(f, curve[c0 : c0 + f.size], rtol=0, atol=1e-12)


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_solver_scores_on_packed_rows(metric, smooth):
    """Rows whose top pixels go through power sums (rates ~ 200-700): a sample of candidates."""
    rng = np.random.default_rng(4)
    for d, n_high, n_one in ((3000, 300, 5), (1600, 120, 3)):
        p = packed_rows(rng, d, n_high, n_one, 0.3)
        zero, c0, f = solver_scores(p, metric, smooth)
        assert c0 >= 1 and f.size > 0
        order = np.argsort(-p, kind="stable")
        for j in np.unique(np.r_[0, f.size - 1, np.argmax(f), rng.integers(0, f.size, 3)]):
            mask = np.zeros(p.size, dtype=bool)
            mask[order[: c0 + j]] = True
            assert abs(f[j] - mask_score(p, mask, metric, smooth)) <= 1e-12
