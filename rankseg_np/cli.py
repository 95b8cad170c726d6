"""The ``rankseg-np`` command line: ``predict``, ``demo`` and ``bench``.

``rankseg-np predict`` runs :func:`rankseg_np.rankseg` over ``.npy`` / ``.npz``
files (and Zarr stores when ``dask`` and ``zarr`` are installed) and writes one
output per input.  It is written for unattended pipelines:

* inputs are never unpickled (``allow_pickle=False``; object arrays are refused
  after reading only their header);
* every output is written to a temporary file in the destination directory and
  moved into place with :func:`os.replace`, so an interrupted run leaves either
  the old file or the new one, never a truncated one;
* a missing, corrupt, pickled or invalid input costs one line on stderr naming
  the file, never a traceback; the other inputs are still processed and the
  exit status says that something failed.

Exit status: 0 success, 1 at least one input failed, 2 bad command-line or
API arguments (for example ``--metric foo``), 130 interrupted.

``rankseg-np demo`` shows, on calibrated synthetic data, what RankSEG buys over
``argmax``; ``rankseg-np bench`` times the RMA solver against ``np.argmax``.
See ``docs/cli.md`` for the user guide.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TextIO

import numpy as np

PROG = "rankseg-np"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

NPY, NPZ, ZARR = "npy", "npz", "zarr"
SUFFIXES = {".npy": NPY, ".npz": NPZ, ".zarr": ZARR}
# Integer label dtypes offered by --dtype, smallest first (the order 'auto' tries).
UNSIGNED = ("uint8", "uint16", "uint32", "uint64")
SIGNED = ("int8", "int16", "int32", "int64")
DTYPE_CHOICES = ("auto", "bool") + UNSIGNED + SIGNED


class InputError(Exception):
    """A problem with one input or output file: reported on one line, run continues."""


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """An exception as a single line (messages of nested libraries may span several)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (InputError, ValueError, TypeError)) and text:
        return text
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _is_zarr_store(path: str) -> bool:
    """A Zarr v2 array/group or v3 store: a directory holding its metadata file."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, meta)) for meta in (".zarray", ".zgroup", "zarr.json")
    )


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False


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
        stream.write(f"{PROG}: warning: {' '.join(str(message).split())}\n")

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


# ----------------------------------------------------------------------------
# reading inputs (never unpickling)
# ----------------------------------------------------------------------------


def _read_npy_header(fileobj) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, without reading (or unpickling) the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fileobj)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(fileobj)
        else:
            shape, _fortran, dtype = fmt.read_array_header_2_0(fileobj)
    except Exception as exc:
        raise InputError(f"not a valid .npy array (corrupt or unsupported header: {_one_line(exc)})") from None
    return tuple(shape), dtype


def _refuse_objects(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise InputError(
            f"{where}holds a pickled object array (dtype {dtype}); refusing to unpickle "
            "(rankseg-np never loads pickles): save float probabilities instead"
        )


def _npz_key(names: Sequence[str], key: str | None) -> str:
    """The member to read from an archive or group: ``key``, the only one, or ``probs``."""
    if key is not None:
        if key not in names:
            raise InputError(f"no array named {key!r} (available: {', '.join(names) or 'none'})")
        return key
    if len(names) == 1:
        return names[0]
    if "probs" in names:
        return "probs"
    if not names:
        raise InputError("holds no arrays")
    raise InputError(f"holds several arrays ({', '.join(names)}) and none is named 'probs'; choose one with --key")


def _file_kind(path: str) -> str:
    """npy / npz / zarr from the file's content (magic bytes), not only its name."""
    if os.path.isdir(path):
        if _is_zarr_store(path) or path.rstrip("/\\").endswith(".zarr"):
            return ZARR
        raise InputError("is a directory, not a .npy/.npz file or Zarr store")
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        return NPY
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return NPZ
    if not head:
        raise InputError("is empty (0 bytes): not a .npy/.npz file")
    if head[:1] == b"\x80":
        raise InputError("holds pickled data, not a .npy/.npz array; refusing to unpickle")
    raise InputError("is not a .npy or .npz file (corrupt or unknown format)")


def load_probs(path: str, key: str | None = None, lazy_chunks: Any = None) -> Any:
    """Load one probability array from ``path`` without ever unpickling.

    ``.npy`` files are memory-mapped read-only (the solver reads them in place);
    ``.npz`` members are read into memory; Zarr stores need ``zarr`` (and
    ``dask`` when ``lazy_chunks`` is given).  With ``lazy_chunks`` the result is
    a ``dask.array.Array`` with those chunks.

    Raises
    ------
    InputError
        The file is missing, corrupt, pickled, or holds no usable array.
    """
    if not os.path.exists(path):
        raise InputError("no such file or directory")
    kind = _file_kind(path)
    if kind == ZARR:
        return _load_zarr(path, key, lazy_chunks)
    if kind == NPY:
        with open(path, "rb") as f:
            _shape, dtype = _read_npy_header(f)
        _refuse_objects(dtype, "")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise InputError(f"not a valid .npy file (corrupt or truncated: {_one_line(exc)})") from None
    else:
        try:
            archive = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"not a valid .npz archive ({_one_line(exc)})") from None
        with archive:
            name = _npz_key(list(archive.files), key)
            try:
                member_name = name + ".npy" if name + ".npy" in archive.zip.namelist() else name
                with archive.zip.open(member_name) as member:
                    _shape, dtype = _read_npy_header(member)
                _refuse_objects(dtype, f"member {name!r} ")
                arr = archive[name]
            except InputError:
                raise
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                raise InputError(f"member {name!r} is corrupt ({_one_line(exc)})") from None
    if arr.dtype.kind == "f" and not arr.dtype.isnative:
        # Files written on big-endian machines (or with an explicit '>f4'):
        # the solver works in native byte order.
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if lazy_chunks is not None:
        import dask.array as da

        return da.from_array(arr, chunks=lazy_chunks)
    return arr


def _load_zarr(path: str, key: str | None, lazy_chunks: Any) -> Any:
    if not _has("zarr"):
        raise InputError("is a Zarr store, but zarr is not installed (pip install 'dask[array]' distributed zarr)")
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        raise InputError(f"not a readable Zarr store ({_one_line(exc)})") from None
    if not hasattr(node, "shape"):  # a group: pick an array the way .npz members are picked
        names = sorted(name for name, _ in node.arrays())
        node = node[_npz_key(names, key)]
    dtype = np.dtype(node.dtype)
    _refuse_objects(dtype, "")
    if lazy_chunks is not None:
        import dask.array as da

        return da.from_array(node, chunks=lazy_chunks)
    try:
        return node[...]
    except Exception as exc:
        raise InputError(f"corrupt Zarr data ({_one_line(exc)})") from None


# ----------------------------------------------------------------------------
# writing outputs atomically
# ----------------------------------------------------------------------------


def _umask_mode() -> int:
    """The mode a plainly created file would get (mkstemp creates 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _atomic_path(final: str, directory: bool = False) -> Iterator[str]:
    """Yield a temporary path next to ``final``; move it over ``final`` only on success.

    The temporary lives in the same directory (same filesystem), so the final
    :func:`os.replace` is atomic: readers see the old output or the new one.
    On any error, or on Ctrl-C, the temporary is removed and ``final`` is left
    as it was.
    """
    parent = os.path.dirname(os.path.abspath(final))
    base = os.path.basename(final)
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        os.close(fd)
    try:
        yield tmp
        if directory:
            _replace_dir(tmp, final)
        else:
            os.chmod(tmp, _umask_mode())
            os.replace(tmp, final)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _replace_dir(tmp: str, final: str) -> None:
    """Swap a finished directory (a Zarr store) into place.

    A directory cannot be renamed over a non-empty one, so an old store is first
    renamed aside (one atomic rename), the new one renamed in, then the old one
    deleted: at every moment ``final`` is absent, old-and-complete or
    new-and-complete.
    """
    if os.path.lexists(final):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".old", dir=os.path.dirname(tmp))
        os.rmdir(old)
        os.replace(final, old)
        os.replace(tmp, final)
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)
    else:
        os.replace(tmp, final)


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


def write_output(result: Any, final: str, fmt: str, name: str) -> None:
    """Write ``result`` (NumPy or Dask array) to ``final`` atomically, in format ``fmt``."""
    lazy = not isinstance(result, np.ndarray)
    if fmt == ZARR:
        if not (_has("zarr") and _has("dask")):
            raise InputError("writing Zarr needs dask and zarr (pip install 'dask[array]' distributed zarr)")
        import dask.array as da

        arr = result if lazy else da.from_array(result)
        with _atomic_path(final, directory=True) as tmp:
            arr.to_zarr(tmp, overwrite=True)
        return
    with _atomic_path(final) as tmp:
        if fmt == NPY and lazy:
            # Stream the chunks into a memory-mapped .npy: the full result never
            # has to fit in memory at once.
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=result.dtype, shape=result.shape)
            import dask.array as da

            da.store(result, out, lock=True)
            out.flush()
            del out
        else:
            data = np.asarray(result.compute() if lazy else result)
            with open(tmp, "wb") as f:
                if fmt == NPY:
                    np.save(f, data, allow_pickle=False)
                else:
                    np.savez_compressed(f, **{name: data})
                f.flush()
                os.fsync(f.fileno())
            return
        _fsync(tmp)


# ----------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------


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


def _output_format(path: str, default: str) -> str:
    return SUFFIXES.get(os.path.splitext(path.rstrip("/\\"))[1].lower(), default)


def _plan(args: argparse.Namespace) -> tuple[list[Job], bool]:
    """Pair every input with its output path, and say whether ``-o`` is a directory.

    Raises ValueError on a plan that cannot work (two inputs with one output).
    """
    inputs, many = _expand_inputs(args.inputs)
    out = args.output
    is_zarr_name = out.rstrip("/\\").endswith(".zarr")
    to_dir = (
        many
        or (os.path.isdir(out) and not _is_zarr_store(out) and not is_zarr_name)
        or (out.endswith(("/", os.sep)) and not is_zarr_name)  # "-o results/" names a directory
    )
    jobs: list[Job] = []
    if not to_dir:
        (src, err), = inputs
        fmt = args.format or _output_format(out, NPY)
        return [Job(src, out, fmt, err)], False
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"-o {out!r} must be a directory when there are several inputs")
    seen: dict[str, str] = {}
    for src, err in inputs:
        if err is not None:
            jobs.append(Job(src, None, None, err))
            continue
        in_fmt = SUFFIXES.get(os.path.splitext(src.rstrip("/\\"))[1].lower(), NPY)
        fmt = args.format or in_fmt
        stem = os.path.splitext(os.path.basename(src.rstrip("/\\")))[0]
        target = os.path.join(out, f"{stem}.{fmt}")
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

    Two classes is the smallest channel count every configuration accepts
    (one class rules out multiclass output), so anything refused here is wrong
    for every input.  Checks that depend on a file's class count (e.g. a
    ``void_index`` inside the class range) are made per file.
    """
    from ._validate import check_config

    void = kw.get("void_index")
    if isinstance(void, int) and void in (0, 1):
        # 0 and 1 are class labels for every valid input; a message quoting
        # the range [0, 2) would be wrong for files with more classes.
        check_config(2, **{**kw, "void_index": -1})
        raise ValueError(
            f"void_index must lie outside the class range [0, C) of every input; {void} is a class label "
            "(use e.g. 255 or -1)"
        )
    check_config(2, **kw)


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
    from ._api import rankseg

    chunks = args.chunks
    probs = load_probs(job.source, args.key, chunks)
    if args.no_batch_axis:
        probs = probs[None]
    if probs.ndim < 2:
        raise InputError(f"holds an array of shape {tuple(probs.shape)}; expected (batch, classes, *spatial)")
    dtype = _output_dtype(args.dtype, int(probs.shape[1]), kw)
    try:
        result = rankseg(probs, **kw)
    except (ValueError, TypeError) as exc:
        raise InputError(_one_line(exc)) from None
    if args.no_batch_axis:
        result = result[0]
    if dtype is not None and result.dtype != dtype:
        result = result.astype(dtype)
    name = "masks" if str(kw["output_mode"]).strip().lower() == "multilabel" else "labels"
    write_output(result, job.output, job.fmt, name)


def cmd_predict(args: argparse.Namespace) -> int:
    err = sys.stderr
    kw = _api_kwargs(args)
    try:
        _check_api_args(kw)
    except (ValueError, TypeError) as exc:
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
    for job in jobs:
        if job.output is not None and os.path.exists(job.source):
            if os.path.abspath(job.output) == os.path.abspath(job.source):
                err.write(f"{PROG} predict: error: {job.source}: the output would overwrite the input\n")
                return EXIT_USAGE
    many = len(jobs) > 1
    if to_dir:
        os.makedirs(args.output, exist_ok=True)
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


# ----------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """Result and the best wall time (seconds) over ``repeat`` calls."""
    best = float("inf")
    result = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def _exact_available() -> str | None:
    """``None`` when the exact solver can run here, else why not (it is optional)."""
    try:
        importlib.import_module("rankseg_np.cpu.exact")
    except Exception as exc:
        return _one_line(exc)
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    from . import rankseg
    from .data import SCENARIOS, synthetic_batch
    from .metrics import dice_score, iou_score, one_hot

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
    exact_reason = _exact_available() if args.exact else "disabled with --no-exact"
    if exact_reason is None:
        for metric in metrics:
            methods.append(
                (f"RankSEG exact {metric}",
                 lambda m=metric: rankseg(probs, metric=m, output_mode=args.output_mode, solver="exact"))
            )

    spatial = "x".join(map(str, shape))
    out.write(
        f"{PROG} demo: {args.batch} images x {args.classes} classes, {spatial} pixels, "
        f"scenario {args.scenario!r}, {args.output_mode}, seed {args.seed} (data generated in {t_gen:.2f} s)\n"
        "  calibrated synthetic data: the ground truth is drawn from the probabilities themselves\n"
        "  scores: Dice and IoU per (image, class) against that truth, then the mean over all images\n"
        "  and classes (background included; 0/0 counts as 0); times: best of "
        f"{args.repeat} after one warm-up call (Numba compile excluded)\n\n"
    )
    rows = []
    base_time = None
    warmup = 0.0
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
    from . import rankseg

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
    try:
        import numba

        threads = f", {numba.get_num_threads()} Numba threads"
    except Exception:  # pragma: no cover - numba is a core dependency
        threads = ""
    out.write(
        f"{PROG} bench: probs {shape} {np.dtype(args.dtype).name} ({probs.nbytes / 2**20:.0f} MiB){threads}; "
        f"best of {args.repeat} after a warm-up call\n\n"
    )
    cases: list[tuple[str, Callable[[], Any]]] = [("np.argmax(probs, axis=1)", lambda: np.argmax(probs, axis=1))]
    for mode in ("multiclass", "multilabel"):
        for metric in ("dice", "iou"):
            cases.append(
                (f"RMA {metric} {mode}", lambda m=metric, o=mode: rankseg(probs, metric=m, output_mode=o))
            )
    base = None
    out.write(f"{'case':<28} {'time (ms)':>10} {'x argmax':>10}\n" + "-" * 50 + "\n")
    for name, fn in cases:
        fn()
        _, seconds = _timed(fn, args.repeat)
        base = seconds if base is None else base
        out.write(f"{name:<28} {1e3 * seconds:>10.2f} {seconds / base:>10.2f}\n")
        out.flush()
    return EXIT_OK


# ----------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------


def _version() -> str:
    from . import __version__

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
    api.add_argument("--solver", default="RMA", help="RMA | exact | BA | TRNA | BA+TRNA | argmax | TR (default: RMA)")
    api.add_argument("--pruning-prob", type=float, default=0.5, help="pruning probability in [0, 1] (default: 0.5)")
    api.add_argument("--unassigned-policy", default=None, help="max_score | void (multiclass RMA/exact)")
    api.add_argument("--void-index", type=int, default=None, help="label of unassigned pixels with 'void' (default: 255)")
    api.add_argument("--eps", type=float, default=None, help="tail mass for BA/TRNA (default: 1e-4)")
    io = p.add_argument_group("input and output")
    io.add_argument("--key", default=None, metavar="NAME",
                    help="array name in .npz archives / Zarr groups (default: the only array, or 'probs')")
    io.add_argument("--no-batch-axis", action="store_true",
                    help="inputs are single images (C, *spatial); outputs drop the batch axis too")
    io.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                    help="output dtype (default: int64 labels, bool masks); 'auto' = smallest integer type "
                         "that holds every possible label; refused if the labels cannot fit")
    io.add_argument("--format", choices=(NPY, NPZ, ZARR), default=None,
                    help="output format (default: from -o's suffix for one file; the input's format otherwise)")
    io.add_argument("--chunks", type=_parse_chunks, default=None, metavar="SPEC",
                    help="process lazily with Dask in chunks: 'auto', N, or N,N,... per axis (-1 = whole axis)")
    io.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist (resume a run)")
    io.add_argument("--keep-going", action=argparse.BooleanOptionalAction, default=None,
                    help="after a failed input, go on with the others (default: on)")
    io.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(func=cmd_predict)

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
                   help="also run solver='exact' when it is available (default: on)")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="time RMA against np.argmax in this process",
                       description="Time np.argmax and RankSEG RMA (Dice/IoU, multiclass/multilabel) on softmax "
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rankseg-np`` command line; returns the exit status.

    Examples
    --------
    >>> from rankseg_np.cli import main
    >>> main(["--version"])  # doctest: +ELLIPSIS
    rankseg-np ...
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(_join_negative_chunks(list(sys.argv[1:] if argv is None else argv)))
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `rankseg-np demo | head`
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
