"""BA, TRNA and BA+TRNA (MATH section 6): an independent float64 oracle, and rankseg 0.0.8.

* ``oracles.refined_normal_curve``: MATH section 6 transcribed in plain
  float64 NumPy/SciPy (the support from SciPy's generic ``rv_continuous``
  quantiles, the law from ``scipy.stats.norm``, every volume's score as a
  matrix product, each TRNA law of ``Gamma_{-j}`` as one row of a matrix).
  It needs neither PyTorch nor ``rankseg``, and shares no code with the solver.
* ``rankseg`` 0.0.8 itself (the ``compat`` extra), run in float64 on the
  values we were given (float32 input widened exactly): its tests skip
  without PyTorch.

The solver computes in float64 whatever the input dtype, so a float32 row is
answered as its float64 widening is.  Two float64 evaluations of the same
score differ only by rounding, so two answers may differ only where the
oracle scores their volumes within ``TIE_RTOL`` of each other (a tie).
"Identical rows" are counted up to the order of pixels with equal
probability: ``torch.sort`` does not keep equal values in index order, so
rankseg's top-tau set is defined only up to permutation within a tie group.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import pb_pmf
from oracles import refined_normal_curve as oracle_curve
from rankseg_np import rankseg
from rankseg_np._validate import check_config
from rankseg_np.cpu import _refined_law, refined_normal
from strategies import make_probs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOLVERS = ("BA", "TRNA", "BA+TRNA")
SMOOTHS = (0.0, 0.5, 1.0, 10.0)
# Relative score gap below which two volumes count as tied.  Every score is a
# float64 sum of at most n + tau terms (n = support width, tau = volume; both
# below 5000 in these tests), so each evaluation carries a relative rounding
# error below 5000 * 2^-52 ~ 1e-12, and implementations that sum in different
# orders can order two volumes within ~2e-12 of each other differently.
TIE_RTOL = 1e-11


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


def is_tie(curve, a, b):
    """Volumes ``a`` and ``b`` score within TIE_RTOL of each other."""
    return abs(curve[a] - curve[b]) <= TIE_RTOL * max(abs(curve[a]), abs(curve[b]), 1e-300)


def assert_oracle_volume(p, tau, solver, smooth, eps):
    """``tau`` is the oracle's first maximiser, or ties with it."""
    curve = oracle_curve(p.astype(np.float64), solver, smooth, eps)
    best = int(np.argmax(curve))
    assert tau < curve.size and (tau == best or is_tie(curve, tau, best)), (solver, smooth, eps, tau, best)


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
)
def test_softmax_volumes_are_the_oracle_argmax(n_class, side, dtype, temperature, seed, params):
    """Every active row's volume maximises the oracle's float64 score (ties: TIE_RTOL)."""
    probs = softmax_probs((1, n_class + 1, side, side), dtype, temperature, seed)
    masks = rankseg(probs, output_mode="multilabel", **params)
    for p, m in zip(*rows_of(probs, masks)):
        if p.max() > params["pruning_prob"]:
            assert_oracle_volume(p, int(m.sum()), params["solver"], params["smooth"], params["eps"])


@settings(max_examples=40)
@given(
    st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9)),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from(["sigmoid", "ties", "zero_one", "uniform"]),
    st.integers(0, 2**32 - 1),
    solver_params,
)
def test_other_volumes_are_the_oracle_argmax(shape, dtype, kind, seed, params):
    """Ties, exact 0/1 values, independent sigmoids: degenerate laws included."""
    probs = make_probs(shape, dtype, kind, seed)
    masks = rankseg(probs, output_mode="multilabel", **params)
    for p, m in zip(*rows_of(probs, masks)):
        if p.max() > params["pruning_prob"]:
            assert_oracle_volume(p, int(m.sum()), params["solver"], params["smooth"], params["eps"])


def test_float32_input_is_answered_as_its_float64_widening():
    """The computation is float64 from the values given: the dtype of the input changes nothing."""
    probs = softmax_probs((2, 5, 30, 30), np.float32, 2.0, 11)
    for solver in SOLVERS:
        for smooth in (0.0, 2.0):
            a = rankseg(probs, output_mode="multilabel", solver=solver, smooth=smooth)
            b = rankseg(probs.astype(np.float64), output_mode="multilabel", solver=solver, smooth=smooth)
            np.testing.assert_array_equal(a, b)


def test_law_approximates_the_poisson_binomial_law():
    """The refined normal law (the solver's kernel) is close to the exact count law, and its
    skewness term helps: a check of the formula itself, against the O(d^2) recursion."""
    rng = np.random.default_rng(4)
    p = rng.uniform(0.0, 0.3, 600)  # right-skewed count
    mean, var, m3 = p.sum(), np.sum(p * (1 - p)), np.sum(p * (1 - p) * (1 - 2 * p))
    scale, skew = _refined_law.parameters(var, m3)
    k0, n = int(mean - 6 * scale), int(12 * scale)
    exact = pb_pmf(p)[k0 : k0 + n]
    refined = np.empty(n)
    _refined_law.normalised_pmf(k0, mean, scale, skew, refined)
    plain = np.empty(n)
    _refined_law.normalised_pmf(k0, mean, scale, 0.0, plain)
    err_refined = np.abs(refined - exact).max()
    err_plain = np.abs(plain - exact).max()
    assert err_refined < 2e-4 and err_refined < err_plain / 3, (err_refined, err_plain)


def test_no_framework_is_imported():
    """BA/TRNA run on NumPy/SciPy/Numba alone: solving imports neither PyTorch nor rankseg."""
    code = (
        "import sys, numpy as np\n"
        "from rankseg_np import rankseg\n"
        "p = np.random.default_rng(0).random((1, 2, 50))\n"
        "for s in ('BA', 'TRNA', 'BA+TRNA'):\n"
        "    rankseg(p, output_mode='multilabel', solver=s)\n"
        "bad = [m for m in ('torch', 'rankseg') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=ROOT))


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


def test_volume_is_the_oracle_first_maximiser():
    """On 21-class softmax images the chosen volume is exactly the oracle's first maximiser.

    This also covers the early stop of the volume scan (the oracle scores every
    volume up to Lemma 3's bound).  Exact equality: no two volumes of these
    fixed rows score within TIE_RTOL of each other.
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
# Against rankseg 0.0.8, on the same values in float64
# --------------------------------------------------------------------------


def theirs(probs, **params):
    """rankseg's masks for the float64 widening of ``probs``."""
    torch = pytest.importorskip("torch")
    rs = pytest.importorskip("rankseg")
    model = rs.RankSEG(metric="dice", output_mode="multilabel", **params)
    return model.predict(torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float64))).numpy()


def compare(probs, params):
    """(identical active rows, active rows); every differing row must be a tie of the oracle's scores.

    Inactive rows (empty in both) are checked but not counted, so the rate is
    not inflated by pruned classes.
    """
    ours = rankseg(probs, output_mode="multilabel", **params)
    other = theirs(probs, **params)
    assert other.shape == ours.shape
    same = active = 0
    for p, a, b in zip(*rows_of(probs, ours), rows_of(probs, other)[1]):
        is_active = p.max() > params["pruning_prob"]
        active += is_active
        if same_answer(p, a, b):
            same += is_active
        else:
            curve = oracle_curve(p.astype(np.float64), params["solver"], params["smooth"], params["eps"])
            assert is_tie(curve, int(a.sum()), int(b.sum())), (params, int(a.sum()), int(b.sum()))
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
    compare(softmax_probs(shape, dtype, temperature, seed), params)


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
    print("\nidentical active rows vs rankseg 0.0.8 (float64):\n" + "\n".join(lines))
    for (solver, dtype), (a, n) in totals.items():
        assert n > 0 and a >= 0.99 * n, (solver, dtype, a, n)


def test_identical_row_rate_vs_rankseg():
    """21-class softmax images: at least 99% of active rows identical (issue 11); compare()
    asserts that every other row is a tie."""
    pytest.importorskip("rankseg")
    _report_and_assert(_identical_rate(_rate_cases((1, 21, 32, 32), (1, 21, 12, 12), seeds=range(3))))


def test_flat_softmax_matches_rankseg():
    """Softmax of uniform logits (rankseg's own docstring example): every probability near 1/21,
    thousands of near-ties around the optimal volume; rows may differ only at ties."""
    pytest.importorskip("rankseg")
    rng = np.random.default_rng(5)
    x = rng.random((2, 21, 40, 40))
    probs = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    for dtype in (np.float64, np.float32):
        for solver in ("BA", "BA+TRNA"):
            same, n = compare(probs.astype(dtype), dict(solver=solver, smooth=0.0, eps=1e-4, pruning_prob=0.0))
            assert n == 42 and same >= 0.99 * n, (solver, dtype, same, n)


@pytest.mark.slow
def test_identical_row_rate_vs_rankseg_large():
    """The same on 96x96 (BA) and 64x64 (TRNA) images; minutes, because rankseg's TRNA is slow."""
    pytest.importorskip("rankseg")
    _report_and_assert(_identical_rate(_rate_cases((2, 21, 96, 96), (1, 21, 64, 64), seeds=range(8))))
