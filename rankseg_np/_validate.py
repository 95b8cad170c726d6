"""Argument checking shared by every backend.

Everything a user can get wrong is caught here, before any backend runs, with
one ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, wrong
value) that names the argument and the allowed values.  Backends receive a
:class:`Config` that is already canonical (lower-case names, floats, ints).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

METRICS = ("dice", "iou", "accuracy")
METRIC_ALIASES = {"dice": "dice", "iou": "iou", "acc": "accuracy", "accuracy": "accuracy"}
OUTPUT_MODES = ("multiclass", "multilabel")
POLICIES = ("max_score", "void")

# Display names, as users type them in rankseg's documentation.
SOLVER_NAMES = {
    "rma": "RMA",
    "exact": "exact",
    "ba": "BA",
    "trna": "TRNA",
    "ba+trna": "BA+TRNA",
    "argmax": "argmax",
    "tr": "TR",
}
REFINED_NORMAL_SOLVERS = ("ba", "trna", "ba+trna")

_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class Config:
    """Canonical, validated arguments of one ``rankseg`` call."""

    metric: str = "dice"
    smooth: float = 0.0
    output_mode: str = "multiclass"
    solver: str = "rma"
    pruning_prob: float = 0.5
    unassigned_policy: str = "max_score"
    void_index: int = 255
    eps: float = 1e-4
    law_math: str = "auto"


LAW_MATHS = ("auto", "torch", "numpy")


def supported_solvers(metric: str, output_mode: str, num_class: int) -> tuple[str, ...]:
    """Solvers accepted for a metric / output mode / channel count (canonical names)."""
    if metric == "dice":
        if output_mode == "multiclass":
            return ("rma", "exact")
        return ("rma", "exact") + REFINED_NORMAL_SOLVERS
    if metric == "iou":
        return ("rma", "exact")
    # Accuracy: thresholding at 1/2 (TR) and argmax are already Bayes-optimal.
    if num_class == 1:
        return ("tr",)
    if output_mode == "multiclass":
        return ("argmax",)
    return ("tr", "argmax")


def allowed_solver_params(solver: str, output_mode: str) -> tuple[str, ...]:
    if solver in ("rma", "exact"):
        params = ("safe_screening",) if solver == "rma" else ()
        if output_mode == "multiclass":
            params += ("unassigned_policy", "void_index")
        return params
    if solver in REFINED_NORMAL_SOLVERS:
        return ("eps", "law_math")
    return ()


def _choice(name: str, value: Any, allowed: dict[str, str] | tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {_fmt(allowed)}; got {type(value).__name__}")
    key = value.strip().lower()
    table = allowed if isinstance(allowed, dict) else {a: a for a in allowed}
    if key not in table:
        raise ValueError(f"{name} must be one of {_fmt(allowed)}; got {value!r}")
    return table[key]


def _fmt(allowed) -> str:
    return ", ".join(repr(a) for a in allowed)


def finite_real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def check_config(
    num_class: int,
    metric: Any = "dice",
    smooth: Any = 0.0,
    output_mode: Any = "multiclass",
    solver: Any = "RMA",
    pruning_prob: Any = 0.5,
    **solver_params: Any,
) -> Config:
    """Validate every argument of ``rankseg`` except ``probs``; return a :class:`Config`."""
    metric = _choice("metric", metric, METRIC_ALIASES)
    output_mode = _choice("output_mode", output_mode, OUTPUT_MODES)
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a string; got {type(solver).__name__}")
    solver_key = solver.strip().lower()

    smooth = finite_real("smooth", smooth)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0; got {smooth}")
    pruning_prob = finite_real("pruning_prob", pruning_prob)
    if not 0.0 <= pruning_prob <= 1.0:
        raise ValueError(f"pruning_prob must lie in [0, 1]; got {pruning_prob}")

    if output_mode == "multiclass" and num_class == 1:
        raise ValueError(
            "output_mode='multiclass' needs at least two channels: single-channel probabilities "
            "cannot make a label map. Use output_mode='multilabel' for a foreground mask, or pass "
            "two channels (background, foreground)."
        )

    supported = supported_solvers(metric, output_mode, num_class)
    if solver_key not in supported:
        names = ", ".join(repr(SOLVER_NAMES[s]) for s in supported)
        context = ", single-channel input" if num_class == 1 else ""
        hint = f"; pass solver={SOLVER_NAMES[supported[0]]!r}" if metric == "accuracy" else ""
        raise ValueError(
            f"solver {solver!r} is not supported for metric={metric!r} with "
            f"output_mode={output_mode!r}{context}; supported solvers: {names}{hint}"
        )

    allowed = allowed_solver_params(solver_key, output_mode)
    unknown = sorted(set(solver_params) - set(allowed))
    if unknown:
        allowed_txt = ", ".join(allowed) if allowed else "none"
        known = ("metric", "smooth", "output_mode", "solver", "pruning_prob", "unassigned_policy", "void_index", "eps", "law_math")
        guesses = [g for u in unknown for g in difflib.get_close_matches(u, known, n=1)]
        hint = f" (did you mean {', '.join(map(repr, guesses))}?)" if guesses else ""
        raise TypeError(
            f"solver {SOLVER_NAMES[solver_key]!r} with output_mode={output_mode!r} does not accept "
            f"parameter(s) {', '.join(unknown)}{hint}; allowed parameters: {allowed_txt}"
        )

    policy = _choice("unassigned_policy", solver_params.get("unassigned_policy", "max_score"), POLICIES)
    void_index = 255
    if "void_index" in solver_params:
        if policy != "void":
            raise ValueError("void_index is only accepted together with unassigned_policy='void'")
        void_index = solver_params["void_index"]
        if isinstance(void_index, (bool, np.bool_)) or not isinstance(void_index, Integral):
            raise TypeError(f"void_index must be an int; got {type(void_index).__name__}")
        void_index = int(void_index)
    if policy == "void":
        if not _INT64.min <= void_index <= _INT64.max:
            raise ValueError(f"void_index must fit in int64; got {void_index}")
        if 0 <= void_index < num_class:
            given = "" if "void_index" in solver_params else " (the default)"
            raise ValueError(
                f"void_index must lie outside the class range [0, {num_class}); got {void_index}{given}; "
                "pass e.g. void_index=-1"
            )

    if "safe_screening" in solver_params:
        # Accepted for drop-in compatibility with rankseg; it only selects an
        # internal algorithm there, and our threshold search needs no sort at all.
        screening = solver_params["safe_screening"]
        if not (isinstance(screening, bool) or screening == "auto"):
            raise TypeError("safe_screening must be True, False or 'auto'")

    eps = 1e-4
    if "eps" in solver_params:
        eps = finite_real("eps", solver_params["eps"])
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie strictly between 0 and 1; got {eps}")
    law_math = _choice("law_math", solver_params.get("law_math", "auto"), LAW_MATHS)

    return Config(
        metric=metric,
        smooth=smooth,
        output_mode=output_mode,
        solver=solver_key,
        pruning_prob=pruning_prob,
        unassigned_policy=policy,
        void_index=void_index,
        eps=eps,
        law_math=law_math,
    )


def check_probs_structure(probs: Any) -> None:
    """Shape and dtype checks on an array of the backend's own type (no value scan)."""
    if any(s is None or s != s for s in probs.shape):  # None or NaN: unknown (lazy) sizes
        raise ValueError(
            f"probs has unknown axis sizes {tuple(probs.shape)}; for a Dask array call "
            "x.compute_chunk_sizes() first"
        )
    shape = tuple(int(s) for s in probs.shape)
    dtype = np.dtype(str(probs.dtype)) if not isinstance(probs.dtype, np.dtype) else probs.dtype
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        hint = (
            " (probabilities are floats: convert with .astype(np.float32); label maps are not probabilities)"
            if dtype.kind in "iub" else ""
        )
        raise TypeError(f"probs must have dtype float16, float32 or float64; got {probs.dtype}{hint}")
    if len(shape) < 3:
        raise ValueError(
            f"probs must have shape (batch, classes, *spatial) with at least one spatial axis; got shape {shape}"
        )
    if shape[1] == 0:
        raise ValueError(f"probs must have at least one class (axis 1); got shape {shape}")
    if any(s == 0 for s in shape[2:]):
        raise ValueError(f"probs spatial axes must be non-empty; got shape {shape}")


def raise_bad_values(probs: np.ndarray) -> None:
    """Called only after a kernel found a value outside [0, 1]: say which kind."""
    if not np.isfinite(probs).all():
        raise ValueError("probs must contain only finite values (found NaN or inf)")
    raise ValueError(
        f"probs must lie in [0, 1]; found values in [{float(np.min(probs))}, {float(np.max(probs))}] "
        "(logits? apply a softmax or sigmoid over the class axis first)"
    )
