"""The ranking theorem (MATH section 2), checked by brute force.

For tiny ``d`` every one of the ``2^d`` masks is scored exactly against every
one of the ``2^d`` outcomes (:func:`oracles.brute_scores`); the best top-tau
set must reach the maximum over all masks, for Dice and IoU, with and
without smoothing, with ties and with exact 0/1 probabilities.  The oracles
themselves are cross-checked: enumeration over outcomes and the double sum
over the independent counts ``I = |delta & Y|`` and ``B = |Y \\ delta|`` are two
different computations of the same expectation.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import brute_scores, mask_score, topk_curve

METRICS = st.sampled_from(["dice", "iou"])
SMOOTHS = st.sampled_from([0.0, 0.0, 0.25, 1.0, 3.0])
# Values that force ties and exact 0/1 probabilities, mixed with arbitrary ones.
SPECIAL = [0.0, 1.0, 0.5, 0.25, 0.75, 0.1]


@st.composite
def rows(draw, min_d=1, max_d=10):
    d = draw(st.integers(min_d, max_d))
    kind = draw(st.sampled_from(["any", "ties", "special"]))
    if kind == "any":
        elems = st.floats(0.0, 1.0, allow_nan=False)
    elif kind == "ties":
        elems = st.sampled_from([0.2, 0.2, 0.45, 0.6, 0.9])
    else:
        elems = st.one_of(st.sampled_from(SPECIAL), st.floats(0.0, 1.0, allow_nan=False))
    return np.array(draw(st.lists(elems, min_size=d, max_size=d)), dtype=np.float64)


def top_tau_masks(p: np.ndarray) -> np.ndarray:
    """All d+1 top-tau sets, ties broken towards the lowest index (a stable sort)."""
    order = np.argsort(-p, kind="stable")
    masks = np.zeros((p.size + 1, p.size), dtype=bool)
    for tau in range(1, p.size + 1):
        masks[tau, order[:tau]] = True
    return masks


def _index(masks: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of ``masks`` (the enumeration of all 2^d masks) equal to each row of ``wanted``."""
    weights = 1 << np.arange(masks.shape[1])[::-1]
    return wanted.astype(np.int64) @ weights  # itertools.product order: first pixel is the high bit


@settings(max_examples=150, deadline=None)
@given(rows(), METRICS, SMOOTHS)
def test_best_top_tau_set_attains_the_brute_force_maximum(p, metric, smooth):
    masks, scores = brute_scores(p, metric, smooth)
    top = _index(masks, top_tau_masks(p))
    best_all = scores.max()
    best_top = scores[top].max()
    assert best_top >= best_all - 1e-13 * max(1.0, best_all)
    # the maximiser over all masks is never strictly better than the best top set
    assert best_all == pytest.approx(best_top, rel=1e-12, abs=1e-14)


@settings(max_examples=80, deadline=None)
@given(rows(max_d=9), METRICS, SMOOTHS, st.randoms(use_true_random=False))
def test_equal_probabilities_are_interchangeable(p, metric, smooth, rnd):
    """Swapping two pixels of equal probability never changes a mask's expected score."""
    masks, scores = brute_scores(p, metric, smooth)
    ties = [(i, j) for i in range(p.size) for j in range(i + 1, p.size) if p[i] == p[j]]
    if not ties:
        return
    i, j = rnd.choice(ties)
    swapped = masks.copy()
    swapped[:, [i, j]] = masks[:, [j, i]]
    assert np.allclose(scores[_index(masks, swapped)], scores, rtol=1e-12, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(rows(max_d=8), METRICS, SMOOTHS)
def test_oracles_agree(p, metric, smooth):
    """Enumeration over outcomes = double sum over (I, B) = the top-tau curve (three computations)."""
    masks, scores = brute_scores(p, metric, smooth)
    for k in range(0, masks.shape[0], max(1, masks.shape[0] // 16)):
        assert mask_score(p, masks[k], metric, smooth) == pytest.approx(scores[k], rel=1e-12, abs=1e-15)
    curve = topk_curve(p, metric, smooth)
    top = _index(masks, top_tau_masks(p))
    np.testing.assert_allclose(curve, scores[top], rtol=1e-12, atol=1e-15)


def test_empty_mask_scores_zero_without_smoothing():
    """0/0 := 0: the empty mask and the empty outcome give Dice = IoU = 0 (MATH section 1)."""
    p = np.array([0.0, 0.0, 0.3])
    for metric in ("dice", "iou"):
        masks, scores = brute_scores(p, metric, 0.0)
        assert scores[0] == 0.0  # the empty mask
        assert topk_curve(p, metric, 0.0)[0] == 0.0


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(rows(min_d=11, max_d=12), METRICS, SMOOTHS)
def test_ranking_theorem_d12(p, metric, smooth):
    masks, scores = brute_scores(p, metric, smooth)
    top = _index(masks, top_tau_masks(p))
    assert scores[top].max() >= scores.max() - 1e-13
