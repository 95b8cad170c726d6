"""A process's first small calls run in NumPy (``rankseg_np._first_calls``): the renting account,
the routing, and the answers (the same as Numba's, errors included)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import make_probs, prob_arrays, rma_params

import rankseg_np
from rankseg_np import _first_calls, cpu, gpu
from rankseg_np._first_calls import FirstCalls
from rankseg_np._validate import check_config


@pytest.fixture
def account(monkeypatch):
    """A fresh account for rankseg() calls in this test (the suite's own has stopped renting)."""
    fresh = FirstCalls()
    monkeypatch.setattr(_first_calls, "ACCOUNT", fresh)
    return fresh


@pytest.fixture
def engines(monkeypatch):
    """Which engine answered each rankseg() call: 'numpy' or 'numba'."""
    seen = []
    to_numpy, to_numba = gpu.solve_with, cpu.solve

    def numpy_engine(*args, **kwargs):
        seen.append("numpy")
        return to_numpy(*args, **kwargs)

    def numba_engine(*args, **kwargs):
        seen.append("numba")
        return to_numba(*args, **kwargs)

    monkeypatch.setattr(gpu, "solve_with", numpy_engine)
    monkeypatch.setattr(cpu, "solve", numba_engine)
    return seen


# --------------------------------------------------------------------------- #
# The account
# --------------------------------------------------------------------------- #

def test_rents_until_the_budget_then_buys_for_good():
    account = FirstCalls(budget=100, at_most=60, min_charge=10)
    assert [account.rent(n, "rma") for n in (30, 5, 40)] == [True, True, True]
    assert account.spent == 30 + 10 + 40  # a call is charged at least min_charge
    assert account.would_rent(20, "rma") and not account.would_rent(21, "rma")
    assert account.spent == 80  # would_rent charges nothing
    assert not account.rent(21, "rma")  # over the budget: buy
    assert not account.rent(1, "rma")  # and never rent again
    assert account.spent == 80


def test_a_large_call_buys_at_once():
    account = FirstCalls(budget=100, at_most=60, min_charge=10)
    assert not account.rent(61, "rma")
    assert not account.rent(10, "rma")


def test_other_solvers_never_rent_and_do_not_end_renting():
    account = FirstCalls(budget=100, at_most=60, min_charge=10)
    for solver in ("exact", "ba", "trna", "ba+trna"):
        assert not account.rent(10, solver)
    assert account.spent == 0
    assert all(account.rent(10, s) for s in ("rma", "argmax", "tr"))


def test_empty_batches_are_neither_charged_nor_end_renting():
    account = FirstCalls(budget=100, at_most=60, min_charge=10)
    assert not account.rent(0, "rma") and not account.would_rent(0, "rma")
    assert account.renting and account.spent == 0


def test_use_numba_ends_renting_of_the_process(account, engines):
    probs = make_probs((1, 3, 8, 8), np.float32, "softmax", 0)
    rankseg_np.rankseg(probs)
    rankseg_np.use_numba()
    rankseg_np.rankseg(probs)
    assert engines == ["numpy", "numba"] and not account.renting


def test_stop_and_disabled_account():
    account = FirstCalls()
    account.stop()
    assert not account.rent(1, "rma")
    assert not FirstCalls(renting=False).rent(1, "rma")


def test_renting_is_thread_safe():
    """Concurrent callers never rent past the budget: exactly budget // charge calls are rented.

    Each check of the budget yields the GIL (``time.sleep(0)``) before the
    charge, so threads interleave between check and charge: an account without
    its lock rents past the budget here (checked by removing it), and with the
    lock the other callers wait.
    """
    account = FirstCalls(budget=1000, at_most=1000, min_charge=7)
    fits = account._fits

    def fits_then_yield(size):
        answer = fits(size)
        time.sleep(0)
        return answer

    account._fits = fits_then_yield
    rented = []

    def caller():
        for _ in range(200):
            rented.append(account.rent(1, "rma"))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(rented) == 1000 // 7
    assert account.spent == 1000 // 7 * 7


@pytest.mark.parametrize("value, renting", [("", True), ("numba", False), (" NUMBA ", False), ("numpy", True)])
def test_environment_variable(value, renting):
    code = "from rankseg_np import _first_calls; print(_first_calls.ACCOUNT.renting)"
    env = dict(os.environ, RANKSEG_NP_FIRST_CALLS=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(renting)


# --------------------------------------------------------------------------- #
# The routing
# --------------------------------------------------------------------------- #

def test_small_first_calls_run_in_numpy_then_numba(account, engines, monkeypatch):
    monkeypatch.setattr(account, "budget", 3 * _first_calls.MIN_CHARGE)
    probs = make_probs((1, 3, 8, 8), np.float32, "softmax", 0)
    for _ in range(4):
        rankseg_np.rankseg(probs)
    assert engines == ["numpy", "numpy", "numpy", "numba"]


def test_large_and_unrented_calls_use_numba(account, engines):
    small = make_probs((1, 3, 8, 8), np.float32, "softmax", 0)
    rankseg_np.rankseg(small, solver="exact")  # not rented, renting goes on
    rankseg_np.rankseg(small)
    large = np.full((1, 1, _first_calls.AT_MOST + 1), 0.25, dtype=np.float32)
    rankseg_np.rankseg(large, output_mode="multilabel")  # over AT_MOST: buys
    rankseg_np.rankseg(small)
    assert engines == ["numba", "numpy", "numba", "numba"]


def test_other_array_types_are_routed_by_their_numpy_view(account, engines):
    """A CPU tensor arrives as NumPy (DLPack) and is charged like a NumPy array."""
    torch = pytest.importorskip("torch")
    probs = make_probs((1, 3, 8, 8), np.float32, "softmax", 0)
    out = rankseg_np.rankseg(torch.from_numpy(probs))
    assert isinstance(out, torch.Tensor) and engines == ["numpy"]


# --------------------------------------------------------------------------- #
# The answers: NumPy's first calls against Numba's
# --------------------------------------------------------------------------- #

def _both(probs, **params):
    """(rented answer or exception, Numba answer or exception) for rankseg(probs, **params)."""
    results = []
    saved = _first_calls.ACCOUNT
    try:
        for renting in (True, False):
            _first_calls.ACCOUNT = FirstCalls(renting=renting)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    out = rankseg_np.rankseg(probs, **params)
                results.append((out, [str(w.message) for w in caught]))
                assert (_first_calls.ACCOUNT.spent > 0) == renting  # the engine asked for answered
            except (ValueError, TypeError) as exc:
                results.append((type(exc), str(exc)))
    finally:
        _first_calls.ACCOUNT = saved
    return results


@settings(max_examples=150)
@given(probs=prob_arrays(max_batch=3, max_class=5, max_side=12), params=rma_params())
def test_rented_answers_are_numbas(probs, params):
    rented, numba = _both(probs, **params)
    if isinstance(numba[0], type):  # rejected before any engine ran (e.g. one class, multiclass)
        assert rented == numba
        return
    assert rented[1] == numba[1]  # the same warnings (class sums)
    np.testing.assert_array_equal(rented[0], numba[0])
    assert rented[0].dtype == numba[0].dtype


@settings(max_examples=40)
@given(
    probs=prob_arrays(max_batch=2, max_class=4, max_side=10, min_class=2),
    solver=st.sampled_from(["argmax", "TR"]),
)
def test_rented_accuracy_answers_are_numbas(probs, solver):
    mode = "multilabel" if solver == "TR" else "multiclass"
    rented, numba = _both(probs, metric="accuracy", solver=solver, output_mode=mode)
    np.testing.assert_array_equal(rented[0], numba[0])
    assert rented[1] == numba[1]


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("metric", ["dice", "iou", "accuracy"])
@pytest.mark.parametrize("defect", ["nan", "inf", "above one", "negative", "negative zero", "class sums"])
def test_rented_errors_and_warnings_are_numbas(mode, metric, defect):
    probs = make_probs((2, 3, 6, 6), np.float64, "softmax", 1)
    at = (1, 2, 3, 4)
    if defect == "class sums":
        probs = make_probs((2, 3, 6, 6), np.float64, "uniform", 1)
    else:
        probs[at] = {"nan": np.nan, "inf": np.inf, "above one": 1.5, "negative": -0.25, "negative zero": -0.0}[defect]
    solver = None if metric != "accuracy" else ("argmax" if mode == "multiclass" else "TR")
    rented, numba = _both(probs, metric=metric, output_mode=mode, solver=solver)
    if isinstance(numba[0], type):  # an error: the same type and message
        assert rented == numba
    else:
        np.testing.assert_array_equal(rented[0], numba[0])
        assert rented[1] == numba[1]


@pytest.mark.parametrize("seed", range(4))
def test_class_sums_on_the_tolerance_warn_alike(seed):
    """Probabilities rounded to 1/100 often sum to 0.99 or 1.01, on SUM_TOL: in float32,
    0.2 + 0.28 + 0.51 is 0.99000001 (not off), in float64 0.98999999 (off).  Both engines
    add in the input's precision in class order, so they count (and warn) alike."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 40, 40)) * 2
    probs = np.round(np.exp(x) / np.exp(x).sum(axis=1, keepdims=True), 2).astype(np.float32)
    probs[0, :, 0, :] = np.array([0.2, 0.28, 0.51], dtype=np.float32)[:, None]
    rented, numba = _both(probs)
    assert rented[1] == numba[1]
    rented, numba = _both(probs[:1, :, :1])  # only the row on the tolerance: no warning at all
    assert rented[1] == numba[1] == []
    probs[0, :, 1, :] = -0.0  # the smallest sum is +0, not -0, in both messages
    rented, numba = _both(probs)
    assert rented[1] == numba[1]


def test_the_callers_array_is_not_modified(account):
    probs = make_probs((2, 3, 6, 6), np.float32, "softmax", 2)
    probs[0, 0, 0, :] = -0.0
    before = probs.copy()
    rankseg_np.rankseg(probs, metric="iou", smooth=1.0)
    assert account.spent > 0
    np.testing.assert_array_equal(probs.view(np.uint32), before.view(np.uint32))



# --------------------------------------------------------------------------- #
# The CLI's compile notice
# --------------------------------------------------------------------------- #

@pytest.fixture
def fresh_environment(monkeypatch):
    """No Numba cache index (``*.nbi``) exists: the next Numba call would compile."""
    exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda path: not str(path).endswith(".nbi") and exists(path))


def test_compile_notice_only_before_a_call_that_compiles(account, fresh_environment):
    import io

    from rankseg_np.cli._common import compile_notice

    kw = dict(metric="dice", smooth=0.0, output_mode="multiclass", solver=None, pruning_prob=0.5)
    small = np.zeros((1, 3, 8, 8), dtype=np.float32)
    large = np.broadcast_to(np.float32(0.5), (1, 2, _first_calls.AT_MOST))  # over AT_MOST, no memory
    cases = [
        (small, kw, False),  # rented: nothing compiles, ask again next time
        (small, dict(kw, solver="exact"), True),  # never rented
        (large, kw, True),  # too large to rent
        (small, dict(kw, metric="nope"), False),  # the call itself reports the error
        (None, None, True),  # no array (demo, bench): Numba
    ]
    for probs, params, compiles in cases:
        err = io.StringIO()
        assert compile_notice(err, probs, params) == compiles
        assert ("compiling the Numba kernels" in err.getvalue()) == compiles
    assert account.spent == 0  # asking charges nothing
    account.stop()
    err = io.StringIO()
    assert compile_notice(err, small, kw) and "compiling" in err.getvalue()
