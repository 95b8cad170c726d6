"""File I/O for ``rankseg-np predict``: formats, reading inputs (never unpickling), atomic writes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import stat
import tempfile
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np

from ._common import InputError, _has, _one_line

NPY, NPZ, ZARR, NIFTI = "npy", "npz", "zarr", "nifti"
SUFFIXES = {".npy": NPY, ".npz": NPZ, ".zarr": ZARR}  # input suffixes
# Output suffixes: NIfTI is written (labels on a reference grid, --like), never read.
OUTPUT_SUFFIXES = {**SUFFIXES, ".nii.gz": NIFTI, ".nii": NIFTI}
EXTENSION = {NPY: ".npy", NPZ: ".npz", ZARR: ".zarr", NIFTI: ".nii.gz"}
# The member nnU-Net v2 writes with --save_probabilities: one image (C, z, y, x), no batch axis.
NNUNET_KEY = "probabilities"


# The attribute that marks a Zarr store as written by ``rankseg-np predict``
# (``.zattrs`` in Zarr v2, ``attributes`` of ``zarr.json`` in v3).  Only a
# store carrying it is ever replaced: a directory is deleted only when we made it.
ZARR_MARKER = "rankseg_np"
ZARR_WRITER = "rankseg-np predict"


def _is_zarr_store(path: str) -> bool:
    """A Zarr v2 array/group or v3 store: a directory holding its metadata file."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, meta)) for meta in (".zarray", ".zgroup", "zarr.json")
    )


def _describe(mode: int) -> str:
    """What a directory entry is, for messages: 'a FIFO', 'a character device', ..."""
    for test, name in (
        (stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def _read_small_json(path: str) -> Any:
    """A small regular file's JSON, or None.

    Special files are not opened (a FIFO would block); the open itself neither
    blocks nor follows a link, in case the entry is swapped after the check.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with os.fdopen(os.open(path, flags), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 20:
                return None
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _is_our_zarr_store(path: str) -> bool:
    """A Zarr store whose root carries the marker attribute that :func:`write_output` sets."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    v3 = _read_small_json(os.path.join(path, "zarr.json"))
    attrs = v3.get("attributes") if isinstance(v3, dict) else _read_small_json(os.path.join(path, ".zattrs"))
    marker = attrs.get(ZARR_MARKER) if isinstance(attrs, dict) else None
    return isinstance(marker, dict) and marker.get("written_by") == ZARR_WRITER


def check_new_output(path: str, fmt: str, what: str = "output") -> None:
    """Before any work: ``path``'s directory exists and writing ``path`` destroys nothing of the user's."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{what} directory {parent!r} does not exist")
    check_replaceable(path, fmt)


def check_replaceable(path: str, fmt: str) -> None:
    """Raise :class:`InputError` unless writing ``path`` destroys nothing we did not write.

    Allowed: no entry at ``path``; a regular file (for ``.npy``/``.npz`` outputs);
    a Zarr store marked as ours (for Zarr outputs).  Refused: symbolic links,
    directories (a plain one named ``*.zarr`` included), Zarr stores without the
    marker, device nodes, FIFOs and sockets.  Nothing is opened except the small
    metadata file of a directory that claims to be a Zarr store.
    """
    path = path.rstrip("/" + os.sep) or path
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise InputError("cannot be created: part of its parent path is a file, not a directory") from None
    except OSError as exc:
        raise InputError(f"cannot be checked ({_one_line(exc)})") from None
    if fmt == ZARR:
        if _is_our_zarr_store(path):
            return
        if stat.S_ISDIR(mode) and _is_zarr_store(path):
            what = "is a Zarr store that rankseg-np did not write"
        else:
            what = f"exists and is {_describe(mode)}"
        raise InputError(f"{what}, not a Zarr store written by rankseg-np; refusing to replace it")
    if stat.S_ISREG(mode):
        return
    raise InputError(f"exists and is {_describe(mode)}, not a regular file; refusing to replace it")


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


def _check_size(shape: tuple[int, ...], dtype: np.dtype, available: int, where: str) -> None:
    """Refuse a header that claims more data than there is, before anything is allocated.

    A corrupt or forged header can claim terabytes; reading would then fail as
    "out of memory", which sends the user after the wrong cause.  Object arrays
    are pickles of unknown size and are refused elsewhere.
    """
    if dtype.hasobject:
        return
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > available:
        raise InputError(
            f"has an implausible header: it claims shape {tuple(shape)} {dtype} ({claimed:,} bytes), but "
            f"{where} holds {max(available, 0):,} bytes of data (corrupt or truncated)"
        )


# zlib's documented limit: deflate never expands data by more than 1032:1.
_DEFLATE_MAX_RATIO = 1032


def _member_capacity(info: zipfile.ZipInfo) -> int:
    """The most bytes an archive member can decompress to: its declared size, bounded by its stored bytes."""
    if info.compress_type == zipfile.ZIP_STORED:
        return min(info.file_size, info.compress_size)
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return min(info.file_size, info.compress_size * _DEFLATE_MAX_RATIO)
    return info.file_size


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
    if NNUNET_KEY in names:
        return NNUNET_KEY
    if not names:
        raise InputError("holds no arrays")
    raise InputError(
        f"holds several arrays ({', '.join(names)}) and none is named 'probs' or {NNUNET_KEY!r}; choose one with --key"
    )


def npz_members(path: str) -> list[str] | None:
    """The member names of ``path`` if it is a readable ``.npz`` archive, else ``None`` (reads the directory only)."""
    try:
        if not os.path.isfile(path) or _file_kind(path) != NPZ:
            return None
        with zipfile.ZipFile(path) as archive:
            return [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]
    except (InputError, OSError, zipfile.BadZipFile):
        return None  # load_probs reports the problem


def npz_member(path: str, key: str | None) -> str | None:
    """The member :func:`load_probs` reads from ``path`` if it is a ``.npz`` archive, else ``None``.

    Used to recognise nnU-Net's ``probabilities`` (one image, no batch axis)
    before loading it.
    """
    names = npz_members(path)
    if names is None:
        return None
    try:
        return _npz_key(names, key)
    except InputError:
        return None


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
    try:
        mode = os.stat(path).st_mode  # stat, not open: opening a FIFO would block forever
    except FileNotFoundError:
        raise InputError("no such file or directory") from None
    except OSError as exc:
        raise InputError(_one_line(exc)) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"is {_describe(mode)}, not a regular file; not read")
    kind = _file_kind(path)
    if kind == ZARR:
        return _load_zarr(path, key, lazy_chunks)
    if kind == NPY:
        with open(path, "rb") as f:
            shape, dtype = _read_npy_header(f)
            _check_size(shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), "the file")
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
                    shape, dtype = _read_npy_header(member)
                    data_size = _member_capacity(archive.zip.getinfo(member_name)) - member.tell()
                _refuse_objects(dtype, f"member {name!r} ")
                _check_size(shape, dtype, data_size, f"member {name!r}")
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
        # Checked again at the last moment: the entry may have changed since the run was planned.
        check_replaceable(final, ZARR if directory else NPY)
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
    new-and-complete.  The caller has checked that an old store is one we
    wrote (:func:`check_replaceable`).
    """
    if os.path.lexists(final):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".old", dir=os.path.dirname(tmp))
        os.rmdir(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


def write_output(result: Any, final: str, fmt: str, name: str, like: str | None = None) -> None:
    """Write ``result`` (NumPy or Dask array) to ``final`` atomically, in format ``fmt``.

    NIfTI: ``result`` is one label map ``(z, y, x)``, placed on the grid of the
    reference image ``like`` (a file), with its affine and header.
    """
    lazy = not isinstance(result, np.ndarray)
    if fmt == NIFTI:
        from ..integrations import nifti

        compressed = nifti.check_output_path(final, like)
        labels = np.asarray(result.compute() if lazy else result)  # labels: 1-2 bytes a voxel
        payload = nifti.image_bytes(nifti.labels_image(labels, like), compressed)
        with _atomic_path(final) as tmp:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        return
    if fmt == ZARR:
        if not (_has("zarr") and _has("dask")):
            raise InputError("writing Zarr needs dask and zarr (pip install 'dask[array]' distributed zarr)")
        import dask.array as da

        arr = result if lazy else da.from_array(result)
        with _atomic_path(final, directory=True) as tmp:
            arr.to_zarr(tmp, overwrite=True)
            import zarr

            from .. import __version__

            zarr.open(tmp, mode="r+").attrs[ZARR_MARKER] = {"written_by": ZARR_WRITER, "version": __version__}
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

