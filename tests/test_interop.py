"""Framework interop: any array in, the same kind of array out, with the NumPy answer.

Every test converts the input's values to NumPy independently (``.numpy()``,
``np.asarray``) and runs the NumPy path on them: that answer is the oracle.
The framework call must return the caller's own type, on the caller's device,
with the NumPy path's dtype (bool masks, int64 labels; int32 labels for JAX
without x64) and values, and must leave the input untouched.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankseg_np import RankSEG, rankseg
from rankseg_np._dispatch import ACCEPTED, backend_of, prepare
from strategies import make_probs, prob_arrays, rma_params

PARAMS = [
    dict(),
    dict(output_mode="multilabel"),
    dict(metric="iou", smooth=0.5, pruning_prob=0.2),
    dict(unassigned_policy="void", void_index=-1),
]


def numpy_answer(values: np.ndarray, **params):
    return rankseg(np.array(values), **params)


# --------------------------------------------------------------------------- #
# PyTorch
# --------------------------------------------------------------------------- #

def _torch():
    return pytest.importorskip("torch")


def torch_layouts(t):
    """The same values as ``t`` in several memory layouts (all views of fresh storage)."""
    th = _torch()
    yield "contiguous", t.clone()
    # Spatial axes stored transposed.
    yield "transposed", t.transpose(-1, -2).contiguous().transpose(-1, -2)
    # Every other element of a twice-as-large buffer.
    big = th.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
    big[..., ::2] = t
    yield "strided", big[..., ::2]
    # Class axis outermost in memory.
    yield "channels_first_in_memory", t.transpose(0, 1).contiguous().transpose(0, 1)


@pytest.mark.parametrize("dtype_name", ["float16", "float32", "float64"])
def test_torch_cpu_layouts_and_dtypes(dtype_name):
    th = _torch()
    base = make_probs((2, 3, 11, 7), np.float64, "softmax", 1).astype(dtype_name)
    t0 = th.from_numpy(base.copy())
    for name, t in torch_layouts(t0):
        assert th.equal(t, t0)
        for params in PARAMS:
            before = t.clone()
            out = rankseg(t, **params)
            expected = numpy_answer(t.numpy(), **params)
            assert isinstance(out, th.Tensor) and out.device.type == "cpu", name
            assert out.dtype == (th.bool if expected.dtype == np.bool_ else th.int64), (name, out.dtype)
            np.testing.assert_array_equal(out.numpy(), expected, err_msg=f"{name} {params}")
            assert th.equal(t, before), f"{name}: input modified"


def test_torch_non_contiguous_is_really_non_contiguous():
    th = _torch()
    t = th.from_numpy(make_probs((2, 3, 5, 6), np.float32, "softmax", 2))
    kinds = dict(torch_layouts(t))
    assert not kinds["transposed"].is_contiguous()
    assert not kinds["strided"].is_contiguous()
    assert not kinds["channels_first_in_memory"].is_contiguous()


def test_torch_zero_stride_batch():
    th = _torch()
    one = th.from_numpy(make_probs((1, 3, 7, 5), np.float32, "softmax", 11))
    t = one.expand(4, 3, 7, 5)  # four views of the same image, stride 0 on the batch axis
    assert t.stride(0) == 0
    out = rankseg(t)
    np.testing.assert_array_equal(out.numpy(), numpy_answer(np.repeat(one.numpy(), 4, axis=0)))


def test_torch_requires_grad_is_detached_not_touched():
    th = _torch()
    t = th.from_numpy(make_probs((2, 4, 9, 9), np.float32, "softmax", 3)).requires_grad_(True)
    before = t.detach().clone()
    out = RankSEG(metric="dice").predict(t)
    assert isinstance(out, th.Tensor) and not out.requires_grad and out.dtype == th.int64
    np.testing.assert_array_equal(out.numpy(), numpy_answer(before.numpy()))
    assert t.requires_grad and t.grad is None and th.equal(t.detach(), before)
    # A non-leaf tensor from a graph works too.
    logits = th.randn(1, 3, 4, 4, requires_grad=True)
    probs = th.softmax(logits * 2.0, dim=1)
    masks = rankseg(probs, output_mode="multilabel")
    np.testing.assert_array_equal(masks.numpy(), numpy_answer(probs.detach().numpy(), output_mode="multilabel"))


def test_torch_bfloat16_is_upcast_to_float32():
    th = _torch()
    t = th.from_numpy(make_probs((2, 3, 8, 8), np.float32, "softmax", 4)).to(th.bfloat16)
    out = rankseg(t, output_mode="multilabel")
    assert out.dtype == th.bool
    np.testing.assert_array_equal(out.numpy(), numpy_answer(t.to(th.float32).numpy(), output_mode="multilabel"))


def test_torch_read_only_storage():
    th = _torch()
    values = make_probs((1, 3, 6, 6), np.float32, "softmax", 5)
    values.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the buffer is not writable
        t = th.from_numpy(values)
    np.testing.assert_array_equal(rankseg(t).numpy(), numpy_answer(values))


@settings(max_examples=60)
@given(
    probs=prob_arrays(dtypes=(np.float32, np.float64, np.float16)),
    params=rma_params(),
    layout=st.sampled_from(["contiguous", "transposed", "strided", "channels_first_in_memory"]),
)
def test_torch_round_trip_on_generated_inputs(probs, params, layout):
    th = _torch()
    if params["output_mode"] == "multiclass" and probs.shape[1] == 1:
        params = {**params, "output_mode": "multilabel"}
        params.pop("unassigned_policy", None), params.pop("void_index", None)
    t = dict(torch_layouts(th.from_numpy(probs.copy())))[layout]
    out = rankseg(t, **params)
    expected = numpy_answer(probs, **params)
    assert isinstance(out, th.Tensor) and tuple(out.shape) == expected.shape
    assert out.dtype == (th.bool if expected.dtype == np.bool_ else th.int64)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_torch_unsupported_tensors_raise_type_error():
    th = _torch()
    dense = th.from_numpy(make_probs((1, 2, 3, 3), np.float32, "softmax", 6))
    with pytest.raises(TypeError, match="to_dense"):
        rankseg(dense.to_sparse())
    with pytest.raises(TypeError, match="dtype float16, float32 or float64"):
        rankseg(th.ones(1, 2, 3, dtype=th.int64))
    with pytest.raises(TypeError, match="meta"):
        rankseg(th.empty(1, 2, 3, device="meta"))


# --------------------------------------------------------------------------- #
# array_api_strict
# --------------------------------------------------------------------------- #

def _xps():
    return pytest.importorskip("array_api_strict")


@settings(max_examples=60)
@given(probs=prob_arrays(dtypes=(np.float32, np.float64)), params=rma_params(), device=st.sampled_from(["CPU_DEVICE", "device1"]))
def test_array_api_strict_round_trip(probs, params, device):
    xps = _xps()
    if params["output_mode"] == "multiclass" and probs.shape[1] == 1:
        params = {"output_mode": "multilabel", "metric": params["metric"]}
    x = xps.asarray(probs, device=xps.Device(device))

    def host(a):  # array_api_strict refuses np.asarray off its CPU device
        return np.asarray(a.to_device(xps.Device("CPU_DEVICE")))

    before = host(x).copy()
    out = rankseg(x, **params)
    expected = numpy_answer(probs, **params)
    assert type(out) is type(x) and out.device == x.device
    assert out.dtype == (xps.bool if expected.dtype == np.bool_ else xps.int64)
    np.testing.assert_array_equal(host(out), expected)
    np.testing.assert_array_equal(host(x), before)


# --------------------------------------------------------------------------- #
# JAX
# --------------------------------------------------------------------------- #

def _jax():
    jax = pytest.importorskip("jax")
    return jax, pytest.importorskip("jax.numpy")


@pytest.mark.parametrize("dtype_name", ["float16", "float32", "bfloat16"])
def test_jax_cpu_round_trip(dtype_name):
    jax, jnp = _jax()
    values = make_probs((2, 3, 10, 9), np.float32, "softmax", 7)
    x = jnp.asarray(values).astype(getattr(jnp, dtype_name))
    host = np.asarray(x.astype(jnp.float32)) if dtype_name == "bfloat16" else np.asarray(x)
    label_dtype = jax.dtypes.canonicalize_dtype(np.int64)  # int32 unless jax_enable_x64
    for params in PARAMS:
        out = rankseg(x, **params)
        expected = numpy_answer(host, **params)
        assert isinstance(out, jax.Array) and out.devices() == x.devices()
        assert out.dtype == (np.bool_ if expected.dtype == np.bool_ else label_dtype)
        np.testing.assert_array_equal(np.asarray(out), expected)


def test_jax_traced_values_raise_type_error():
    jax, jnp = _jax()
    x = jnp.asarray(make_probs((1, 2, 4, 4), np.float32, "softmax", 8))
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(rankseg)(x)


# --------------------------------------------------------------------------- #
# TensorFlow (not in any extra: runs where TensorFlow is installed)
# --------------------------------------------------------------------------- #

def test_tensorflow_cpu_round_trip():
    tf = pytest.importorskip("tensorflow")
    values = make_probs((2, 3, 9, 7), np.float32, "softmax", 12)
    t = tf.constant(values)
    for params in PARAMS:
        out = rankseg(t, **params)
        expected = numpy_answer(values, **params)
        assert isinstance(out, tf.Tensor) and out.device == t.device
        assert out.dtype == (tf.bool if expected.dtype == np.bool_ else tf.int64)
        np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_array_equal(rankseg(tf.Variable(values)).numpy(), numpy_answer(values))
    bf16 = tf.cast(t, tf.bfloat16)  # upcast to float32
    np.testing.assert_array_equal(rankseg(bf16).numpy(), numpy_answer(tf.cast(bf16, tf.float32).numpy()))
    np.testing.assert_array_equal(t.numpy(), values)

    @tf.function(autograph=False)
    def traced(x):
        return rankseg(x)

    with pytest.raises(TypeError, match="outside tf.function"):
        traced(t)


# --------------------------------------------------------------------------- #
# Generic DLPack, unsupported objects, lazy imports
# --------------------------------------------------------------------------- #

class DLPackOnly:
    """An array type this library has never heard of: only the DLPack protocol."""

    def __init__(self, a, device=(1, 0)):
        self._a = a
        self._device = device

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._device


def test_unknown_dlpack_array_without_namespace_returns_numpy():
    values = make_probs((2, 3, 5, 5), np.float32, "softmax", 9)
    assert backend_of(DLPackOnly(values)) == "dlpack"
    out = rankseg(DLPackOnly(values), metric="iou")
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, numpy_answer(values, metric="iou"))


def test_dlpack_on_cuda_without_cupy_says_what_to_install():
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="CuPy"):
        prepare(DLPackOnly(np.zeros((1, 2, 3)), device=(2, 0)))


def test_dlpack_on_other_devices_raises_type_error():
    with pytest.raises(TypeError, match="device of type 8"):
        prepare(DLPackOnly(np.zeros((1, 2, 3)), device=(8, 0)))


class ArrayLikeOnly:
    def __array__(self, dtype=None, copy=None):
        return np.zeros((1, 2, 3))


def _matrix():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(np.array([[0.5, 0.5]]))


@pytest.mark.parametrize(
    "make, hint",
    [
        (lambda: [[[0.5]]], "numpy.asarray"),
        (lambda: ((0.5,),), "numpy.asarray"),
        (lambda: "probs", ""),
        (lambda: None, ""),
        (lambda: 0.5, ""),
        (lambda: {"probs": 1}, ""),
        (_matrix, "np.matrix"),
        (lambda: np.ma.masked_array(np.zeros((1, 2, 3))), "filled"),
        (ArrayLikeOnly, "numpy.asarray"),
    ],
    ids=["list", "tuple", "str", "None", "float", "dict", "matrix", "masked", "array_like"],
)
def test_unsupported_objects_raise_type_error_saying_what_is_accepted(make, hint):
    with pytest.raises(TypeError) as err:
        rankseg(make())
    assert ACCEPTED in str(err.value) and hint in str(err.value)


def test_objects_from_dataframe_libraries_get_a_hint():
    """Routing is by the type's module: a pandas-like type gets the hint even without pandas installed."""
    frame_type = type("DataFrame", (), {"__module__": "pandas.core.frame", "__array__": lambda self, *a, **k: np.zeros((1, 2, 3))})
    with pytest.raises(TypeError, match="to_numpy"):
        rankseg(frame_type())
    ort_type = type("OrtValue", (), {"__module__": "onnxruntime.capi.onnxruntime_inference_collection"})
    with pytest.raises(TypeError, match=r"OrtValue.numpy\(\)"):
        rankseg(ort_type())
    with pytest.raises(TypeError, match="convert it with numpy.asarray"):
        rankseg(np.float64(0.5))


def test_pandas_objects_raise_type_error():
    pd = pytest.importorskip("pandas")
    for obj in (pd.DataFrame(np.zeros((2, 2))), pd.Series([0.5, 0.5])):
        with pytest.raises(TypeError, match="to_numpy"):
            rankseg(obj)


def test_numpy_subclass_and_read_only_numpy():
    values = make_probs((2, 3, 6, 6), np.float32, "softmax", 10)
    ro = values.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(rankseg(ro), numpy_answer(values))
    sub = values.view(type("Sub", (np.ndarray,), {}))
    out = rankseg(sub)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, numpy_answer(values))


def test_routes_by_type():
    th = _torch()
    xps = _xps()
    assert backend_of(np.zeros((1, 2, 3))) == "numpy"
    assert backend_of(th.zeros(1, 2, 3)) == "torch"
    assert backend_of(xps.zeros((1, 2, 3))) == "dlpack"


def test_numpy_input_imports_no_framework():
    code = (
        "import sys, numpy as np\n"
        "from rankseg_np import rankseg\n"
        "rankseg(np.full((1, 2, 3, 3), 0.5))\n"
        "loaded = [m for m in ('torch', 'jax', 'cupy', 'tensorflow', 'dask', 'array_api_strict') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
