"""Multiclass Dice with a huge ``smooth`` (issue 12, item 8).

The increment score of MATH section 5 once computed ``D*(D+1)`` with
``D ~ smooth``: above ~1.3e154 it overflowed, every score became 0 and every
contested pixel went to class 0.  The oracle here resolves the labels with
the increment scores in exact rational arithmetic (``fractions.Fraction``),
from the per-class masks of the multilabel decision (which involve no
increment), and every executor must agree with it.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import rankseg_np.cpu

from rankseg_np import _reference as ref
from rankseg_np import gpu, rankseg
from rankseg_np._validate import check_config
from strategies import make_probs

SMOOTHS = [0.5, 3.0, 1e100, 1.3e154, 1e200, 1e300, 1.7e308]
# Scores of two classes closer than this (relative) may be resolved either way:
# the executors treat them as tied (DELTA_TIE_RTOL = 1e-12, plus sum-order noise).
TIE_RTOL = 1e-11


def exact_labels(p3, masks, active, smooth):
    """Labels (B, d) from MATH section 5 with exact rational increment scores; also the scores."""
    b, c, d = p3.shape
    g = Fraction(smooth)
    labels = np.empty((b, d), dtype=np.int64)
    scores = np.full((b, c, d), -np.inf)
    for i in range(b):
        count = masks[i].sum(axis=0)
        sole = masks[i] & (count == 1)
        for k in range(c):
            tau = int(sole[k].sum())
            m = sum((Fraction(float(x)) for x in p3[i, k][sole[k]]), Fraction(0))
            mu = sum((Fraction(float(x)) for x in p3[i, k]), Fraction(0))
            big_d = tau + mu + g + 1
            for j in range(d):
                eligible = masks[i, k, j] if count[j] else (active[i, k] or not active[i].any())
                if not eligible:
                    continue
                pk = Fraction(float(p3[i, k, j]))
                inc = 2 * (pk * big_d - m) / (big_d * (big_d + 1)) - g / ((big_d - 1) * big_d)
                scores[i, k, j] = float(inc * max(1, g))  # the executors' scale; no comparison changes
        for j in range(d):
            if count[j] == 1:
                labels[i, j] = int(np.argmax(masks[i, :, j]))
            else:
                labels[i, j] = int(np.argmax(scores[i, :, j] == scores[i, :, j].max()))
    return labels, scores


def assert_labels_match(got, want, scores, where):
    for i, j in zip(*np.nonzero(got != want)):
        s = scores[i, :, j]
        a, b = s[want[i, j]], s[got[i, j]]
        assert abs(a - b) <= TIE_RTOL * abs(a), f"{where}: pixel {(i, j)} got {got[i, j]}, want {want[i, j]} ({s})"


@pytest.mark.filterwarnings("ignore:output_mode='multiclass' expects")  # sigmoid/uniform inputs, on purpose
@pytest.mark.parametrize("smooth", SMOOTHS)
@pytest.mark.parametrize("kind", ["sigmoid", "uniform", "softmax"])
def test_multiclass_dice_huge_smooth_matches_exact_rational_oracle(smooth, kind):
    p = make_probs((2, 3, 6, 5), np.float64, kind, 7)
    p3 = p.reshape(2, 3, -1)
    masks = rankseg(p, smooth=smooth, output_mode="multilabel").reshape(p3.shape)
    active = p3.max(axis=2) > 0.5
    want, scores = exact_labels(p3, masks, active, smooth)
    cfg = check_config(3, smooth=smooth)
    executors = {
        "cpu": rankseg(p, smooth=smooth),
        "gpu-code-on-numpy": gpu.solve_with(p, cfg, np),
        "reference": ref.rankseg_reference(p, cfg),
    }
    for name, got in executors.items():
        assert_labels_match(np.asarray(got).reshape(want.shape), want, scores, name)



def exact_dice_smooth_values(q_sorted, smooth):
    """The RMA Dice objective f(tau) = 2 S_tau/(mu+g+tau+1) + g/(mu+g+tau), tau = 0..d, in exact
    rational arithmetic (q sorted descending)."""
    g = Fraction(smooth)
    q = [Fraction(float(x)) for x in q_sorted]
    mu = sum(q, Fraction(0))
    values, s = [], Fraction(0)
    for tau in range(len(q) + 1):
        values.append(2 * s / (mu + g + tau + 1) + g / (mu + g + tau))
        if tau < len(q):
            s += q[tau]
    return values


@pytest.mark.parametrize("smooth", [0.5, 1.0, 3.0, 1e3, 1e6, 1e10, 1e100, 1e300])
@pytest.mark.parametrize("seed", range(6))
def test_dice_smooth_masks_reach_the_exact_optimum(smooth, seed):
    """Multilabel Dice with smooth > 0 on rows with ties (values on a 1/8 grid): every engine returns
    a top-tau set of whole tie groups whose exact objective is the exact maximum, up to 1e-12 of the
    objective's spread over the volumes.  (Evaluating f itself loses the differences between
    volumes once smooth >~ 1e6; the engines compare f through its steps.)"""
    rng = np.random.default_rng(seed)
    probs = np.round(rng.random((2, 3, 11)) * 8) / 8
    cfg = check_config(3, smooth=smooth, output_mode="multilabel", pruning_prob=0.0)
    engines = {
        "cpu": rankseg(probs, smooth=smooth, output_mode="multilabel", pruning_prob=0.0),
        "gpu-code-on-numpy": gpu.solve_with(probs, cfg, np),
    }
    da = pytest.importorskip("dask.array")
    engines["dask"] = rankseg(da.from_array(probs, chunks=(1, 1, 4)), smooth=smooth, output_mode="multilabel",
                              pruning_prob=0.0).compute()
    for b in range(2):
        for c in range(3):
            row = probs[b, c]
            values = exact_dice_smooth_values(np.sort(row)[::-1], smooth)
            best, spread = max(values), max(values) - min(values)
            for name, masks in engines.items():
                mask = np.asarray(masks)[b, c]
                tau = int(mask.sum())
                chosen = row[mask]
                assert (chosen.min() if tau else 2.0) > (row[~mask].max() if tau < row.size else -1.0), name
                assert best - values[tau] <= Fraction(1e-12) * spread, (name, smooth, b, c, tau)



@pytest.mark.parametrize("smooth", [1e26, 1e100, 1e200])
def test_dice_smooth_tiny_steps_after_a_rise_are_kept(smooth):
    """A pixel just above 1/2 then a group at exactly 1/2, with a huge smooth: the first step is
    ~2^-31 (its leading coefficient 2q - 1), the group's steps only ~1/smooth (the leading
    coefficient is 0).  Summed from tau = 0 the group's steps rounded away against the first
    one and the group stayed out on every engine; the exact objective takes it (found in review)."""
    row = np.array([0.9, 0.5 + 2.0**-32, 0.5, 0.5, 0.5] + [0.1] * 20)
    probs = row[None, None]
    values = exact_dice_smooth_values(np.sort(row)[::-1], smooth)
    want = max(range(len(values)), key=lambda t: (values[t], -t))
    assert want == 5
    cfg = check_config(1, smooth=smooth, output_mode="multilabel", pruning_prob=0.0)
    engines = {
        "cpu": rankseg_np.cpu.solve(probs, cfg),  # Numba (rankseg() may rent the NumPy code)
        "gpu-code-on-numpy": gpu.solve_with(probs, cfg, np),
    }
    da = pytest.importorskip("dask.array")
    engines["dask"] = rankseg(da.from_array(probs, chunks=(1, 1, 7)), smooth=smooth, output_mode="multilabel",
                              pruning_prob=0.0).compute()
    for name, masks in engines.items():
        assert int(np.asarray(masks).sum()) == want, name
