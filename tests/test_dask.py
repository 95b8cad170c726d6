"""The Dask backend against the in-memory path (issue 5).

Oracles: the in-memory NumPy/Numba answer on the same values (``rankseg`` on
the computed array), ``rankseg_np.cpu.rma.decide`` for per-row decisions, and
brute force for the chunk arithmetic.  Chunkings are drawn by Hypothesis:
whole axes, size-1 chunks, uneven chunks, on the batch, class and spatial
axes, 1-D to 3-D images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from rankseg_np import rankseg  # noqa: E402
from rankseg_np._validate import check_config  # noqa: E402
from rankseg_np.cpu import as_rows, rma  # noqa: E402

rd = pytest.importorskip("rankseg_np.dask")
from rankseg_np.dask import _chunks  # noqa: E402
from rankseg_np import _reference as ref  # noqa: E402
from rankseg_np.dask._passes import Decisions  # noqa: E402

from strategies import make_probs, prob_arrays, rma_params  # noqa: E402

KINDS = ("softmax", "sigmoid", "ties", "zero_one", "uniform")


@pytest.fixture(autouse=True)
def _sync_scheduler():
    # The single-threaded scheduler keeps the many tiny graphs of the property
    # tests cheap; the threaded and distributed schedulers are tested below.
    with dask.config.set(scheduler="sync"):
        yield


@st.composite
def chunking(draw, n: int):
    """Chunk sizes for an axis of length n: whole, all ones, or an uneven split."""
    how = draw(st.sampled_from(["whole", "ones", "split", "split"]))
    if how == "whole" or n == 1:
        return n
    if how == "ones":
        return 1
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=1, max_size=min(4, n - 1))))
    edges = [0, *cuts, n]
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:]))


@st.composite
def chunked_case(draw, spatial_split=True, max_class=4):
    probs = draw(prob_arrays(max_batch=3, max_class=max_class, max_side=9))
    axes = range(probs.ndim) if spatial_split else range(2)
    chunks = [draw(chunking(probs.shape[a])) if a in axes else probs.shape[a] for a in range(probs.ndim)]
    return probs, tuple(chunks)


def _same(lazy, expected):
    assert isinstance(lazy, da.Array)
    got = lazy.compute()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def _tied_rows(probs, chunks, kw) -> bool:
    """Whether some row's chunked RMA masks differ from the in-memory ones at an exact tie.

    Sums accumulated chunk by chunk round differently from sums along the row
    (module docstring of rankseg_np.dask): a pixel whose inclusion leaves the
    RMA objective unchanged in exact arithmetic may go either way.  Only such
    differences are accepted: the two masks' objectives must agree to 1e-12.
    """
    ml = {**kw, "output_mode": "multilabel"}
    ml.pop("unassigned_policy", None), ml.pop("void_index", None)
    got = rankseg(da.from_array(probs, chunks=chunks), **ml).compute()
    want = rankseg(probs, **ml)
    tied = False
    for b, c in zip(*np.nonzero((got != want).reshape(probs.shape[0], probs.shape[1], -1).any(-1))):
        a = ref.rma_objective(probs[b, c], got[b, c], kw["metric"], kw["smooth"])
        e = ref.rma_objective(probs[b, c], want[b, c], kw["metric"], kw["smooth"])
        assert a == pytest.approx(e, rel=1e-12), (b, c, a, e)
        tied = True
    return tied


def _same_up_to_ties(lazy, expected, probs, chunks, kw):
    """``_same``, except where an exact RMA tie decides the outcome (see :func:`_tied_rows`)."""
    if np.array_equal(lazy.compute(), expected) or not _tied_rows(probs, chunks, kw):
        _same(lazy, expected)


# ---------------------------------------------------------------- equality


@settings(max_examples=60)
@given(case=chunked_case(), params=st.data())
def test_rma_matches_in_memory_any_chunking(case, params):
    probs, chunks = case
    mode = "multilabel" if probs.shape[1] == 1 else None
    kw = params.draw(rma_params(output_mode=mode))
    expected = rankseg(probs, **kw)
    _same_up_to_ties(rankseg(da.from_array(probs, chunks=chunks), **kw), expected, probs, chunks, kw)


@settings(max_examples=15)
@given(case=chunked_case(spatial_split=False), params=st.data())
def test_batch_and_class_chunks_match_in_memory(case, params):
    probs, chunks = case
    mode = "multilabel" if probs.shape[1] == 1 else None
    kw = params.draw(rma_params(output_mode=mode))
    x = da.from_array(probs, chunks=chunks)
    _same(rankseg(x, **kw), rankseg(probs, **kw))


@pytest.mark.parametrize(
    "shape, chunks",
    [
        ((2, 3, 24, 20), (1, 3, 24, 20)),  # batch only: blockwise
        ((2, 3, 24, 20), (2, 1, 24, 20)),  # classes only
        ((1, 3, 24, 20), (1, 3, 7, 20)),  # rows of the image
        ((1, 3, 24, 20), (1, 2, 5, 6)),  # everything, uneven
        ((2, 2, 9, 8, 7), (1, 1, 4, 8, 3)),  # 3-D volume
        ((1, 2, 3, 4, 2), (1, 1, 1, 1, 1)),  # one voxel per chunk
        ((3, 4, 40), (2, 3, 13)),  # 1-D signals
    ],
)
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(metric="iou"),
        dict(smooth=1.0),
        dict(metric="iou", smooth=0.5, unassigned_policy="void", void_index=-1),
        dict(output_mode="multilabel", smooth=2.5),
        dict(output_mode="multilabel", metric="iou", pruning_prob=0.0),
        dict(pruning_prob=0.9),
    ],
)
def test_calibrated_maps_match_in_memory(shape, chunks, kw):
    from rankseg_np.data import synthetic_batch

    probs = synthetic_batch(shape[0], shape[1], shape[2:], scenario="small", seed=sum(shape)).probs
    _same(rankseg(da.from_array(probs, chunks=chunks), **kw), rankseg(probs, **kw))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_and_layouts(dtype):
    probs = make_probs((2, 3, 11, 13), dtype, "softmax", 7)
    # A transposed (non-contiguous) source: chunks arrive as strided views.
    src = np.ascontiguousarray(probs.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    for chunks in [(1, 3, 11, 13), (1, 1, 4, 5)]:
        _same(rankseg(da.from_array(src, chunks=chunks)), rankseg(probs))
        _same(rankseg(da.from_array(src, chunks=chunks), output_mode="multilabel"),
              rankseg(probs, output_mode="multilabel"))


def test_empty_batch():
    probs = np.zeros((0, 3, 4, 5), np.float32)
    _same(rankseg(da.from_array(probs)), rankseg(probs))
    _same(rankseg(da.from_array(probs), output_mode="multilabel"), rankseg(probs, output_mode="multilabel"))


def test_output_chunks_follow_input():
    probs = make_probs((2, 3, 10, 12), np.float32, "softmax", 1)
    x = da.from_array(probs, chunks=(1, 3, 5, 4))
    labels = rankseg(x)
    masks = rankseg(x, output_mode="multilabel")
    assert labels.chunks == ((1, 1), (5, 5), (4, 4, 4)) and labels.dtype == np.int64
    assert masks.chunks == x.chunks and masks.dtype == np.bool_


# ------------------------------------------------- decisions, bit for bit


@settings(max_examples=40)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),
    denominator=st.sampled_from([2, 4, 8, 64, 1024]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
    params=st.data(),
)
def test_grid_values_give_bit_identical_decisions(shape, denominator, dtype, seed, params):
    """Values k/2^n: every row sum is exact in float64 whatever the order, so tie cuts,
    activity and row sums equal the in-memory ones bit for bit.  Thresholds are ratios
    that fold ``smooth`` (not on the grid) in a different order: equal to a few ulps."""
    rng = np.random.default_rng(seed)
    probs = (rng.integers(0, denominator + 1, size=shape) / denominator).astype(dtype)
    chunks = tuple(params.draw(chunking(n)) for n in shape)
    kw = params.draw(rma_params(output_mode="multilabel"))
    expected = rma.decide(as_rows(probs), check_config(shape[1], **kw))
    got = rd.row_decisions(da.from_array(probs, chunks=chunks), **kw).compute()
    for name, a, b in zip(expected._fields, expected, got):
        if name == "threshold":
            np.testing.assert_allclose(a, b, rtol=1e-14, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    masks = rankseg(probs, **kw)
    np.testing.assert_array_equal(rankseg(da.from_array(probs, chunks=chunks), **kw).compute(), masks)


@settings(max_examples=60)
@given(
    full=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
    data=st.data(),
)
def test_local_tie_end_is_the_global_rule(full, data):
    """A chunk's local cut equals the count of its pixels whose global flat index is below k."""
    offsets = tuple(data.draw(st.integers(0, n - 1)) for n in full)
    chunk = tuple(data.draw(st.integers(1, n - o)) for n, o in zip(full, offsets))
    k = data.draw(st.integers(-1, int(np.prod(full)) + 1))
    glob = np.arange(int(np.prod(full))).reshape(full)
    block = glob[tuple(slice(o, o + c) for o, c in zip(offsets, chunk))].reshape(-1)
    local = _chunks.local_tie_end(k, offsets, chunk, full)
    assert local == int((block < k).sum())
    assert (block[:local] < k).all()  # a prefix of the chunk's own order


def test_tie_cuts_materialise_across_chunks():
    """Masks with a cut inside a tie group (mask = p > t, or p == t before index k)."""
    from rankseg_np.cpu import masks_from

    rng = np.random.default_rng(3)
    probs = rng.choice([0.25, 0.5, 0.75], size=(2, 2, 7, 9)).astype(np.float32)
    p3 = as_rows(probs)
    d = 63
    threshold = np.array([[0.5, 0.25], [0.75, 0.5]])
    tie_end = np.array([[17, 0], [d, 40]], dtype=np.int64)
    active, mu = np.ones((2, 2), bool), p3.sum(-1)
    dec = Decisions(threshold, tie_end, active, mu, np.zeros((2, 2)), np.zeros((2, 2)))
    from rankseg_np._decision import RowDecision

    expected = masks_from(p3, RowDecision(threshold, tie_end, active, mu)).reshape(probs.shape)
    for cy, cx in [(3, 4), (1, 9), (7, 2), (2, 5)]:
        x = da.from_array(probs, chunks=(1, 1, cy, cx))
        for (ib, ic, iy, ix) in np.ndindex(*x.numblocks):
            off = (sum(x.chunks[2][:iy]), sum(x.chunks[3][:ix]))
            block = probs[ib : ib + 1, ic : ic + 1, off[0] : off[0] + x.chunks[2][iy], off[1] : off[1] + x.chunks[3][ix]]
            got = _chunks.masks_chunk(block, dec, (ib, ib + 1, ic, ic + 1), off, (7, 9), 1)
            want = expected[ib : ib + 1, ic : ic + 1, off[0] : off[0] + block.shape[2], off[1] : off[1] + block.shape[3]]
            np.testing.assert_array_equal(got, want)


# ------------------------------------------------------ solvers, strategy


@pytest.mark.parametrize(
    "kw",
    [
        dict(solver="exact"),
        dict(solver="exact", metric="iou", output_mode="multilabel"),
        dict(solver="BA", output_mode="multilabel"),
        dict(solver="TRNA", output_mode="multilabel"),
        dict(solver="BA+TRNA", output_mode="multilabel", eps=1e-3),
        dict(metric="accuracy", solver="argmax"),
        dict(metric="accuracy", solver="TR", output_mode="multilabel"),
    ],
)
def test_other_solvers_batch_chunked(kw):
    if kw.get("solver") == "exact":
        pytest.importorskip("rankseg_np.cpu.exact")
    probs = make_probs((3, 3, 10, 9), np.float64, "softmax", 11)
    x = da.from_array(probs, chunks=(1, 3, 10, 9))
    assert rd.strategy(x, **kw) == "blockwise"
    _same(rankseg(x, **kw), rankseg(probs, **kw))


def test_exact_multilabel_class_chunks_and_exact_multiclass_merge():
    pytest.importorskip("rankseg_np.cpu.exact")
    probs = make_probs((2, 3, 8, 7), np.float64, "softmax", 5)
    x = da.from_array(probs, chunks=(1, 1, 8, 7))  # whole rows, classes split
    for kw in [dict(solver="exact", output_mode="multilabel"), dict(solver="exact")]:
        _same(rankseg(x, **kw), rankseg(probs, **kw))


@pytest.mark.parametrize("solver", ["exact", "BA", "TRNA"])
def test_spatial_chunks_refuse_other_solvers(solver):
    x = da.from_array(make_probs((1, 2, 8, 8), np.float32, "softmax", 0), chunks=(1, 2, 4, 8))
    with pytest.raises(NotImplementedError, match="rechunk"):
        rankseg(x, solver=solver, output_mode="multilabel")


def test_accuracy_any_chunking():
    probs = make_probs((2, 3, 9, 8), np.float32, "softmax", 4)
    x = da.from_array(probs, chunks=(1, 1, 4, 3))
    _same(rankseg(x, metric="accuracy", solver="argmax"), rankseg(probs, metric="accuracy", solver="argmax"))
    _same(rankseg(x, metric="accuracy", solver="TR", output_mode="multilabel"),
          rankseg(probs, metric="accuracy", solver="TR", output_mode="multilabel"))
    with pytest.warns(UserWarning, match="one-hot"):
        lazy = rankseg(x, metric="accuracy", solver="argmax", output_mode="multilabel")
    with pytest.warns(UserWarning, match="one-hot"):
        expected = rankseg(probs, metric="accuracy", solver="argmax", output_mode="multilabel")
    _same(lazy, expected)


def test_whole_image_chunks_helper():
    x = da.zeros((5, 3, 16, 16), chunks=(5, 1, 4, 4))
    y = rd.whole_image_chunks(x, 2)
    assert y.chunks == ((2, 2, 1), (3,), (16,), (16,))
    assert rd.strategy(y, solver="exact") == "blockwise"
    with pytest.raises(ValueError, match="images_per_chunk"):
        rd.whole_image_chunks(x, 0)


# ------------------------------------------------------ laziness, errors

CALLS: list[int] = []


def _counted(block):
    CALLS.append(1)
    return block


@pytest.mark.parametrize("chunks", [(1, 3, 12, 10), (1, 3, 5, 4)])
@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_nothing_is_computed_before_compute(chunks, mode):
    probs = make_probs((2, 3, 12, 10), np.float32, "softmax", 2)
    x = da.from_array(probs, chunks=chunks).map_blocks(_counted, dtype=probs.dtype)
    CALLS.clear()
    lazy = rankseg(x, output_mode=mode, smooth=1.0)
    assert isinstance(lazy, da.Array) and not CALLS
    np.testing.assert_array_equal(lazy.compute(), rankseg(probs, output_mode=mode, smooth=1.0))
    assert CALLS


def _message(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("chunks", [(2, 2, 6, 5), (1, 2, 3, 2), (2, 1, 6, 5)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.25, 1.5])
def test_bad_values_raise_at_compute_with_the_in_memory_message(chunks, bad):
    probs = make_probs((2, 2, 6, 5), np.float32, "softmax", 9)
    probs[1, 0, 4, 3] = bad
    expected = _message(lambda: rankseg(probs))
    lazy = rankseg(da.from_array(probs, chunks=chunks))  # no error yet: nothing is read
    got = _message(lazy.compute)
    if chunks == (1, 2, 3, 2) or np.isnan(bad) or np.isinf(bad):
        assert got == expected  # reduction strategy: the whole array's range
    else:
        # blockwise: the same message, with the range of the chunk that holds the value
        assert got.split(";")[0] == expected.split(";")[0] and str(float(np.float32(bad))) in got


def test_unknown_chunk_sizes_are_refused():
    x = da.from_array(np.full((1, 2, 4, 4), 0.5))
    x = x[x.sum(axis=(1, 2, 3)) > 0]  # boolean indexing: unknown batch size
    with pytest.raises(ValueError):
        rankseg(x)


# ------------------------------------------------------ memory (default)

ALIVE = {"now": 0, "peak": 0}


def _tracked_chunk(block_info=None):
    """A chunk generated from its position; counts how many generated chunks are alive."""
    loc = block_info[None]["array-location"]
    shape = block_info[None]["chunk-shape"]
    seed = [int(a) for a, _ in loc]
    arr = np.random.default_rng(seed).random(shape, dtype=np.float32)
    ALIVE["now"] += 1
    ALIVE["peak"] = max(ALIVE["peak"], ALIVE["now"])
    weakref.finalize(arr, lambda: ALIVE.__setitem__("now", ALIVE["now"] - 1))
    return arr


@pytest.mark.parametrize("layout", ["two-class chunks", "p and 1 - p concatenated"])
@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_passes_stream_the_input(layout, mode):
    """No pass keeps the input: at most a few generated chunks are alive at any time
    (keeping them from one pass to the next would hold all 64)."""
    if layout == "two-class chunks":  # the tracked arrays are the input's chunks
        x = da.map_blocks(_tracked_chunk, chunks=((1,), (2,), (16,) * 8, (16,) * 8), dtype=np.float32)
    else:  # the class axis is chunked; multiclass output merges it
        p = da.map_blocks(_tracked_chunk, chunks=((1,), (1,), (16,) * 8, (16,) * 8), dtype=np.float32)
        x = da.concatenate([1 - p, p], axis=1)
    ALIVE.update(now=0, peak=0)
    with dask.config.set(scheduler="threads", num_workers=2):
        got = rankseg(x, output_mode=mode).compute()
    assert ALIVE["peak"] <= 8, ALIVE
    np.testing.assert_array_equal(got, rankseg(x.compute(scheduler="sync"), output_mode=mode))


# ---------------------------------------------------- threads, processes


def test_threaded_scheduler_deterministic():
    probs = make_probs((2, 3, 30, 28), np.float32, "softmax", 8)
    x = da.from_array(probs, chunks=(1, 1, 8, 9))
    with dask.config.set(scheduler="threads", num_workers=4):
        first = rankseg(x, smooth=0.5).compute()
        second = rankseg(x, smooth=0.5).compute()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, rankseg(probs, smooth=0.5))


def test_distributed_local_cluster_two_processes():
    distributed = pytest.importorskip("dask.distributed")
    probs = make_probs((2, 3, 40, 30), np.float64, "softmax", 6)
    cases = [
        ((1, 1, 17, 11), dict()),
        ((1, 2, 40, 7), dict(output_mode="multilabel", metric="iou", smooth=1.0)),
        ((1, 3, 40, 30), dict(smooth=0.5)),
    ]
    with dask.config.set(scheduler=None), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        lazies = [rankseg(da.from_array(probs, chunks=ch), **kw) for ch, kw in cases]
        results = client.compute(lazies, sync=True)
        bad = probs.copy()
        bad[0, 1, 3, 4] = np.nan
        with pytest.raises(ValueError, match="finite"):
            client.compute(rankseg(da.from_array(bad, chunks=(1, 1, 20, 30))), sync=True)
    for (_, kw), got in zip(cases, results):
        np.testing.assert_array_equal(got, rankseg(probs, **kw))


# ------------------------------------------------------ memory (slow)

_LAZY_2GIB = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, dask, dask.array as da
    from rankseg_np import rankseg

    side, chunk, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    # A two-class map generated lazily, chunk by chunk, from a seed.
    p = da.random.default_rng(12345).random((1, 1, side, side), chunks=(1, 1, chunk, chunk), dtype=np.float32)
    x = da.concatenate([1 - p, p], axis=1)
    if mode == "dask":
        with dask.config.set(scheduler="threads", num_workers=2):
            rows = rankseg(x).sum(axis=-1).compute()
    else:
        rows = rankseg(x.compute()).sum(axis=-1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "rows": rows.ravel().tolist()}))
    """
)


def _run_lazy_map(mode: str, side: int, chunk: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, "-c", _LAZY_2GIB, str(side), str(chunk), mode],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_lazy_2gib_two_class_map_bounded_memory():
    """2 GiB of float32 probabilities (1, 2, 16384, 16384), generated lazily: peak RSS under
    1.5 GiB through rankseg + a reduction, and the in-memory answer (per-row label sums)."""
    side, chunk = 16384, 4096
    lazy = _run_lazy_map("dask", side, chunk)
    assert lazy["peak"] < 1.5 * 2**30, f"peak RSS {lazy['peak'] / 2**30:.2f} GiB"
    eager = _run_lazy_map("memory", side, chunk)
    assert lazy["rows"] == eager["rows"]


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_smallest_subnormal_is_not_an_internal_error(metric):
    """Issue 12.7: a row whose lower bound is 0 puts the threshold on the window's floor (allowed)."""
    probs = np.array([[[5e-324, 0.0]]])
    kw = dict(metric=metric, output_mode="multilabel", pruning_prob=0.0)
    got = rankseg(da.from_array(probs, chunks=1), **kw).compute()
    np.testing.assert_array_equal(got, rankseg(probs, **kw))
    np.testing.assert_array_equal(got, [[[True, False]]])


def test_argmax_ties_across_class_chunks_take_the_lowest_class():
    probs = np.full((2, 4, 3, 3), 0.25)
    probs[0, 2:, 0, 0] = [0.5, 0.5]  # a tie between classes 2 and 3, in different chunks
    probs[0, :2, 0, 0] = 0.0
    got = rankseg(da.from_array(probs, chunks=(1, 1, 3, 2)), metric="acc").compute()
    np.testing.assert_array_equal(got, probs.argmax(axis=1))
