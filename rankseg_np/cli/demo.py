"""``rankseg-np demo`` (argmax vs RankSEG on calibrated synthetic data) and ``rankseg-np bench``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np

from .._first_calls import use_numba
from ._common import EXIT_OK, EXIT_USAGE, PROG, _one_line, compile_notice


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """Result and the best wall time (seconds) over ``repeat`` calls."""
    best = float("inf")
    result = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best



def cmd_demo(args: argparse.Namespace) -> int:
    from .. import rankseg
    from ..data import SCENARIOS, synthetic_batch
    from ..metrics import dice_score, iou_score, one_hot

    out = sys.stdout
    err = sys.stderr
    if args.scenario not in SCENARIOS:
        err.write(f"{PROG} demo: error: --scenario must be one of {', '.join(SCENARIOS)}; got {args.scenario!r}\n")
        return EXIT_USAGE
    for name in ("batch", "classes", "size", "repeat"):
        if getattr(args, name) < 1:
            err.write(f"{PROG} demo: error: --{name} must be >= 1\n")
            return EXIT_USAGE
    multilabel = args.output_mode == "multilabel"
    if not multilabel and args.classes < 2:
        err.write(f"{PROG} demo: error: --classes must be >= 2 for multiclass output (or use --output-mode multilabel)\n")
        return EXIT_USAGE
    metrics = [args.metric] if args.metric else ["dice", "iou"]
    shape = (args.size,) * args.ndim

    t0 = time.perf_counter()
    probs, truth = synthetic_batch(
        batch=args.batch, num_class=args.classes, shape=shape, scenario=args.scenario,
        output_mode=args.output_mode, seed=args.seed,
    )
    t_gen = time.perf_counter() - t0
    truth_masks = truth if multilabel else one_hot(truth, args.classes)

    def as_masks(pred: np.ndarray) -> np.ndarray:
        return pred if multilabel else one_hot(pred, args.classes)

    def score(pred: np.ndarray) -> tuple[float, float]:
        m = as_masks(pred)
        return float(dice_score(m, truth_masks).mean()), float(iou_score(m, truth_masks).mean())

    # Baseline: what a pipeline does without RankSEG.
    if multilabel:
        base_name, base = "threshold p > 0.5", lambda: probs > 0.5
    else:
        base_name, base = "argmax", lambda: np.argmax(probs, axis=1)
    methods: list[tuple[str, Callable[[], np.ndarray]]] = [(base_name, base)]
    for metric in metrics:
        methods.append(
            (f"RankSEG RMA {metric}", lambda m=metric: rankseg(probs, metric=m, output_mode=args.output_mode))
        )
    exact_reason = None if args.exact else "disabled with --no-exact"
    if args.exact:
        for metric in metrics:
            methods.append(
                (f"RankSEG exact {metric}",
                 lambda m=metric: rankseg(probs, metric=m, output_mode=args.output_mode, solver="exact"))
            )

    spatial = "x".join(map(str, shape))
    import numba

    from ..cpu import SERIAL_BELOW

    if probs.size < SERIAL_BELOW or numba.get_num_threads() == 1:
        threads = f"on one thread (RankSEG runs serially below {SERIAL_BELOW:,} probabilities; argmax is NumPy's)"
    else:
        threads = f"RankSEG on {numba.get_num_threads()} Numba threads, argmax (NumPy's) on one"
    out.write(
        f"{PROG} demo: {args.batch} images x {args.classes} classes, {spatial} pixels, "
        f"scenario {args.scenario!r}, {args.output_mode}, seed {args.seed} (data generated in {t_gen:.2f} s)\n"
        "  calibrated synthetic data: the ground truth is drawn from the probabilities themselves\n"
        "  scores: Dice and IoU per (image, class) against that truth, then the mean over all images\n"
        "  and classes (background included; 0/0 counts as 0); times: best of "
        f"{args.repeat} after one warm-up call (Numba compile excluded), {threads}\n\n"
    )
    rows = []
    base_time = None
    warmup = 0.0
    # The table times the Numba kernels a long run uses, not the NumPy code that
    # answers a process's first small calls (rankseg_np._first_calls).
    use_numba()
    compile_notice(err)
    for name, fn in methods:
        try:
            t0 = time.perf_counter()
            fn()  # warm-up: loads or compiles the Numba kernels
            warmup += time.perf_counter() - t0
            pred, seconds = _timed(fn, args.repeat)
            dice, iou = score(pred)
        except Exception as exc:  # an optional solver may be unfinished: report, keep the table
            err.write(f"{PROG} demo: {name} skipped: {_one_line(exc)}\n")
            continue
        base_time = seconds if base_time is None else base_time
        rows.append((name, dice, iou, seconds))
    head = f"{'method':<22} {'mean Dice':>10} {'mean IoU':>10} {'time (ms)':>10} {'x ' + base_name.split()[0]:>10}"
    out.write(head + "\n" + "-" * len(head) + "\n")
    for name, dice, iou, seconds in rows:
        ratio = seconds / base_time if base_time else float("nan")
        out.write(f"{name:<22} {dice:>10.4f} {iou:>10.4f} {1e3 * seconds:>10.2f} {ratio:>10.2f}\n")
    if exact_reason is not None:
        out.write(f"\n(solver 'exact' not shown: {exact_reason})\n")
    if warmup > 1.0:
        out.write(
            f"\n(the warm-up calls took {warmup:.1f} s in all: Numba compiled the kernels; they are cached "
            "on disk, so later runs start at once)\n"
        )
    if len(rows) > 1:
        best = max(rows[1:], key=lambda r: r[1])
        out.write(
            f"\nRankSEG vs {base_name}: mean Dice {best[1] - rows[0][1]:+.4f}, "
            f"mean IoU {best[2] - rows[0][2]:+.4f} ({best[0]})\n"
        )
    return EXIT_OK


# ----------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    import os

    from .. import rankseg
    from ..cpu import SERIAL_BELOW
    from ._baseline import argmax_once, best_times

    for name in ("batch", "classes", "size", "repeat"):
        if getattr(args, name) < 1:
            sys.stderr.write(f"{PROG} bench: error: --{name} must be >= 1\n")
            return EXIT_USAGE
    if args.classes < 2:
        sys.stderr.write(f"{PROG} bench: error: --classes must be >= 2\n")
        return EXIT_USAGE
    out = sys.stdout
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, args.classes) + (args.size,) * args.ndim
    # Softmax of scaled Gaussian logits: confident but not one-hot, like a trained model's output.
    probs = rng.standard_normal(shape, dtype=np.float32)
    probs *= 3.0
    probs -= probs.max(axis=1, keepdims=True)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)
    probs = probs.astype(args.dtype, copy=False)
    import numba

    threads = numba.get_num_threads() if probs.size >= SERIAL_BELOW else 1
    out.write(
        f"{PROG} bench: probs {shape} {np.dtype(args.dtype).name} ({probs.nbytes / 2**20:.0f} MiB), "
        f"{threads} Numba thread{'s' if threads > 1 else ''}, 1-min load {os.getloadavg()[0]:.1f}; "
        f"best of {args.repeat} after a warm-up call (the one-pass argmax: best over the whole table)\n"
        "  x 1-pass: time over a one-pass parallel Numba argmax (reads the input once); "
        "GB/s: input size over time\n\n"
    )
    use_numba()  # time the Numba kernels (see cmd_demo)
    compile_notice(sys.stderr)
    readable = probs if probs.dtype != np.float16 else probs.astype(np.float32)  # Numba has no float16
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("one-pass argmax", lambda: argmax_once(readable)),
        ("np.argmax(probs, axis=1)", lambda: np.argmax(probs, axis=1)),
    ]
    for mode in ("multiclass", "multilabel"):
        for metric in ("dice", "iou"):
            cases.append(
                (f"RMA {metric} {mode}", lambda m=metric, o=mode: rankseg(probs, metric=m, output_mode=o))
            )
    head = f"{'case':<26} {'time (ms)':>10} {'x 1-pass':>9} {'x np.argmax':>12} {'GB/s':>7}"
    times = best_times(cases, lambda name: args.repeat, "one-pass argmax")  # all first: the table needs both yardsticks
    out.write(head + "\n" + "-" * len(head) + "\n")
    base, npa = times["one-pass argmax"], times["np.argmax(probs, axis=1)"]
    for name, seconds in times.items():
        out.write(
            f"{name:<26} {1e3 * seconds:>10.2f} {seconds / base:>9.2f} {seconds / npa:>12.2f} "
            f"{probs.nbytes / 1e9 / seconds:>7.2f}\n"
        )
    out.write(f"\n(1-min load {os.getloadavg()[0]:.1f} at the end)\n")
    return EXIT_OK
