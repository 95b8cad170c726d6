"""Every bad input gets one clear TypeError/ValueError naming the argument, and the input is untouched."""

from __future__ import annotations

import numpy as np
import pytest

from rankseg_np import RankSEG, rankseg

GOOD = np.full((1, 2, 3, 3), 0.5)


def _probs(value, dtype=np.float64):
    p = np.full((1, 2, 3, 3), 0.5, dtype=dtype)
    p[0, 1, 1, 1] = value
    return p


BAD_PROBS = [
    (_probs(np.nan), ValueError, "finite"),
    (_probs(np.inf), ValueError, "finite"),
    (_probs(-np.inf, np.float32), ValueError, "finite"),
    (_probs(1.5), ValueError, r"\[0, 1\]"),
    (_probs(-0.01, np.float32), ValueError, r"\[0, 1\]"),
    (_probs(np.nan, np.float16), ValueError, "finite"),
    (np.full((2, 3), 0.5), ValueError, "shape"),
    (np.full((4,), 0.5), ValueError, "shape"),
    (np.zeros((1, 0, 3, 3)), ValueError, "class"),
    (np.zeros((1, 2, 0, 3)), ValueError, "spatial"),
    (np.ones((1, 2, 3, 3), dtype=np.int64), TypeError, "dtype"),
    (np.ones((1, 2, 3, 3), dtype=bool), TypeError, "dtype"),
    (np.ones((1, 2, 3, 3), dtype=np.complex128), TypeError, "dtype"),
    (np.ones((1, 2, 3, 3), dtype=object), TypeError, "dtype"),
    ([[[0.5, 0.5]]], TypeError, "probs must be an array"),
    ("probs", TypeError, "probs must be an array"),
    (None, TypeError, "probs must be an array"),
    (0.5, TypeError, "probs must be an array"),
]


@pytest.mark.parametrize("probs, error, match", BAD_PROBS)
@pytest.mark.parametrize("params", [dict(), dict(metric="iou", output_mode="multilabel"), dict(metric="acc", solver="argmax")])
def test_bad_probs(probs, error, match, params):
    before = probs.copy() if isinstance(probs, np.ndarray) else None
    with pytest.raises(error, match=match):
        rankseg(probs, **params)
    if before is not None:
        np.testing.assert_array_equal(probs, before)  # NaN == NaN here


BAD_ARGS = [
    (dict(metric="dsc"), ValueError, "metric must be one of"),
    (dict(metric=3), TypeError, "metric must be a string"),
    (dict(output_mode="overlap"), ValueError, "output_mode must be one of"),
    (dict(output_mode=None), TypeError, "output_mode"),
    (dict(solver="fast"), ValueError, "solver 'fast' is not supported.*supported solvers: 'RMA', 'exact'"),
    (dict(solver=3), TypeError, "solver must be a string or None"),
    (dict(metric="iou", solver="BA", output_mode="multilabel"), ValueError, "not supported"),
    (dict(solver="BA"), ValueError, "not supported for metric='dice' with output_mode='multiclass'.*'BA' needs output_mode='multilabel'"),
    (dict(metric="acc", solver="RMA"), ValueError, "supported solvers: 'argmax'; omit solver"),
    (dict(smooth=-1.0), ValueError, "smooth must be >= 0"),
    (dict(smooth=np.inf), ValueError, "smooth must be finite"),
    (dict(smooth=np.nan), ValueError, "smooth must be finite"),
    (dict(smooth="1"), TypeError, "smooth must be a real number"),
    (dict(smooth=True), TypeError, "smooth must be a real number"),
    (dict(pruning_prob=1.5), ValueError, r"pruning_prob must lie in \[0, 1\]"),
    (dict(pruning_prob=-0.1), ValueError, r"pruning_prob must lie in \[0, 1\]"),
    (dict(pruning_prob=np.nan), ValueError, "pruning_prob must be finite"),
    (dict(pruning_prob=None), TypeError, "pruning_prob"),
    (dict(unassigned_policy="ignore"), ValueError, "unassigned_policy must be one of 'max_score', 'void'"),
    (dict(unassigned_policy=1), TypeError, "unassigned_policy must be a string"),
    (dict(void_index=255), ValueError, "void_index is only accepted together with unassigned_policy='void'"),
    (dict(unassigned_policy="void", void_index=1), ValueError, r"outside the class range \[0, 2\)"),
    (dict(unassigned_policy="void", void_index=1.5), TypeError, "void_index must be an int"),
    (dict(unassigned_policy="void", void_index=True), TypeError, "void_index must be an int"),
    (dict(unassigned_policy="void", void_index=2**70), ValueError, "int64"),
    (dict(output_mode="multilabel", unassigned_policy="void"), TypeError, "does not accept parameter"),
    (dict(foo=1), TypeError, "does not accept parameter.*foo.*allowed parameters"),
    (dict(eps=0.1), TypeError, r"does not accept parameter.*'eps' is a parameter of solver 'BA' \(dice, output_mode=multilabel\); 'TRNA'"),
    (dict(unassigned_policy="void", void_idx=3), TypeError, "did you mean 'void_index'"),
    (dict(output_mode="multilabel", solver="BA", eps=0.0), ValueError, "eps must lie strictly between 0 and 1"),
    (dict(output_mode="multilabel", solver="BA", eps=np.nan), ValueError, "eps must be finite"),
    (dict(safe_screening="sometimes"), TypeError, "safe_screening"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGS)
def test_bad_arguments(kwargs, error, match):
    probs = GOOD.copy()
    with pytest.raises(error, match=match):
        rankseg(probs, **kwargs)
    with pytest.raises(error, match=match):
        RankSEG(**kwargs).predict(probs)
    np.testing.assert_array_equal(probs, GOOD)


def test_single_channel_multiclass_tells_the_user_what_to_do():
    with pytest.raises(ValueError, match="multilabel.*two channels"):
        rankseg(np.full((1, 1, 4, 4), 0.7))


def test_strings_are_case_insensitive_and_stripped():
    probs = np.random.default_rng(0).uniform(size=(2, 3, 5, 5))
    base = rankseg(probs, metric="iou", output_mode="multilabel", solver="RMA")
    np.testing.assert_array_equal(rankseg(probs, metric=" IoU ", output_mode="MultiLabel ", solver=" rma"), base)
    base = rankseg(probs, unassigned_policy="void", void_index=9)
    np.testing.assert_array_equal(rankseg(probs, unassigned_policy=" VOID", void_index=np.int16(9)), base)


@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("solver", ["RMA", "exact"])
def test_negative_zero_arguments_are_zero(solver, output_mode):
    """-0.0 == 0.0: pruning_prob=-0.0 keeps every row whose largest probability is above 0 active
    (the CPU's bit-pattern pruning test once read -0.0 as above every probability: all masks empty)."""
    probs = np.array([0.3, 0.6, 0.1, 0.2, 0.7, 0.4, 0.9, 0.8]).reshape(1, 2, 4)
    zero = rankseg(probs, solver=solver, output_mode=output_mode, pruning_prob=0.0, smooth=0.0)
    assert zero.any()
    negative = rankseg(probs, solver=solver, output_mode=output_mode, pruning_prob=-0.0, smooth=-0.0)
    np.testing.assert_array_equal(negative, zero)


def test_safe_screening_is_accepted_and_changes_nothing():
    probs = np.random.default_rng(1).uniform(size=(2, 3, 6, 6))
    for value in (True, False, "auto"):
        np.testing.assert_array_equal(rankseg(probs, safe_screening=value), rankseg(probs))


def test_unknown_axis_sizes_get_a_clear_message():
    da = pytest.importorskip("dask.array")
    x = da.from_array(np.full((2, 3, 4, 4), 0.5), chunks=(1, 3, 4, 4))
    x = x[x[:, 0, 0, 0] > 0]  # boolean indexing: the batch size is unknown until computed
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        rankseg(x)


# Arguments that need no array are checked when RankSEG is built, not at predict.
CONSTRUCTION_ERRORS = [e for e in BAD_ARGS if "class range" not in e[2]]


@pytest.mark.parametrize("kwargs, error, match", CONSTRUCTION_ERRORS)
def test_rankseg_object_checks_arguments_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        RankSEG(**kwargs)


def test_class_dependent_checks_wait_for_the_array():
    model = RankSEG(unassigned_policy="void", void_index=1)  # fine for 1 class, not for 2
    with pytest.raises(ValueError, match=r"outside the class range \[0, 2\)"):
        model.predict(GOOD)


@pytest.mark.parametrize("output_mode", ["multiclass", "multilabel"])
def test_accuracy_without_a_solver_takes_the_bayes_rule(output_mode):
    """MATH 6: argmax (multiclass) and p > 1/2 per class (multilabel) are Bayes-optimal for accuracy."""
    probs = np.random.default_rng(2).dirichlet(np.ones(3), size=(2, 5, 5)).transpose(0, 3, 1, 2)
    got = rankseg(probs, metric="acc", output_mode=output_mode)
    expected = probs.argmax(axis=1) if output_mode == "multiclass" else probs > 0.5
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(RankSEG(metric="accuracy", output_mode=output_mode).predict(probs), expected)


def test_dtype_error_names_the_callers_conversion():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"bfloat16.*convert with probs\.float\(\)"):
        rankseg(torch.ones((1, 2, 3, 3), dtype=torch.int64))
    with pytest.raises(TypeError, match=r"convert with probs\.astype\(np\.float32\)"):
        rankseg(np.ones((1, 2, 3, 3), dtype=np.int64))
