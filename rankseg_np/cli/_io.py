"""File I/O for ``rankseg-np predict``: formats, reading inputs (never unpickling), atomic writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np

from ._common import InputError, _has, _one_line

NPY, NPZ, ZARR = "npy", "npz", "zarr"
SUFFIXES = {".npy": NPY, ".npz": NPZ, ".zarr": ZARR}


def _is_zarr_store(path: str) -> bool:
    """A Zarr v2 array/group or v3 store: a directory holding its metadata file."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, meta)) for meta in (".zarray", ".zgroup", "zarr.json")
    )



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

