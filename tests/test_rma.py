"""The Numba RMA path against the NumPy reference (MATH sections 4-5) and brute force."""

from __future__ import annotations

import contextlib
import itertools

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankseg_np import RankSEG, rankseg
from rankseg_np import _reference as ref
from rankseg_np._validate import check_config
from ties import assert_labels_tie_equal
from strategies import make_probs, prob_arrays, rma_params

# Two float64 evaluations of the same objective on different masks agree to
# within a few ulps times the number of summed terms (d <= ~10^3 here), far
# below 1e-12 relative; a genuinely worse mask loses by at least
# min |p_i - p_j| / (mu + d) ~ 1e-4 for these inputs.
TIE_RTOL = 1e-12


def objectives(p2, masks, metric, smooth):
    return np.array([ref.rma_objective(p, m, metric, smooth) for p, m in zip(p2, masks)])


def assert_masks_optimal_like_reference(probs, ours, params):
    """Equal masks, or (a tie) the same float64 RMA objective as the reference's."""
    b, c = probs.shape[:2]
    cfg = check_config(c, **{**params, "output_mode": "multilabel"})
    expected = ref.rankseg_reference(probs, cfg)
    p2 = probs.astype(np.float64).reshape(b * c, -1)
    ours2, exp2 = ours.reshape(b * c, -1), expected.reshape(b * c, -1)
    differ = np.flatnonzero((ours2 != exp2).any(axis=1))
    for r in differ:  # a tie: both masks attain the same objective
        a = ref.rma_objective(p2[r], ours2[r], cfg.metric, cfg.smooth)
        e = ref.rma_objective(p2[r], exp2[r], cfg.metric, cfg.smooth)
        assert a == pytest.approx(e, rel=TIE_RTOL, abs=1e-15), (r, p2[r], ours2[r], exp2[r])
    return expected


@settings(max_examples=150)
@given(prob_arrays(), rma_params(output_mode="multilabel"))
def test_multilabel_matches_reference(probs, params):
    ours = rankseg(probs, **params)
    assert ours.dtype == np.bool_ and ours.shape == probs.shape
    assert_masks_optimal_like_reference(probs, ours, params)


@settings(max_examples=150)
@given(prob_arrays(min_class=2), rma_params(output_mode="multiclass"))
def test_multiclass_matches_reference(probs, params):
    ours = rankseg(probs, **params)
    b, c = probs.shape[:2]
    assert ours.dtype == np.int64 and ours.shape == (b,) + probs.shape[2:]
    ml = {k: v for k, v in params.items() if k not in ("unassigned_policy", "void_index")}
    masks = rankseg(probs, **{**ml, "output_mode": "multilabel"})
    expected_masks = assert_masks_optimal_like_reference(probs, masks, ml)
    if not np.array_equal(masks, expected_masks):
        return  # different (tied) per-class masks legitimately lead to different labels
    cfg = check_config(c, **params)
    _, active = ref.binary_masks(probs, cfg)
    expected = ref.resolve(probs, expected_masks, active, cfg).reshape(ours.shape)
    # Only exact ties of the increment score may differ (partial sums in another order).
    assert_labels_tie_equal(probs, ours, expected, expected_masks, cfg, rtol=1e-12)


@settings(max_examples=120)
@given(
    st.integers(1, 12),
    st.sampled_from(["softmax", "ties", "zero_one", "uniform"]),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["dice", "iou"]),
    st.sampled_from([0.0, 0.3, 2.0]),
)
def test_threshold_solution_maximises_rma_over_all_masks(d, kind, seed, metric, smooth):
    """Brute force over all 2^d masks: no mask beats the solver's (MATH section 4)."""
    p = make_probs((1, 1, d), np.float64, kind, seed)
    p[0, 0, 0] = max(p[0, 0, 0], 0.75)  # keep the row active
    ours = rankseg(p, metric=metric, smooth=smooth, output_mode="multilabel")[0, 0]
    allm = np.array(list(itertools.product([False, True], repeat=d)))
    if smooth == 0.0:
        allm = allm[allm.any(axis=1)]  # the empty mask is no candidate when smooth = 0
    q = p[0, 0]
    s, tau, mu = allm @ q, allm.sum(axis=1), q.sum()
    if metric == "dice":
        pi = 2 * s / (mu + tau + smooth + 1) + smooth / (mu + tau + smooth)
    else:
        pi = (s + smooth) / (mu - s + tau + smooth)
    best = pi.max()
    got = ref.rma_objective(q, ours, metric, smooth)
    assert got == pytest.approx(best, rel=TIE_RTOL, abs=1e-15)
    assert got >= best - 1e-12


@settings(max_examples=60)
@given(prob_arrays(dtypes=(np.float64,)), rma_params(), st.integers(0, 2**32 - 1))
def test_pixel_permutation_permutes_answer(probs, params, seed):
    # Continuous values: the tie rule (lowest index first) is then never needed.
    probs = make_probs(probs.shape, np.float64, "softmax" if probs.shape[1] > 1 else "sigmoid", seed)
    if params["output_mode"] == "multiclass" and probs.shape[1] == 1:
        params["output_mode"] = "multilabel"
        params.pop("unassigned_policy", None), params.pop("void_index", None)
    b, c = probs.shape[:2]
    flat = probs.reshape(b, c, -1)
    perm = np.random.default_rng(seed).permutation(flat.shape[2])
    base = rankseg(flat, **params)
    permuted = rankseg(flat[:, :, perm], **params)
    np.testing.assert_array_equal(permuted, base[..., perm])


@settings(max_examples=40)
@given(prob_arrays(min_class=2, max_batch=4), rma_params())
def test_images_are_independent(probs, params):
    whole = rankseg(probs, **params)
    for i in range(probs.shape[0]):
        np.testing.assert_array_equal(rankseg(probs[i : i + 1], **params), whole[i : i + 1])
    if params["output_mode"] == "multilabel":  # and rows (classes) too
        for k in range(probs.shape[1]):
            np.testing.assert_array_equal(rankseg(probs[:, k : k + 1], **params)[:, 0], whole[:, k])


@pytest.mark.parametrize("params", [dict(), dict(metric="iou", smooth=1.0), dict(smooth=2.0, output_mode="multilabel")])
def test_deterministic_across_runs_and_thread_counts(params, monkeypatch):
    from rankseg_np import cpu

    probs = make_probs((3, 5, 300, 300), np.float32, "softmax", 7)
    monkeypatch.setattr(cpu, "SERIAL_BELOW", probs.size)  # really parallel (one thread: the serial kernels)
    first = rankseg(probs, **params)
    threads = numba.get_num_threads()
    try:
        results = []
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            results.append(rankseg(probs, **params))
    finally:
        numba.set_num_threads(threads)
    for r in results + [rankseg(probs, **params)]:
        np.testing.assert_array_equal(r, first)


@settings(max_examples=40)
@given(prob_arrays(dtypes=(np.float16, np.float32)), rma_params())
def test_dtype_and_layout_do_not_change_the_answer(probs, params):
    if params["output_mode"] == "multiclass" and probs.shape[1] == 1:
        return
    as64 = rankseg(probs.astype(np.float64), **params)
    np.testing.assert_array_equal(rankseg(probs, **params), as64)
    # non-contiguous view with the same values, and a read-only array
    wide = np.zeros(probs.shape[:-1] + (2 * probs.shape[-1],), dtype=probs.dtype)
    wide[..., ::2] = probs
    np.testing.assert_array_equal(rankseg(wide[..., ::2], **params), as64)
    frozen = probs.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(rankseg(frozen, **params), as64)
    fortran = np.asfortranarray(probs)
    np.testing.assert_array_equal(rankseg(fortran, **params), as64)
    swapped = probs.astype(probs.dtype.newbyteorder("S"))  # non-native byte order, same values
    np.testing.assert_array_equal(rankseg(swapped, **params), as64)


@settings(max_examples=30)
@given(prob_arrays(), rma_params())
def test_callers_array_is_not_modified(probs, params):
    if params["output_mode"] == "multiclass" and probs.shape[1] == 1:
        return
    before = probs.copy()
    rankseg(probs, **params)
    np.testing.assert_array_equal(probs, before)


def test_all_pruned_image_falls_back_to_all_classes():
    """Every class pruned: 'max_score' lets all classes compete; 'void' abstains everywhere."""
    probs = make_probs((2, 4, 6, 6), np.float64, "softmax", 3) * 0.4  # every value <= 0.4
    cfg = check_config(4)
    labels = rankseg(probs)
    np.testing.assert_array_equal(labels, ref.rankseg_reference(probs, cfg))
    # With nothing claimed, tau = m = 0 and Delta_c = 2 p_c / (mu_c + 2): not argmax of p.
    mu = probs.sum(axis=(2, 3), keepdims=True)
    np.testing.assert_array_equal(labels, np.argmax(2 * probs / (mu + 2), axis=1))
    void = rankseg(probs, unassigned_policy="void", void_index=-7)
    assert (void == -7).all()


def test_empty_batch_and_single_pixel():
    assert rankseg(np.zeros((0, 3, 4, 4))).shape == (0, 4, 4)
    assert rankseg(np.zeros((0, 3, 4, 4)), output_mode="multilabel").shape == (0, 3, 4, 4)
    one = np.array([[[0.7]], [[0.2]]]).reshape(2, 1, 1)
    np.testing.assert_array_equal(rankseg(one, output_mode="multilabel").ravel(), [True, False])


def test_smooth_band_with_heavy_ties_matches_reference():
    """Dice with smooth > 0 (two ratios, band method) on rows full of tie groups."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = np.round(rng.uniform(0, 1, (1, 1, rng.integers(1, 30))), 2)
        p[0, 0, 0] = 0.9
        smooth = float(rng.choice([0.05, 0.5, 3.0, 30.0]))
        ours = rankseg(p, smooth=smooth, output_mode="multilabel")
        assert_masks_optimal_like_reference(p, ours, dict(smooth=smooth))


@settings(max_examples=200)
@given(st.integers(2, 40), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.05, 1.0, 20.0]), st.sampled_from(["dice", "iou"]))
def test_rma_optimum_never_needs_to_split_a_tie_group(d, seed, smooth, metric):
    """The property the solvers rely on to return whole tie groups (proof in cpu/rma.py):
    over all volumes, the best RMA value is attained at a tie-group boundary."""
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(np.round(rng.uniform(0, 1, 4), 2), size=d))[::-1]  # few values: big groups
    pi = ref.rma_objective_curve(q, q.sum(), metric, smooth)
    boundary = np.ones(d + 1, dtype=bool)
    boundary[1:d] = q[:-1] != q[1:]  # tau sits between two different values
    assert pi[boundary].max() == pytest.approx(pi.max(), rel=TIE_RTOL, abs=1e-15)


def test_class_and_functional_agree():
    probs = make_probs((2, 3, 16, 16), np.float32, "softmax", 11)
    model = RankSEG(metric="iou", smooth=0.5, pruning_prob=0.3)
    np.testing.assert_array_equal(model.predict(probs), rankseg(probs, metric="iou", smooth=0.5, pruning_prob=0.3))
    np.testing.assert_array_equal(model(probs), model.predict(probs))
    assert "iou" in repr(model)


def test_accuracy_solvers():
    probs = make_probs((2, 3, 5, 5), np.float32, "softmax", 2)
    np.testing.assert_array_equal(rankseg(probs, metric="acc", solver="argmax"), probs.argmax(axis=1))
    np.testing.assert_array_equal(rankseg(probs, metric="accuracy", solver="TR", output_mode="multilabel"), probs > 0.5)
    with pytest.warns(UserWarning, match="one-hot"):
        onehot = rankseg(probs, metric="acc", solver="argmax", output_mode="multilabel")
    np.testing.assert_array_equal(onehot.argmax(axis=1), probs.argmax(axis=1))
    assert (onehot.sum(axis=1) == 1).all()
    single = probs[:, :1]
    np.testing.assert_array_equal(rankseg(single, metric="acc", solver="tr", output_mode="multilabel"), single > 0.5)


def test_small_inputs_run_the_serial_kernels(monkeypatch):
    """Below cpu.SERIAL_BELOW values the serial twins run (cheaper to compile, no parallel region)."""
    from rankseg_np import cpu
    from rankseg_np.cpu import _threads, rma

    probs = make_probs((1, 3, 8, 8), np.float32, "softmax", 1)
    ran = []
    monkeypatch.setattr(_threads.ParallelKernel, "serial", property(lambda self: ran.append(self) or self.parallel))
    rankseg(probs)
    assert rma._dice_rows in ran
    ran.clear()
    monkeypatch.setattr(cpu, "SERIAL_BELOW", 0)
    if numba.get_num_threads() > 1:
        rankseg(probs)
        assert ran == []


def test_half_to_single_every_pattern():
    """The CPU's float16 decoder equals NumPy's cast on all 65,536 bit patterns (NaN payloads too)."""
    from rankseg_np.cpu._kernels import half_to_single
    from rankseg_np.cpu._threads import serial_here

    every = np.arange(1 << 16, dtype=np.uint16)
    bits = np.concatenate([every, every[::-1], every[:1000]])  # three parallel blocks, one partial
    expected = bits.view(np.float16).astype(np.float32)
    for serial in (False, True):
        out = np.full(bits.size, np.nan, dtype=np.float32)
        with serial_here() if serial else contextlib.nullcontext():
            half_to_single(bits, out)
        np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


def _scan(row, low_value, cut, room):
    from rankseg_np.cpu._kernels import as_bits, bit_pattern, scan_row

    lanes = 64 // row.itemsize
    out = np.full(room + lanes, np.nan, dtype=row.dtype)
    return scan_row(row, as_bits(row), bit_pattern(low_value, row.dtype), row.dtype.type(cut), out), out


def _block_order(row):
    """The row's 64-byte blocks (as index arrays) in their documented order: with Q = blocks // 4,
    blocks i, Q + i, 2Q + i, 3Q + i for i < Q, then the blocks left over in turn; then the tail."""
    lanes = 64 // row.itemsize
    n_blocks = row.size // lanes
    q = n_blocks // 4
    order = [k * q + i for i in range(q) for k in range(4)] + list(range(4 * q, n_blocks))
    return [np.arange(b * lanes, (b + 1) * lanes) for b in order], np.arange(n_blocks * lanes, row.size)


def _scan_order(row):
    """The row's entries in the order scan_row reads (and packs) them."""
    blocks, tail = _block_order(row)
    return row[np.concatenate(blocks + [tail]).astype(np.int64)]


def _scan_order_sum(row, above=-np.inf):
    """The float64 sum of scan_row and sum_above (of the entries above ``above``) transcribed:
    per-lane sums of 64-byte blocks, one for each quarter of the row (blocks kQ + i in turn; the
    blocks left over go to the first quarter's), added as (s0 + s1) + (s2 + s3), halves added
    lane by lane, then the tail in order."""
    lanes = 64 // row.itemsize
    n_blocks = row.size // lanes
    quarter = n_blocks // 4
    values = np.where(row.astype(np.float64) > above, row.astype(np.float64), 0.0)
    block = values[: n_blocks * lanes].reshape(n_blocks, lanes)
    acc = np.zeros((4, lanes))
    for i in range(quarter):
        for k in range(4):
            acc[k] = acc[k] + block[k * quarter + i]
    for b in range(4 * quarter, n_blocks):
        acc[0] = acc[0] + block[b]
    acc = (acc[0] + acc[1]) + (acc[2] + acc[3])
    while acc.size > 1:
        acc = acc[: acc.size // 2] + acc[acc.size // 2:]
    total = acc[0]
    for v in values[n_blocks * lanes:]:
        total += float(v)
    return total


# A row (dtype, length, seed), a cut in [0, 1] and whether to put ties on it.
_ROW_AND_CUT = (
    st.sampled_from([np.float32, np.float64]), st.integers(0, 300), st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0), st.booleans(),
)


@settings(max_examples=300)
@given(*_ROW_AND_CUT, st.integers(0, 80))
def test_scan_row_is_the_selection_sum_and_count(dtype, n, seed, cut, ties, room):
    """scan_row == NumPy: the entries above the cut in its reading order (while they fit), their
    count, the top pattern, and the float64 sum bit for bit in its documented order."""
    from rankseg_np.cpu._kernels import as_bits

    rng = np.random.default_rng(seed)
    row = rng.random(n).astype(dtype)
    cut = dtype(cut)
    if ties and n:
        row[rng.integers(0, n, n // 2)] = cut  # entries at the cut stay out
    (total, top, n_low, k), out = _scan(row, float(cut), cut, room)
    in_order = _scan_order(row)
    expected = in_order[in_order > cut]
    assert n_low == expected.size
    assert top == (as_bits(row).max() if n else 0)
    assert total == _scan_order_sum(row)
    if expected.size <= room:
        assert k == expected.size
        np.testing.assert_array_equal(out[:k], expected)
    assert np.isnan(out[k:]).all()  # nothing written past the entries kept


@settings(max_examples=200)
@given(*_ROW_AND_CUT)
def test_sum_above_is_its_documented_sum(dtype, n, seed, t, tie):
    """sum_above: the count of entries above t (compared in float64), and their float64 sum bit
    for bit in its documented order, whatever the CPU; strided views are read as they are."""
    from rankseg_np.cpu._kernels import sum_above

    rng = np.random.default_rng(seed)
    row = rng.random(n).astype(dtype)
    if tie and n:
        t = float(row[rng.integers(0, n)])  # entries equal to t stay out
    s, count = sum_above(row, t)
    assert count == np.count_nonzero(row.astype(np.float64) > t)
    assert s == _scan_order_sum(row, t)
    strided = np.repeat(row, 2)[::2]
    assert sum_above(strided, t) == (s, count)


@settings(max_examples=200)
@given(st.sampled_from([np.float32, np.float64]), st.integers(1, 300), st.integers(0, 2**32 - 1),
       st.sampled_from(["value", "above", "below"]))
def test_sum_above_beside_an_entry(dtype, n, seed, where):
    """sum_above with ``t`` an entry or one float64 step beside it: for float32 rows a ``t`` between
    two float32 values, which rounds to the entry ("below"), yet the entries equal to it are above
    ``t`` (sum_above compares in the row's precision against the largest value at most ``t``)."""
    from rankseg_np.cpu._kernels import sum_above

    rng = np.random.default_rng(seed)
    row = np.round(rng.random(n), 2).astype(dtype)  # ties
    v = float(row[rng.integers(0, n)])
    t = {"value": v, "above": np.nextafter(v, 2.0), "below": np.nextafter(v, -1.0)}[where]
    s, count = sum_above(row, t)
    assert count == np.count_nonzero(row.astype(np.float64) > t)
    assert s == _scan_order_sum(row, t)


@settings(max_examples=300)
@given(
    st.sampled_from([np.float32, np.float64]),
    st.integers(1, 200),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["value", "above", "below", "any", "inf"]),
    st.integers(-5, 210),
)
def test_mask_row_is_the_tie_rule(dtype, n, seed, where, k):
    """mask_row == (p > t) | ((p == t) & (j < k)) compared in float64, for thresholds on, just
    above and just below the row's values (float64 numbers between two float32 ones)."""
    from rankseg_np.cpu._kernels import mask_row

    rng = np.random.default_rng(seed)
    row = np.round(rng.random(n), 2).astype(dtype)  # ties
    v = float(row[rng.integers(0, n)])
    t = {"value": v, "above": np.nextafter(v, 2.0), "below": np.nextafter(v, -1.0),
         "any": float(rng.random()), "inf": np.inf}[where]
    out = np.empty(n, dtype=np.bool_)
    mask_row(row, t, k, out)
    wide = row.astype(np.float64)
    np.testing.assert_array_equal(out, (wide > t) | ((wide == t) & (np.arange(n) < k)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masks_of_strided_and_fortran_views(dtype):
    """materialize and mask_row on rows that are not C-contiguous (a Fortran-order array, strided
    and offset views, a strided output): the same masks as on contiguous copies."""
    from rankseg_np.cpu._kernels import mask_row, materialize

    rng = np.random.default_rng(3)
    p = np.round(rng.random((4, 301)), 2).astype(dtype)
    threshold = np.array([0.5, np.nextafter(0.25, 1.0), 0.7, -1.0])
    tie_end = np.array([0, 0, 40, 0])  # row 2: ties at 0.7 before pixel 40
    for view in (np.asfortranarray(p), np.repeat(p, 2, axis=1)[:, ::2], p[:, 1:]):
        d = view.shape[1]
        wide = view.astype(np.float64)
        want = (wide > threshold[:, None]) | ((wide == threshold[:, None]) & (np.arange(d) < tie_end[:, None]))
        out = np.empty((4, d), dtype=np.bool_)
        materialize(view, threshold, tie_end, out)
        np.testing.assert_array_equal(out, want)
        strided_out = np.empty((4, 2 * d), dtype=np.bool_)[:, ::2]
        for r in range(4):
            mask_row(view[r], threshold[r], tie_end[r], strided_out[r])
        np.testing.assert_array_equal(strided_out, want)


def test_scan_row_stops_packing_past_its_room():
    row = np.linspace(0.0, 1.0, 1000, dtype=np.float32)
    (total, _, n_low, k), out = _scan(row, 0.25, 0.25, 100)
    assert n_low == np.count_nonzero(row > 0.25) > 100 + 16 >= k and total == _scan_order_sum(row)
    in_order = _scan_order(row)
    np.testing.assert_array_equal(out[:k], in_order[in_order > 0.25][:k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_test_of_values(dtype):
    """scan_row's pattern tests: in [0, 1] exactly when the top pattern is at most 1.0's (but -0.0);
    maximum and count above t by patterns, as by values; in the vector blocks and in the tail."""
    from rankseg_np.cpu._kernels import bit_pattern

    dt = np.dtype(dtype)
    one = bit_pattern(1.0, dt)
    values = np.array([0.0, 0.25, 1.0, 0.5, 0.1], dtype=dtype)
    for base in (values, np.tile(values, 7)):  # a tail only; 64-byte blocks and a tail
        (total, top, _, _), _ = _scan(base, 1.0, 2.0, 0)
        assert total == pytest.approx(1.85 * base.size / 5, rel=1e-7) and top == one
        for at in (1, base.size - 2):
            for bad in (-1e-30, -0.5, 1.0000001, np.inf, -np.inf, np.nan):
                row = base.copy()
                row[at] = bad
                assert _scan(row, 1.0, 2.0, 0)[0][1] > one, bad
        for t in (0.0, 0.1, 0.099999, 0.25, 0.3, 0.5, 0.999, 1.0, 1 / 3):
            (_, top, count, _), _ = _scan(base, t, 2.0, 0)
            assert count == np.count_nonzero(base.astype(np.float64) > t), t
            assert (top > bit_pattern(t, dt)) == (base.max() > t), t


@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
def test_negative_zero_is_a_valid_zero(output_mode):
    probs = make_probs((2, 3, 7, 9), np.float32, "softmax", 3)
    signed = probs.copy()
    signed[0, 1, :2] = -0.0
    plain = signed + np.float32(0.0)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(rankseg(signed, output_mode=output_mode), rankseg(plain, output_mode=output_mode))


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_rows_below_and_above_the_packing_level(metric, smooth):
    """Rows whose first Dinkelbach threshold is below rma.LOW (the whole row) or above it (packed entries only)."""
    from rankseg_np.cpu import rma

    rng = np.random.default_rng(7)
    flat = np.full((1, 1, 500), 0.2)  # mask {p > 1/2} empty: first threshold 0
    weak = rng.random((1, 1, 500)) * 0.6  # a poor 1/2-mask
    sharp = np.where(rng.random((1, 1, 500)) < 0.2, 0.95, 0.02) + rng.random((1, 1, 500)) * 0.01
    probs = np.concatenate([flat, weak, sharp], axis=1)
    ours = rankseg(probs, metric=metric, smooth=smooth, output_mode="multilabel")
    assert_masks_optimal_like_reference(probs, ours, {"metric": metric, "smooth": smooth, "output_mode": "multilabel"})
    firsts = []
    for row in probs[0]:
        s, n = row[row > 0.5].sum(), (row > 0.5).sum()
        lam = rma.dice_start(0.0, row.sum() + 1.0, s, n) if metric == "dice" else rma.iou_start(smooth, row.sum(), s, n)
        firsts.append(lam / 2 if metric == "dice" else lam / (1 + lam))
    assert min(firsts) < rma.LOW < max(firsts)  # both paths ran


@settings(max_examples=60)
@given(prob_arrays(dtypes=(np.float32, np.float64)), rma_params(output_mode="multilabel"))
def test_fused_masks_equal_masks_of_the_decision(probs, params):
    """rma.masks (decision and mask per row task) == materialize(rma.decide) bit for bit."""
    from rankseg_np import cpu
    from rankseg_np.cpu import rma

    cfg = check_config(probs.shape[1], **params)
    p3 = cpu.as_rows(probs)
    np.testing.assert_array_equal(rma.masks(p3, cfg), cpu.masks_from(p3, rma.decide(p3, cfg)))


def test_float64_bit_tests_are_exact_to_the_last_bit():
    """One ulp above 1, above pruning_prob and above 1/4 in float64 (the patterns must be compared
    as unsigned 64-bit integers, not through float64)."""
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rankseg(np.array([[[0.5, np.nextafter(1.0, 2.0)]]]), output_mode="multilabel")
    p = np.array([[[np.nextafter(0.25, 1.0), 0.125]]])
    cfg = check_config(1, pruning_prob=0.25, output_mode="multilabel")
    np.testing.assert_array_equal(
        rankseg(p, pruning_prob=0.25, output_mode="multilabel"), ref.rankseg_reference(p, cfg)
    )
    row = np.zeros(400)  # entries a few ulps above 1/4 must be counted before they are packed
    row[:14] = 0.25 + 3 * 2.0**-54
    row[14:24] = np.linspace(0.6, 1.0, 10)
    row[24:46] = np.linspace(0.26, 0.6, 22)
    probs = np.tile(row, (8, 1, 1))
    ours = rankseg(probs, output_mode="multilabel")
    assert_masks_optimal_like_reference(probs, ours, {"output_mode": "multilabel"})


_DECISION_BITS = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from strategies import make_probs
from rankseg_np.cpu import as_rows, rma
from rankseg_np._validate import check_config
for metric, smooth in (("dice", 0.0), ("iou", 0.0), ("dice", 1.0)):
    for dtype in (np.float32, np.float64):
        probs = make_probs((2, 5, 37, 101), dtype, "softmax", 11)
        d = rma.decide(as_rows(probs), check_config(5, metric=metric, smooth=smooth))
        print(d.threshold.tobytes().hex(), d.mu.tobytes().hex(), d.tie_end.tobytes().hex())
"""


@pytest.mark.slow
def test_decisions_have_the_same_bits_without_avx512():
    """The RMA decision (thresholds and row sums, bit for bit) is the same when Numba targets a CPU
    without AVX-512 (Haswell: AVX2), in a fresh process with its own cache."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    import tempfile

    code = _DECISION_BITS.format(tests=str(Path(__file__).parent))
    outputs = []
    for target in ({}, {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx2,+fma,+avx,+sse4.2,+popcnt,+bmi2"}):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, **target)
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
