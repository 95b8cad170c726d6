"""The matrix test: every (solver, executor) pair the capability table declares, against the reference.

Modelled on numpy-groupies' ``test_compare.py``: one parametrisation over the
pairs that ``rankseg_np._solvers.SOLVERS`` declares, one reference per solver,
Hypothesis-drawn inputs.  Pairs the table excludes are asserted to raise the
documented error.  The README's support table is checked against the table.

References (independent of the executors' code):

* RMA, argmax, TR: ``rankseg_np._reference`` (MATH 4-6 transcribed: a full
  sort per row, the objective at every volume, the multiclass resolution);
* exact: the top-tau set whose exact expected score is the first maximum of
  ``oracles.topk_curve`` (outcome enumeration, no quadrature);
* BA, TRNA, BA+TRNA: the float64 score curve of ``oracles.refined_normal_curve``.

Equality is required except at ties of the solver's own objective (to the
rounding of float64 sums accumulated in different orders): a differing row
must score the same, and multiclass labels are compared only where the
per-class masks agree (then up to ties of the increment scores of MATH 5).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from oracles import mask_score, refined_normal_curve, topk_curve
from strategies import prob_arrays
from ties import assert_labels_tie_equal

from rankseg_np import _reference as ref
from rankseg_np import cpu, gpu
from rankseg_np._solvers import (
    EXECUTORS, HOST_FALLBACK, NATIVE, OUTPUT_MODES, SOLVERS, WHOLE_IMAGES, support_table,
)
from rankseg_np._validate import check_config, check_options

ROOT = Path(__file__).resolve().parents[1]
TIE_RTOL = 1e-12  # float64 sums of at most a few hundred terms in another order


# --------------------------------------------------------------------------- #
# Executors
# --------------------------------------------------------------------------- #

def _dask_chunks(probs, data, whole_images: bool):
    """Chunks for the Dask executor: whole images only, or any split of any axis."""
    chunks = []
    for axis, n in enumerate(probs.shape):
        if axis == 0 or (not whole_images and n > 1):
            chunks.append(data.draw(st.integers(1, n), label=f"chunk{axis}"))
        else:
            chunks.append(n)
    return tuple(chunks)


def run(executor: str, probs, cfg, data):
    if executor == "cpu":
        return cpu.solve(probs, cfg)
    if executor == "gpu":  # the device code on NumPy (the CuPy runs are in test_gpu.py, -m gpu)
        return gpu.solve_with(probs, cfg, np)
    da = pytest.importorskip("dask.array")
    import dask

    from rankseg_np import dask as rd

    whole = SOLVERS[cfg.solver].executors["dask"] == WHOLE_IMAGES
    x = da.from_array(probs, chunks=_dask_chunks(probs, data, whole))
    with dask.config.set(scheduler="sync"):
        return rd.solve(x, cfg).compute()


# --------------------------------------------------------------------------- #
# References: per row, the score of a mask under the solver's own objective
# --------------------------------------------------------------------------- #

def _top_tau(p, tau):
    return ref.top_tau_mask(p, int(tau))


def _refined_curve(p, cfg):
    return refined_normal_curve(p, SOLVERS[cfg.solver].name, cfg.smooth, cfg.eps)


def row_scores(p, cfg):
    """(score of every top-tau set, tau = 0..len), or None when masks are compared exactly."""
    if cfg.solver == "rma":
        return ref.rma_objective_curve(np.sort(p)[::-1], p.sum(), cfg.metric, cfg.smooth)
    if cfg.solver == "exact":
        return topk_curve(p, cfg.metric, cfg.smooth)
    curve = _refined_curve(p, cfg)  # BA family: volumes 0..up only
    return np.concatenate([curve, np.full(p.size + 1 - curve.size, -np.inf)])


def mask_value(p, mask, cfg):
    if cfg.solver == "rma":
        return ref.rma_objective(p, mask, cfg.metric, cfg.smooth)
    if cfg.solver == "exact":
        return mask_score(p, mask, cfg.metric, cfg.smooth)
    return row_scores(p, cfg)[int(mask.sum())]  # BA family returns top-tau sets


def reference_masks(probs, cfg):
    """Per-class reference masks ``(B, C, d)`` and active flags, with the first maximum over volumes."""
    def row_solver(p, metric, smooth):
        return _top_tau(p, int(np.argmax(row_scores(p, cfg))))

    return ref.binary_masks(probs, cfg, row_solver=row_solver)


def reference(probs, cfg):
    if cfg.metric == "accuracy":
        return ref.rankseg_reference(probs, cfg)
    masks, active = reference_masks(probs, cfg)
    if cfg.output_mode == "multilabel":
        return masks.reshape(probs.shape)
    return ref.resolve(probs, masks, active, cfg).reshape((probs.shape[0],) + probs.shape[2:])


def assert_masks_equal_up_to_ties(probs, ours, expected, cfg) -> bool:
    """Equal masks, or per row the same score; returns whether any row differed."""
    b, c = probs.shape[:2]
    p2 = probs.astype(np.float64).reshape(b * c, -1)
    o2, e2 = ours.reshape(b * c, -1), expected.reshape(b * c, -1)
    differing = np.flatnonzero((o2 != e2).any(axis=1))
    for r in differing:
        got, want = mask_value(p2[r], o2[r], cfg), mask_value(p2[r], e2[r], cfg)
        assert got == pytest.approx(want, rel=TIE_RTOL, abs=1e-15), (r, p2[r], o2[r], e2[r])
    return differing.size > 0


# --------------------------------------------------------------------------- #
# The matrix
# --------------------------------------------------------------------------- #

DECLARED = [
    (solver.key, metric, mode, executor)
    for solver in SOLVERS.values()
    for metric in solver.metrics
    for mode in solver.output_modes
    for executor in EXECUTORS
]
# The refined normal solvers' oracle is O(d^2) per row with SciPy calls: smaller inputs.
SIDE = {"ba": 6, "trna": 6, "ba+trna": 6}


def _case_params(data, solver, metric, mode):
    params = dict(metric=metric, output_mode=mode, solver=SOLVERS[solver].name)
    params["pruning_prob"] = data.draw(st.sampled_from([0.5, 0.0, 0.2, 1.0]), label="pruning_prob")
    if metric != "accuracy":
        params["smooth"] = data.draw(st.sampled_from([0.0, 0.0, 0.1, 1.0, 7.5]), label="smooth")
    if mode == "multiclass" and "unassigned_policy" in SOLVERS[solver].accepts(mode) and data.draw(st.booleans()):
        params.update(unassigned_policy="void", void_index=data.draw(st.sampled_from([255, -1]), label="void"))
    return params


@pytest.mark.filterwarnings("ignore:solver=.argmax. with output_mode=.multilabel.")
@pytest.mark.parametrize("solver, metric, mode, executor", DECLARED, ids=lambda v: str(v))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_declared_pair_matches_the_reference(solver, metric, mode, executor, data):
    min_class = 2 if mode == "multiclass" else 1
    probs = data.draw(prob_arrays(max_batch=2, max_class=3, max_side=SIDE.get(solver, 7), min_class=min_class))
    if solver == "argmax" and probs.shape[1] == 1:
        probs = np.concatenate([probs, 1 - probs], axis=1)  # argmax needs two classes
    cfg = check_config(probs.shape[1], **_case_params(data, solver, metric, mode))
    ours = run(executor, probs, cfg, data)
    expected = reference(probs, cfg)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    if metric == "accuracy":
        np.testing.assert_array_equal(ours, expected)
    elif mode == "multilabel":
        assert_masks_equal_up_to_ties(probs, ours, expected, cfg)
    else:
        masks_cfg = check_config(probs.shape[1], metric=metric, smooth=cfg.smooth, output_mode="multilabel",
                                 solver=SOLVERS[solver].name, pruning_prob=cfg.pruning_prob)
        ours_masks = run(executor, probs, masks_cfg, data)
        ref_masks, _ = reference_masks(probs, cfg)
        tied = assert_masks_equal_up_to_ties(probs, ours_masks, ref_masks, masks_cfg)
        assume(not tied)  # another optimal mask changes the sums of MATH 5: labels not comparable
        assert_labels_tie_equal(probs, ours, expected, ref_masks, cfg, rtol=1e-9)


EXCLUDED = [
    (solver.key, metric, mode)
    for solver in SOLVERS.values()
    for metric in ("dice", "iou", "accuracy")
    for mode in OUTPUT_MODES
    if metric not in solver.metrics or mode not in solver.output_modes
]


@pytest.mark.parametrize("solver, metric, mode", EXCLUDED, ids=lambda v: str(v))
def test_excluded_combination_raises_the_documented_error(solver, metric, mode):
    name = SOLVERS[solver].name
    with pytest.raises(ValueError, match=f"solver {re.escape(repr(name))} is not supported for metric="):
        check_options(metric=metric, output_mode=mode, solver=name)


@pytest.mark.parametrize("solver", [s.key for s in SOLVERS.values() if s.executors["dask"] == WHOLE_IMAGES])
def test_whole_image_solvers_refuse_split_images_on_dask(solver):
    da = pytest.importorskip("dask.array")
    from rankseg_np import dask as rd

    mode = SOLVERS[solver].output_modes[-1]
    cfg = check_config(2, output_mode=mode, solver=SOLVERS[solver].name)
    x = da.from_array(np.full((2, 2, 4, 4), 0.5), chunks=(1, 2, 2, 4))
    with pytest.raises(NotImplementedError, match="whole_image_chunks"):
        rd.solve(x, cfg)


def test_every_declaration_is_known_and_every_module_exists():
    for solver in SOLVERS.values():
        assert set(solver.executors) == set(EXECUTORS) == set(solver.modules)
        assert set(solver.executors.values()) <= {NATIVE, HOST_FALLBACK, WHOLE_IMAGES}
        for module in solver.modules.values():
            assert importlib.util.find_spec(module) is not None, module
        for executor, how in solver.executors.items():
            if how == NATIVE and solver.metrics != ("accuracy",):  # accuracy is the pipeline's own rule
                mod = importlib.import_module(solver.modules[executor])
                assert callable(getattr(mod, "decide", None)) or executor == "dask", (solver.name, executor)


def test_readme_support_table_is_generated_from_the_table():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- support-table:start -->\n(.*?)\n<!-- support-table:end -->", text, re.S)
    assert m, "README.md lost its support-table markers"
    assert m.group(1) == support_table(), "README's support table drifted: paste _solvers.support_table()"
