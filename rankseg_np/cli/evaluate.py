"""``rankseg-np evaluate``: per-image argmax vs RankSEG on labelled files; print the summary, plot on request."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, InputError, _has, _one_line
from ._io import _atomic_path, check_new_output
from ._labels import load_pairs, pair_by_stem
from ._temperature import load_temperature
from .calibrate import add_label_arguments, expand, parse_chunks


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score argmax and RankSEG per image against label files; print mean, paired gain, bootstrap CI",
        description=("Score argmax (or threshold 0.5) and RankSEG solvers per image against the labels, in the "
                     "per-image convention RankSEG optimises (see rankseg_np.evaluate), and print the mean per "
                     "rule, the paired gain over argmax with a 95%% bootstrap interval and the fraction of "
                     "images improved. Inputs are probabilities, or logits with --temperature / --inputs-are."),
    )
    add_label_arguments(p)
    p.add_argument("--temperature", default=None, metavar="FILE.json",
                   help="apply this temperature (from 'rankseg-np calibrate') first; the file says whether "
                        "inputs are logits or probabilities")
    p.add_argument("--inputs-are", dest="inputs_kind", choices=("probabilities", "logits"), default=None,
                   help="without --temperature: 'logits' applies a softmax/sigmoid at T = 1 (default: "
                        "probabilities)")
    p.add_argument("--metric", default="dice", help="dice | iou (default: dice)")
    p.add_argument("--output-mode", choices=("multiclass", "multilabel"), default=None,
                   help="default: the temperature file's, else multiclass")
    p.add_argument("--solvers", default="RMA", metavar="LIST", help="comma-separated RankSEG solvers (default: RMA)")
    p.add_argument("--smooth", type=float, default=0.0, help="smoothing gamma >= 0 (default: 0)")
    p.add_argument("--pruning-prob", type=float, default=0.5, help="pruning probability (default: 0.5)")
    p.add_argument("--empty", choices=("zero", "one", "ignore"), default="zero",
                   help="a class absent from the truth: 'zero' (0/0 := 0, RankSEG's objective; default), 'one' "
                        "or 'ignore' (MONAI's ignore_empty=False / True)")
    p.add_argument("--no-background", action="store_true", help="leave channel 0 out of the per-image mean")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="also save the per-image plot (format from the suffix, e.g. .png, .pdf; needs matplotlib)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.set_defaults(func=cmd_evaluate)


def _save_figure(fig: Any, path: str) -> None:
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with _atomic_path(path) as tmp:
        fig.savefig(tmp, format=ext, dpi=110)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..calibration import TemperatureScaling
    from ..evaluation import evaluate

    err, out = sys.stderr, sys.stdout
    name = f"{PROG} evaluate"
    try:
        chunks = parse_chunks(args.chunks)
        ts = load_temperature(args.temperature) if args.temperature else None
        if ts is not None and args.inputs_kind is not None and args.inputs_kind != ts.inputs:
            raise ValueError(f"--inputs-are {args.inputs_kind} contradicts the temperature file "
                             f"(fitted on {ts.inputs})")
        mode = args.output_mode or (ts.output_mode if ts is not None else "multiclass")
        if ts is not None and mode != ts.output_mode:
            raise ValueError(f"--output-mode {mode} contradicts the temperature file ({ts.output_mode})")
        solvers = tuple(s.strip() for s in args.solvers.split(",") if s.strip())
        if args.plot is not None:
            if not _has("matplotlib"):
                raise ValueError("--plot needs matplotlib (pip install 'rankseg-np[plot]')")
            check_new_output(args.plot, "plot", "--plot")
        pairs = pair_by_stem(expand(args.inputs), args.labels)
    except (ValueError, InputError, argparse.ArgumentTypeError) as exc:
        err.write(f"{name}: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    try:
        scores, labels = load_pairs(pairs, mode, args.key, args.labels_key, args.no_batch_axis, chunks)
        if ts is None and args.inputs_kind == "logits":
            ts = TemperatureScaling.from_dict({"temperature": 1.0, "n_classes": int(scores[0].shape[1]),
                                               "output_mode": mode, "inputs": "logits"})
        probs = ts.transform(scores) if ts is not None else scores
        report = evaluate(probs, labels, metric=args.metric, output_mode=mode, solvers=solvers,
                          smooth=args.smooth, pruning_prob=args.pruning_prob, ignore_index=args.ignore_index,
                          empty=args.empty, include_background=not args.no_background)
    except (InputError, ValueError, TypeError) as exc:
        # Argument errors surface here too (the class count is known only now): exit 2 for those.
        text = _one_line(exc)
        usage = any(text.startswith(k) for k in ("metric", "solver", "smooth", "pruning_prob", "empty"))
        if "(logits?" in text and ts is None:
            text += "; or pass --inputs-are logits, or --temperature FILE"
        err.write(f"{name}: error: {text}\n")
        return EXIT_USAGE if usage else EXIT_FAILED
    source = f"temperature {args.temperature}" if args.temperature else (
        "logits at T = 1" if args.inputs_kind == "logits" else "probabilities as given")
    out.write(f"{name}: {len(pairs)} file(s), {source}\n{report.summary(seed=args.seed)}\n")
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = report.plot()
        try:
            _save_figure(fig, args.plot)
        except (OSError, InputError, ValueError) as exc:
            err.write(f"{name}: error: {args.plot}: {_one_line(exc)}\n")
            return EXIT_FAILED
        finally:
            plt.close(fig)
        out.write(f"wrote {args.plot}\n")
    return EXIT_OK
