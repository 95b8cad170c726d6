"""The ``rankseg-np`` argument parser."""

from __future__ import annotations

import argparse

from .._solvers import solver_help
from ._common import PROG
from . import calibrate, evaluate
from ._io import NIFTI, NPY, NPZ, ZARR
from .demo import cmd_bench, cmd_demo
from .predict import DTYPE_CHOICES, _parse_chunks, cmd_predict


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Metric-optimal (Dice/IoU) segmentation masks from probability maps (RankSEG on NumPy).",
        epilog="Exit status: 0 ok, 1 some input failed, 2 bad arguments, 130 interrupted. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        help="post-process probability files (.npy/.npz/Zarr) into labels or masks",
        description=(
            "Run rankseg on each INPUT (a file, a directory of inputs, or a quoted glob) and write one "
            "output per input. One INPUT file: -o is the output file (format from its suffix: .npy, .npz "
            "or .zarr). Several inputs, a directory or a glob: -o is a directory, outputs keep the input's "
            "stem. Outputs are written atomically; inputs are never unpickled."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy/.npz file, Zarr store, directory, or glob")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (one input) or directory")
    api = p.add_argument_group("rankseg arguments (as in rankseg_np.rankseg; names are case-insensitive)")
    api.add_argument("--metric", default="dice", help="dice | iou | acc (default: dice)")
    api.add_argument("--smooth", type=float, default=0.0, help="smoothing gamma >= 0 (default: 0)")
    api.add_argument("--output-mode", default="multiclass", help="multiclass | multilabel (default: multiclass)")
    api.add_argument(
        "--solver", default=None,
        help=f"{solver_help()} (default: RMA for dice/iou, argmax or TR for acc)",
    )
    api.add_argument("--pruning-prob", type=float, default=0.5, help="pruning probability in [0, 1] (default: 0.5)")
    api.add_argument("--unassigned-policy", default=None, help="max_score | void (multiclass RMA/exact)")
    api.add_argument("--void-index", type=int, default=None, help="label of unassigned pixels with 'void' (default: 255)")
    api.add_argument("--eps", type=float, default=None, help="tail mass for BA/TRNA (default: 1e-4)")
    api.add_argument("--channel-axis", type=int, default=None, metavar="AXIS",
                     help="axis of the stored array that holds the classes, e.g. -1 for channels-last "
                          "(B, H, W, C) files (default: the axis after the batch axis); masks keep the layout")
    io = p.add_argument_group("input and output")
    io.add_argument("--key", default=None, metavar="NAME",
                    help="array name in .npz archives / Zarr groups (default: the only array, or 'probs')")
    io.add_argument("--no-batch-axis", action="store_true",
                    help="inputs are single images (C, *spatial); outputs drop the batch axis too")
    io.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                    help="output dtype (default: int64 labels, bool masks); 'auto' = smallest integer type "
                         "that holds every possible label; refused if the labels cannot fit")
    io.add_argument("--format", choices=(NPY, NPZ, ZARR, NIFTI), default=None,
                    help="output format (default: from -o's suffix for one file; the input's format otherwise); "
                         "nifti: one label map per input on the grid of --like (needs nibabel)")
    io.add_argument("--like", default=None, metavar="REF",
                    help="NIfTI output: the reference image (.nii.gz/.nii) whose grid, affine and header the "
                         "labels take, or a directory holding <stem>.nii.gz (or nnU-Net's <stem>_0000.nii.gz) "
                         "for each input")
    io.add_argument("--chunks", type=_parse_chunks, default=None, metavar="SPEC",
                    help="process lazily with Dask in chunks: 'auto', N, or N,N,... per axis (-1 = whole axis)")
    io.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist (resume a run)")
    io.add_argument("--keep-going", action=argparse.BooleanOptionalAction, default=None,
                    help="after a failed input, go on with the others (default: on)")
    io.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    io.add_argument("--temperature", default=None, metavar="FILE.json",
                    help="calibrate inputs first with this temperature file (from 'rankseg-np calibrate'); "
                         "inputs are then what it was fitted on (logits or probabilities)")
    p.set_defaults(func=cmd_predict)

    calibrate.add_parser(sub)
    evaluate.add_parser(sub)

    d = sub.add_parser("demo", help="argmax vs RankSEG on calibrated synthetic data (Dice, IoU, timings)",
                       description="Generate a calibrated synthetic batch (truth drawn from the probabilities) "
                                   "and compare argmax with RankSEG.")
    d.add_argument("--batch", type=int, default=4, help="images (default: 4)")
    d.add_argument("--classes", type=int, default=4, help="classes, background included (default: 4)")
    d.add_argument("--size", type=int, default=256, help="side length in pixels (default: 256)")
    d.add_argument("--ndim", type=int, choices=(1, 2, 3), default=2, help="spatial dimensions (default: 2)")
    d.add_argument("--scenario", default="mixed", help="small | large | mixed objects (default: mixed)")
    d.add_argument("--output-mode", choices=("multiclass", "multilabel"), default="multiclass")
    d.add_argument("--metric", choices=("dice", "iou"), default=None,
                   help="show RankSEG for this metric only (default: both)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--repeat", type=int, default=5, help="timing repeats, best one shown (default: 5)")
    d.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True,
                   help="also run solver='exact' (default: on)")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="time RMA against a one-pass argmax and np.argmax in this process",
                       description="Time a one-pass parallel argmax, np.argmax and RankSEG RMA (Dice/IoU, multiclass/multilabel) on softmax "
                                   "probabilities and print the ratios.")
    b.add_argument("--batch", type=int, default=4)
    b.add_argument("--classes", type=int, default=21)
    b.add_argument("--size", type=int, default=512, help="side length (default: 512)")
    b.add_argument("--ndim", type=int, choices=(1, 2, 3), default=2)
    b.add_argument("--dtype", choices=("float16", "float32", "float64"), default="float32")
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_bench)
    return parser


def _join_negative_chunks(argv: list[str]) -> list[str]:
    """``--chunks -1,512,512`` -> ``--chunks=-1,512,512``.

    argparse reads a value starting with '-' (other than a plain negative
    number) as an unknown option; ``-1`` is how a whole axis is written.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--chunks" and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] != "--":
            out.append(f"--chunks={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out

