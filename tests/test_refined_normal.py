"""BA, TRNA and BA+TRNA (MATH section 6): an independent float64 oracle, and rankseg 0.0.8.

Two oracles:

* ``oracle_tau`` below: MATH section 6 transcribed in plain float64 NumPy/SciPy
  (the support from SciPy's generic ``rv_continuous.ppf``, the law by
  ``scipy.stats.norm``, every volume's score as a matrix product; the TRNA law
  of each ``Gamma_{-j}`` as one row of a matrix).  It needs no ``rankseg``.
* ``rankseg`` 0.0.8 itself (the ``compat`` extra), on the same inputs.

"Identical rows" are counted up to the order of pixels with equal
probability: rankseg's ``torch.sort`` does not keep equal values in index
order, so a top-tau set is defined only up to permutation within a tie group.
Two masks of the same row are the same answer when they select the same
multiset of probabilities.

rankseg evaluates the scores in the input's precision, and on float32 input
two volumes whose scores differ by less than float32 rounding are decided by
how each value was rounded.  With PyTorch's vector math for the law (the
default whenever PyTorch is installed) every row must be identical; with
NumPy's (``law_math='numpy'``) a row may differ, but only when the float64
oracle scores the two volumes within float32 noise of each other.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from rankseg_np import rankseg
from rankseg_np._validate import check_config
from rankseg_np.cpu import refined_normal
from strategies import make_probs

SOLVERS = ("BA", "TRNA", "BA+TRNA")
SMOOTHS = (0.0, 0.5, 1.0, 10.0)
# Relative score gap below which two volumes are a tie at the input's precision
# (float32: rankseg's accumulated float32 rounding; float64: summation order).
TIE_RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-11}


# --------------------------------------------------------------------------
# The float64 oracle
# --------------------------------------------------------------------------


class _RefinedNormal(scipy.stats.rv_continuous):
    """Volkova's refined normal law, standardised; SciPy supplies the quantiles."""

    def _argcheck(self, skew):
        return np.isfinite(skew)

    def _cdf(self, x, skew):
        f = scipy.stats.norm.cdf(x) + skew * (1.0 - x**2) * scipy.stats.norm.pdf(x) / 6.0
        return np.clip(f, 0.0, 1.0)


_RN = _RefinedNormal(name="refined_normal")


def _moments(q):
    return q.sum(), np.sum(q * (1.0 - q)), np.sum(q * (1.0 - q) * (1.0 - 2.0 * q))


def _pmf(k, loc, scale, skew):
    """Normalised pmf on the integers ``k`` (MATH section 6), float64."""

    def cdf(v):
        x = (v + 0.5 - loc) / scale
        return np.clip(scipy.stats.norm.cdf(x) + skew * (1.0 - x**2) * scipy.stats.norm.pdf(x) / 6.0, 0.0, 1.0)

    mass = np.clip(cdf(k) - cdf(k - 1.0), 0.0, 1.0)
    return mass / mass.sum()


def oracle_curve(p, solver, smooth, eps):
    """Float64 BA/TRNA scores of every searched volume tau = 0..up_tau of one row."""
    q = np.sort(np.asarray(p, dtype=np.float64))[::-1]
    d = q.size
    mu, var, m3 = _moments(q)
    floor = np.finfo(np.float64).eps
    scale = math.sqrt(max(var, floor))
    skew = m3 / max(var, floor) ** 1.5
    if solver == "BA+TRNA":
        solver = "BA" if 1.0 / max(scale, 1e-8) < 0.2 else "TRNA"
    z_lo, z_hi = _RN.interval(1.0 - eps, skew)
    lq = int(min(max(math.floor(scale * z_lo + mu) - 1, 0), d))
    uq = int(min(max(math.ceil(scale * z_hi + mu), 0), d))
    k = np.arange(lq, uq + 1, dtype=np.float64)
    full = _pmf(k, mu, scale, skew)

    s = np.concatenate([[0.0], np.cumsum(q)])
    tau_all = np.arange(1, d)
    hit = s[1:d] >= (tau_all + smooth + d) * q[1:]
    up = int(tau_all[hit][0]) if hit.any() else d
    tau = np.arange(1, up + 1, dtype=np.float64)

    a = 1.0 / (k[None, :] + tau[:, None] + smooth + 1.0)  # (up, n)
    if smooth > 0:
        nu = (smooth / (k[None, :] + tau[:, None] + smooth)) @ full
        empty = float(smooth / (k + smooth) @ full)
    else:
        nu = np.zeros(up)
        empty = 0.0
    if solver == "BA":
        overlap = s[1 : up + 1] * (a @ full)
    else:
        qj = q[:up, None]
        loc_j = mu - qj
        var_j = np.maximum(var - qj * (1.0 - qj), floor)
        m3_j = m3 - qj * (1.0 - qj) * (1.0 - 2.0 * qj)
        laws = np.vstack([_pmf(k, loc_j[i, 0], math.sqrt(var_j[i, 0]), m3_j[i, 0] / var_j[i, 0] ** 1.5) for i in range(up)])
        weights = np.cumsum(qj * laws, axis=0)  # W_tau(k) = sum_{j <= tau} q_j pmf_j(k)
        overlap = np.sum(weights * a, axis=1)
    return np.concatenate([[empty], 2.0 * overlap + nu])


def oracle_tau(p, solver, smooth, eps):
    return int(np.argmax(oracle_curve(p, solver, smooth, eps)))


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def rows_of(probs, masks):
    b, c = probs.shape[:2]
    return probs.reshape(b * c, -1), masks.reshape(b * c, -1)


def is_top_tau(p, m):
    """True when ``m`` is a top-tau set of ``p`` with ties at the cut taken lowest index first."""
    if not m.any():
        return True
    t = p[m].min()
    if (p[~m] > t).any():
        return False
    tied = np.flatnonzero(p == t)
    chosen = np.flatnonzero(m & (p == t))
    return np.array_equal(chosen, tied[: chosen.size])


def same_answer(p, a, b):
    """Same selected multiset of probabilities (identical up to order within tie groups)."""
    return np.array_equal(np.sort(p[a]), np.sort(p[b]))


def check_near_tie(p, ours, other, solver, smooth, eps, dtype):
    """A row where two answers differ must be a tie at the input precision (float64 oracle)."""
    curve = oracle_curve(p.astype(np.float64), solver, smooth, eps)
    t_ours, t_other = int(ours.sum()), int(other.sum())
    scale = max(abs(curve[t_ours]), abs(curve[t_other]), 1e-300)
    gap = abs(curve[t_ours] - curve[t_other]) / scale
    assert gap <= TIE_RTOL[np.dtype(dtype)], (solver, smooth, eps, t_ours, t_other, gap)


def softmax_probs(shape, dtype, temperature, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * temperature
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(dtype)


solver_params = st.fixed_dictionaries(
    dict(
        solver=st.sampled_from(SOLVERS),
        smooth=st.sampled_from(SMOOTHS),
        eps=st.sampled_from([1e-4, 1e-4, 1e-2, 0.2, 1e-8]),
        pruning_prob=st.sampled_from([0.5, 0.5, 0.0, 0.3, 0.9]),
    )
)


# --------------------------------------------------------------------------
# Without rankseg: structure and the float64 oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.5, 1.5, float("nan"), float("inf")])
def test_invalid_eps_raises(eps):
    probs = np.full((1, 1, 4), 0.7)
    with pytest.raises(ValueError, match="eps"):
        rankseg(probs, output_mode="multilabel", solver="BA", eps=eps)


def test_eps_type_and_scope():
    probs = np.full((1, 1, 4), 0.7)
    with pytest.raises(TypeError, match="eps"):
        rankseg(probs, output_mode="multilabel", solver="TRNA", eps="0.1")
    with pytest.raises(ValueError, match="not supported"):
        rankseg(probs, metric="iou", output_mode="multilabel", solver="BA")
    with pytest.raises(ValueError, match="not supported"):
        rankseg(np.full((1, 2, 4), 0.5), output_mode="multiclass", solver="BA+TRNA")


def test_bad_values_raise():
    for bad in (np.nan, 1.5, -0.1):
        probs = np.full((1, 2, 5), 0.6)
        probs[0, 1, 3] = bad
        with pytest.raises(ValueError, match="probs"):
            rankseg(probs, output_mode="multilabel", solver="TRNA")


@settings(max_examples=40)
@given(
    st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 12), st.integers(1, 12)),
    st.sampled_from([np.float64, np.float32]),
    st.sampled_from(["softmax", "sigmoid", "ties", "zero_one", "uniform"]),
    st.integers(0, 2**32 - 1),
    solver_params,
)
def test_masks_are_top_tau_sets_and_inactive_rows_are_empty(shape, dtype, kind, seed, params):
    probs = make_probs(shape, dtype, kind, seed)
    before = probs.copy()
    masks = rankseg(probs, output_mode="multilabel", **params)
    assert masks.shape == probs.shape and masks.dtype == np.bool_
    np.testing.assert_array_equal(probs, before)
    p2, m2 = rows_of(probs, masks)
    for p, m in zip(p2, m2):
        assert is_top_tau(p, m)
        if p.max() <= params["pruning_prob"]:
            assert not m.any()


def test_decision_form():
    """threshold/tie_end encode the mask; inactive rows are (+inf, 0)."""
    p3 = np.array([[[0.9, 0.6, 0.6, 0.6, 0.1]], [[0.2, 0.3, 0.1, 0.4, 0.0]]])
    cfg = check_config(1, output_mode="multilabel", solver="BA", pruning_prob=0.5)
    dec = refined_normal.decide(np.ascontiguousarray(p3), cfg)
    assert dec.threshold[1, 0] == np.inf and dec.tie_end[1, 0] == 0
    assert not dec.active[1, 0] and dec.active[0, 0]
    np.testing.assert_allclose(dec.mu[:, 0], p3.sum(axis=(1, 2)))
    t, k = dec.threshold[0, 0], dec.tie_end[0, 0]
    row = p3[0, 0]
    mask = (row > t) | ((row == t) & (np.arange(row.size) < k))
    assert is_top_tau(row, mask)


@settings(max_examples=40)
@given(
    st.integers(1, 3),
    st.integers(2, 40),
    st.sampled_from([np.float64, np.float32]),
    st.floats(0.3, 4.0),
    st.integers(0, 2**32 - 1),
    solver_params,
    st.sampled_from(["auto", "numpy"]),
)
def test_agrees_with_float64_oracle(n_class, side, dtype, temperature, seed, params, law_math):
    """Every active row's volume maximises the oracle's score (up to ties at the input precision),
    with PyTorch's vector math (when installed) and with NumPy's."""
    probs = softmax_probs((1, n_class + 1, side, side), dtype, temperature, seed)
    masks = rankseg(probs, output_mode="multilabel", law_math=law_math, **params)
    p2, m2 = rows_of(probs, masks)
    solver, smooth, eps = params["solver"], params["smooth"], params["eps"]
    for p, m in zip(p2, m2):
        if p.max() <= params["pruning_prob"]:
            continue
        curve = oracle_curve(p.astype(np.float64), solver, smooth, eps)
        tau = int(m.sum())
        assert tau < curve.size
        best = curve.max()
        assert curve[tau] >= best - TIE_RTOL[np.dtype(dtype)] * max(abs(best), 1e-300), (tau, int(curve.argmax()))


def test_ba_trna_switch_follows_cohens_d():
    """BA+TRNA equals BA on rows with sigma > 5 and TRNA on rows with sigma < 5."""
    rng = np.random.default_rng(7)
    wide = rng.uniform(0.2, 0.8, size=(1, 1, 400))  # sigma^2 ~ 400 * 0.2 -> BA
    narrow = np.concatenate([rng.uniform(0.6, 0.95, 6), rng.uniform(0.0, 0.02, 200)])[None, None]  # sigma < 5 -> TRNA
    for probs, same_as in ((wide, "BA"), (narrow, "TRNA")):
        sigma = math.sqrt(np.sum(probs * (1 - probs)))
        assert (1 / sigma < 0.2) == (same_as == "BA")
        both = rankseg(probs, output_mode="multilabel", solver="BA+TRNA")
        np.testing.assert_array_equal(both, rankseg(probs, output_mode="multilabel", solver=same_as))


def test_float64_volume_is_the_oracle_argmax():
    """On float64 input the chosen volume is exactly the oracle's first maximiser.

    This also covers the early stop of the volume scan (the oracle scores every
    volume up to Lemma 3's bound).
    """
    probs = softmax_probs((2, 5, 20, 20), np.float64, 1.5, 3)
    for solver in SOLVERS:
        for smooth in (0.0, 0.5, 10.0):
            masks = rankseg(probs, output_mode="multilabel", solver=solver, smooth=smooth)
            p2, m2 = rows_of(probs, masks)
            for p, m in zip(p2, m2):
                if p.max() > 0.5:
                    assert int(m.sum()) == oracle_tau(p, solver, smooth, 1e-4)


# --------------------------------------------------------------------------
# Against rankseg 0.0.8
# --------------------------------------------------------------------------


def theirs(probs, **params):
    torch = pytest.importorskip("torch")
    rs = pytest.importorskip("rankseg")
    model = rs.RankSEG(metric="dice", output_mode="multilabel", **params)
    return model.predict(torch.from_numpy(np.ascontiguousarray(probs))).numpy()


def compare(probs, params):
    """(identical active rows, active rows), asserting what must hold for each differing row.

    With ``law_math='numpy'`` (NumPy's correctly rounded ``sqrt``/``erf``/``exp``
    instead of PyTorch's) rows may differ from rankseg's, but only at a tie
    at the input precision (float64 oracle).  With PyTorch's (the default
    whenever rankseg, hence torch, is installed) every row must be identical.
    Inactive rows (empty in both) are checked but not counted, so the rate is
    not inflated by pruned classes.
    """
    ours = rankseg(probs, output_mode="multilabel", **params)
    other = theirs(probs, **{k: v for k, v in params.items() if k != "law_math"})
    assert other.shape == ours.shape
    exact = refined_normal.law_math(params.get("law_math", "auto")).name == "torch"
    p2, o2 = rows_of(probs, ours)
    _, t2 = rows_of(probs, other)
    same = active = 0
    for p, a, b in zip(p2, o2, t2):
        is_active = p.max() > params["pruning_prob"]
        active += is_active
        if same_answer(p, a, b):
            same += is_active
        else:
            assert not exact, (params, int(a.sum()), int(b.sum()))
            check_near_tie(p, a, b, params["solver"], params["smooth"], params["eps"], probs.dtype)
    return same, active


# Softmax images of up to 14x14 pixels: (shape, dtype, temperature, seed, solver parameters).
softmax_cases = (
    st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 14), st.integers(1, 14)),
    st.sampled_from([np.float32, np.float64]),
    st.floats(0.3, 5.0),
    st.integers(0, 2**32 - 1),
    solver_params,
)


@settings(max_examples=25)
@given(*softmax_cases)
def test_matches_rankseg_on_softmax(shape, dtype, temperature, seed, params):
    pytest.importorskip("rankseg")
    probs = softmax_probs(shape, dtype, temperature, seed)
    compare(probs, params)


@settings(max_examples=15)
@given(
    st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9)),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from(["sigmoid", "ties", "zero_one", "uniform"]),
    st.integers(0, 2**32 - 1),
    solver_params,
)
def test_matches_rankseg_on_other_inputs(shape, dtype, kind, seed, params):
    """Ties, exact 0/1 values and independent sigmoids (degenerate laws included)."""
    pytest.importorskip("rankseg")
    compare(make_probs(shape, dtype, kind, seed), params)


@settings(max_examples=15)
@given(*softmax_cases)
def test_numpy_law_math_differs_from_rankseg_only_at_ties(shape, dtype, temperature, seed, params):
    """Without PyTorch's vector math the answer may differ from rankseg's, at float32 ties only."""
    pytest.importorskip("rankseg")
    compare(softmax_probs(shape, dtype, temperature, seed), dict(params, law_math="numpy"))


def test_law_table_is_rankseg_pmf_bit_for_bit():
    """The tabulated law (PyTorch's functions) equals rankseg's own ``RefinedNormalPB.pmf``.

    This is what makes the masks identical: the same float32 values of the
    law, for the whole-row law (a (rows,) batch of parameters, as BA/TRNA
    build it) and for the law of one Gamma_{-j} (0-d parameters, as TRNA
    builds it), whatever the position of a value in the table.
    """
    torch = pytest.importorskip("torch")
    rs = pytest.importorskip("rankseg")
    vm = refined_normal.law_math("torch")
    rng = np.random.default_rng(0)
    rows, n = 50, 300
    loc = rng.uniform(5, 3000, rows).astype(np.float32)
    scale = vm.sqrt(rng.uniform(1, 800, rows).astype(np.float32))
    skew = rng.uniform(-0.2, 0.6, rows).astype(np.float32)
    lq = np.maximum(np.floor(loc - 4 * scale) - 1, 0).astype(np.int64)
    cdf = refined_normal._cdf_table(lq - 1, n + 1, loc, scale, skew, vm)
    ours = np.maximum(cdf[:, 1:] - cdf[:, :-1], 0)
    law = rs.RefinedNormalPB(dim=5000, loc=torch.from_numpy(loc), scale=torch.from_numpy(scale),
                             skew=torch.from_numpy(skew))
    support = torch.arange(n) + torch.from_numpy(lq).unsqueeze(-1)
    np.testing.assert_array_equal(ours, law.pmf(support).numpy())
    for dtype in (np.float32, np.float64):
        for i in range(0, rows, 7):
            p = [np.asarray(v[i], dtype=dtype) for v in (loc, scale, skew)]
            table = refined_normal._cdf_table(lq[i : i + 1] - 1, n + 1, *(v[None] for v in p), vm)[0]
            one = rs.RefinedNormalPB(dim=4999, loc=torch.tensor(p[0]), scale=torch.tensor(p[1]),
                                     skew=torch.tensor(p[2]))
            theirs = one.pmf(torch.arange(lq[i], lq[i] + n)).numpy()
            assert theirs.dtype == dtype
            np.testing.assert_array_equal(np.maximum(table[1:] - table[:-1], 0), theirs)


def test_float32_sum_is_atens():
    """The float32 sums (moments, law normalisation, TRNA scores) round exactly as ``torch.sum``."""
    torch = pytest.importorskip("torch")
    lanes = refined_normal.law_math("torch").sum_lanes()
    part = np.zeros(lanes, np.float32)
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 513, 1000, 4097, 20000, 32767):
        x = (rng.random(n) ** 4).astype(np.float32)
        want = torch.from_numpy(x).sum().item()
        assert float(refined_normal._aten_sum32(x, n, lanes, part)) == want, n


@pytest.mark.parametrize("length", [3000, 20000, 25000])
def test_ba_convolution_is_torchs(length):
    """BA's scores are rankseg's ``conv1d``: PyTorch's own loop, or oneDNN's fused one above 20480."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(length)
    x = rng.random(length).astype(np.float32) / 7
    w = (rng.random(300) / 300).astype(np.float32)
    want = torch.nn.functional.conv1d(torch.from_numpy(x).view(1, 1, -1), torch.from_numpy(w).view(1, 1, -1))
    want = want.numpy().ravel()
    out = np.empty(want.size)
    fused = length > refined_normal.ONEDNN_MIN_LENGTH
    refined_normal._conv32(w.astype(np.float64), x.astype(np.float64), 0, want.size, fused, out)
    np.testing.assert_array_equal(out.astype(np.float32), want)


def test_law_math_argument():
    probs = np.full((1, 1, 4), 0.7)
    with pytest.raises(ValueError, match="law_math"):
        rankseg(probs, output_mode="multilabel", solver="BA", law_math="mkl")
    with pytest.raises(TypeError, match="law_math"):
        rankseg(probs, output_mode="multilabel", solver="BA", law_math=1)
    with pytest.raises(TypeError, match="law_math"):
        rankseg(probs, output_mode="multilabel", solver="RMA", law_math="numpy")
    for kind in ("auto", "numpy", " NumPy "):
        assert rankseg(probs, output_mode="multilabel", solver="BA", law_math=kind).all()


def _rate_cases(shape_ba, shape_trna, seeds):
    for dtype in (np.float32, np.float64):
        for solver in SOLVERS:
            shape = shape_trna if solver == "TRNA" else shape_ba
            for i, seed in enumerate(seeds):
                smooth = SMOOTHS[i % len(SMOOTHS)]
                temperature = (1.0, 2.0, 3.0)[i % 3]
                yield dtype, solver, shape, seed, smooth, temperature


def _identical_rate(cases):
    totals: dict[tuple[str, str], list[int]] = {}
    for dtype, solver, shape, seed, smooth, temperature in cases:
        probs = softmax_probs(shape, dtype, temperature, seed)
        params = dict(solver=solver, smooth=smooth, eps=1e-4, pruning_prob=0.5)
        same, n = compare(probs, params)
        acc = totals.setdefault((solver, np.dtype(dtype).name), [0, 0])
        acc[0] += same
        acc[1] += n
    return totals


def _report_and_assert(totals):
    lines = [f"{s:8s} {d:8s} {a}/{n} = {a / max(n, 1):.3f}" for (s, d), (a, n) in sorted(totals.items())]
    print("\nidentical active rows vs rankseg 0.0.8:\n" + "\n".join(lines))
    for (solver, dtype), (a, n) in totals.items():
        assert n > 0 and a == n, (solver, dtype, a, n)


def test_identical_row_rate_vs_rankseg():
    """21-class softmax images: every row identical (compare() also asserts it row by row)."""
    pytest.importorskip("rankseg")
    _report_and_assert(_identical_rate(_rate_cases((2, 21, 64, 64), (1, 21, 24, 24), seeds=range(3))))


def test_flat_softmax_matches_rankseg():
    """Softmax of uniform logits (rankseg's own docstring example): every probability near 1/21,
    thousands of near-ties around the optimal volume, decided in float32 by the last bit of
    PyTorch's vectorised sqrt/erf/exp (see the module docstring).  Every row must agree."""
    pytest.importorskip("rankseg")
    rng = np.random.default_rng(5)
    x = rng.random((2, 21, 40, 40))
    probs = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    for dtype in (np.float64, np.float32):
        for solver in ("BA", "BA+TRNA"):
            same, n = compare(probs.astype(dtype), dict(solver=solver, smooth=0.0, eps=1e-4, pruning_prob=0.0))
            assert n == 42 and same == 42, (solver, dtype, same, n)


@pytest.mark.slow
def test_identical_row_rate_vs_rankseg_large():
    """The same on 96x96 (BA) and 64x64 (TRNA) images; minutes, because rankseg's TRNA is slow."""
    pytest.importorskip("rankseg")
    _report_and_assert(_identical_rate(_rate_cases((2, 21, 96, 96), (1, 21, 64, 64), seeds=range(8))))
