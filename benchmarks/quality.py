"""Quality study: how much Dice / IoU does RankSEG gain over argmax, and when?

Calibrated synthetic scenarios (``rankseg_np.data.synthetic_batch``: ground
truth drawn pixel by pixel from the model's probabilities), plus two
deliberately miscalibrated ones.  For every scenario and metric the study
compares the plain decision (``argmax`` over classes, or ``p > 0.5`` for
independent masks) with every RankSEG solver that is available
(``RMA``, ``exact``, ``BA``, ``TRNA``, ``BA+TRNA``; solvers that are not
implemented in this installation are skipped with a note), and reports

- the mean per-image score against the drawn truth (per image: the mean over
  classes of Dice_0 / IoU_0 with the ``0/0 := 0`` convention of MATH section 1,
  the quantity RankSEG maximises in expectation), with a 95% t-interval over
  images;
- the paired per-image difference to the plain decision, with its 95% t-interval;
- the exact expected score under the model's probabilities, averaged the same
  way, when ``rankseg_np.expected.expected_metric`` is available (calibrated
  scenarios only: under miscalibration the model's expectation is not the
  truth's);
- for the miscalibrated scenarios, RankSEG after **temperature scaling fitted
  on a held-out split** (``RMA, calibrated``; ``exact, calibrated``): a second
  batch of the same scenario (another seed) plays the validation set,
  ``rankseg_np.calibration.TemperatureScaling(inputs="probabilities")`` is
  fitted on it and applied to the test batch before RankSEG.  The gain is
  paired with the plain decision on the *original* probabilities (a single
  temperature never changes argmax or ``p > 0.5``).

Writes ``quality.md`` (table), ``quality.json`` (records) and ``quality.png``
(paired gains with intervals) into ``--out`` (default ``benchmarks/results``);
``--quick`` runs small sizes and writes ``quality_quick.*`` instead.

Run: ``python benchmarks/quality.py`` (full, a few minutes on 2 cores) or
``python benchmarks/quality.py --quick`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

import rankseg_np
from rankseg_np import rankseg

rankseg_np.use_numba()  # its timings are of the Numba kernels, not of a process's first calls
from rankseg_np.calibration import TemperatureScaling
from rankseg_np.data import synthetic_batch
from rankseg_np.metrics import dice_score, iou_score, one_hot

RESULTS = Path(__file__).resolve().parent / "results"
SOLVERS = ("RMA", "exact", "BA", "TRNA", "BA+TRNA")
COMMAND = "python benchmarks/quality.py"
PRUNE0 = "RMA, pruning_prob=0"
CALIBRATED = ", calibrated"  # suffix of the methods run on temperature-scaled probabilities
HELD_OUT_SEED = 1000  # the held-out (validation) batch of a scenario uses seed + HELD_OUT_SEED


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    scenario: str  # synthetic_batch scenario: object sizes
    num_class: int
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    images: int
    output_mode: str = "multilabel"
    temperature: float = 1.0
    seed: int = 0

    @property
    def calibrated(self) -> bool:
        return self.temperature == 1.0


SCENARIOS = (
    Scenario("small objects", "binary masks, many small blobs with uncertain rims", "small", 1, (96, 96), (48, 48), 96),
    Scenario("large objects", "binary masks, two large blobs", "large", 1, (128, 128), (64, 64), 96, seed=1),
    Scenario("small, 4 classes", "multiclass labels (background + 3), small blobs", "small", 4, (96, 96), (48, 48), 48,
             output_mode="multiclass", seed=2),
    Scenario("many classes (21)", "multiclass labels, 21 classes, mixed sizes", "mixed", 21, (96, 96), (48, 48), 48,
             output_mode="multiclass", seed=3),
    Scenario("3-D volumes", "multiclass labels (background + 2), 32^3 volumes, mixed sizes", "mixed", 3,
             (32, 32, 32), (16, 16, 16), 32, output_mode="multiclass", seed=4),
    Scenario("over-confident model", "binary, small blobs; truth drawn at logit temperature 2", "small", 1, (96, 96),
             (48, 48), 96, temperature=2.0, seed=5),
    Scenario("under-confident model", "binary, small blobs; truth drawn at logit temperature 0.5", "small", 1,
             (96, 96), (48, 48), 96, temperature=0.5, seed=6),
)


@dataclass
class Record:
    scenario: str
    metric: str
    method: str
    n_images: int
    score: float
    score_ci: float
    gain: float  # paired mean difference to the plain decision
    gain_ci: float
    expected: float | None
    seconds: float


@dataclass
class Study:
    records: list[Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quick: bool = False


def t_interval(x: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval over images."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()), float("nan")
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean()), float(half)


def baseline_name(output_mode: str) -> str:
    return "argmax" if output_mode == "multiclass" else "threshold 0.5"


def baseline_masks(probs: np.ndarray, output_mode: str) -> np.ndarray:
    if output_mode == "multiclass":
        return one_hot(probs.argmax(axis=1), probs.shape[1])
    return probs > 0.5


def solver_available(solver: str, metric: str, output_mode: str) -> str | None:
    """None when ``solver`` runs for this metric/output mode here; otherwise the reason it does not."""
    probs = np.array([[[0.9, 0.6, 0.4, 0.1]], [[0.2, 0.3, 0.7, 0.05]]], dtype=np.float64).reshape(1, 2, 4)
    if output_mode == "multilabel":
        probs = probs[:, :1]
    else:
        probs = probs / probs.sum(axis=1, keepdims=True)
    try:
        rankseg(probs, metric=metric, output_mode=output_mode, solver=solver)
    except Exception as exc:  # not implemented yet, or not defined for this metric: skip the column
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def expected_metric_function():
    """``rankseg_np.expected.expected_metric`` when this installation has it, else None."""
    try:
        from rankseg_np.expected import expected_metric
    except ImportError:
        return None
    return expected_metric


def per_image(scores: np.ndarray) -> np.ndarray:
    """(B, C) per-(image, class) scores -> (B,) mean over classes."""
    return np.asarray(scores, dtype=np.float64).reshape(scores.shape[0], -1).mean(axis=1)


def held_out_temperature(sc: Scenario, shape: tuple[int, ...], n: int) -> TemperatureScaling:
    """Temperature scaling fitted on a held-out batch of the scenario (another seed, same size)."""
    val_probs, val_truth = synthetic_batch(
        batch=n, num_class=sc.num_class, shape=shape, scenario=sc.scenario,
        output_mode=sc.output_mode, temperature=sc.temperature, seed=sc.seed + HELD_OUT_SEED,
    )
    return TemperatureScaling(output_mode=sc.output_mode, inputs="probabilities").fit(val_probs, val_truth)


def run_scenario(sc: Scenario, quick: bool, study: Study, expected_metric, available: dict) -> None:
    shape = sc.quick_shape if quick else sc.shape
    n = max(8, sc.images // 4) if quick else sc.images
    probs, truth = synthetic_batch(
        batch=n, num_class=sc.num_class, shape=shape, scenario=sc.scenario,
        output_mode=sc.output_mode, temperature=sc.temperature, seed=sc.seed,
    )
    calibrated_probs = None
    if not sc.calibrated:
        ts = held_out_temperature(sc, shape, n)
        calibrated_probs = ts.transform(probs)
        study.notes.append(
            f"**{sc.name}**: temperature fitted on a held-out batch of {n} images: T = {ts.temperature_:.3f} "
            f"(truth drawn at {sc.temperature:g}); mean NLL per pixel {ts.nll_initial_:.4f} -> {ts.nll_:.4f}.")
    truth_masks = one_hot(truth, sc.num_class) if sc.output_mode == "multiclass" else truth
    for metric, score_fn in (("dice", dice_score), ("iou", iou_score)):
        methods: list[tuple[str, str | None, dict]] = [(baseline_name(sc.output_mode), None, {})]
        methods += [(s, s, {}) for s in SOLVERS if available[(s, metric, sc.output_mode)] is None]
        if calibrated_probs is not None:
            methods += [(s + CALIBRATED, s, {"probs": calibrated_probs}) for s in ("RMA", "exact")
                        if available[(s, metric, sc.output_mode)] is None]
        if sc.output_mode == "multiclass":
            # With many competing classes a class's largest probability is often <= 1/2, and the
            # default pruning_prob=0.5 then gives it an empty mask: show what keeping every class does.
            methods.append((PRUNE0, "RMA", {"pruning_prob": 0.0}))
        base_scores = None
        for name, solver, kwargs in methods:
            start = time.perf_counter()
            if solver is None:
                masks = baseline_masks(probs, sc.output_mode)
            else:
                kwargs = dict(kwargs)
                out = rankseg(kwargs.pop("probs", probs), metric=metric, output_mode=sc.output_mode, solver=solver,
                              **kwargs)
                masks = one_hot(out, sc.num_class) if sc.output_mode == "multiclass" else out
            seconds = time.perf_counter() - start
            scores = per_image(score_fn(masks, truth_masks))
            if base_scores is None:
                base_scores = scores
            score, score_ci = t_interval(scores)
            gain, gain_ci = t_interval(scores - base_scores)
            expected = None
            if expected_metric is not None and sc.calibrated:
                expected = float(per_image(np.asarray(expected_metric(probs, masks, metric, 0.0))).mean())
            study.records.append(Record(sc.name, metric, name, n, score, score_ci, gain, gain_ci, expected, seconds))


def run_study(quick: bool = False, scenarios=SCENARIOS, verbose: bool = True) -> Study:
    study = Study(quick=quick)
    available = {}
    for metric in ("dice", "iou"):
        for mode in ("multilabel", "multiclass"):
            for solver in SOLVERS:
                reason = solver_available(solver, metric, mode)
                available[(solver, metric, mode)] = reason
                if reason is not None and not reason.startswith("ValueError"):
                    study.notes.append(f"`{solver}` ({metric}, {mode}) skipped: not available here ({reason}).")
    expected_metric = expected_metric_function()
    if expected_metric is None:
        study.notes.append("Exact expected scores skipped: `rankseg_np.expected.expected_metric` is not available here.")
    for sc in scenarios:
        t0 = time.perf_counter()
        run_scenario(sc, quick, study, expected_metric, available)
        if verbose:
            print(f"  {sc.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return study


def _fmt(x: float | None, ci: float | None = None, digits: int = 4, signed: bool = False) -> str:
    if x is None:
        return "—"
    text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return text if ci is None or np.isnan(ci) else f"{text} ± {ci:.{digits}f}"


def summary(study: Study) -> str:
    """One row per scenario: the plain score and the RMA (and exact, when present) gains, Dice and IoU."""
    solvers = [m for m in ("RMA", "exact") if any(r.method == m for r in study.records)]
    solvers += [m + CALIBRATED for m in ("RMA",) if any(r.method == m + CALIBRATED for r in study.records)]
    head = "| scenario |"
    for metric in ("Dice", "IoU"):
        head += f" {metric}: plain |" + "".join(f" {metric}: {m} gain |" for m in solvers)
    expected = any(r.expected is not None for r in study.records)
    if expected:  # exact expected Dice under the model's probabilities (calibrated scenarios)
        head += " E[Dice]: plain |" + "".join(f" E[Dice]: {m} |" for m in solvers if CALIBRATED not in m)
    n_expected = 1 + sum(CALIBRATED not in m for m in solvers) if expected else 0
    lines = [head, "|---|" + "---:|" * ((2 + 2 * len(solvers)) + n_expected)]
    for name in dict.fromkeys(r.scenario for r in study.records):
        row = f"| {name} |"
        for metric in ("dice", "iou"):
            recs = {r.method: r for r in study.records if r.scenario == name and r.metric == metric}
            plain = next(r for m, r in recs.items() if m in ("argmax", "threshold 0.5"))
            row += f" {plain.score:.3f} |"
            for m in solvers:
                row += f" {_fmt(recs[m].gain, recs[m].gain_ci, digits=3, signed=True)} |" if m in recs else " — |"
        if expected:
            recs = {r.method: r for r in study.records if r.scenario == name and r.metric == "dice"}
            plain = next(r for m, r in recs.items() if m in ("argmax", "threshold 0.5"))
            row += f" {_fmt(plain.expected)} |" + "".join(
                f" {_fmt(recs[m].expected) if m in recs else '—'} |" for m in solvers if CALIBRATED not in m)
        lines.append(row)
    return "\n".join(lines) + "\n"


def markdown(study: Study) -> str:
    cmd = COMMAND + (" --quick" if study.quick else "")
    lines = [
        f"Regenerate: `{cmd}` (rankseg_np {rankseg_np.__version__}, numpy {np.__version__}, "
        f"{platform.machine()}).  Scores: mean over images of the per-image mean over classes; "
        "± is the 95% t-interval over images; the gain is paired with the plain decision "
        "(argmax, or threshold 0.5 for independent masks) on the same images.",
        "",
        summary(study),
        "All methods:",
        "",
        "| scenario | metric | method | images | score vs drawn truth | gain vs plain | exact expected score |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in study.records:
        plain = r.method in ("argmax", "threshold 0.5")
        lines.append(
            f"| {r.scenario} | {r.metric} | {r.method} | {r.n_images} | {_fmt(r.score, r.score_ci)} | "
            f"{'—' if plain else _fmt(r.gain, r.gain_ci, signed=True)} | {_fmt(r.expected)} |"
        )
    lines.append("")
    for sc in SCENARIOS:
        if any(r.scenario == sc.name for r in study.records):
            lines.append(f"- **{sc.name}**: {sc.description}.")
    lines.append("- Exact expected scores are for calibrated scenarios only (under miscalibration the "
                 "model's expectation is not the truth's).")
    lines.append(f"- *{CALIBRATED.strip(', ')}*: RankSEG on the test batch after temperature scaling fitted on a "
                 f"held-out batch of the same scenario (seed + {HELD_OUT_SEED}); gain paired with the plain "
                 "decision on the original probabilities.")
    lines += [f"- {note}" for note in study.notes]
    return "\n".join(lines) + "\n"


def plot(study: Study, path: Path) -> None:
    """Paired gain over the plain decision, one row per scenario, one marker per method, 95% CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in study.records))
    order = SOLVERS + (PRUNE0, "RMA" + CALIBRATED, "exact" + CALIBRATED)
    colours = dict(zip(order, ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#ff7f0e",
                               "#e377c2"]))
    markers = dict(zip(order, ["o", "D", "s", "^", "v", "P", "*", "X"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.55 * len(scenarios) + 1.8), sharey=True)
    seen = {}
    for ax, metric in zip(axes, ("dice", "iou")):
        for i, sc in enumerate(scenarios):
            recs = [r for r in study.records if r.scenario == sc and r.metric == metric and r.method in order]
            recs.sort(key=lambda r: order.index(r.method))
            for k, r in enumerate(recs):
                y = i + (k - (len(recs) - 1) / 2) * 0.14
                err = 0.0 if np.isnan(r.gain_ci) else r.gain_ci
                seen[r.method] = ax.errorbar(r.gain, y, xerr=err, fmt=markers[r.method], color=colours[r.method],
                                             ms=5, capsize=2, lw=1)
        ax.axvline(0.0, color="black", lw=0.8)
        name = "Dice" if metric == "dice" else "IoU"
        ax.set_xlabel(f"mean per-image {name} minus that of argmax / threshold 0.5")
        ax.set_title(f"{name} gain (paired, 95% CI over images)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        for i in range(len(scenarios) - 1):
            ax.axhline(i + 0.5, color="grey", lw=0.3)
    axes[0].set_yticks(range(len(scenarios)))
    axes[0].set_yticklabels(scenarios, fontsize=9)
    axes[0].invert_yaxis()
    methods = [m for m in order if m in seen]
    fig.legend([seen[m] for m in methods], methods, loc="lower center", ncol=len(methods), fontsize=8, frameon=False)
    fig.suptitle(f"RankSEG vs the plain decision, synthetic data with truth drawn from the probabilities "
                 f"({COMMAND}{' --quick' if study.quick else ''})", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(study: Study, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = "quality_quick" if study.quick else "quality"
    paths = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    paths["md"].write_text(markdown(study))
    paths["json"].write_text(json.dumps(
        {"command": COMMAND + (" --quick" if study.quick else ""), "version": rankseg_np.__version__,
         "records": [asdict(r) for r in study.records], "notes": study.notes}, indent=1))
    try:
        plot(study, paths["png"])
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e .[plot])", file=sys.stderr)
        del paths["png"]
    return paths


def main(argv: list[str] | None = None) -> Study:
    parser = argparse.ArgumentParser(description="RankSEG quality study on calibrated synthetic data.")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds); writes quality_quick.*")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    study = run_study(quick=args.quick)
    paths = write(study, args.out)
    print(markdown(study))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return study


if __name__ == "__main__":
    main()
