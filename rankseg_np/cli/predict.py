"""``rankseg-np predict``: pair inputs with outputs, check the arguments once, run every job."""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TextIO

import numpy as np

from .._layout import from_channels_first, to_channels_first
from ._common import (
    EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, InputError, _has, _one_line, compile_notice, for_cli,
)
from ._io import (
    EXTENSION,
    NIFTI,
    NNUNET_KEY,
    NPY,
    OUTPUT_SUFFIXES,
    SUFFIXES,
    _describe,
    _is_zarr_store,
    check_replaceable,
    load_probs,
    npz_member,
    npz_members,
    write_output,
)

# Integer label dtypes offered by --dtype, smallest first (the order 'auto' tries).
UNSIGNED = ("uint8", "uint16", "uint32", "uint64")
SIGNED = ("int8", "int16", "int32", "int64")
DTYPE_CHOICES = ("auto", "bool") + UNSIGNED + SIGNED


class _Progress:
    """A one-line progress bar on stderr (no dependency): ``[#####.....] 3/10 name``."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.done = 0
        self._shown = False

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((80, 20)).columns - 1)

    def show(self, label: str) -> None:
        if not self.enabled:
            return
        bar_len = 24
        filled = bar_len * self.done // max(self.total, 1)
        text = f"[{'#' * filled}{'.' * (bar_len - filled)}] {self.done}/{self.total} {label}"
        self.stream.write("\r" + text[: self._width()].ljust(self._width()))
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the bar so that a message can be printed on a clean line."""
        if self._shown:
            self.stream.write("\r" + " " * self._width() + "\r")
            self.stream.flush()
            self._shown = False

    def step(self, label: str) -> None:
        self.done += 1
        self.show(label)

    def close(self) -> None:
        self.clear()


@contextlib.contextmanager
def _one_line_warnings(stream: TextIO) -> Iterator[None]:
    """Print warnings as ``rankseg-np: warning: ...`` lines instead of source excerpts."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        stream.write(f"{PROG}: warning: {for_cli(' '.join(str(message).split()))}\n")

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield



@dataclass
class Job:
    source: str  # input path, or the glob/directory spec that produced an error
    output: str | None
    fmt: str | None
    error: str | None = None  # set when the input could not even be resolved


def _parse_chunks(text: str | None) -> Any:
    """``auto`` | ``N`` | ``N,N,...`` (``-1`` = whole axis) -> a Dask ``chunks`` argument."""
    if text is None:
        return None
    text = text.strip()
    if text.lower() == "auto":
        return "auto"
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--chunks must be 'auto', an int, or comma-separated ints (-1 = whole axis); got {text!r}"
        ) from None
    if any(p == 0 or p < -1 for p in parts):
        raise argparse.ArgumentTypeError(f"--chunks sizes must be positive or -1; got {text!r}")
    return parts[0] if len(parts) == 1 else parts


def _expand_inputs(specs: Sequence[str]) -> tuple[list[tuple[str, str | None]], bool]:
    """Each INPUT -> list of (path or spec, error).  Also: whether the run is 'many files'."""
    found: list[tuple[str, str | None]] = []
    many = len(specs) > 1
    for spec in specs:
        if os.path.isdir(spec) and not _is_zarr_store(spec) and not spec.rstrip("/\\").endswith(".zarr"):
            many = True
            entries = sorted(
                os.path.join(spec, e)
                for e in os.listdir(spec)
                if os.path.splitext(e)[1].lower() in SUFFIXES and not e.startswith(".")
            )
            if not entries:
                found.append((spec, "directory holds no .npy, .npz or .zarr inputs"))
            found.extend((e, None) for e in entries)
        elif not os.path.exists(spec) and glob.has_magic(spec):
            many = True
            matches = sorted(m for m in glob.glob(spec) if os.path.splitext(m)[1].lower() in SUFFIXES)
            if not matches:
                found.append((spec, "no .npy, .npz or .zarr file matches this pattern"))
            found.extend((m, None) for m in matches)
        else:
            found.append((spec, None))
    return found, many


def _output_suffix(path: str) -> str:
    """``.npy``, ``.npz``, ``.zarr``, ``.nii.gz``, ``.nii`` (or another suffix, or '') of a path."""
    name = os.path.basename(path.rstrip("/\\")).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def _output_format(path: str, default: str) -> str:
    return OUTPUT_SUFFIXES.get(_output_suffix(path), default)


def _plan(args: argparse.Namespace) -> tuple[list[Job], bool]:
    """Pair every input with its output path, and say whether ``-o`` is a directory.

    A ``-o`` ending in ``.zarr`` always names a Zarr store (with or without a
    trailing slash); otherwise an existing directory, or a trailing slash, means
    "outputs go inside".  Raises ValueError on a plan that cannot work (several
    inputs and one output name; a directory path that is a file).
    """
    inputs, many = _expand_inputs(args.inputs)
    out = args.output
    bare = out.rstrip("/" + os.sep) or out
    suffix = _output_suffix(bare)
    if many and suffix in OUTPUT_SUFFIXES:
        raise ValueError(
            f"-o {out!r} ends in {suffix}, the name of one output, but there are several inputs "
            f"(a directory or glob counts as several); give a directory, e.g. -o {os.path.splitext(bare)[0]}/"
        )
    to_dir = many or (
        suffix != ".zarr" and ((os.path.isdir(bare) and not _is_zarr_store(bare)) or bare != out)
    )
    jobs: list[Job] = []
    if not to_dir:
        (src, err), = inputs
        fmt = args.format or _output_format(bare, NPY)
        if fmt == NIFTI and _output_format(bare, NPY) != NIFTI:
            raise ValueError(
                f"-o {out!r}: a NIfTI output file must end in .nii.gz or .nii "
                f"(for a directory, end it with a slash: -o {bare}/)"
            )
        return [Job(src, bare, fmt, err)], False
    if os.path.lexists(bare) and not os.path.isdir(bare):
        raise ValueError(f"-o {out!r} is not a directory (it exists as {_describe(os.lstat(bare).st_mode)})")
    seen: dict[str, str] = {}
    for src, err in inputs:
        if err is not None:
            jobs.append(Job(src, None, None, err))
            continue
        in_fmt = SUFFIXES.get(os.path.splitext(src.rstrip("/\\"))[1].lower(), NPY)
        fmt = args.format or in_fmt
        stem = os.path.splitext(os.path.basename(src.rstrip("/\\")))[0]
        target = os.path.join(out, stem + EXTENSION[fmt])
        key = os.path.normcase(os.path.abspath(target))
        if key in seen:
            raise ValueError(f"inputs {seen[key]!r} and {src!r} would both write {target!r}; rename one")
        seen[key] = src
        jobs.append(Job(src, target, fmt))
    return jobs, True


def _api_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        metric=args.metric,
        smooth=args.smooth,
        output_mode=args.output_mode,
        solver=args.solver,
        pruning_prob=args.pruning_prob,
    )
    for name in ("unassigned_policy", "void_index", "eps"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    return kw


def _check_api_args(kw: dict[str, Any]) -> None:
    """Validate the class-count-independent arguments once, before touching any file.

    Checks that depend on a file's class count (e.g. a ``void_index`` inside
    the class range) are made per file.
    """
    from .._validate import check_options

    check_options(**kw)
    void = kw.get("void_index")
    if isinstance(void, int) and void in (0, 1):
        # 0 and 1 are class labels for every valid input (the per-file check
        # would quote one file's range [0, C)).
        raise ValueError(
            f"void_index must lie outside the class range [0, C) of every input; {void} is a class label "
            "(use e.g. 255 or -1)"
        )


def _label_range(num_class: int, kw: dict[str, Any]) -> tuple[int, int]:
    """Every value the output can hold, known before solving (so no data scan is needed)."""
    if str(kw["output_mode"]).strip().lower() == "multilabel":
        return 0, 1
    lo, hi = 0, num_class - 1
    if str(kw.get("unassigned_policy", "max_score")).strip().lower() == "void":
        void = int(kw.get("void_index", 255))
        lo, hi = min(lo, void), max(hi, void)
    return lo, hi


def _output_dtype(requested: str | None, num_class: int, kw: dict[str, Any]) -> np.dtype | None:
    """The dtype to cast the result to (``None`` = keep the API's int64 labels / bool masks).

    The check uses the *possible* label range (classes and ``void_index``), not
    the labels that happen to occur, so a pipeline's output dtype never depends
    on the data.
    """
    multilabel = str(kw["output_mode"]).strip().lower() == "multilabel"
    if requested is None:
        return None
    if requested == "bool":
        if not multilabel:
            raise InputError("--dtype bool is only for --output-mode multilabel (labels need an integer dtype)")
        return np.dtype(bool)
    lo, hi = _label_range(num_class, kw)
    if requested == "auto":
        if multilabel:
            return np.dtype(np.uint8)
        for name in (UNSIGNED if lo >= 0 else SIGNED):
            info = np.iinfo(name)
            if info.min <= lo and hi <= info.max:
                return np.dtype(name)
        return np.dtype(np.int64)
    dtype = np.dtype(requested)
    info = np.iinfo(dtype)
    if lo < info.min or hi > info.max:
        raise InputError(
            f"labels range over [{lo}, {hi}] ({num_class} classes"
            + (", void_index" if hi >= num_class or lo < 0 else "")
            + f"), which does not fit in --dtype {requested} [{info.min}, {info.max}]"
        )
    return dtype


def _process(job: Job, args: argparse.Namespace, kw: dict[str, Any]) -> None:
    from .._api import rankseg

    chunks = args.chunks
    # nnU-Net v2's probabilities: one image (C, z, y, x), never a batch.
    nnunet = npz_member(job.source, args.key) == NNUNET_KEY
    single = args.no_batch_axis or nnunet
    like = None
    if job.fmt == NIFTI:
        from ..integrations import nifti

        members = npz_members(job.source)
        if members is not None and args.key is None and not nnunet:
            raise InputError(
                f"has no {NNUNET_KEY!r} array, so it is not an nnU-Net probability file "
                f"(members: {', '.join(members) or 'none'}); name the (batch, C, z, y, x) array with --key"
            )
        like = str(nifti.find_reference(args.like, job.source))
    probs = load_probs(job.source, args.key, chunks)
    stored_ndim = probs.ndim
    if single:
        probs = probs[None]
    if probs.ndim < 2:
        raise InputError(f"holds an array of shape {tuple(probs.shape)}; expected (batch, classes, *spatial)")
    # --channel-axis indexes the stored array (the image, with --no-batch-axis).  The classes
    # move to axis 1 (a view) for everything below; multilabel masks move back at the end.
    axis = 1
    if args.channel_axis is not None:
        if not -stored_ndim <= args.channel_axis < stored_ndim:
            raise InputError(f"--channel-axis {args.channel_axis} is not an axis of its array of shape "
                             f"{tuple(probs.shape[1:] if single else probs.shape)}")
        axis = args.channel_axis % stored_ndim + (1 if single else 0)
        probs = to_channels_first(probs, axis)
    if job.fmt == NIFTI:
        _check_nifti_input(probs, kw)
    dtype = _output_dtype(args.dtype or ("auto" if job.fmt == NIFTI else None), int(probs.shape[1]), kw)
    if not args.quiet and not getattr(args, "_compile_noticed", False):
        args._compile_noticed = compile_notice(sys.stderr, probs, kw)
    try:
        if getattr(args, "calibration", None) is not None:  # --temperature: logits/probs -> calibrated probs
            probs = args.calibration.transform(probs)
        result = rankseg(probs, **kw)
    except (ValueError, TypeError) as exc:
        raise InputError(_one_line(exc)) from None
    if str(kw["output_mode"]).strip().lower() == "multilabel":
        result = from_channels_first(result, axis)
    if single or job.fmt == NIFTI:
        result = result[0]
    if dtype is not None and result.dtype != dtype:
        result = result.astype(dtype)
    name = "masks" if str(kw["output_mode"]).strip().lower() == "multilabel" else "labels"
    write_output(result, job.output, job.fmt, name, like=like)


def _check_nifti_input(probs: Any, kw: dict[str, Any]) -> None:
    """A NIfTI output is one 3-D label map: one image, three spatial axes, multiclass labels."""
    if str(kw["output_mode"]).strip().lower() != "multiclass":
        raise InputError("--format nifti writes a label map: use --output-mode multiclass")
    if int(probs.shape[0]) != 1:
        raise InputError(
            f"holds a batch of {probs.shape[0]} images {tuple(probs.shape)}; --format nifti writes one "
            "label map per input: give one image (batch 1, or --no-batch-axis)"
        )
    if probs.ndim != 5:
        raise InputError(
            f"holds probabilities of shape {tuple(probs.shape[1:])} per image; --format nifti needs "
            "(C, z, y, x) volumes"
        )


def cmd_predict(args: argparse.Namespace) -> int:
    err = sys.stderr
    kw = _api_kwargs(args)
    try:
        _check_api_args(kw)
    except (ValueError, TypeError) as exc:
        err.write(f"{PROG} predict: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    args.calibration = None
    if getattr(args, "temperature", None) is not None:
        from ._temperature import load_temperature

        try:
            args.calibration = load_temperature(args.temperature)
            if args.calibration.output_mode != str(args.output_mode).strip().lower():
                raise ValueError(f"the temperature file was fitted for output_mode={args.calibration.output_mode!r}; "
                                 f"got --output-mode {args.output_mode}")
        except ValueError as exc:
            err.write(f"{PROG} predict: error: {_one_line(exc)}\n")
            return EXIT_USAGE
    if args.chunks is not None and not _has("dask"):
        err.write(f"{PROG} predict: error: --chunks needs dask (pip install 'dask[array]' distributed zarr)\n")
        return EXIT_USAGE
    if args.dtype == "bool" and str(args.output_mode).strip().lower() != "multilabel":
        err.write(f"{PROG} predict: error: --dtype bool is only for --output-mode multilabel\n")
        return EXIT_USAGE
    try:
        jobs, to_dir = _plan(args)
    except ValueError as exc:
        err.write(f"{PROG} predict: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    nifti_out = any(job.fmt == NIFTI for job in jobs)
    if nifti_out and args.like is None:
        err.write(f"{PROG} predict: error: NIfTI output needs --like: the reference image (or a directory "
                  "of them) whose grid, affine and header the labels take\n")
        return EXIT_USAGE
    if args.like is not None and not nifti_out:
        err.write(f"{PROG} predict: error: --like is only for NIfTI output (--format nifti or -o *.nii.gz)\n")
        return EXIT_USAGE
    if nifti_out and not _has("nibabel"):
        err.write(f"{PROG} predict: error: NIfTI output needs nibabel (pip install nibabel, the nifti extra)\n")
        return EXIT_USAGE
    if args.like is not None and not os.path.exists(args.like):
        err.write(f"{PROG} predict: error: reference image --like {args.like} does not exist\n")
        return EXIT_USAGE
    for job in jobs:
        if job.output is None:
            continue
        if os.path.exists(job.source) and os.path.abspath(job.output) == os.path.abspath(job.source):
            err.write(f"{PROG} predict: error: {job.source}: the output would overwrite the input\n")
            return EXIT_USAGE
        try:  # refuse before anything runs: never replace what we did not write
            check_replaceable(job.output, job.fmt)
        except InputError as exc:
            err.write(f"{PROG} predict: error: {job.output}: {_one_line(exc)}\n")
            return EXIT_USAGE
    many = len(jobs) > 1
    if to_dir:
        try:
            os.makedirs(args.output, exist_ok=True)
        except OSError as exc:
            why = "part of the path is a file" if isinstance(exc, NotADirectoryError) else _one_line(exc)
            err.write(f"{PROG} predict: error: cannot create output directory {args.output!r} ({why})\n")
            return EXIT_USAGE
    else:
        parent = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(parent):
            err.write(f"{PROG} predict: error: output directory {parent!r} does not exist\n")
            return EXIT_USAGE

    with _terminate_as_exit():
        return _run_jobs(jobs, args, kw, many)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM (a batch scheduler stopping the job) into SystemExit(143).

    The exception unwinds through :func:`_atomic_path`, which deletes the
    temporary file, so even a terminated run leaves no debris and no partial
    output.  (SIGKILL cannot be caught: then a hidden ``.NAME.*.tmp`` file may
    remain, but never a partial file under the output's name.)
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum, frame):  # noqa: ANN001
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_jobs(jobs: list[Job], args: argparse.Namespace, kw: dict[str, Any], many: bool) -> int:
    err = sys.stderr
    keep_going = True if args.keep_going is None else args.keep_going
    progress = _Progress(len(jobs), err, enabled=many and not args.quiet and err.isatty())
    failures: list[str] = []
    written = skipped = 0
    with _one_line_warnings(err):
        for job in jobs:
            progress.show(os.path.basename(job.source.rstrip("/\\")))
            try:
                if job.error is not None:
                    raise InputError(job.error)
                if args.skip_existing and os.path.exists(job.output):
                    skipped += 1
                else:
                    _process(job, args, kw)
                    written += 1
            except KeyboardInterrupt:
                progress.close()
                err.write(f"{PROG} predict: interrupted; {job.output} was not written (finished outputs are complete)\n")
                return EXIT_INTERRUPTED
            except MemoryError:
                progress.clear()
                failures.append(job.source)
                err.write(f"{PROG} predict: error: {job.source}: out of memory (try --chunks with dask)\n")
            except Exception as exc:  # one bad file must not stop a pipeline: report it on one line
                progress.clear()
                failures.append(job.source)
                err.write(f"{PROG} predict: error: {job.source}: {_one_line(exc)}\n")
            if failures and not keep_going:
                break
            progress.step(os.path.basename(job.source.rstrip("/\\")))
    progress.close()
    if many and (failures or not args.quiet):
        not_run = len(jobs) - written - skipped - len(failures)
        summary = f"{PROG} predict: {written} written"
        summary += f", {skipped} skipped (already present)" if skipped else ""
        summary += f", {len(failures)} failed" if failures else ""
        summary += f", {not_run} not attempted (--no-keep-going)" if not_run else ""
        err.write(summary + "\n")
        if failures:
            err.write(f"{PROG} predict: failed: {', '.join(failures)}\n")
    return EXIT_FAILED if failures else EXIT_OK

