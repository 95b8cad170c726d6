"""rankseg_np.evaluate: per-image scores against an independent computation, conventions, the report.

The oracle below scores one (image, class) at a time with Python sets of
pixel indices: no shared code with the library's vectorised counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from rankseg_np import evaluate, rankseg
from rankseg_np.data import synthetic_batch
from rankseg_np.evaluation import EvaluationReport


def oracle_score(pred: set, truth: set, metric: str, smooth: float, empty: str) -> float:
    inter = len(pred & truth)
    if metric == "dice":
        num, den = 2 * inter + smooth, len(pred) + len(truth) + smooth
    else:
        num, den = inter + smooth, len(pred | truth) + smooth
    if empty == "ignore" and not truth:
        return np.nan
    if den == 0:
        return 1.0 if empty == "one" else 0.0
    return num / den


def oracle_per_image(pred_labels, truth_labels, c, metric="dice", smooth=0.0, empty="zero", first=0, ignore=None):
    """Multiclass: label maps in, per-image mean over classes first..c-1 (NaN classes left out)."""
    out = []
    for pred_img, truth_img in zip(pred_labels, truth_labels):
        pred_img, truth_img = pred_img.ravel(), truth_img.ravel()
        keep = np.ones(truth_img.shape, bool) if ignore is None else truth_img != ignore
        scores = []
        for k in range(first, c):
            pred = {i for i in np.flatnonzero((pred_img == k) & keep)}
            truth = {i for i in np.flatnonzero((truth_img == k) & keep)}
            scores.append(oracle_score(pred, truth, metric, smooth, empty))
        scores = [s for s in scores if not np.isnan(s)]
        out.append(np.mean(scores) if scores else np.nan)
    return np.array(out)


@pytest.fixture(scope="module")
def batch():
    probs, truth = synthetic_batch(batch=10, num_class=4, shape=(20, 20), scenario="small", seed=21)
    # Classes absent from the truth, so that every convention matters: class 3 in
    # images 0-2 (and nearly absent from image 0's probabilities, so that no rule
    # predicts it there: 0/0), class 2 in image 3.
    truth[:3][truth[:3] == 3] = 0
    truth[3][truth[3] == 2] = 0
    probs[0, 3] *= 1e-3
    probs /= probs.sum(axis=1, keepdims=True)
    return probs, truth


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("empty", ["zero", "one", "ignore"])
def test_per_image_scores_match_the_oracle(batch, metric, empty):
    probs, truth = batch
    report = evaluate(probs, truth, metric=metric, empty=empty)
    rma = rankseg(probs, metric=metric)
    np.testing.assert_allclose(report.per_image["argmax"],
                               oracle_per_image(probs.argmax(axis=1), truth, 4, metric, empty=empty), rtol=1e-12)
    np.testing.assert_allclose(report.per_image["RMA"],
                               oracle_per_image(rma, truth, 4, metric, empty=empty), rtol=1e-12)
    assert report.per_image["RMA"].dtype == np.float64 and report.per_image["RMA"].shape == (10,)


def test_conventions_differ_where_classes_are_absent(batch):
    probs, truth = batch
    absent = np.array([[not (t == k).any() for k in range(4)] for t in truth])
    assert absent.any(), "the fixture should have images without some class"
    zero = evaluate(probs, truth, empty="zero").per_class["argmax"]
    one = evaluate(probs, truth, empty="one").per_class["argmax"]
    ignore = evaluate(probs, truth, empty="ignore").per_class["argmax"]
    assert np.isnan(ignore[absent]).all() and not np.isnan(ignore[~absent]).any()
    np.testing.assert_array_equal(zero[~absent], one[~absent])
    assert (one[absent] >= zero[absent]).all()
    assert one[0, 3] == 1.0 and zero[0, 3] == 0.0  # nothing predicted, nothing true: 0/0


def test_background_excluded_smooth_and_ignore_index(batch):
    probs, truth = batch
    labels = truth.copy()
    labels[:, :5] = 255
    report = evaluate(probs, labels, include_background=False, smooth=1.0, ignore_index=255)
    assert report.per_class["RMA"].shape == (10, 3)
    rma = rankseg(probs, smooth=1.0)
    np.testing.assert_allclose(report.per_image["RMA"],
                               oracle_per_image(rma, labels, 4, smooth=1.0, first=1, ignore=255), rtol=1e-12)


def test_multilabel_against_the_oracle():
    probs, truth = synthetic_batch(batch=6, num_class=2, shape=(16, 16), scenario="small",
                                   output_mode="multilabel", seed=3)
    report = evaluate(probs, truth, output_mode="multilabel", solvers=("RMA", "exact"))
    for name, masks in (("argmax", probs > 0.5), ("RMA", rankseg(probs, output_mode="multilabel")),
                        ("exact", rankseg(probs, output_mode="multilabel", solver="exact"))):
        want = [np.mean([oracle_score(set(np.flatnonzero(m[k])), set(np.flatnonzero(t[k])), "dice", 0.0, "zero")
                         for k in range(2)]) for m, t in zip(masks, truth)]
        np.testing.assert_allclose(report.per_image[name], want, rtol=1e-12)


def test_summary_statistics_are_paired_and_deterministic(batch):
    probs, truth = batch
    report = evaluate(probs, truth)
    stats = report.stats()
    d = report.per_image["RMA"] - report.per_image["argmax"]
    s = stats["RMA"]
    assert s.gain == pytest.approx(d.mean()) and s.mean == pytest.approx(report.per_image["RMA"].mean())
    assert s.improved == pytest.approx((d > 0).mean()) and s.worse == pytest.approx((d < 0).mean())
    assert s.ci_low <= s.gain <= s.ci_high
    # Percentile bootstrap from an independent resampling loop with the same generator.
    rng = np.random.default_rng(0)
    means = np.array([d[rng.integers(0, d.size, size=d.size)].mean() for _ in range(2000)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    s2 = report.stats(n_boot=2000)["RMA"]
    assert (s2.ci_low, s2.ci_high) == pytest.approx((lo, hi), rel=1e-12)
    assert report.summary() == report.summary() == str(report)
    text = report.summary()
    assert "argmax" in text and "RMA" in text and "95% CI" in text and f"{s.gain:+.4f}" in text


def test_summary_leaves_out_images_without_a_scored_class():
    probs = np.full((3, 2, 4, 4), 0.5)
    probs[:, 1] = 0.2
    probs[:, 0] = 0.8
    truth = np.zeros((3, 4, 4), dtype=np.int64)
    truth[0, 0, 0] = 1
    report = evaluate(probs, truth, empty="ignore", include_background=False)
    assert np.isnan(report.per_image["argmax"][1:]).all()
    assert report.stats()["RMA"].n_images == 1
    assert "2 without any class scored left out" in report.summary()


def test_dask_equals_numpy(batch):
    da = pytest.importorskip("dask.array")
    probs, truth = batch
    ref = evaluate(probs, truth, metric="iou", empty="one")
    got = evaluate(da.from_array(probs, chunks=(3, 4, 10, 20)), truth, metric="iou", empty="one")
    for key in ref.per_image:
        np.testing.assert_array_equal(got.per_image[key], ref.per_image[key])


@pytest.mark.slow  # importing MONAI takes ~15 s
def test_matches_monai_dice(batch):
    """MONAI's DiceMetric per (image, class) equals ours with empty='ignore' / 'one'."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    probs, truth = batch
    labels = rankseg(probs)
    pred = torch.from_numpy(np.eye(4, dtype=np.float32)[labels]).movedim(-1, 1)
    gt = torch.from_numpy(np.eye(4, dtype=np.float32)[truth]).movedim(-1, 1)
    for ignore_empty, empty in ((True, "ignore"), (False, "one")):
        for background in (True, False):
            monai = monai_metrics.DiceMetric(include_background=background, reduction="none",
                                             ignore_empty=ignore_empty)(pred, gt).numpy()
            ours = evaluate(probs, truth, empty=empty, include_background=background).per_class["RMA"]
            np.testing.assert_allclose(ours, monai, rtol=1e-6, equal_nan=True)  # MONAI scores in float32


def test_plot(batch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs, truth = batch
    fig = evaluate(probs, truth).plot()
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="solver must be one of 'RMA'"):
        evaluate(probs, truth).plot("exact")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"metric": "acc"}, ValueError, "metric must be one of 'dice', 'iou'"),
        ({"solvers": ("argmax",)}, ValueError, "solvers must name RankSEG solvers"),
        ({"solvers": ("BA",)}, ValueError, "solver 'BA' is not supported"),
        ({"empty": "nan"}, ValueError, "empty must be one of 'zero', 'one', 'ignore'"),
        ({"include_background": "no"}, TypeError, "include_background must be True or False"),
        ({"output_mode": "multilabel"}, ValueError, "labels must have the shape of probs"),
        ({"pruning_prob": 2.0}, ValueError, "pruning_prob must lie in"),
    ],
)
def test_bad_arguments(batch, kwargs, exc, match):
    probs, truth = batch
    with pytest.raises(exc, match=match):
        evaluate(probs, truth, **kwargs)


def test_bad_values(batch):
    probs, truth = batch
    with pytest.raises(ValueError, match=r"labels must hold class ids in \[0, 4\)"):
        evaluate(probs, truth + 4)
    with pytest.raises(ValueError, match="probs must contain only finite values"):
        evaluate(np.where(probs > 0.9, np.nan, probs), truth)
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        evaluate(probs * 3, truth)
    with pytest.raises(ValueError, match=r"labels must have shape \(10, 20, 20\)"):
        evaluate(probs, truth[:, :4])


def test_report_is_a_plain_record(batch):
    probs, truth = batch
    report = evaluate(probs, truth, solvers="exact")
    assert isinstance(report, EvaluationReport)
    assert list(report.per_image) == ["argmax", "exact"]
    assert report.metric == "dice" and report.empty == "zero" and report.include_background
