"""``rankseg-np calibrate``: fit a temperature on validation files, write it to a small JSON file.

The JSON file (written atomically) holds :meth:`TemperatureScaling.to_dict`
plus who wrote it; ``rankseg-np predict --temperature FILE`` and
``rankseg-np evaluate --temperature FILE`` apply it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, InputError, _one_line
from ._io import check_new_output
from ._labels import load_pairs, pair_by_stem
from ._temperature import write_json

WRITER = "rankseg-np calibrate"


def add_label_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``calibrate`` and ``evaluate``: inputs, labels and how to pair them."""
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="score files (.npy/.npz/Zarr), a directory of them, or a quoted glob")
    p.add_argument("--labels", required=True, metavar="LABELS",
                   help="label files (.npy/.npz/.png) paired with inputs by file stem: a directory, a quoted "
                        "glob, or one file for one input")
    p.add_argument("--key", default=None, metavar="NAME", help="array name in .npz inputs / Zarr groups")
    p.add_argument("--labels-key", default=None, metavar="NAME",
                   help="array name in .npz label files (default: the only array, or 'labels')")
    p.add_argument("--ignore-index", type=int, default=None, metavar="N", help="label value of unlabelled pixels")
    p.add_argument("--no-batch-axis", action="store_true",
                   help="inputs are single images (C, *spatial), labels (*spatial) or (C, *spatial)")
    p.add_argument("--chunks", default=None, metavar="SPEC",
                   help="read inputs lazily with Dask in chunks (streamed: a few passes); 'auto', N or N,N,...")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature scaling on validation scores + labels; write the temperature to JSON",
        description=("Fit temperature scaling (maximum likelihood, float64) on validation logits or "
                     "probabilities and their labels, print the temperature, the NLL and the ECE before and "
                     "after, and write the temperature to -o (JSON, written atomically). Apply it with "
                     "'rankseg-np predict --temperature FILE'."),
    )
    add_label_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.json", help="temperature file to write")
    p.add_argument("--inputs-are", dest="inputs_kind", choices=("logits", "probabilities"), default="logits",
                   help="what the input files hold (default: logits)")
    p.add_argument("--output-mode", choices=("multiclass", "multilabel"), default="multiclass",
                   help="softmax over classes with integer labels, or sigmoid per class with 0/1 masks")
    p.add_argument("--per-class", action="store_true", help="one temperature per class")
    p.add_argument("--bins", type=int, default=15, help="bins of the printed ECE (default: 15)")
    p.set_defaults(func=cmd_calibrate)


def parse_chunks(text: str | None) -> Any:
    if text is None:
        return None
    from .predict import _parse_chunks

    return _parse_chunks(text)


def expand(specs: list[str]) -> list[str]:
    """INPUT arguments -> input paths (files, directory entries, glob matches); ValueError if none."""
    from .predict import _expand_inputs

    found, _many = _expand_inputs(specs)
    errors = [f"{path}: {why}" for path, why in found if why is not None]
    if errors:
        raise ValueError("; ".join(errors))
    return [path for path, _why in found]


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..calibration import TemperatureScaling, expected_calibration_error

    err, out = sys.stderr, sys.stdout
    name = f"{PROG} calibrate"
    try:
        chunks = parse_chunks(args.chunks)
        if args.bins < 1:
            raise ValueError("--bins must be >= 1")
        check_new_output(args.output, "json")
        pairs = pair_by_stem(expand(args.inputs), args.labels)
    except (ValueError, InputError, argparse.ArgumentTypeError) as exc:
        err.write(f"{name}: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    try:
        scores, labels = load_pairs(pairs, args.output_mode, args.key, args.labels_key, args.no_batch_axis, chunks)
        ts = TemperatureScaling(output_mode=args.output_mode, per_class=args.per_class, inputs=args.inputs_kind,
                                ignore_index=args.ignore_index)
        ts.fit(scores, labels)
        identity = TemperatureScaling.from_dict({**ts.to_dict(), "temperature": 1.0, "per_class": False})
        ece = [expected_calibration_error(m.transform(scores), labels, n_bins=args.bins,
                                          output_mode=args.output_mode, ignore_index=args.ignore_index)
               for m in (identity, ts)]
    except (InputError, ValueError, TypeError) as exc:
        err.write(f"{name}: error: {_one_line(exc)}\n")
        return EXIT_FAILED
    record = {**ts.to_dict(), "ece_initial": ece[0], "ece": ece[1], "ece_bins": args.bins,
              "files": len(pairs), "written_by": WRITER, "version": __version__}
    try:
        write_json(args.output, record)
    except (OSError, InputError) as exc:
        err.write(f"{name}: error: {args.output}: {_one_line(exc)}\n")
        return EXIT_FAILED
    t = ts.temperature_
    shown = ", ".join(f"{v:.4f}" for v in t) if args.per_class else f"{t:.4f}"
    out.write(
        f"{name}: {len(pairs)} file(s), {ts.n_pixels_} labelled "
        f"{'pixels' if args.output_mode == 'multiclass' else 'pixel-class pairs'}, {args.output_mode}, "
        f"inputs are {args.inputs_kind}\n"
        f"temperature: {shown}  ({ts.n_passes_} passes over the data)\n"
        f"mean NLL:    {ts.nll_initial_:.4f} at T = 1  ->  {ts.nll_:.4f}\n"
        f"ECE ({args.bins} bins): {ece[0]:.4f} at T = 1  ->  {ece[1]:.4f}\n"
        f"wrote {args.output}\n"
    )
    return EXIT_OK
