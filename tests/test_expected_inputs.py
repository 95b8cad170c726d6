"""``expected_metric`` accepts every input ``rankseg`` accepts (issue 12, item 6).

The oracle is ``expected_metric`` on the same values as a native-order
float64 NumPy array (float16/float32 values are exactly representable there).
"""

from __future__ import annotations

import numpy as np
import pytest

from rankseg_np import expected_metric, rankseg
from strategies import make_probs


@pytest.fixture(scope="module")
def probs():
    return make_probs((2, 3, 9, 7), np.float64, "softmax", 5)


@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8", "<f2", "<f4"])
@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_expected_metric_accepts_any_byte_order(probs, dtype, metric):
    p = probs.astype(dtype)
    before = p.copy()
    masks = rankseg(p, output_mode="multilabel")  # rankseg accepts it, so must expected_metric
    got = expected_metric(p, masks, metric=metric)
    want = expected_metric(p.astype(np.float64), masks, metric=metric)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(p, before) and p.dtype == np.dtype(dtype)


def test_expected_metric_accepts_non_contiguous_and_label_maps(probs):
    p = np.asfortranarray(probs)[:, :, ::2]
    labels = rankseg(p)
    want = expected_metric(np.ascontiguousarray(p), labels)
    np.testing.assert_array_equal(expected_metric(p, labels), want)


def test_expected_metric_accepts_torch_tensors(probs):
    torch = pytest.importorskip("torch")
    masks = rankseg(probs, output_mode="multilabel")
    want = expected_metric(probs, masks)
    got = expected_metric(torch.from_numpy(probs), torch.from_numpy(masks))
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)
    # bfloat16, which rankseg upcasts to float32: the same values in float64.
    t16 = torch.from_numpy(probs).to(torch.bfloat16)
    np.testing.assert_array_equal(
        expected_metric(t16, masks), expected_metric(t16.to(torch.float64).numpy(), masks)
    )


def test_expected_metric_accepts_jax_and_array_api_strict(probs):
    masks = rankseg(probs, output_mode="multilabel")
    want = expected_metric(probs, masks)
    tried = 0
    try:
        import jax.numpy as jnp
    except ImportError:
        pass
    else:
        np.testing.assert_array_equal(expected_metric(jnp.asarray(probs.astype(np.float32)), masks),
                                      expected_metric(probs.astype(np.float32), masks))
        tried += 1
    try:
        import array_api_strict as xp
    except ImportError:
        pass
    else:
        np.testing.assert_array_equal(expected_metric(xp.asarray(probs), masks), want)
        tried += 1
    if not tried:
        pytest.skip("neither jax nor array_api_strict installed")


def test_expected_metric_accepts_dask(probs):
    da = pytest.importorskip("dask.array")
    masks = rankseg(probs, output_mode="multilabel")
    got = expected_metric(da.from_array(probs, chunks=(1, 3, 5, 7)), masks)
    np.testing.assert_array_equal(got, expected_metric(probs, masks))
