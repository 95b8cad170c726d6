"""The GPU backend against the CPU (Numba) path and the NumPy reference.

The GPU algorithm (``rankseg_np.gpu._core``) is written once against an array
namespace.  Every comparison below is parametrised over where it runs:

* ``xp-numpy``: the GPU code with ``xp = numpy`` and the array-code primitives,
  in the default suite (no GPU needed);
* ``cupy-fused`` / ``cupy-xp``: the same code on a CUDA device with the fused
  CuPy kernels or with the array-code primitives, marked ``gpu`` and skipped
  without CuPy and a device (run with ``pytest -m gpu tests/test_gpu.py``).

Answers must equal the CPU path's, except on ties: a row's mask may differ
only if both masks have the same float64 RMA objective (for the exact
solver: the same exact expected score, from the oracle of tests/oracles.py),
and a label only where the two classes' increment scores are equal to
float64 noise.  Sums
are accumulated in different orders (pairwise in NumPy, a tree on CUDA,
sequentially in Numba), which is what can move a zero-gain pixel.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankseg_np import _reference as ref
from rankseg_np import cpu, gpu
from rankseg_np._validate import check_config
from rankseg_np.gpu import _core, _kernels, _rma, _rows
from oracles import brute_scores, mask_score
from ties import assert_labels_tie_equal
from strategies import make_probs, prob_arrays, rma_params

TIE_RTOL = 1e-12  # see tests/test_rma.py: ties agree to ~1e-15, real differences are >= ~1e-4

HAVE_GPU = gpu.is_available()
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA device")]

RUNNERS = [
    pytest.param(("numpy", False), id="xp-numpy"),
    pytest.param(("cupy", True), id="cupy-fused", marks=needs_gpu),
    pytest.param(("cupy", False), id="cupy-xp", marks=needs_gpu),
]


@pytest.fixture(params=RUNNERS, scope="module")
def run(request):
    """``run(probs_numpy, cfg) -> numpy answer`` of the GPU code on the chosen namespace."""
    name, fused = request.param
    if name == "numpy":
        return lambda probs, cfg: gpu.solve_with(probs, cfg, np, fused=False)
    import cupy

    def on_cupy(probs, cfg):
        out = gpu.solve_with(cupy.asarray(probs), cfg, cupy, fused=fused)
        assert isinstance(out, cupy.ndarray)
        return cupy.asnumpy(out)

    return on_cupy


def cfg_for(probs, params, **overrides):
    return check_config(probs.shape[1], **{**params, **overrides})


def multilabel_params(params):
    return {k: v for k, v in params.items() if k not in ("unassigned_policy", "void_index")} | {
        "output_mode": "multilabel"
    }


def assert_masks_tie_equal(probs, ours, expected, metric, smooth):
    """Equal masks, or per row (a tie) the same float64 RMA objective."""
    b, c = probs.shape[:2]
    p2 = probs.astype(np.float64).reshape(b * c, -1)
    o2, e2 = ours.reshape(b * c, -1), expected.reshape(b * c, -1)
    for r in np.flatnonzero((o2 != e2).any(axis=1)):
        a = ref.rma_objective(p2[r], o2[r], metric, smooth)
        e = ref.rma_objective(p2[r], e2[r], metric, smooth)
        assert a == pytest.approx(e, rel=TIE_RTOL, abs=1e-15), (r, p2[r], o2[r], e2[r])


# --------------------------------------------------------------------------- #
# The comparison suite
# --------------------------------------------------------------------------- #

@settings(max_examples=120)
@given(probs=prob_arrays(), params=rma_params(output_mode="multilabel"))
def test_multilabel_matches_cpu(run, probs, params):
    cfg = cfg_for(probs, params)
    ours = run(probs, cfg)
    expected = cpu.solve(probs, cfg)
    assert ours.dtype == np.bool_ and ours.shape == probs.shape
    assert_masks_tie_equal(probs, ours, expected, cfg.metric, cfg.smooth)


@settings(max_examples=120)
@given(probs=prob_arrays(min_class=2), params=rma_params(output_mode="multiclass"))
def test_multiclass_matches_cpu_and_reference_resolution(run, probs, params):
    cfg = cfg_for(probs, params)
    ours = run(probs, cfg)
    b, c = probs.shape[:2]
    assert ours.dtype == np.int64 and ours.shape == (b,) + probs.shape[2:]

    ml_cfg = cfg_for(probs, multilabel_params(params))
    masks = run(probs, ml_cfg)
    cpu_masks = cpu.solve(probs, ml_cfg)
    assert_masks_tie_equal(probs, masks, cpu_masks, cfg.metric, cfg.smooth)

    # The resolution stage against the oracle, on our own per-class masks.
    _, active = ref.binary_masks(probs, cfg)
    expected = ref.resolve(probs, masks, active, cfg).reshape(ours.shape)
    assert_labels_tie_equal(probs, ours, expected, masks, cfg)
    if np.array_equal(masks, cpu_masks):  # same masks: the CPU labels too
        assert_labels_tie_equal(probs, ours, cpu.solve(probs, cfg), masks, cfg)


PARAM_GRID = [
    dict(metric=m, smooth=s, pruning_prob=pp)
    for m in ("dice", "iou")
    for s in (0.0, 0.5, 4.0)
    for pp in (0.5, 0.1)
]


@pytest.mark.parametrize("params", PARAM_GRID, ids=lambda p: "{metric}-s{smooth}-pp{pruning_prob}".format(**p))
def test_continuous_inputs_identical_to_cpu(run, params):
    """No ties in continuous data: masks and labels must be identical, all dtypes and ranks."""
    cases = [
        ((2, 4, 17, 13), np.float32, "softmax", 1),
        ((1, 3, 6, 7, 5), np.float64, "softmax", 2),  # a 3-D volume
        ((3, 2, 40), np.float16, "sigmoid", 3),
        ((2, 5, 12, 12), np.float32, "uniform", 4),
    ]
    for shape, dtype, kind, seed in cases:
        probs = make_probs(shape, dtype, kind, seed)
        for mode, extra in (("multilabel", {}), ("multiclass", {}), ("multiclass", {"unassigned_policy": "void", "void_index": -7})):
            cfg = cfg_for(probs, params, output_mode=mode, **extra)
            ours, expected = run(probs, cfg), cpu.solve(probs, cfg)
            assert ours.dtype == expected.dtype and ours.shape == expected.shape
            np.testing.assert_array_equal(ours, expected, err_msg=f"{shape} {dtype} {kind} {mode} {extra}")


def test_smooth_band_handles_tie_groups_like_the_reference(run):
    """Dice with smooth > 0 on quantised probabilities: tie groups sit in the band.

    Within a tie group of value q the objective's increments have the sign of
    ``(2 phi - g)(A + tau) - 2 g`` with ``phi`` constant, so they change sign at
    most once, from - to +: the best volume is at a group boundary and the
    whole group is in or out (``tie_end == d``), which the test checks is
    exercised.  (The partial cut inside a group is kept for float rounding.)
    """
    rng = np.random.default_rng(5)
    whole_groups = 0
    for _ in range(60):
        d = int(rng.integers(1, 40))
        probs = np.round(rng.uniform(0, 1, (2, 2, d)), 1)
        probs[:, :, 0] = 0.9
        smooth = float(rng.choice([0.05, 0.5, 3.0, 30.0]))
        cfg = check_config(2, smooth=smooth, output_mode="multilabel")
        ours = run(probs, cfg)
        assert_masks_tie_equal(probs, ours, ref.rankseg_reference(probs, cfg), "dice", smooth)
        decision = _rma.decide(_core.as_rows(probs, np), cfg, np, _kernels.XpKernels(np))
        whole_groups += int((decision.tie_end == d).sum())
    assert whole_groups > 0


# Rows whose RMA curve has several exact maxima (dyadic values: every sum and
# most ratios are exact in float64), found by an exhaustive search over
# multiples of 1/16; the test re-checks the ties with exact fractions.
EXACT_TIE_ROWS = [
    ("dice", 0.0, [5 / 8, 7 / 16, 7 / 16, 1 / 4, 1 / 4]),
    ("iou", 0.0, [15 / 16, 7 / 8, 7 / 16, 3 / 8, 1 / 4, 1 / 8]),
    ("iou", 1.0, [3 / 4, 1 / 2, 3 / 8, 1 / 4, 1 / 8, 0.0]),
    ("dice", 0.5, [5 / 8, 9 / 16, 5 / 16]),
]


def _exact_curve(q, metric, smooth):
    from fractions import Fraction

    q = [Fraction(v) for v in sorted(q, reverse=True)]
    g, mu, s, out = Fraction(smooth), sum(q), Fraction(0), []
    for tau in range(len(q) + 1):
        s += q[tau - 1] if tau else 0
        if metric == "dice":
            out.append(2 * s / (mu + tau + g + 1) + (g / (mu + tau + g) if g else 0))
        else:
            den = mu - s + tau + g
            out.append((s + g) / den if den else Fraction(0))
    return out[1:] if smooth == 0 else out


@pytest.mark.parametrize("metric, smooth, row", EXACT_TIE_ROWS)
def test_exact_ties_pick_the_smallest_optimal_mask(run, metric, smooth, row):
    """On an exact tie of volumes the smallest optimal top-tau set wins (first argmax), like the reference."""
    curve = _exact_curve(row, metric, smooth)
    assert curve.count(max(curve)) > 1  # the input really is a tie
    rng = np.random.default_rng(0)
    p = np.array(row)[rng.permutation(len(row))]
    probs = np.stack([p, 1.0 - p])[None]  # (1, 2, d): also a valid multiclass input
    cfg = check_config(2, metric=metric, smooth=smooth, output_mode="multilabel")
    ours = run(probs, cfg)
    # Every sum here is exact in any order, so the CPU's Dinkelbach / band
    # arithmetic is bit-for-bit ours: the same (smallest) mask.
    np.testing.assert_array_equal(ours, cpu.solve(probs, cfg))
    # The reference evaluates each volume's ratio separately; where an exact
    # tie rounds differently there, only the objective must agree.
    assert_masks_tie_equal(probs, ours, ref.rankseg_reference(probs, cfg), metric, smooth)
    if metric == "dice":  # here the reference's float64 curve keeps the tie exact: same volume
        np.testing.assert_array_equal(ours, ref.rankseg_reference(probs, cfg))


def test_degenerate_inputs(run):
    cases = {
        "single pixel": np.array([[[0.7], [0.3]], [[0.2], [0.8]]]),
        "all pruned": np.full((2, 3, 4, 4), 1 / 3),
        "zeros and ones": make_probs((2, 3, 5, 5), np.float64, "zero_one", 9),
        "constant row": np.concatenate([np.full((1, 1, 30), 0.6), np.full((1, 1, 30), 0.4)], axis=1),
    }
    for name, probs in cases.items():
        for params in (dict(), dict(metric="iou"), dict(smooth=1.0), dict(pruning_prob=0.0), dict(pruning_prob=1.0)):
            for mode in ("multiclass", "multilabel"):
                cfg = cfg_for(probs, params, output_mode=mode)
                np.testing.assert_array_equal(run(probs, cfg), cpu.solve(probs, cfg), err_msg=f"{name} {params} {mode}")


def test_empty_batch(run):
    probs = np.zeros((0, 3, 4, 4), dtype=np.float32)
    assert run(probs, check_config(3)).shape == (0, 4, 4)
    masks = run(probs, check_config(3, output_mode="multilabel"))
    assert masks.shape == probs.shape and masks.dtype == np.bool_


@pytest.mark.parametrize("shape", [(2, 3, 0), (2, 3, 0, 4)])
def test_no_pixels_like_cpu(run, shape):
    probs = np.zeros(shape, dtype=np.float32)
    for params in (dict(), dict(output_mode="multilabel"), dict(solver="exact"), dict(metric="iou", smooth=1.0)):
        cfg = check_config(3, **params)
        ours, expected = run(probs, cfg), cpu.solve(probs, cfg)
        assert ours.shape == expected.shape and ours.dtype == expected.dtype, params


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1.5, -0.25])
def test_bad_values_raise_like_cpu(run, value):
    probs = make_probs((2, 3, 4, 4), np.float32, "softmax", 0)
    probs[1, 2, 3, 1] = value
    for cfg in (check_config(3), check_config(3, metric="acc", solver="argmax")):
        with pytest.raises(ValueError) as cpu_err:
            cpu.solve(probs, cfg)
        with pytest.raises(ValueError) as our_err:
            run(probs, cfg)
        assert str(our_err.value) == str(cpu_err.value)


def test_accuracy_solvers_match_cpu(run):
    probs = make_probs((2, 4, 9, 9), np.float32, "softmax", 3)
    for params in (dict(metric="acc", solver="argmax"), dict(metric="acc", output_mode="multilabel", solver="TR")):
        cfg = cfg_for(probs, params)
        np.testing.assert_array_equal(run(probs, cfg), cpu.solve(probs, cfg))
    cfg = cfg_for(probs, dict(metric="acc", output_mode="multilabel", solver="argmax"))
    with pytest.warns(UserWarning, match="one-hot"):
        ours = run(probs, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(ours, cpu.solve(probs, cfg))
    one = make_probs((3, 1, 20), np.float64, "sigmoid", 4)
    cfg = check_config(1, metric="acc", output_mode="multilabel", solver="TR")
    np.testing.assert_array_equal(run(one, cfg), one > 0.5)


# --------------------------------------------------------------------------- #
# The exact solver on the device (rankseg_np.gpu._exact)
# --------------------------------------------------------------------------- #

EXACT_RTOL = 1e-12  # two executors' scores of one mask agree to ~1e-15; real differences are far larger


def assert_exact_tie_equal(probs, ours, expected, metric, smooth):
    """Equal masks, or per row the same exact expected score (independent Poisson-binomial oracle)."""
    b, c = probs.shape[:2]
    p2 = probs.astype(np.float64).reshape(b * c, -1)
    o2, e2 = ours.reshape(b * c, -1), expected.reshape(b * c, -1)
    for r in np.flatnonzero((o2 != e2).any(axis=1)):
        a, e = mask_score(p2[r], o2[r], metric, smooth), mask_score(p2[r], e2[r], metric, smooth)
        assert a == pytest.approx(e, rel=EXACT_RTOL, abs=1e-15), (r, p2[r], o2[r], e2[r])


@settings(max_examples=150, deadline=None)
@given(
    probs=prob_arrays(),
    metric=st.sampled_from(["dice", "iou"]),
    smooth=st.sampled_from([0.0, 0.0, 0.05, 0.5, 1.0, 4.5, 100.0]),
    pruning_prob=st.sampled_from([0.5, 0.0, 0.2, 1.0]),
)
def test_exact_matches_cpu(run, probs, metric, smooth, pruning_prob):
    cfg = check_config(probs.shape[1], metric=metric, smooth=smooth, pruning_prob=pruning_prob,
                       solver="exact", output_mode="multilabel")
    ours = run(probs, cfg)
    assert ours.dtype == np.bool_ and ours.shape == probs.shape
    assert_exact_tie_equal(probs, ours, cpu.solve(probs, cfg), metric, smooth)


@settings(max_examples=60, deadline=None)
@given(
    p=st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 0.5, 0.7, 0.9, 0.97, 1.0]), min_size=1, max_size=9)
    | st.lists(st.floats(0.0, 1.0), min_size=1, max_size=9),
    metric=st.sampled_from(["dice", "iou"]),
    smooth=st.sampled_from([0.0, 0.1, 1.0, 3.0]),
)
def test_exact_is_the_best_of_all_masks(run, p, metric, smooth):
    """Against brute force over all 2^d masks and 2^d outcomes (MATH section 3)."""
    probs = np.array(p, dtype=np.float64)[None, None, :]
    cfg = check_config(1, metric=metric, smooth=smooth, pruning_prob=0.0, solver="exact", output_mode="multilabel")
    mask = run(probs, cfg)[0, 0]
    masks, scores = brute_scores(probs[0, 0], metric, smooth)
    ours = scores[np.flatnonzero((masks == mask).all(axis=1))[0]]
    assert ours >= scores.max() - 1e-10


def _exact_cases():
    yield (2, 4, 17, 13), np.float32, "softmax", 1
    yield (1, 3, 6, 7, 5), np.float64, "softmax", 2  # a 3-D volume
    yield (3, 2, 40), np.float16, "sigmoid", 3
    yield (2, 3, 12, 12), np.float64, "ties", 4
    yield (2, 3, 9, 9), np.float32, "zero_one", 5
    yield (1, 5, 96, 96), np.float32, "softmax", 6  # large rates: Gauss-Laguerre rules


@pytest.mark.parametrize("metric", ["dice", "iou"])
@pytest.mark.parametrize("smooth", [0.0, 0.5, 4.0, 250.0])
def test_exact_identical_to_cpu_on_fixed_inputs(run, monkeypatch, metric, smooth):
    """Masks and labels equal to the Numba solver's; the cases reach both rules and multi-segment rows."""
    from rankseg_np.gpu import _exact

    seen = {"jacobi": False, "laguerre": False}
    nodes = _exact._nodes

    def spy(r0, theta, quad, xp):
        r = _rows.to_host(r0)
        seen["jacobi"] |= bool((r <= _exact.SWITCH).any())
        seen["laguerre"] |= bool((r > _exact.SWITCH).any())
        return nodes(r0, theta, quad, xp)

    monkeypatch.setattr(_exact, "_nodes", spy)
    for shape, dtype, kind, seed in _exact_cases():
        probs = make_probs(shape, dtype, kind, seed)
        for mode in ("multilabel", "multiclass"):
            cfg = check_config(shape[1], metric=metric, smooth=smooth, solver="exact", output_mode=mode)
            ours, expected = run(probs, cfg), cpu.solve(probs, cfg)
            assert ours.dtype == expected.dtype and ours.shape == expected.shape
            np.testing.assert_array_equal(ours, expected, err_msg=f"{shape} {dtype} {kind} {mode}")
    assert seen["laguerre"] and (seen["jacobi"] or smooth > _exact.SWITCH)  # every rate >= smooth


def test_exact_splits_wide_candidate_ranges_into_segments(run, monkeypatch):
    """Rows with a small sum have candidate volumes whose rates span several segments (one rule each)."""
    from rankseg_np.gpu import _exact

    rules_built = []
    nodes = _exact._nodes
    monkeypatch.setattr(_exact, "_nodes", lambda *a: rules_built.append(1) or nodes(*a))
    rng = np.random.default_rng(0)
    rows = [np.full(39, 0.042), rng.uniform(0, 0.3, 51), np.r_[0.986, 0.945, rng.uniform(0.01, 0.2, 20)]]
    most = {"dice": 0, "iou": 0}
    for p in rows:
        probs = p[None, None, :]
        for metric in most:
            cfg = check_config(1, metric=metric, solver="exact", output_mode="multilabel", pruning_prob=0.0)
            rules_built.clear()
            np.testing.assert_array_equal(run(probs, cfg), cpu.solve(probs, cfg))
            most[metric] = max(most[metric], len(rules_built))  # smooth = 0: one rule per segment
    assert min(most.values()) >= 2


def test_exact_bracket_does_not_depend_on_summation_order():
    """Bin sums are exact fixed-point integers, so CUDA's atomic adds (any order) give the same bracket."""
    from rankseg_np.gpu import _exact

    rng = np.random.default_rng(3)
    x = make_probs((1, 6, 5000), np.float64, "softmax", 3)[0]
    mu = x.sum(axis=1)
    for metric in (_exact.DICE, _exact.IOU):
        base = _exact._bracket(x, mu, metric, 0.5, np)[1:]
        for _ in range(3):
            perm = rng.permutation(x.shape[1])
            again = _exact._bracket(x[:, perm], mu, metric, 0.5, np)[1:]
            for a, b in zip(base, again):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("budget", [1, 3, 1000])
def test_exact_blocks_do_not_change_the_answer(monkeypatch, budget):
    """Rows and node tensors are processed in blocks to bound temporaries; block size must not matter."""
    from rankseg_np.gpu import _exact

    probs = make_probs((2, 4, 11, 9), np.float32, "softmax", 12)
    cfgs = [check_config(4, metric=m, smooth=s, solver="exact") for m in ("dice", "iou") for s in (0.0, 2.0)]
    expected = [cpu.solve(probs, cfg) for cfg in cfgs]
    monkeypatch.setattr(_exact, "BLOCK_ELEMENTS", budget * 99)
    monkeypatch.setattr(_exact, "NODE_ELEMENTS", budget * 24)
    for cfg, exp in zip(cfgs, expected):
        np.testing.assert_array_equal(gpu.solve_with(probs, cfg, np), exp)


@pytest.mark.parametrize(
    "params",
    [
        dict(solver="BA", output_mode="multilabel"),
        dict(solver="TRNA", output_mode="multilabel"),
        dict(solver="BA+TRNA", output_mode="multilabel"),
    ],
    ids=lambda p: f"{p['solver']}-{p.get('metric', 'dice')}-{p.get('output_mode', 'multiclass')}",
)
def test_host_solvers_match_cpu(run, params):
    """Solvers without a device version run on the host: the same answer as the CPU."""
    probs = make_probs((2, 3, 8, 8), np.float32, "softmax", 6)
    cfg = cfg_for(probs, params)
    np.testing.assert_array_equal(run(probs, cfg), cpu.solve(probs, cfg))


def test_constants_agree_with_cpu():
    from rankseg_np.cpu import rma

    assert _rma.MAX_STEPS == rma.MAX_STEPS
    assert _rma.BAND_SLACK == rma.BAND_SLACK
    assert _rma.TIE_SLACK == rma.TIE_SLACK


def test_numpy_path_is_read_only_and_does_not_mutate():
    probs = make_probs((2, 3, 10, 10), np.float32, "softmax", 8)
    probs.setflags(write=False)
    before = probs.copy()
    for params in (dict(), dict(smooth=1.0, output_mode="multilabel"), dict(metric="iou")):
        gpu.solve_with(probs, check_config(3, **params), np)
    np.testing.assert_array_equal(probs, before)


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_row_blocks_do_not_change_the_answer(monkeypatch, budget):
    """The fallback processes rows in blocks to bound temporaries; block size must not matter."""
    probs = make_probs((3, 4, 9, 11), np.float32, "softmax", 12)
    expected = {s: cpu.solve(probs, check_config(4, smooth=s)) for s in (0.0, 2.0)}
    monkeypatch.setattr(_kernels, "BLOCK_ELEMENTS", budget * 99)
    monkeypatch.setattr(_rma, "BAND_BLOCK_ELEMENTS", budget * 99)
    for s, exp in expected.items():
        np.testing.assert_array_equal(gpu.solve_with(probs, check_config(4, smooth=s), np), exp)


# --------------------------------------------------------------------------- #
# GPU only: fused kernels against the array-code fallback, dispatch, memory
# --------------------------------------------------------------------------- #

@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_primitives_match_fallback(dtype):
    import cupy

    fused, plain = gpu.kernels_for(cupy, True), gpu.kernels_for(cupy, False)
    assert fused.fused and not plain.fused
    for seed, shape in enumerate([(2, 3, 1000), (4, 21, 4096), (1, 2, 1)]):
        probs = make_probs(shape, dtype, "softmax", seed)
        p3 = cupy.asarray(probs)
        b, c, d = shape
        p2 = p3.reshape(b * c, d)
        t = cupy.asarray(np.random.default_rng(seed).uniform(0, 1, b * c))
        for a, e in zip(fused.masked_sum_count(p2, t), plain.masked_sum_count(p2, t)):
            cupy.testing.assert_allclose(a, e, rtol=1e-13, atol=0)
        fa, pa = fused.first_pass(p2), plain.first_pass(p2)
        for a, e in zip(fa, pa):
            cupy.testing.assert_allclose(a.astype(float), e.astype(float), rtol=1e-13, atol=0)
        cfg = check_config(c, output_mode="multiclass")
        dec = _rma.decide(p3, cfg, cupy, plain)
        thr, tie, act, mu = dec
        tie = cupy.where(act, cupy.asarray(np.random.default_rng(seed).integers(0, d + 1, (b, c))), 0)
        cupy.testing.assert_array_equal(fused.materialize(p3, thr, tie), plain.materialize(p3, thr, tie))
        st_f, st_p = fused.claims(p3, thr, tie, act), plain.claims(p3, thr, tie, act)
        cupy.testing.assert_array_equal(st_f, st_p)
        (tau_f, m_f), (tau_p, m_p) = fused.sole_sums(p3, st_p), plain.sole_sums(p3, st_p)
        cupy.testing.assert_array_equal(tau_f, tau_p)
        cupy.testing.assert_allclose(m_f, m_p, rtol=1e-13, atol=0)
        for metric, smooth, void in ((0, 0.0, False), (0, 1.5, True), (1, 0.0, False), (1, 0.5, False)):
            args = (p3, thr, tie, act, st_p, tau_p, mu, m_p, metric, smooth, void, 255)
            cupy.testing.assert_array_equal(fused.conflicts(*args), plain.conflicts(*args))


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA device")
def test_rankseg_on_cupy_returns_cupy_on_the_same_device():
    import cupy

    from rankseg_np import rankseg

    probs = make_probs((2, 3, 32, 32), np.float32, "softmax", 1)
    for dev in range(min(2, cupy.cuda.runtime.getDeviceCount())):
        with cupy.cuda.Device(dev):
            x = cupy.asarray(probs)
        before = x.copy()
        out = rankseg(x)
        assert isinstance(out, cupy.ndarray) and out.device.id == dev and out.dtype == cupy.int64
        np.testing.assert_array_equal(cupy.asnumpy(out), rankseg(probs))
        cupy.testing.assert_array_equal(x, before)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA device")
def test_torch_cuda_round_trip_is_zero_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    from rankseg_np import rankseg

    probs = make_probs((2, 3, 16, 24), np.float32, "softmax", 2)
    t = torch.from_numpy(probs).cuda().transpose(2, 3).requires_grad_(True)
    out = rankseg(t, output_mode="multilabel")
    assert isinstance(out, torch.Tensor) and out.device == t.device and out.dtype == torch.bool
    np.testing.assert_array_equal(out.cpu().numpy(), rankseg(np.ascontiguousarray(probs.transpose(0, 1, 3, 2)), output_mode="multilabel"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA device")
def test_rma_extra_device_memory_is_bounded():
    """No full-size index or sort buffers: the RMA path fits in input + output + O(B*C) + (B, d) scratch."""
    import cupy

    pool = cupy.get_default_memory_pool()
    b, c, h, w = 2, 8, 256, 256
    x = cupy.asarray(make_probs((b, c, h, w), np.float32, "softmax", 3))
    cfg = check_config(c)
    gpu.solve(x, cfg)  # compile kernels first
    pool.free_all_blocks()
    labels_bytes = b * h * w * 8
    state_bytes = b * h * w * 4
    slack = 1 << 20
    pool.set_limit(size=pool.used_bytes() + labels_bytes + state_bytes + slack)
    try:
        gpu.solve(x, cfg)  # would raise OutOfMemoryError with any full-size temporary
    finally:
        pool.set_limit(size=0)


# --------------------------------------------------------------------------- #
# No GPU needed: the CUDA sources CuPy would generate compile with NVRTC
# --------------------------------------------------------------------------- #

def _nvrtc_sources():
    """(name, source, options) of every fused kernel, generated by CuPy's own code generators.

    Uses CuPy internals (``_kernel._get_elementwise_kernel_code``,
    ``_reduction._ReductionKernel_get_cached_function_code``) with the argument
    types rankseg_np passes, so a GPU-less machine with CuPy and NVRTC still
    catches CUDA syntax and type errors.  Skips when those internals move.
    """
    cupy = pytest.importorskip("cupy")
    try:
        import cupy._core._kernel as K
        import cupy._core._reduction as R
        from cupy._core._carray import Indexer
        from cupy._core._scalar import CScalar

        make_code_ew, make_code_red = K._get_elementwise_kernel_code, R._ReductionKernel_get_cached_function_code
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"CuPy internals changed: {exc}")

    def nd(dtype, ndim):
        return K._ArgInfo(1, cupy.ndarray, np.dtype(dtype).type, ndim, True, True)

    def sc(dtype):
        return K._ArgInfo(3, CScalar, np.dtype(dtype).type, 0, True, True)

    def ix(ndim):
        return K._ArgInfo(2, Indexer, None, ndim, True, True)

    def elementwise(ek, kinds, ndim):
        infos, in_dt, out_dt = [], [], []
        for i, kd in enumerate(kinds):
            infos.append(nd(kd[1], kd[2]) if kd[0] == "nd" else sc(kd[1]))
            (in_dt if i < ek.nin else out_dt).append(np.dtype(kd[1]).type if kd[0] == "nd" else None)
        infos.append(ix(ndim))
        _, _, tmap = K._decide_params_type(ek.in_params, ek.out_params, tuple(in_dt), tuple(out_dt))
        code = make_code_ew(tuple(infos), tmap, ek.params, ek.operation, ek.name, ek.preamble)
        return ek.name, code, tuple(ek.kwargs.get("options", ()))

    def reduction(rk, kinds, in_ndim, out_ndim):
        infos = [nd(kd[1], kd[2]) for kd in kinds] + [ix(in_ndim), ix(out_ndim), sc(np.int32)]
        dts = [np.dtype(kd[1]).type for kd in kinds]
        _, _, tmap = K._decide_params_type(rk.in_params, rk.out_params, tuple(dts[: rk.nin]), tuple(dts[rk.nin :]))
        tmap = K._TypeMap(tmap._pairs + (("IndexT", np.int32),))
        code = make_code_red(
            rk.nin, rk.nout, rk._params, tuple(infos), tmap, rk.name, 512, rk.reduce_type, rk.identity,
            rk.map_expr, rk.reduce_expr, rk.post_map_expr, rk.preamble, rk.options,
        )
        return rk.name, code, tuple(rk.options)

    k = _kernels.CupyKernels(cupy)  # builds kernel objects only; nothing is compiled or launched
    f8, i8 = ("nd", "float64"), ("nd", "int64")
    for t in ("float32", "float64"):
        yield reduction(k._masked, [("nd", t, 2), (*f8, 2), (*f8, 1), (*f8, 1)], 2, 1)
        yield reduction(k._stats, [("nd", t, 2)] + [(*f8, 1)] * 5, 2, 1)
        yield reduction(k._sole, [("nd", t, 3), ("nd", "int32", 3), ("nd", "int32", 3), (*f8, 2), (*f8, 2)], 3, 2)
        yield elementwise(k._materialize, [("nd", t, 3), (*f8, 3), (*i8, 3), ("sc", "int64"), ("nd", "bool", 3)], 3)
        yield elementwise(
            k._claims, [("nd", t, 3), (*f8, 2), (*i8, 2), ("nd", "bool", 2), ("sc", "int64"), ("sc", "int64"), ("nd", "int32", 2)], 2
        )
        yield elementwise(
            k._conflicts,
            [("nd", "int32", 2), ("nd", t, 3), (*f8, 2), (*i8, 2), ("nd", "bool", 2), (*f8, 2), (*f8, 2), (*f8, 2),
             ("sc", "int64"), ("sc", "int64"), ("sc", "int32"), ("sc", "float64"), ("sc", "bool"), ("sc", "int64"),
             ("sc", "float64"), (*i8, 2)],
            2,
        )


def test_cuda_kernels_compile_with_nvrtc():
    """Every fused kernel compiles (compute_75/80/90) without a GPU, when CuPy and NVRTC are installed."""
    import os

    sources = list(_nvrtc_sources())
    import cupy
    from cupy.cuda import compiler

    include = os.path.join(os.path.dirname(cupy.__file__), "_core", "include")
    cccl = os.path.join(include, "cupy", "_cccl")
    if not os.path.isdir(cccl):
        pytest.skip("this CuPy build does not bundle the CCCL headers")
    header = "".join(f"#include <cupy/{h}>\n" for h in ("complex.cuh", "carray.cuh", "atomics.cuh", "math_constants.h"))
    base = ("-I" + include, "-I" + os.path.join(cccl, "thrust"), "-I" + os.path.join(cccl, "libcudacxx"),
            "-I" + os.path.join(cccl, "cub"), "--std=c++17", "--device-as-default-execution-space")
    try:
        compiler._NVRTCProgram("extern \"C\" __global__ void k() {}", "probe.cu").compile(base + ("-arch=compute_80",))
    except Exception as exc:  # NVRTC library missing, or the private API moved
        pytest.skip(f"NVRTC not usable here: {exc}")
    for name, code, options in sources:
        for arch in ("75", "80", "90"):
            prog = compiler._NVRTCProgram(header + code, f"{name}.cu", method="ptx")
            prog.compile(base + (f"-arch=compute_{arch}",) + options)


# --------------------------------------------------------------------------- #
# The GPU benchmark script: importable, a clear refusal without a GPU, a dry run on NumPy
# --------------------------------------------------------------------------- #

def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(HAVE_GPU, reason="checks the message shown without a GPU")
def test_bench_gpu_refuses_clearly_without_a_gpu(capsys):
    assert _bench_module().main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_bench_gpu_dry_run_writes_tables(tmp_path):
    import json

    assert _bench_module().main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_gpu_dry_run.json").read_text())
    assert report["dry_run"] and len(report["results"]) == 2
    for res in report["results"]:
        names = [r["method"] for r in res["methods"]]
        assert "rankseg_np RMA dice multiclass" in names
        assert res["check"]["pixels_differing_from_cpu_path"] == 0
    assert "| method |" in (tmp_path / "bench_gpu_dry_run.md").read_text()
