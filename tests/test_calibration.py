"""Temperature scaling, ECE and the reliability diagram (rankseg_np.calibration), issue 13.

Expected values are derived independently: labels drawn from known true
probabilities (so the right temperature is known), the NLL and the ECE
recomputed directly in the test with SciPy / explicit loops over bins.
"""

from __future__ import annotations


import numpy as np
import pytest
from scipy.special import log_softmax, log_expit

from rankseg_np import evaluate
from rankseg_np.calibration import (
    NotFittedError,
    TemperatureScaling,
    expected_calibration_error,
    reliability_bins,
    reliability_diagram,
)
from rankseg_np.data import synthetic_batch


def softmax(x, axis=1):
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


@pytest.fixture(scope="module")
def multiclass():
    """True probabilities (calibrated by construction), labels drawn from them, true logits log p."""
    probs, truth = synthetic_batch(batch=16, num_class=4, shape=(48, 48), scenario="small", seed=11)
    true_logits = np.log(probs.astype(np.float64))
    return true_logits, truth


@pytest.fixture(scope="module")
def multilabel():
    probs, truth = synthetic_batch(batch=12, num_class=3, shape=(48, 48), scenario="small",
                                   output_mode="multilabel", seed=12)
    p = probs.astype(np.float64)
    return np.log(p) - np.log1p(-p), truth


def direct_nll(logits, labels, t):
    """Mean NLL of integer labels under softmax(logits / t), straight from SciPy."""
    logp = log_softmax(logits / t, axis=1)
    return -np.take_along_axis(logp, labels[:, None], axis=1).mean()


def direct_ece(conf, hit, n_bins):
    """ECE with explicit (lo, hi] comparisons per bin (0 in the first bin)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for k in range(n_bins):
        lo, hi = edges[k], edges[k + 1]
        inside = (conf > lo) & (conf <= hi) if k else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.sum() * abs(hit[inside].mean() - conf[inside].mean())
    return total / conf.size


# --------------------------------------------------------------------------- #
# The "done when" criteria of issue 13
# --------------------------------------------------------------------------- #

def test_underconfident_model_temperature_ece_and_gain(multiclass):
    true_logits, truth = multiclass
    model = true_logits / 2.5  # under-confident: the right temperature is 1/2.5 = 0.4
    ts = TemperatureScaling().fit(model, truth)
    assert abs(ts.temperature_ - 0.4) <= 0.04
    before = expected_calibration_error(softmax(model), truth)
    calibrated = ts.transform(model)
    after = expected_calibration_error(calibrated, truth)
    assert after <= before / 2
    gain = evaluate(calibrated, truth, metric="dice").stats()["RMA"].gain
    assert gain >= -0.002


def test_fitted_temperature_minimises_the_direct_nll(multiclass):
    true_logits, truth = multiclass
    model = true_logits / 2.5
    ts = TemperatureScaling().fit(model, truth)
    t = ts.temperature_
    nll = direct_nll(model, truth, t)
    # nll_ is a float64 sum over 37k pixels: agrees with SciPy's to rounding.
    assert ts.nll_ == pytest.approx(nll, rel=1e-10)
    assert ts.nll_initial_ == pytest.approx(direct_nll(model, truth, 1.0), rel=1e-10)
    # A minimum: any nearby temperature is worse (the function is smooth, so
    # the excess is ~ 1e-6 * curvature, far above rounding at +-0.1%).
    assert nll < direct_nll(model, truth, t * 1.001) and nll < direct_nll(model, truth, t / 1.001)


def test_multilabel_per_class_temperatures_recovered(multilabel):
    true_logits, truth = multilabel
    factors = np.array([2.5, 1.0, 0.5])  # under-confident, calibrated, over-confident heads
    model = true_logits / factors[None, :, None, None]
    ts = TemperatureScaling(output_mode="multilabel", per_class=True).fit(model, truth)
    assert ts.temperature_.shape == (3,)
    np.testing.assert_allclose(ts.temperature_, 1.0 / factors, rtol=0.10)
    # Each class is its own binary problem: the fit of one class alone is the same.
    alone = TemperatureScaling(output_mode="multilabel").fit(model[:, 1:2], truth[:, 1:2])
    assert alone.temperature_ == pytest.approx(ts.temperature_[1], rel=1e-8)


def test_multiclass_per_class_temperatures(multiclass):
    true_logits, truth = multiclass
    ts = TemperatureScaling(per_class=True).fit(true_logits / 2.5, truth)
    assert ts.temperature_.shape == (4,)
    np.testing.assert_allclose(ts.temperature_, 0.4, rtol=0.15)
    # More parameters never fit worse than one shared temperature.
    assert ts.nll_ <= TemperatureScaling().fit(true_logits / 2.5, truth).nll_ + 1e-12


def test_single_temperature_for_multilabel_matches_direct_nll(multilabel):
    true_logits, truth = multilabel
    ts = TemperatureScaling(output_mode="multilabel").fit(true_logits * 2.0, truth)  # over-confident
    assert ts.temperature_ == pytest.approx(2.0, rel=0.1)
    t = ts.temperature_
    z = true_logits * 2.0 / t
    nll = -(np.where(truth, log_expit(z), log_expit(-z))).mean()
    assert ts.nll_ == pytest.approx(nll, rel=1e-10)


# --------------------------------------------------------------------------- #
# Probabilities as inputs, streaming, array types
# --------------------------------------------------------------------------- #

def test_probabilities_in_give_the_logit_fit(multiclass, multilabel):
    true_logits, truth = multiclass
    model = true_logits / 2.5
    from_logits = TemperatureScaling().fit(model, truth)
    from_probs = TemperatureScaling(inputs="probabilities").fit(softmax(model), truth)
    # log softmax(z) = z - const per pixel: the same likelihood up to rounding.
    assert from_probs.temperature_ == pytest.approx(from_logits.temperature_, rel=1e-8)
    np.testing.assert_allclose(from_probs.transform(softmax(model)), from_logits.transform(model), atol=1e-12)

    ml_logits, ml_truth = multilabel
    p = 1.0 / (1.0 + np.exp(-ml_logits))
    a = TemperatureScaling("multilabel", inputs="probabilities").fit(p, ml_truth)
    b = TemperatureScaling("multilabel").fit(ml_logits, ml_truth)
    assert a.temperature_ == pytest.approx(b.temperature_, rel=1e-7)


def test_saturated_probabilities_are_clipped_not_infinite():
    # float32 probabilities of exactly 0 and 1 (a saturated softmax) are moved to
    # the dtype's extreme values: finite NLL and a finite temperature.
    probs = np.zeros((2, 2, 4, 4), dtype=np.float32)
    probs[:, 0] = 1.0
    labels = np.zeros((2, 4, 4), dtype=np.int64)
    labels[:, 0, 0] = 1  # wrong with certainty somewhere: the model is over-confident
    ts = TemperatureScaling(inputs="probabilities").fit(probs, labels)
    assert np.isfinite(ts.nll_) and ts.temperature_ > 1.0
    out = ts.transform(probs)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_dask_streaming_fit_equals_in_memory(multiclass, multilabel):
    da = pytest.importorskip("dask.array")
    true_logits, truth = multiclass
    model = true_logits / 2.5
    ref = TemperatureScaling().fit(model, truth)
    lazy = da.from_array(model, chunks=(3, 2, 20, 24))  # classes split too: rechunked to whole pixels
    got = TemperatureScaling().fit(lazy, da.from_array(truth, chunks=(5, 48, 48)))
    # Only the order of float64 block sums differs: agreement to ~1e-13 relative.
    assert got.temperature_ == pytest.approx(ref.temperature_, rel=1e-10)
    assert got.nll_ == pytest.approx(ref.nll_, rel=1e-10)
    out = got.transform(lazy)
    assert isinstance(out, da.Array)
    np.testing.assert_allclose(out.compute(), ref.transform(model), rtol=1e-9, atol=1e-15)

    ml_logits, ml_truth = multilabel
    ref = TemperatureScaling("multilabel", per_class=True).fit(ml_logits, ml_truth)
    got = TemperatureScaling("multilabel", per_class=True).fit(da.from_array(ml_logits, chunks=(4, 3, 24, 48)),
                                                                ml_truth)
    np.testing.assert_allclose(got.temperature_, ref.temperature_, rtol=1e-10)


def test_blocks_of_pixels_for_large_images(monkeypatch, multiclass):
    """Images larger than a block are split over pixels: same answer."""
    import rankseg_np._labelled as labelled

    true_logits, truth = multiclass
    ref = TemperatureScaling().fit(true_logits / 2.5, truth)
    monkeypatch.setattr(labelled, "BLOCK_ELEMENTS", 1000)
    got = TemperatureScaling().fit(true_logits / 2.5, truth)
    assert got.temperature_ == pytest.approx(ref.temperature_, rel=1e-10)


def test_transform_returns_the_callers_type(multiclass):
    torch = pytest.importorskip("torch")
    true_logits, truth = multiclass
    ts = TemperatureScaling().fit(torch.from_numpy(true_logits[:4] / 2.5), torch.from_numpy(truth[:4]))
    ref = TemperatureScaling().fit(true_logits[:4] / 2.5, truth[:4])
    assert ts.temperature_ == ref.temperature_
    x = torch.from_numpy((true_logits[:2] / 2.5).astype(np.float32))
    out = ts.transform(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref.transform(x.numpy()), rtol=1e-6)


def test_transform_does_not_modify_its_input(multiclass):
    true_logits, truth = multiclass
    x = (true_logits[:2] / 2.5).copy()
    x.setflags(write=False)
    ts = TemperatureScaling().fit(x, truth[:2])
    out = ts.transform(x)
    np.testing.assert_array_equal(x, true_logits[:2] / 2.5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


def test_ignore_index_leaves_pixels_out(multiclass):
    true_logits, truth = multiclass
    labels = truth.copy()
    labels[:4] = 255  # four images entirely unlabelled
    got = TemperatureScaling(ignore_index=255).fit(true_logits / 2.5, labels)
    ref = TemperatureScaling().fit(true_logits[4:] / 2.5, truth[4:])
    assert got.temperature_ == pytest.approx(ref.temperature_, rel=1e-10)
    assert got.n_pixels_ == truth[4:].size


def test_to_dict_round_trip(multilabel):
    true_logits, truth = multilabel
    ts = TemperatureScaling("multilabel", per_class=True).fit(true_logits, truth)
    back = TemperatureScaling.from_dict(ts.to_dict())
    np.testing.assert_array_equal(back.transform(true_logits), ts.transform(true_logits))
    assert back.get_params() == ts.get_params()


def test_estimator_protocol():
    ts = TemperatureScaling(output_mode="multilabel", per_class=True)
    assert repr(ts) == "TemperatureScaling(output_mode='multilabel', per_class=True)"
    assert ts.get_params()["inputs"] == "logits"
    assert ts.set_params(inputs="probabilities") is ts and ts.inputs == "probabilities"
    with pytest.raises(ValueError, match="invalid parameter 'temp'"):
        ts.set_params(temp=1)
    with pytest.raises(NotFittedError, match="not fitted"):
        TemperatureScaling().transform(np.zeros((1, 2, 3)))
    assert not hasattr(TemperatureScaling(), "temperature_")


def test_optimum_beyond_the_bounds_warns():
    # Labels that the logits separate perfectly: the likelihood grows as T -> 0.
    logits = np.array([[[3.0, -2.0, 1.0]], [[-3.0, 2.0, -1.0]]]).reshape(1, 2, 3)
    labels = np.array([[0, 1, 0]])
    with pytest.warns(RuntimeWarning, match="bounds"):
        ts = TemperatureScaling(bounds=(0.1, 10.0)).fit(logits, labels)
    assert ts.temperature_ == pytest.approx(0.1)


# --------------------------------------------------------------------------- #
# Bad input: one clear error naming the argument
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda s, y: (s, y[:, :5]), ValueError, r"labels must have shape \(2, 6, 6\)"),
        (lambda s, y: (s, y[:, None]), ValueError, r"labels must have shape .*drop the channel axis"),
        (lambda s, y: (s, y + 3), ValueError, r"labels must hold class ids in \[0, 3\)"),
        (lambda s, y: (s, y - 1), ValueError, r"labels must hold class ids in \[0, 3\).*ignore_index"),
        (lambda s, y: (s, y.astype(np.float32)), TypeError, "labels must be integer class ids"),
        (lambda s, y: (np.where(s > 1, np.nan, s), y), ValueError, "scores must contain only finite values"),
        (lambda s, y: (s.astype(np.int64), y), TypeError, "scores must have dtype float"),
        (lambda s, y: (s[:, :, 0, 0], y), ValueError, "scores must have shape"),
        (lambda s, y: (s.tolist(), y), TypeError, "scores must be an array"),
        (lambda s, y: ([s, s], [y]), ValueError, "labels must be a list of 2 arrays"),
        (lambda s, y: ([s, s[:, :2]], [y, y]), ValueError, "same number of classes"),
        (lambda s, y: (s, y.tolist()), TypeError, "labels must be an array"),
    ],
)
def test_bad_input_names_the_argument(make, exc, match):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 6, 6))
    labels = rng.integers(0, 3, size=(2, 6, 6))
    s, y = make(scores, labels)
    with pytest.raises(exc, match=match):
        TemperatureScaling().fit(s, y)


def test_bad_probabilities_and_options():
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=(2, 3, 5, 5)))
    labels = rng.integers(0, 3, size=(2, 5, 5))
    with pytest.raises(ValueError, match=r"scores were declared probabilities and must lie in \[0, 1\]"):
        TemperatureScaling(inputs="probabilities").fit(probs * 1.5, labels)
    with pytest.raises(ValueError, match="inputs must be one of 'logits', 'probabilities'"):
        TemperatureScaling(inputs="probs").fit(probs, labels)
    with pytest.raises(ValueError, match="output_mode must be one of"):
        TemperatureScaling(output_mode="binary").fit(probs, labels)
    with pytest.raises(ValueError, match="bounds must satisfy"):
        TemperatureScaling(bounds=(2.0, 1.0)).fit(probs, labels)
    with pytest.raises(ValueError, match="labels must have the shape of scores"):
        TemperatureScaling("multilabel").fit(probs, labels)
    with pytest.raises(ValueError, match=r"labels must hold mask values 0 and 1"):
        TemperatureScaling("multilabel").fit(probs, np.full(probs.shape, 2))
    with pytest.raises(ValueError, match="no labelled pixel"):
        TemperatureScaling(ignore_index=-1).fit(probs, np.full(labels.shape, -1))
    ts = TemperatureScaling().fit(probs, labels)
    with pytest.raises(ValueError, match="scores must have 3 classes"):
        ts.transform(probs[:, :2])
    with pytest.raises(ValueError, match="one mask per class"):
        TemperatureScaling().fit(probs, labels[:, None].repeat(3, axis=1))


# --------------------------------------------------------------------------- #
# ECE and the reliability diagram
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_direct_computation(multiclass, n_bins):
    true_logits, truth = multiclass
    probs = softmax(true_logits / 2.5)
    conf = probs.max(axis=1).ravel()
    hit = (probs.argmax(axis=1) == truth).ravel().astype(float)
    assert expected_calibration_error(probs, truth, n_bins=n_bins) == pytest.approx(
        direct_ece(conf, hit, n_bins), rel=1e-12, abs=1e-15)


def test_ece_multilabel_and_ignore_index(multilabel):
    true_logits, truth = multilabel
    p = 1.0 / (1.0 + np.exp(-true_logits))
    assert expected_calibration_error(p, truth, output_mode="multilabel") == pytest.approx(
        direct_ece(p.ravel(), truth.ravel().astype(float), 15), rel=1e-12)
    labels = truth.astype(np.uint8)
    labels[:, :, :10] = 255
    assert expected_calibration_error(p, labels, output_mode="multilabel", ignore_index=255) == pytest.approx(
        direct_ece(p[:, :, 10:].ravel(), truth[:, :, 10:].ravel().astype(float), 15), rel=1e-12)


def test_ece_small_cases():
    probs = np.array([[[0.9, 0.2]], [[0.1, 0.8]]]).reshape(1, 2, 2)
    assert expected_calibration_error(probs, np.array([[0, 0]])) == pytest.approx(0.45)  # (0.1 + 0.8) / 2
    assert expected_calibration_error(probs, np.array([[0, 1]])) == pytest.approx(0.15)
    # Bin edges are (lo, hi]: 0.2 lies in (0.1, 0.2], not in (0.2, 0.3].
    bins = reliability_bins(np.array([[[0.2, 0.3]]]), np.array([[[True, False]]]), n_bins=10,
                            output_mode="multilabel")
    assert bins["count"][1] == 1 and bins["count"][2] == 1
    with pytest.raises(ValueError, match="probs must lie in"):
        expected_calibration_error(probs * 2, np.array([[0, 0]]))
    with pytest.raises(ValueError, match="n_bins must be a positive int"):
        expected_calibration_error(probs, np.array([[0, 0]]), n_bins=0)


def test_ece_dask_equals_numpy(multiclass):
    da = pytest.importorskip("dask.array")
    true_logits, truth = multiclass
    probs = softmax(true_logits)
    got = expected_calibration_error(da.from_array(probs, chunks=(4, 4, 16, 48)), truth)
    assert got == pytest.approx(expected_calibration_error(probs, truth), rel=1e-12)


def test_reliability_diagram_returns_a_figure(multiclass):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    true_logits, truth = multiclass
    fig = reliability_diagram(softmax(true_logits / 2.5), truth, label="before")
    fig = reliability_diagram(softmax(true_logits), truth, ax=fig.axes[0], label="after")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[0].startswith("before, ECE") and texts[1].startswith("after, ECE")
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_reliability_diagram_without_matplotlib(monkeypatch, multiclass):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    true_logits, truth = multiclass
    with pytest.raises(ImportError, match=r"pip install 'rankseg-np\[plot\]'"):
        reliability_diagram(softmax(true_logits), truth)


def test_lists_of_arrays_of_different_sizes(multiclass):
    """Validation volumes of different shapes: a list fits as one data set (same as concatenating)."""
    true_logits, truth = multiclass
    model = true_logits / 2.5
    a, b = model[:6, :, :30, :40], model[6:, :, 10:, :]
    ya, yb = truth[:6, :30, :40], truth[6:, 10:, :]
    got = TemperatureScaling().fit([a, b], [ya, yb])
    ref = TemperatureScaling().fit(_concat_pixels(a, b), _concat_labels(ya, yb))
    assert got.temperature_ == pytest.approx(ref.temperature_, rel=1e-10)
    out = got.transform([a, b])
    assert isinstance(out, list) and out[1].shape == b.shape
    assert expected_calibration_error(out, [ya, yb]) == pytest.approx(
        expected_calibration_error(_concat_pixels(*out), _concat_labels(ya, yb)), rel=1e-12)
    report = evaluate(out, [ya, yb])
    assert report.per_image["RMA"].shape == (16,)


def _concat_pixels(a, b):
    """Every pixel of a and b as one image (order does not matter for NLL / ECE sums)."""
    flat = lambda x: np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])  # noqa: E731
    return np.concatenate([flat(a), flat(b)]).T[None, :, :]


def _concat_labels(ya, yb):
    return np.concatenate([ya.ravel(), yb.ravel()])[None, :]


def test_dask_fit_reads_each_chunk_once_per_pass(multiclass):
    """Streaming: every chunk is computed n_passes_ times, never held as a whole array."""
    da = pytest.importorskip("dask.array")
    import threading

    true_logits, truth = multiclass
    lock, reads = threading.Lock(), []

    def load(block, block_info=None):
        with lock:
            reads.append(block_info[0]["chunk-location"])
        return block

    lazy = da.from_array(true_logits / 2.5, chunks=(4, 4, 48, 48)).map_blocks(load, dtype=np.float64)
    ts = TemperatureScaling().fit(lazy, truth)
    n_chunks = 4
    assert len(reads) == ts.n_passes_ * n_chunks
    assert all(reads.count(loc) == ts.n_passes_ for loc in set(reads))
    assert ts.n_passes_ <= 10  # one at T = 1, a few Newton steps, one for nll_


@pytest.mark.parametrize("framework", ["jax", "array_api_strict"])
def test_transform_returns_the_callers_type_dlpack(framework, multilabel):
    mod = pytest.importorskip(framework)
    true_logits, truth = multilabel
    x = true_logits[:2].astype(np.float32)
    ref = TemperatureScaling("multilabel", per_class=True).fit(x, truth[:2])
    arr = mod.numpy.asarray(x) if framework == "jax" else mod.asarray(x)
    ts = TemperatureScaling("multilabel", per_class=True).fit(arr, truth[:2])
    np.testing.assert_array_equal(ts.temperature_, ref.temperature_)
    out = ts.transform(arr)
    assert type(out).__module__.split(".")[0] == type(arr).__module__.split(".")[0]
    np.testing.assert_allclose(np.asarray(out), ref.transform(x), rtol=1e-6)
