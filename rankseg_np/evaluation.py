r"""Measure what RankSEG gains over argmax on labelled data: :func:`evaluate`.

Per image, the score of each decision rule (argmax / threshold, RankSEG's
solvers) against the ground truth, in the convention RankSEG optimises, and a
report with paired gains and bootstrap intervals::

    report = rankseg_np.evaluate(val_probs, val_labels, metric="dice")
    print(report.summary())

Conventions (``docs/MATH.md`` section 1).  For image ``b`` and class ``c``
with predicted mask ``P``, true mask ``T`` (labelled pixels only) and
smoothing ``gamma``: Dice ``(2|P & T| + gamma) / (|P| + |T| + gamma)``, IoU
``(|P & T| + gamma) / (|P | T| + gamma)``.  The image's score is the mean
over its classes.  A class absent from both the mask and the truth (only
possible ``0/0`` when ``gamma = 0``) counts as

* ``empty='zero'`` (default): **0**, the ``0/0 := 0`` of MATH section 1 and
  the quantity RankSEG maximises in expectation (so that with
  ``gamma = 0`` an empty prediction never scores, and RMA picks ``tau >= 1``
  for every class it keeps);
* ``empty='one'``: **1**, as MONAI's ``DiceMetric(ignore_empty=False)``;
* ``empty='ignore'``: classes **absent from the truth** are left out of the
  image's mean whatever was predicted, as MONAI's default
  ``DiceMetric(ignore_empty=True)``; an image with no class present scores
  NaN and is left out of the summary.

``include_background=False`` leaves channel 0 out of every image's mean (as
MONAI's ``include_background=False``); the decisions still use every channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import _labelled as L
from ._api import rankseg
from ._solvers import SOLVERS
from ._validate import check_config, check_probs_structure

__all__ = ["evaluate", "EvaluationReport", "SolverStats"]

EMPTY = ("zero", "one", "ignore")
METRICS = ("dice", "iou")
BASELINE = "argmax"


class SolverStats(NamedTuple):
    """One row of :meth:`EvaluationReport.summary`."""

    mean: float  # mean per-image score (images with a NaN score left out)
    gain: float  # paired mean of (solver - argmax) per image
    ci_low: float  # bootstrap interval of ``gain``
    ci_high: float
    improved: float  # fraction of images where the solver scores higher than argmax
    worse: float  # ... lower
    n_images: int


def _bootstrap_interval(d: np.ndarray, confidence: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (images resampled with replacement)."""
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // d.size)  # bounds the (resamples, images) index block
    for i in range(0, n_boot, step):
        k = min(step, n_boot - i)
        means[i:i + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class EvaluationReport:
    """Per-image scores of each decision rule against the ground truth; made by :func:`evaluate`.

    Attributes
    ----------
    per_image : dict of str -> ndarray (B,), float64
        Score of every image per decision rule: ``'argmax'`` (argmax over
        classes; for multilabel output the threshold ``p > 0.5``, which is the
        argmax of ``(1 - p, p)``) and one key per solver (``'RMA'``, ...).
    per_class : dict of str -> ndarray (B, C'), float64
        The per-(image, class) scores behind them (NaN where a class is left
        out; ``C' = C - 1`` without background).
    metric, empty, include_background, smooth, output_mode
        The conventions used (see :mod:`rankseg_np.evaluation`).
    """

    per_image: dict[str, np.ndarray]
    per_class: dict[str, np.ndarray]
    metric: str
    empty: str
    include_background: bool
    smooth: float
    output_mode: str
    baseline: str = field(default=BASELINE)

    def stats(self, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> dict[str, SolverStats]:
        """Mean, paired gain over argmax with a bootstrap interval, fractions improved/worse, per rule.

        Deterministic: the bootstrap draws from ``numpy.random.default_rng(seed)``
        (the same resampled images for every rule).
        """
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
        base = self.per_image[self.baseline]
        out = {}
        for name, scores in self.per_image.items():
            keep = ~(np.isnan(scores) | np.isnan(base))
            d = scores[keep] - base[keep]
            lo, hi = _bootstrap_interval(d, confidence, n_boot, seed)
            n = int(keep.sum())
            out[name] = SolverStats(
                mean=float(scores[keep].mean()) if n else float("nan"),
                gain=float(d.mean()) if n else float("nan"), ci_low=lo, ci_high=hi,
                improved=float((d > 0).mean()) if n else float("nan"),
                worse=float((d < 0).mean()) if n else float("nan"), n_images=n)
        return out

    def summary(self, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> str:
        """A printable table: mean per rule, paired gain over argmax with its bootstrap interval, images improved."""
        stats = self.stats(confidence, n_boot, seed)
        n_all = len(self.per_image[self.baseline])
        n_cls = next(iter(self.per_class.values())).shape[1]
        empty = {"zero": "a class absent from mask and truth scores 0",
                 "one": "a class absent from mask and truth scores 1",
                 "ignore": "classes absent from the truth left out"}[self.empty]
        bg = "" if self.include_background else ", background excluded"
        smooth = f", smooth={self.smooth:g}" if self.smooth else ""
        n_used = stats[self.baseline].n_images
        dropped = f" ({n_all - n_used} without any class scored left out)" if n_used < n_all else ""
        ci = f"{100 * confidence:g}% CI"
        lines = [
            f"{'Dice' if self.metric == 'dice' else 'IoU'} per image: mean over {n_cls} classes{bg}{smooth}; "
            f"{empty}. {n_used} images{dropped}.",
            f"{'rule':<10} {'mean':>7} {'gain vs argmax':>15} {ci + ' (bootstrap)':>24} {'improved':>9} {'worse':>7}",
        ]
        for name, s in stats.items():
            if name == self.baseline:
                lines.append(f"{name:<10} {s.mean:>7.4f}")
                continue
            interval = f"[{s.ci_low:+.4f}, {s.ci_high:+.4f}]"
            lines.append(f"{name:<10} {s.mean:>7.4f} {s.gain:>+15.4f} {interval:>24} "
                         f"{100 * s.improved:>8.0f}% {100 * s.worse:>6.0f}%")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def plot(self, solver: str | None = None) -> Any:
        """Per-image scores of ``solver`` (default: the first one) against argmax, and the gains' histogram.

        Returns the matplotlib figure.  Needs matplotlib
        (``pip install rankseg-np[plot]``).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("EvaluationReport.plot needs matplotlib: pip install 'rankseg-np[plot]'") from None
        names = [k for k in self.per_image if k != self.baseline]
        if not names:
            raise ValueError("this report has no solver besides argmax to plot")
        solver = names[0] if solver is None else solver
        if solver not in names:
            raise ValueError(f"solver must be one of {', '.join(map(repr, names))}; got {solver!r}")
        base, other = self.per_image[self.baseline], self.per_image[solver]
        keep = ~(np.isnan(base) | np.isnan(other))
        name = "Dice" if self.metric == "dice" else "IoU"
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.8))
        ax1.scatter(base[keep], other[keep], s=10, alpha=0.7)
        ax1.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax1.set_xlabel(f"{name}, argmax")
        ax1.set_ylabel(f"{name}, {solver}")
        ax1.set_title("per image", fontsize=10)
        ax2.hist(other[keep] - base[keep], bins=30)
        ax2.axvline(0.0, color="black", lw=0.8)
        ax2.set_xlabel(f"{name} gain of {solver} over argmax")
        ax2.set_title(f"paired gain, mean {np.mean(other[keep] - base[keep]):+.4f}", fontsize=10)
        fig.tight_layout()
        return fig


def _solver_names(solvers: Any) -> tuple[str, ...]:
    if isinstance(solvers, str):
        solvers = (solvers,)
    try:
        names = tuple(solvers)
    except TypeError:
        raise TypeError(f"solvers must be a solver name or a sequence of them; got {type(solvers).__name__}") from None
    out = []
    for s in names:
        if not isinstance(s, str):
            raise TypeError(f"solvers must hold solver names (str); got {type(s).__name__}")
        key = s.strip().lower()
        if key not in SOLVERS or set(SOLVERS[key].metrics) <= {"accuracy"}:
            allowed = ", ".join(repr(v.name) for v in SOLVERS.values() if set(v.metrics) & set(METRICS))
            raise ValueError(f"solvers must name RankSEG solvers ({allowed}); got {s!r} (argmax is always included)")
        out.append(SOLVERS[key].name)
    return tuple(dict.fromkeys(out))


def _counts(pred: Any, truth: Any, valid: Any, axes: tuple[int, ...]) -> tuple:
    """``|P & T|, |P|, |T|`` per (image, class) over labelled pixels, float64."""
    p = pred & valid
    return ((p & truth).sum(axis=axes, dtype=np.float64), p.sum(axis=axes, dtype=np.float64),
            (truth & valid).sum(axis=axes, dtype=np.float64))


def _scores(inter, pred, truth, metric: str, smooth: float, empty: str) -> np.ndarray:
    if metric == "dice":
        num, den = 2.0 * inter + smooth, pred + truth + smooth
    else:
        num, den = inter + smooth, pred + truth - inter + smooth
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0 if empty == "one" else 0.0)
    if empty == "ignore":
        out = np.where(truth > 0, out, np.nan)
    return out


def _count_parts(data: L.Labelled, names: tuple[str, ...], kwargs: dict) -> list[dict]:
    """Per decision rule, ``(|P & T|, |P|, |T|)`` per (image, class), for blocks of whole images in order."""
    s, y, mode = data.scores, data.labels, data.output_mode
    c = int(s.shape[1])
    xp = np if data.kind == "dask" else L.xp_of(s)
    classes = xp.arange(c).reshape((1, c) + (1,) * (s.ndim - 2))
    axes = tuple(range(2, s.ndim))

    def block(sb, yb):
        if data.kind == "dask":
            valid = yb.map_blocks(L.valid_labels, c, mode, data.ignore_index, dtype=bool)
        else:
            L.scores_values(sb, "probs", True)
            valid = L.valid_labels(yb, c, mode, data.ignore_index)
        if mode == "multiclass":
            truth, valid = yb[:, None] == classes, valid[:, None]
            baseline = sb.argmax(axis=1)[:, None] == classes
        else:
            truth, baseline = (yb != 0) & valid, sb > 0.5
        out = {BASELINE: _counts(baseline, truth, valid, axes)}
        for name in names:
            dec = rankseg(sb, solver=name, **kwargs)
            out[name] = _counts(dec[:, None] == classes if mode == "multiclass" else dec, truth, valid, axes)
        return out

    if data.kind == "dask":
        import dask

        return list(dask.compute(block(s, y)))  # one pass over the chunks for every rule
    # RankSEG decides each image on its own, so blocks of whole images give the same masks.
    step = max(1, (L.BLOCK_ELEMENTS * 8) // int(np.prod(s.shape[1:])))
    return [block(s[i:i + step], y[i:i + step]) for i in range(0, int(s.shape[0]), step)]


def evaluate(
    probs: Any,
    labels: Any,
    metric: str = "dice",
    *,
    output_mode: str = "multiclass",
    solvers: Any = ("RMA",),
    smooth: float = 0.0,
    pruning_prob: float = 0.5,
    ignore_index: int | None = None,
    empty: str = "zero",
    include_background: bool = True,
    **solver_params: Any,
) -> EvaluationReport:
    r"""Per-image scores of argmax and of RankSEG against the ground truth.

    Parameters
    ----------
    probs : array, shape (B, C, \*spatial), or a list of such arrays
        Probabilities (calibrate logits first, see
        :class:`rankseg_np.calibration.TemperatureScaling`).  Any array type
        :func:`rankseg_np.rankseg` accepts; a Dask array stays lazy until one
        final ``compute`` of all the scores.  A list (same ``C``, any spatial
        sizes) is scored as one set of images, in order.
    labels : array, or a list of arrays (one per array of ``probs``)
        Ground truth: integer class ids ``(B, *spatial)`` (multiclass), or
        boolean / 0-1 masks ``(B, C, *spatial)`` (multilabel).
    metric : {'dice', 'iou'}, default 'dice'
        Scored, and optimised by the solvers.
    output_mode : {'multiclass', 'multilabel'}, default 'multiclass'
        As in :func:`rankseg_np.rankseg`; the baseline is argmax over classes,
        or ``p > 0.5`` per class.
    solvers : str or sequence of str, default ('RMA',)
        RankSEG solvers to compare, e.g. ``('RMA', 'exact')``.
    smooth, pruning_prob, **solver_params
        Passed to :func:`rankseg_np.rankseg`; ``smooth`` is also the metric's
        smoothing when scoring.
    ignore_index : int or None
        Label of unlabelled pixels: they count in no class, predicted or true.
    empty : {'zero', 'one', 'ignore'}, default 'zero'
        How a class absent from the truth counts (module docstring): ``'zero'``
        is the convention RankSEG optimises; ``'ignore'`` and ``'one'`` are
        MONAI's ``ignore_empty=True`` and ``False``.
    include_background : bool, default True
        ``False`` leaves channel 0 out of each image's mean.

    Returns
    -------
    EvaluationReport
        ``per_image`` (rule -> ``(B,)`` float64), ``summary()``, ``plot()``.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np import evaluate
    >>> from rankseg_np.data import synthetic_batch
    >>> probs, truth = synthetic_batch(batch=8, num_class=3, shape=(32, 32), scenario="small", seed=0)
    >>> report = evaluate(probs, truth, metric="dice")
    >>> sorted(report.per_image), report.per_image["RMA"].shape
    (['RMA', 'argmax'], (8,))
    >>> print(report.summary())  # doctest: +ELLIPSIS
    Dice per image: mean over 3 classes; a class absent from mask and truth scores 0. 8 images.
    rule ...
    """
    metric_key = L.choice("metric", metric, METRICS)
    empty = L.choice("empty", empty, EMPTY)
    if not isinstance(include_background, (bool, np.bool_)):
        raise TypeError(f"include_background must be True or False; got {type(include_background).__name__}")
    names = _solver_names(solvers)
    items = L.pairs(probs, labels, output_mode, ignore_index, "probs")
    mode = items[0].output_mode
    for item in items:
        check_probs_structure(item.scores)
    c = int(items[0].scores.shape[1])
    if not include_background and c == 1:
        raise ValueError("include_background=False needs at least two channels (channel 0 is the background)")
    kwargs = dict(metric=metric_key, smooth=smooth, output_mode=mode, pruning_prob=pruning_prob, **solver_params)
    for name in names:  # every argument checked before any work
        check_config(c, solver=name, **kwargs)
    smooth = float(smooth)

    parts = [part for item in items for part in _count_parts(item, names, kwargs)]
    counts = {k: tuple(np.concatenate([np.asarray(L.host(p[k][j]), dtype=np.float64) for p in parts])
                       for j in range(3)) for k in parts[0]}

    first = 0 if include_background else 1
    per_class, per_image = {}, {}
    for name in (BASELINE,) + names:
        inter, pred, truth = (x[:, first:] for x in counts[name])
        scores = _scores(inter, pred, truth, metric_key, smooth, empty)
        per_class[name] = scores
        with np.errstate(invalid="ignore"):
            kept = (~np.isnan(scores)).sum(axis=1)
            per_image[name] = np.where(kept > 0, np.nansum(scores, axis=1) / np.maximum(kept, 1), np.nan)
    return EvaluationReport(per_image, per_class, metric_key, empty, bool(include_background), smooth, mode)
