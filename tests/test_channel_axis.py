"""``channel_axis`` and the multiclass class-sum check (issue 12, item 11).

``rankseg(y, channel_axis=a)`` must equal ``rankseg(np.moveaxis(y, a, 1))``
(the oracle: the NumPy path on the moved values), with multilabel masks moved
back to the caller's layout, for every array type.  In multiclass mode, class
sums off 1 raise (recognisably channels-last) or warn (other causes); float16
softmax and every multilabel input pass silently.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rankseg_np import RankSEG, expected_metric, gpu, rankseg
from rankseg_np._layout import SUM_TOL
from rankseg_np._validate import check_config
from conftest import softmax

MODES = [dict(), dict(output_mode="multilabel"), dict(metric="iou", smooth=1.0), dict(solver="exact")]


def channels_last(shape=(2, 9, 7, 4), seed=0, dtype=np.float64):
    """A softmax over the LAST axis: (B, H, W, C)."""
    x = np.random.default_rng(seed).normal(size=shape) * 2
    return softmax(x, axis=-1).astype(dtype)


def want(y, axis, **params):
    """The oracle: the default layout on the moved values, masks moved back."""
    out = rankseg(np.ascontiguousarray(np.moveaxis(y, axis, 1)), **params)
    return np.moveaxis(out, 1, axis) if params.get("output_mode") == "multilabel" else out


@pytest.mark.parametrize("params", MODES)
@pytest.mark.parametrize("axis", [-1, 3])
def test_channel_axis_equals_moveaxis_numpy(params, axis):
    y = channels_last()
    before = y.copy()
    got = rankseg(y, channel_axis=axis, **params)
    np.testing.assert_array_equal(got, want(y, axis, **params))
    assert np.array_equal(y, before)
    np.testing.assert_array_equal(RankSEG(channel_axis=axis, **params).predict(y), got)


def test_channel_axis_middle_and_first_axes():
    y = np.moveaxis(channels_last((2, 5, 6, 3)), -1, 2)  # (B, H, C, W)
    for params in MODES[:2]:
        np.testing.assert_array_equal(rankseg(y, channel_axis=2, **params), want(y, 2, **params))
    z = np.moveaxis(channels_last((2, 5, 6, 3)), -1, 0)  # (C, B, H, W)
    np.testing.assert_array_equal(rankseg(z, channel_axis=0, output_mode="multilabel"),
                                  want(z, 0, output_mode="multilabel"))


def test_channel_axis_multilabel_masks_in_caller_layout_mediapipe_shape():
    """A TFLite/MediaPipe-style (1, 256, 256, 1) sigmoid map: masks come back (1, 256, 256, 1)."""
    y = 1 / (1 + np.exp(-np.random.default_rng(1).normal(size=(1, 32, 32, 1)) * 3))
    got = rankseg(y, channel_axis=-1, output_mode="multilabel")
    assert got.shape == y.shape
    np.testing.assert_array_equal(got[..., 0], rankseg(y[:, None, :, :, 0], output_mode="multilabel")[:, 0])


def test_expected_metric_channel_axis():
    y = channels_last()
    masks = rankseg(y, channel_axis=-1, output_mode="multilabel")
    moved = np.moveaxis(y, -1, 1)
    np.testing.assert_array_equal(expected_metric(y, masks, channel_axis=-1),
                                  expected_metric(moved, np.moveaxis(masks, -1, 1)))
    labels = rankseg(y, channel_axis=-1)
    np.testing.assert_array_equal(expected_metric(y, labels, channel_axis=-1), expected_metric(moved, labels))


@pytest.mark.parametrize("bad,err", [(True, TypeError), (1.0, TypeError), ("1", TypeError), (4, ValueError),
                                     (-5, ValueError)])
def test_channel_axis_validation(bad, err):
    with pytest.raises(err, match="channel_axis"):
        rankseg(channels_last(), channel_axis=bad)


# --------------------------------------------------------------------------- #
# Every array type
# --------------------------------------------------------------------------- #

def _check_framework(to_framework, to_numpy, params):
    y = channels_last(dtype=np.float32)
    got = rankseg(to_framework(y), channel_axis=-1, **params)
    np.testing.assert_array_equal(to_numpy(got), want(y, -1, **params))


@pytest.mark.parametrize("params", MODES[:2])
def test_channel_axis_torch(params):
    torch = pytest.importorskip("torch")
    _check_framework(torch.from_numpy, lambda t: (t.numpy(), isinstance(t, torch.Tensor))[0], params)


@pytest.mark.parametrize("params", MODES[:2])
def test_channel_axis_jax(params):
    jnp = pytest.importorskip("jax.numpy")
    _check_framework(jnp.asarray, np.asarray, params)


@pytest.mark.parametrize("params", MODES[:2])
def test_channel_axis_array_api_strict(params):
    xp = pytest.importorskip("array_api_strict")
    _check_framework(xp.asarray, lambda a: np.asarray(a), params)


@pytest.mark.parametrize("params", MODES[:2])
def test_channel_axis_dask(params):
    da = pytest.importorskip("dask.array")
    _check_framework(lambda a: da.from_array(a, chunks=(1, 5, 7, 4)), lambda a: a.compute(), params)


def test_channel_axis_tensorflow():
    tf = pytest.importorskip("tensorflow")
    for params in MODES[:2]:
        _check_framework(tf.convert_to_tensor, lambda t: t.numpy(), params)


@pytest.mark.gpu
def test_channel_axis_cupy():
    cupy = pytest.importorskip("cupy")
    if not gpu.is_available():
        pytest.skip("needs a CUDA device")
    for params in MODES[:2]:
        _check_framework(cupy.asarray, cupy.asnumpy, params)


# --------------------------------------------------------------------------- #
# Class sums in multiclass mode
# --------------------------------------------------------------------------- #

def _on_dask(p, **kw):
    """Whole-image chunks: each chunk runs the in-memory path, layout checks included."""
    da = pytest.importorskip("dask.array")
    return rankseg(da.from_array(p, chunks=(1,) + (-1,) * (p.ndim - 1)), **kw).compute()


RUNNERS = {
    "cpu": lambda p, **kw: rankseg(p, **kw),
    "gpu-code-on-numpy": lambda p, **kw: gpu.solve_with(p, check_config(p.shape[1], **kw), np),
    "dask": _on_dask,
}


@pytest.mark.parametrize("run", list(RUNNERS))
@pytest.mark.parametrize("solver", ["RMA", "exact"])
def test_channels_last_multiclass_raises_naming_channel_axis(run, solver):
    y = channels_last((2, 16, 16, 5))
    with pytest.raises(ValueError, match=r"channels-last.*channel_axis=-1"):
        RUNNERS[run](y, solver=solver)


@pytest.mark.parametrize("run", list(RUNNERS))
@pytest.mark.parametrize(
    "name,make,cause",
    [
        ("logits", lambda x: x, "logits"),
        ("sigmoid outputs", lambda x: 1 / (1 + np.exp(-x)), "multilabel"),
        ("one image, few pixels", lambda x: softmax(x, axis=1)[0, :, :4, :4], r"probs\[None\]"),
    ],
)
def test_off_class_sums_warn_with_likely_causes(run, name, make, cause):
    x = np.random.default_rng(2).normal(size=(1, 4, 12, 10))
    p = make(x)
    p = np.clip(p, 0, 1)  # logits clipped into [0, 1]: still not probabilities
    with pytest.warns(UserWarning, match=cause):
        RUNNERS[run](p)


@pytest.mark.parametrize("run", list(RUNNERS))
def test_one_image_without_batch_axis_raises_naming_the_fix(run):
    """(C, H, W) read as (B, C', W): labels of the wrong shape; recognisable because axis 0 sums to 1."""
    p = softmax(np.random.default_rng(4).normal(size=(1, 4, 12, 10)), axis=1)[0]
    if run == "dask":  # a chunk of one image cannot see axis 0 whole: the warning names the cause
        with pytest.warns(UserWarning, match=r"missing batch axis.*probs\[None\]"):
            RUNNERS[run](p)
        return
    with pytest.raises(ValueError, match=r"without its batch axis.*probs\[None\]"):
        RUNNERS[run](p)


@pytest.mark.parametrize("run", list(RUNNERS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_softmax_in_any_precision_passes_without_warning(run, dtype):
    x = np.random.default_rng(3).normal(size=(2, 21, 32, 32)) * 4
    p = softmax(x, axis=1).astype(dtype)
    assert np.abs(p.astype(np.float64).sum(axis=1) - 1).max() < SUM_TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RUNNERS[run](p)


def test_bfloat16_softmax_passes_without_warning():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 21, 32, 32, generator=torch.Generator().manual_seed(0)) * 4
    p = torch.softmax(x, dim=1).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*not writable.*")
        rankseg(p)


def test_multilabel_never_checks_sums():
    y = channels_last((2, 16, 16, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rankseg(y, output_mode="multilabel")
        rankseg(np.random.default_rng(4).random((2, 4, 8, 8)), output_mode="multilabel")
        gpu.solve_with(y, check_config(16, output_mode="multilabel"), np)


def test_channels_last_with_channel_axis_passes():
    y = channels_last((2, 16, 16, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rankseg(y, channel_axis=-1).shape == (2, 16, 16)


# --------------------------------------------------------------------------- #
# The CLI's --channel-axis
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_cli_channel_axis_channels_last_file(tmp_path, mode):
    from rankseg_np.cli import main

    y = channels_last((2, 9, 7, 4), dtype=np.float32)
    np.save(tmp_path / "in.npy", y)
    out = tmp_path / "out.npy"
    assert main(["predict", str(tmp_path / "in.npy"), "-o", str(out), "--channel-axis", "-1",
                 "--output-mode", mode, "-q"]) == 0
    np.testing.assert_array_equal(np.load(out), want(y, -1, output_mode=mode))


def test_cli_channels_last_file_without_flag_fails_with_the_fix(tmp_path, capsys):
    from rankseg_np.cli import main

    np.save(tmp_path / "in.npy", channels_last((2, 16, 16, 4), dtype=np.float32))
    rc = main(["predict", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.npy"), "-q"])
    assert rc != 0
    assert "channel_axis=-1" in capsys.readouterr().err


def test_cli_channel_axis_single_image_without_batch_axis(tmp_path):
    from rankseg_np.cli import main

    y = channels_last((1, 9, 7, 4), dtype=np.float32)
    np.save(tmp_path / "in.npy", y[0])  # (H, W, C)
    out = tmp_path / "out.npy"
    assert main(["predict", str(tmp_path / "in.npy"), "-o", str(out), "--no-batch-axis",
                 "--channel-axis", "2", "-q"]) == 0
    np.testing.assert_array_equal(np.load(out), want(y, -1)[0])


def test_dask_spatial_chunks_check_class_sums_chunk_by_chunk():
    """The reduction strategy checks the sums in its output pass; a chunk cannot see the layout
    of the whole array, so off sums warn (the layout errors need whole-image chunks)."""
    da = pytest.importorskip("dask.array")
    x = np.random.default_rng(5).normal(size=(2, 4, 12, 10))
    logits = np.clip(x, 0, 1)
    lazy = rankseg(da.from_array(logits, chunks=(1, 4, 6, 5)))
    with pytest.warns(UserWarning, match="logits"):
        lazy.compute()
    p = softmax(x, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(rankseg(da.from_array(p, chunks=(1, 4, 6, 5))).compute(), rankseg(p))
