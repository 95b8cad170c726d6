"""The capability table: which solver supports what, and where it runs.

This module is the one place that says, for every solver:

* the metrics and output modes it accepts, and its solver parameters;
* how each executor runs it: ``NATIVE`` (its own implementation),
  ``HOST_FALLBACK`` (the GPU copies the probabilities to the host, takes the
  CPU's per-row decision back and builds masks/labels on the device) or
  ``WHOLE_IMAGES`` (Dask runs the in-memory CPU path on chunks that hold
  whole images; other chunkings are refused with a hint to rechunk);
* the module that implements it on each executor.

Validation (:mod:`rankseg_np._validate`), the executors (``cpu``, ``gpu``,
``dask``, through :mod:`rankseg_np._pipeline`), the CLI's help and the
README's support table read it; ``tests/test_matrix.py`` runs every pair it
declares against the reference and checks that the README table is
:func:`support_table`.

A leaf: NumPy-free, imports only the standard library.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

# Metric codes used inside compiled kernels (Numba, CUDA).
DICE = 0
IOU = 1
METRIC_CODES = {"dice": DICE, "iou": IOU}

METRICS = ("dice", "iou", "accuracy")
METRIC_ALIASES = {"dice": "dice", "iou": "iou", "acc": "accuracy", "accuracy": "accuracy"}
OUTPUT_MODES = ("multiclass", "multilabel")
EXECUTORS = ("cpu", "gpu", "dask")

# How an executor runs a solver.
NATIVE = "native"
HOST_FALLBACK = "host fallback"
WHOLE_IMAGES = "whole images only"

# Solver parameters accepted in **solver_params, and what they mean (for error messages and docs).
PARAMETERS = {
    "unassigned_policy": "multiclass: 'max_score' (default) or 'void' for pixels no class claims",
    "void_index": "multiclass with unassigned_policy='void': the label of unclaimed pixels (int outside [0, C))",
    "eps": "BA/TRNA: tail mass left out of the refined normal law's support, in (0, 1)",
    "safe_screening": "accepted for compatibility with rankseg; no effect",
}
MULTICLASS_PARAMS = ("unassigned_policy", "void_index")


class Solver(NamedTuple):
    """One row of the capability table."""

    name: str  # as users write it (rankseg's spelling); matched case-insensitively
    metrics: tuple[str, ...]
    output_modes: tuple[str, ...]
    params: tuple[str, ...]  # solver parameters in any output mode
    multiclass_params: tuple[str, ...]  # extra parameters in multiclass mode
    executors: Mapping[str, str]  # executor -> NATIVE | HOST_FALLBACK | WHOLE_IMAGES
    modules: Mapping[str, str]  # executor -> module that implements its decision
    summary: str

    @property
    def key(self) -> str:
        return self.name.lower()

    def accepts(self, output_mode: str) -> tuple[str, ...]:
        """The solver parameters accepted in ``output_mode``."""
        return self.params + (self.multiclass_params if output_mode == "multiclass" else ())


_EVERYWHERE = {"cpu": NATIVE, "gpu": NATIVE, "dask": NATIVE}
_REFINED_NORMAL = dict(
    metrics=("dice",),
    output_modes=("multilabel",),
    params=("eps",),
    multiclass_params=(),
    executors={"cpu": NATIVE, "gpu": HOST_FALLBACK, "dask": WHOLE_IMAGES},
    modules={"cpu": "rankseg_np.cpu.refined_normal", "gpu": "rankseg_np.cpu.refined_normal",
             "dask": "rankseg_np.cpu"},
)

SOLVERS: dict[str, Solver] = {
    s.key: s
    for s in (
        Solver(
            "RMA", ("dice", "iou"), OUTPUT_MODES, ("safe_screening",), MULTICLASS_PARAMS, _EVERYWHERE,
            {"cpu": "rankseg_np.cpu.rma", "gpu": "rankseg_np.gpu._rma", "dask": "rankseg_np.dask._passes"},
            "reciprocal moment approximation (default for Dice/IoU); any Dask chunking",
        ),
        Solver(
            "exact", ("dice", "iou"), OUTPUT_MODES, (), MULTICLASS_PARAMS,
            {"cpu": NATIVE, "gpu": NATIVE, "dask": WHOLE_IMAGES},
            {"cpu": "rankseg_np.cpu.exact", "gpu": "rankseg_np.gpu._exact", "dask": "rankseg_np.cpu"},
            "the exact top-tau volume of the expected metric (Poisson-binomial quadrature)",
        ),
        Solver("BA", **_REFINED_NORMAL, summary="blind approximation of the refined normal law (rankseg's BA)"),
        Solver("TRNA", **_REFINED_NORMAL, summary="truncated refined normal approximation (rankseg's TRNA)"),
        Solver("BA+TRNA", **_REFINED_NORMAL, summary="BA where the law is wide, TRNA elsewhere (rankseg's BA+TRNA)"),
        Solver(
            "argmax", ("accuracy",), OUTPUT_MODES, (), (), _EVERYWHERE,
            {"cpu": "rankseg_np.cpu", "gpu": "rankseg_np.gpu._core", "dask": "rankseg_np.cpu"},
            "accuracy, multiclass (default): the most probable class; multilabel gives one-hot masks",
        ),
        Solver(
            "TR", ("accuracy",), ("multilabel",), (), (), _EVERYWHERE,
            {"cpu": "rankseg_np.cpu", "gpu": "rankseg_np.gpu._core", "dask": "rankseg_np.cpu"},
            "accuracy, multilabel (default): threshold every class at 1/2",
        ),
    )
}


def default_solver(metric: str, output_mode: str) -> str:
    """The solver used when none is given: RMA for Dice/IoU; argmax / TR for accuracy."""
    if metric != "accuracy":
        return "rma"
    return "argmax" if output_mode == "multiclass" else "tr"


def supported(metric: str, output_mode: str, num_class: int | None = None) -> tuple[str, ...]:
    """Solver keys accepted for ``metric`` and ``output_mode`` (and ``num_class`` when known)."""
    keys = tuple(k for k, s in SOLVERS.items() if metric in s.metrics and output_mode in s.output_modes)
    if num_class == 1:  # argmax over one class is not a decision
        keys = tuple(k for k in keys if k != "argmax")
    return keys


def support_table() -> str:
    """The README's support table (Markdown), generated from :data:`SOLVERS`."""
    head = "| solver | metrics | output modes | parameters | CPU | GPU | Dask |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for s in SOLVERS.values():
        params = ", ".join(f"`{p}`" for p in s.params if p != "safe_screening")
        if s.multiclass_params:
            mc = ", ".join(f"`{p}`" for p in s.multiclass_params)
            params = f"{params}; multiclass: {mc}" if params else f"multiclass: {mc}"
        cells = [
            f"`{s.name}`",
            ", ".join(s.metrics),
            ", ".join(s.output_modes),
            params or "none",
            *(s.executors[e] for e in EXECUTORS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def solver_help() -> str:
    """One line per solver, for the CLI's help."""
    return "; ".join(f"{s.name}: {', '.join(s.metrics)} ({', '.join(s.output_modes)})" for s in SOLVERS.values())
