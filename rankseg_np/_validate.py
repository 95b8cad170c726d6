"""Argument checking shared by every executor.

Everything a user can get wrong is caught here, before any executor runs,
with one ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind,
wrong value) that names the argument and the allowed values.  What a solver
accepts is read from the capability table (:mod:`rankseg_np._solvers`).

Two stages: :func:`check_options` needs no array (``RankSEG(...)`` and the
CLI call it before any data is read); :func:`check_config` adds the checks
that need the number of classes.  Executors receive a :class:`Config` that is
already canonical (lower-case names, floats, ints).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from ._solvers import METRIC_ALIASES, OUTPUT_MODES, PARAMETERS, SOLVERS, default_solver, supported

POLICIES = ("max_score", "void")
DEFAULT_VOID_INDEX = 255
_ARGUMENTS = ("metric", "smooth", "output_mode", "solver", "pruning_prob")
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
    void_index: int = DEFAULT_VOID_INDEX
    eps: float = 1e-4
    void_index_given: bool = False


def _fmt(allowed) -> str:
    return ", ".join(repr(a) for a in allowed)


def _choice(name: str, value: Any, allowed: dict[str, str] | tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {_fmt(allowed)}; got {type(value).__name__}")
    key = value.strip().lower()
    table = allowed if isinstance(allowed, dict) else {a: a for a in allowed}
    if key not in table:
        raise ValueError(f"{name} must be one of {_fmt(allowed)}; got {value!r}")
    return table[key]


def finite_real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    # -0.0 + 0.0 is +0.0: executors that compare bit patterns (cpu.rma's
    # pruning test) would read -0.0 (sign bit set) as above every probability.
    return value + 0.0


def _solver_names(keys) -> str:
    return ", ".join(repr(SOLVERS[k].name) for k in keys)


def _unknown_parameters(unknown: list[str], solver: str, output_mode: str, allowed: tuple[str, ...]) -> TypeError:
    """Name where each unknown parameter belongs, or the closest spelling."""
    hints = []
    for name in unknown:
        owners = [s for s in SOLVERS.values() if name in s.accepts("multiclass") + s.accepts("multilabel")]
        if owners:
            where = "; ".join(
                f"{s.name!r} ({'/'.join(s.metrics)}, output_mode={'/'.join(s.output_modes)})" for s in owners
            )
            hints.append(f"{name!r} is a parameter of solver {where}: {PARAMETERS[name]}")
        else:
            guess = difflib.get_close_matches(name, _ARGUMENTS + tuple(PARAMETERS), n=1)
            if guess:
                hints.append(f"did you mean {guess[0]!r}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    allowed_txt = ", ".join(allowed) if allowed else "none"
    return TypeError(
        f"solver {SOLVERS[solver].name!r} with output_mode={output_mode!r} does not accept "
        f"parameter(s) {', '.join(unknown)}{hint}; allowed parameters: {allowed_txt}"
    )


def check_options(
    metric: Any = "dice",
    smooth: Any = 0.0,
    output_mode: Any = "multiclass",
    solver: Any = None,
    pruning_prob: Any = 0.5,
    **solver_params: Any,
) -> Config:
    """Validate every argument of ``rankseg`` that needs no array; return a :class:`Config`.

    ``solver=None`` picks the default for the metric and output mode
    (:func:`rankseg_np._solvers.default_solver`).

    Examples
    --------
    >>> from rankseg_np._validate import check_options
    >>> check_options(metric="acc").solver
    'argmax'
    >>> check_options(metric="xx")
    Traceback (most recent call last):
    ...
    ValueError: metric must be one of 'dice', 'iou', 'acc', 'accuracy'; got 'xx'
    """
    metric = _choice("metric", metric, METRIC_ALIASES)
    output_mode = _choice("output_mode", output_mode, OUTPUT_MODES)
    if solver is None:
        key = default_solver(metric, output_mode)
    elif not isinstance(solver, str):
        raise TypeError(f"solver must be a string or None; got {type(solver).__name__}")
    else:
        key = solver.strip().lower()

    smooth = finite_real("smooth", smooth)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0; got {smooth}")
    pruning_prob = finite_real("pruning_prob", pruning_prob)
    if not 0.0 <= pruning_prob <= 1.0:
        raise ValueError(f"pruning_prob must lie in [0, 1]; got {pruning_prob}")

    allowed_keys = supported(metric, output_mode)
    if key not in allowed_keys:
        hint = f"; omit solver to get {SOLVERS[allowed_keys[0]].name!r}" if metric == "accuracy" else ""
        if key in SOLVERS and metric in SOLVERS[key].metrics:  # right metric, other output mode
            modes = " or ".join(repr(m) for m in SOLVERS[key].output_modes)
            hint += f"; {SOLVERS[key].name!r} needs output_mode={modes}"
        raise ValueError(
            f"solver {solver!r} is not supported for metric={metric!r} with output_mode={output_mode!r}; "
            f"supported solvers: {_solver_names(allowed_keys)}{hint}"
        )

    allowed = SOLVERS[key].accepts(output_mode)
    unknown = sorted(set(solver_params) - set(allowed))
    if unknown:
        raise _unknown_parameters(unknown, key, output_mode, allowed)

    policy = _choice("unassigned_policy", solver_params.get("unassigned_policy", "max_score"), POLICIES)
    void_index = DEFAULT_VOID_INDEX
    if "void_index" in solver_params:
        if policy != "void":
            raise ValueError("void_index is only accepted together with unassigned_policy='void'")
        void_index = solver_params["void_index"]
        if isinstance(void_index, (bool, np.bool_)) or not isinstance(void_index, Integral):
            raise TypeError(f"void_index must be an int; got {type(void_index).__name__}")
        void_index = int(void_index)
        if not _INT64.min <= void_index <= _INT64.max:
            raise ValueError(f"void_index must fit in int64; got {void_index}")

    if "safe_screening" in solver_params:
        # Accepted for drop-in compatibility with rankseg, where it selects an
        # internal algorithm; our threshold search needs no sort at all.
        screening = solver_params["safe_screening"]
        if not (isinstance(screening, bool) or screening == "auto"):
            raise TypeError("safe_screening must be True, False or 'auto'")

    eps = 1e-4
    if "eps" in solver_params:
        eps = finite_real("eps", solver_params["eps"])
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must lie strictly between 0 and 1; got {eps}")

    return Config(
        metric=metric,
        smooth=smooth,
        output_mode=output_mode,
        solver=key,
        pruning_prob=pruning_prob,
        unassigned_policy=policy,
        void_index=void_index,
        eps=eps,
        void_index_given="void_index" in solver_params,
    )


def for_classes(cfg: Config, num_class: int) -> Config:
    """The checks of ``cfg`` that need the number of classes (axis 1 of ``probs``)."""
    if cfg.output_mode == "multiclass" and num_class == 1:
        raise ValueError(
            "output_mode='multiclass' needs at least two channels: single-channel probabilities "
            "cannot make a label map. Use output_mode='multilabel' for a foreground mask, or pass "
            "two channels (background, foreground)."
        )
    if cfg.solver not in supported(cfg.metric, cfg.output_mode, num_class):
        keys = supported(cfg.metric, cfg.output_mode, num_class)
        raise ValueError(
            f"solver {SOLVERS[cfg.solver].name!r} is not supported for metric={cfg.metric!r} with "
            f"output_mode={cfg.output_mode!r}, single-channel input; supported solvers: {_solver_names(keys)}"
        )
    if cfg.unassigned_policy == "void" and 0 <= cfg.void_index < num_class:
        given = "" if cfg.void_index_given else " (the default)"
        raise ValueError(
            f"void_index must lie outside the class range [0, {num_class}); got {cfg.void_index}{given}; "
            "pass e.g. void_index=-1"
        )
    return cfg


def check_config(num_class: int, metric: Any = "dice", smooth: Any = 0.0, output_mode: Any = "multiclass",
                 solver: Any = None, pruning_prob: Any = 0.5, **solver_params: Any) -> Config:
    """Validate every argument of ``rankseg`` except ``probs``, for ``num_class`` classes."""
    cfg = check_options(metric, smooth, output_mode, solver, pruning_prob, **solver_params)
    return for_classes(cfg, num_class)


# How to convert to floating point, by the route the array took (see _dispatch.backend_of).
_FLOAT_HINTS = {
    "torch": "probs.float()",
    "jax": "probs.astype(jnp.float32)",
    "tensorflow": "tf.cast(probs, tf.float32)",
}


def check_probs_structure(probs: Any, route: str = "numpy") -> None:
    """Shape and dtype checks on an array of the executor's own type (no value scan).

    ``route`` (the caller's array family) only shapes the hint of the dtype error.
    """
    if any(s is None or s != s for s in probs.shape):  # None or NaN: unknown (lazy) sizes
        raise ValueError(
            f"probs has unknown axis sizes {tuple(probs.shape)}; for a Dask array call "
            "x.compute_chunk_sizes() first"
        )
    shape = tuple(int(s) for s in probs.shape)
    dtype = np.dtype(str(probs.dtype)) if not isinstance(probs.dtype, np.dtype) else probs.dtype
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        hint = ""
        if dtype.kind in "iub":
            fix = _FLOAT_HINTS.get(route, "probs.astype(np.float32)")
            hint = f" (probabilities are floats: convert with {fix}; label maps are not probabilities)"
        raise TypeError(
            "probs must have dtype float16, float32 or float64 (bfloat16 from PyTorch, JAX or TensorFlow "
            f"is upcast to float32); got {probs.dtype}{hint}"
        )
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
