"""solver='exact' and expected_metric against independent oracles (MATH sections 1-3, 5).

Oracles (tests/oracles.py) enumerate outcomes; the code under test integrates
the reciprocal identity by quadrature, so agreement is a real check.

* exact solver = brute force over all 2^d masks (tiny d) and = the maximum over
  all d+1 volumes of the Poisson-binomial double-sum oracle (d in the hundreds),
  within 1e-10;
* expected_metric = enumeration / the double sum on arbitrary masks, 1e-9 relative;
* the quadrature error itself, on every volume, against the oracle (the bound
  stated in docs/exact.md);
* exact never scores below RMA, argmax or thresholding on any row;
* multiclass output = the shared resolution (MATH 5) of the exact masks;
* masks are top-tau sets with ties broken towards the lowest index; pruning,
  bad values and input validation.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import brute_scores, mask_score, topk_curve
from rankseg_np import expected_metric, rankseg
from rankseg_np import _reference as ref
from rankseg_np._validate import check_config
from rankseg_np.data import synthetic_batch
from strategies import make_probs, medium_rows, prob_arrays

TOL = 1e-10  # the bar for "the maximum", absolute

METRICS = st.sampled_from(["dice", "iou"])
SMOOTHS = st.sampled_from([0.0, 0.0, 0.05, 0.5, 1.0, 4.5])


def exact_masks(probs, metric, smooth, pruning_prob=0.0):
    return rankseg(probs, metric=metric, smooth=smooth, output_mode="multilabel", solver="exact", pruning_prob=pruning_prob)


def best_over_volumes(p, metric, smooth):
    curve = topk_curve(p, metric, smooth)
    if smooth == 0.0:
        curve = curve[1:]  # the empty mask is no candidate when smooth = 0 (MATH section 4)
    return curve.max()


# ----------------------------------------------------------------- optimality


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 8), st.sampled_from(["softmax", "ties", "zero_one", "uniform", "sigmoid"]),
       st.integers(0, 2**32 - 1), METRICS, SMOOTHS)
def test_exact_equals_brute_force(d, kind, seed, metric, smooth):
    p = make_probs((1, 1, d), np.float64, kind, seed)
    if p.max() <= 0.0:
        return
    ours = exact_masks(p, metric, smooth)[0, 0]
    masks, scores = brute_scores(p[0, 0], metric, smooth)
    got = scores[int(ours.astype(np.int64) @ (1 << np.arange(d)[::-1]))]
    assert got >= scores.max() - TOL


@settings(max_examples=30, deadline=None)
@given(medium_rows(), METRICS, SMOOTHS)
def test_exact_equals_max_over_all_volumes(p, metric, smooth):
    """d in the hundreds: the Poisson-binomial oracle's best volume, within 1e-10."""
    ours = exact_masks(p[None, None], metric, smooth)[0, 0]
    assert mask_score(p, ours, metric, smooth) >= best_over_volumes(p, metric, smooth) - TOL


@settings(max_examples=60, deadline=None)
@given(prob_arrays(max_side=7, dtypes=(np.float64, np.float32, np.float16)), METRICS, SMOOTHS,
       st.sampled_from([0.0, 0.5, 0.9]))
def test_masks_are_top_tau_sets_with_lowest_index_ties(probs, metric, smooth, pruning_prob):
    ours = exact_masks(probs, metric, smooth, pruning_prob)
    assert ours.dtype == np.bool_ and ours.shape == probs.shape
    b, c = probs.shape[:2]
    p2 = probs.astype(np.float64).reshape(b * c, -1)
    for row, mask in zip(p2, ours.reshape(b * c, -1)):
        if not row.max() > pruning_prob:
            assert not mask.any()  # pruned rows get the empty mask
            continue
        assert np.array_equal(mask, ref.top_tau_mask(row, int(mask.sum())))


# ---------------------------------------------------------- expected_metric


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 9), st.sampled_from(["softmax", "ties", "zero_one", "uniform"]), st.integers(0, 2**32 - 1),
       METRICS, SMOOTHS)
def test_expected_metric_equals_enumeration(d, kind, seed, metric, smooth):
    p = make_probs((1, 1, d), np.float64, kind, seed)[0, 0]
    masks, scores = brute_scores(p, metric, smooth)
    probs = np.broadcast_to(p, masks.shape)[:, None].copy()  # one row per mask
    got = expected_metric(probs, masks[:, None], metric=metric, smooth=smooth)[:, 0]
    np.testing.assert_allclose(got, scores, rtol=1e-9, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(medium_rows(), st.integers(0, 2**32 - 1), METRICS, SMOOTHS)
def test_expected_metric_arbitrary_masks_medium_d(p, seed, metric, smooth):
    rng = np.random.default_rng(seed)
    masks = rng.random((3, p.size)) < rng.uniform(0, 1, (3, 1))
    got = expected_metric(np.broadcast_to(p, masks.shape)[:, None].copy(), masks[:, None], metric, smooth)[:, 0]
    want = [mask_score(p, m, metric, smooth) for m in masks]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)


@settings(max_examples=25, deadline=None)
@given(medium_rows(), METRICS, SMOOTHS)
def test_quadrature_error_on_every_volume(p, metric, smooth):
    """The error bound of docs/exact.md, measured: every top-tau set within 1e-12 absolute."""
    order = np.argsort(-p, kind="stable")
    masks = np.zeros((p.size + 1, p.size), dtype=bool)
    for tau in range(1, p.size + 1):
        masks[tau, order[:tau]] = True
    got = expected_metric(np.broadcast_to(p, masks.shape)[:, None].copy(), masks[:, None], metric, smooth)[:, 0]
    np.testing.assert_allclose(got, topk_curve(p, metric, smooth), rtol=0, atol=1e-12)


# ------------------------------------------------------ never below the others


@settings(max_examples=50, deadline=None)
@given(prob_arrays(max_side=9, min_class=2, dtypes=(np.float64, np.float32)), METRICS, SMOOTHS)
def test_exact_never_below_rma_argmax_threshold(probs, metric, smooth):
    b, c = probs.shape[:2]
    ours = expected_metric(probs, exact_masks(probs, metric, smooth, 0.5), metric, smooth)
    rivals = [
        rankseg(probs, metric=metric, smooth=smooth, output_mode="multilabel"),  # RMA
        np.argmax(probs, axis=1)[:, None] == np.arange(c).reshape((1, c) + (1,) * (probs.ndim - 2)),
        probs > 0.5,
    ]
    active = probs.reshape(b, c, -1).max(axis=2) > 0.5
    for masks in rivals:
        theirs = expected_metric(probs, masks, metric, smooth)
        # inactive rows are pruned to the empty mask by design, like RMA
        assert np.all(ours[active] >= theirs[active] - 1e-12)


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_exact_never_below_rma_on_calibrated_images(metric):
    """Softmax and sigmoid images of realistic size: no row loses to RMA (or argmax)."""
    for probs in (synthetic_batch(2, 5, (48, 48), scenario="mixed", seed=3).probs,
                  synthetic_batch(2, 3, (40, 40), scenario="small", output_mode="multilabel", seed=4).probs):
        ex = expected_metric(probs, exact_masks(probs, metric, 0.0, 0.5), metric)
        rma = expected_metric(probs, rankseg(probs, metric=metric, output_mode="multilabel"), metric)
        assert np.all(ex >= rma - 1e-12)


def test_large_row_window_is_optimal():
    """d = 4096: every volume in a wide window around the answer scores no higher."""
    probs = synthetic_batch(1, 3, (64, 64), scenario="small", seed=7).probs
    for metric, smooth in (("dice", 0.0), ("iou", 1.0)):
        ours = exact_masks(probs, metric, smooth, 0.5)
        for cls in range(3):
            p = probs[0, cls].ravel()
            if p.max() <= 0.5:
                continue
            tau = int(ours[0, cls].sum())
            order = np.argsort(-p.astype(np.float64), kind="stable")
            taus = np.arange(max(1, tau - 150), min(p.size, tau + 150) + 1)
            masks = np.zeros((taus.size, p.size), dtype=bool)
            for k, t in enumerate(taus):
                masks[k, order[:t]] = True
            vals = expected_metric(np.broadcast_to(p, masks.shape)[:, None].copy(), masks[:, None], metric, smooth)
            mine = expected_metric(probs[:1, cls : cls + 1], ours[:1, cls : cls + 1], metric, smooth)[0, 0]
            assert mine >= vals.max() - 1e-12


# ----------------------------------------------------------------- multiclass


@settings(max_examples=50, deadline=None)
@given(prob_arrays(max_side=8, min_class=2, dtypes=(np.float64, np.float32)), METRICS, SMOOTHS,
       st.sampled_from([0.5, 0.2, 0.0]), st.booleans())
def test_multiclass_is_the_shared_resolution_of_exact_masks(probs, metric, smooth, pruning_prob, void):
    b, c = probs.shape[:2]
    extra = {"unassigned_policy": "void", "void_index": 255} if void else {}
    labels = rankseg(probs, metric=metric, smooth=smooth, solver="exact", pruning_prob=pruning_prob, **extra)
    assert labels.dtype == np.int64 and labels.shape == (b,) + probs.shape[2:]
    cfg = check_config(c, metric, smooth, "multiclass", "exact", pruning_prob, **extra)
    masks = exact_masks(probs, metric, smooth, pruning_prob)
    active = probs.reshape(b, c, -1).max(axis=2) > pruning_prob
    expected = ref.resolve(probs, masks, active, cfg).reshape(labels.shape)
    differ = labels != expected
    if differ.any():  # only ties of the increment score (sums in another order) may differ
        p3 = probs.astype(np.float64).reshape(b, c, -1)
        m3 = masks.reshape(b, c, -1)
        sole = m3 & (m3.sum(axis=1) == 1)[:, None]
        inc = ref.increments(p3, sole.sum(2).astype(float), (p3 * sole).sum(2), p3.sum(2), metric, smooth)
        o, e = labels.reshape(b, -1), expected.reshape(b, -1)
        for bi, i in zip(*np.nonzero(differ.reshape(b, -1))):
            assert inc[bi, o[bi, i], i] == pytest.approx(inc[bi, e[bi, i], i], rel=1e-12, abs=1e-15)


# ---------------------------------------------------------- inputs and errors


def test_bad_values_raise_like_rma():
    for bad, words in ((np.nan, "finite"), (1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]")):
        probs = np.full((1, 2, 3, 3), 0.5)
        probs[0, 1, 1, 1] = bad
        with pytest.raises(ValueError, match=words):
            rankseg(probs, solver="exact")
        with pytest.raises(ValueError, match=words):
            expected_metric(probs, probs > 0.4)


def test_exact_does_not_mutate_and_is_deterministic():
    probs = synthetic_batch(2, 4, (24, 24), seed=11).probs
    copy = probs.copy()
    a = rankseg(probs, solver="exact", metric="iou", smooth=0.3)
    b = rankseg(probs, solver="exact", metric="iou", smooth=0.3)
    assert np.array_equal(probs, copy) and np.array_equal(a, b)


def test_pruning_prob_one_gives_empty_masks():
    probs = synthetic_batch(1, 3, (16, 16), seed=2).probs
    assert not exact_masks(probs, "dice", 0.0, 1.0).any()


def test_expected_metric_label_map_equals_one_hot_masks():
    probs = synthetic_batch(2, 4, (20, 20), seed=5).probs
    labels = rankseg(probs, solver="exact")
    labels[0, 0, :3] = 255  # void pixels belong to no class
    one_hot = labels[:, None] == np.arange(4)[None, :, None, None]
    np.testing.assert_array_equal(expected_metric(probs, labels), expected_metric(probs, one_hot))
    np.testing.assert_array_equal(expected_metric(probs, one_hot.astype(np.uint8)), expected_metric(probs, one_hot))


def test_expected_metric_validation():
    probs = np.full((2, 3, 4, 4), 0.3)
    masks = probs > 0.2
    out = expected_metric(probs, masks, metric="IoU", smooth=1)
    assert out.shape == (2, 3) and out.dtype == np.float64
    with pytest.raises(ValueError, match="shape"):
        expected_metric(probs, masks[:, :2])
    with pytest.raises(TypeError, match="masks"):
        expected_metric(probs, masks.astype(np.float32))
    with pytest.raises(ValueError, match="only 0 and 1"):
        expected_metric(probs, masks.astype(np.int64) * 2)
    with pytest.raises(TypeError, match="probs"):
        expected_metric(probs.astype(np.int64), masks)
    with pytest.raises(ValueError, match="metric"):
        expected_metric(probs, masks, metric="accuracy")
    with pytest.raises(TypeError, match="metric"):
        expected_metric(probs, masks, metric=None)
    with pytest.raises(ValueError, match="smooth"):
        expected_metric(probs, masks, smooth=-1.0)
    with pytest.raises(ValueError, match="probs"):
        expected_metric(probs[0, 0], masks[0, 0])
    # the empty mask scores 0 without smoothing; float16 goes through float32
    assert expected_metric(probs, np.zeros_like(masks)).max() == 0.0
    np.testing.assert_allclose(expected_metric(probs.astype(np.float16), masks), expected_metric(probs, masks), rtol=1e-3)


def test_expected_metric_known_values():
    """Closed forms: a certain pixel inside the mask, and one certain miss."""
    probs = np.array([[[1.0, 0.0, 0.0]]])
    mask = np.array([[[True, False, False]]])
    assert expected_metric(probs, mask)[0, 0] == pytest.approx(1.0, abs=1e-14)
    assert expected_metric(probs, ~mask, metric="iou")[0, 0] == pytest.approx(0.0, abs=1e-14)
    # one pixel with p: Dice of {0} = p * 2/2 + (1-p) * 0 = p
    probs = np.array([[[0.3]]])
    assert expected_metric(probs, np.ones((1, 1, 1), bool))[0, 0] == pytest.approx(0.3, abs=1e-14)
