r"""nnU-Net v2 probabilities -> a NIfTI label map on the reference image's grid.

nnU-Net v2 run with ``--save_probabilities`` writes, per case, ``case.npz``
holding ``probabilities`` of shape ``(C, z, y, x)`` -- one image, no batch
axis, on the case's original voxel grid, in SimpleITK's array order, which is
the reverse of the NIfTI voxel order ``(x, y, z)`` -- next to its own argmax
segmentation ``case.nii.gz``.  This module reads such archives and writes
RankSEG's labels as a NIfTI with the reference image's affine and header:

* :func:`read_probabilities` -- ``(C, z, y, x)`` from an nnU-Net ``.npz``;
* :func:`find_reference` -- the reference NIfTI for a case, given a file or a
  directory (``<stem>.nii.gz``, ``<stem>.nii``, or nnU-Net's raw-image names
  ``<stem>_0000.nii.gz`` / ``<stem>_0000.nii``);
* :func:`write_labels_like` -- labels ``(z, y, x)`` -> NIfTI ``(x, y, z)``,
  atomically, after checking the grid.

Needs ``nibabel`` (``pip install rankseg-np[nifti]``).  Used by
``rankseg-np predict case.npz -o out/ --format nifti --like case.nii.gz``.

The axis convention is that of nnU-Net's default reader for NIfTI
(``SimpleITKIO``); the ``NibabelIO`` readers store arrays in another order
and are not supported.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NNUNET_KEY",
    "NIFTI_SUFFIXES",
    "NiftiError",
    "find_reference",
    "labels_image",
    "read_probabilities",
    "write_labels_like",
]

NNUNET_KEY = "probabilities"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class NiftiError(ValueError):
    """A reference or archive that cannot give a correctly placed label map (one line, names the file)."""


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ImportError("reading and writing NIfTI needs nibabel: pip install nibabel (the nifti extra)") from None
    return nibabel


def nifti_stem(path: str | os.PathLike) -> str:
    """``case`` for ``case.nii.gz``, ``case.nii``, ``case.npz`` or ``case.zarr``."""
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def read_probabilities(path: str | os.PathLike) -> np.ndarray:
    """The ``probabilities`` array ``(C, z, y, x)`` of an nnU-Net v2 ``.npz`` (never unpickles).

    Raises
    ------
    NiftiError
        The archive has no ``probabilities`` member (names the members it
        has), or that member is not a 4-D float array.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            if NNUNET_KEY not in archive.files:
                raise NiftiError(
                    f"{path}: no {NNUNET_KEY!r} array, so not an nnU-Net probability file "
                    f"(members: {', '.join(archive.files) or 'none'})"
                )
            probs = archive[NNUNET_KEY]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise NiftiError(f"{path}: not a readable .npz archive ({exc})") from None
    except ValueError as exc:
        if isinstance(exc, NiftiError):
            raise
        raise NiftiError(f"{path}: member {NNUNET_KEY!r} cannot be read without unpickling ({exc})") from None
    if probs.ndim != 4 or probs.dtype.kind != "f":
        raise NiftiError(
            f"{path}: {NNUNET_KEY!r} must be float (C, z, y, x) as nnU-Net v2 writes it; "
            f"got shape {probs.shape} and dtype {probs.dtype}"
        )
    return probs


def find_reference(like: str | os.PathLike, case: str | os.PathLike) -> Path:
    """The reference NIfTI for ``case``: ``like`` itself if a file, else looked up in directory ``like``.

    In a directory, tried in order: ``<stem>.nii.gz``, ``<stem>.nii``,
    ``<stem>_0000.nii.gz``, ``<stem>_0000.nii`` (``stem`` of ``case``, e.g.
    ``liver_001`` for ``liver_001.npz``).

    Raises
    ------
    NiftiError
        ``like`` does not exist, or the directory holds none of those files.
    """
    like = Path(like)
    if like.is_dir():
        stem = nifti_stem(case)
        tried = [like / f"{stem}{tail}{suffix}" for tail in ("", "_0000") for suffix in NIFTI_SUFFIXES]
        for candidate in tried:
            if candidate.is_file():
                return candidate
        raise NiftiError(
            f"no reference image for {os.path.basename(os.fspath(case))} in --like directory {like} "
            f"(looked for {', '.join(p.name for p in tried)})"
        )
    if not like.is_file():
        raise NiftiError(f"reference image --like {like} does not exist")
    if not like.name.lower().endswith(NIFTI_SUFFIXES):
        raise NiftiError(f"reference image --like {like} must be a .nii.gz or .nii file")
    return like


def _load_reference(path: Path):
    nib = _nibabel()
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise NiftiError(f"reference image {path} is not a readable NIfTI ({exc})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"reference image {path} is a {type(image).__name__}, not NIfTI-1/2")
    if len(image.shape) < 3 or any(n != 1 for n in image.shape[3:]):
        raise NiftiError(f"reference image {path} must be a 3-D volume; it has shape {image.shape}")
    return image


def labels_image(labels: Any, reference: str | os.PathLike):
    """The NIfTI image of labels ``(z, y, x)`` on ``reference``'s grid (see :func:`write_labels_like`)."""
    _nibabel()  # the clear ImportError first, before any work
    reference = Path(reference)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels must be integer; got dtype {labels.dtype}")
    image = _load_reference(reference)
    grid = tuple(int(n) for n in image.shape[:3])
    if labels.ndim != 3 or labels.shape[::-1] != grid:
        raise NiftiError(
            f"the probabilities' grid (z, y, x) = {labels.shape} does not match reference image {reference}: "
            f"its grid (x, y, z) = {grid} needs (z, y, x) = {grid[::-1]}"
        )
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    data = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (z, y, x) -> NIfTI (x, y, z)
    header = image.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    out = type(image)(data, image.affine, header=header)
    # Copy the orientation exactly: both transforms and their codes, not only the affine.
    out.set_sform(image.get_sform(), code=int(image.header["sform_code"]))
    out.set_qform(image.get_qform(), code=int(image.header["qform_code"]))
    out.header.set_slope_inter(1.0, 0.0)  # labels are stored as they are: no intensity scaling
    return out


def image_bytes(image, compressed: bool) -> bytes:
    """The file content of a NIfTI image: ``.nii`` bytes, gzipped for ``.nii.gz``.

    The gzip header's time stamp is 0, so the same labels give the same bytes.
    """
    payload = image.to_bytes()
    return gzip.compress(payload, compresslevel=6, mtime=0) if compressed else payload


def write_labels_like(labels: Any, reference: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write labels ``(z, y, x)`` as a NIfTI on ``reference``'s voxel grid, with its affine and header.

    Parameters
    ----------
    labels : array, shape (z, y, x), integer
        One label per voxel in nnU-Net's (SimpleITK's) array order; voxel
        ``labels[k, j, i]`` is NIfTI voxel ``(i, j, k)``.
    reference : path
        The NIfTI whose grid the labels lie on (the case's image or nnU-Net's
        own segmentation of it).  Its affine (sform and qform with their
        codes) and header are copied; the data type becomes the labels'
        dtype, without scaling.
    path : path ending in .nii.gz or .nii
        Written atomically (a temporary file in the same directory, then
        renamed); must not be ``reference`` itself.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    NiftiError
        The labels' grid, reversed to ``(x, y, z)``, differs from the
        reference's; the reference is unreadable or not 3-D; ``path`` has
        another suffix or is the reference.
    TypeError
        ``labels`` is not integer (or boolean).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, nibabel as nib
    >>> from rankseg_np.integrations.nifti import write_labels_like
    >>> folder = tempfile.mkdtemp()
    >>> reference = os.path.join(folder, "case.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), np.diag([0.8, 0.8, 2.5, 1.0])), reference)
    >>> labels = np.zeros((2, 3, 4), np.uint8)          # (z, y, x)
    >>> labels[1, 2, 3] = 7
    >>> out = nib.load(write_labels_like(labels, reference, os.path.join(folder, "labels.nii.gz")))
    >>> out.shape, int(out.dataobj[3, 2, 1])           # NIfTI voxel (x, y, z)
    ((4, 3, 2), 7)
    """
    path, reference = Path(path), Path(reference)
    compressed = check_output_path(path, reference)
    payload = image_bytes(labels_image(labels, reference), compressed)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def check_output_path(path: str | os.PathLike, reference: str | os.PathLike) -> bool:
    """Refuse an output that is not ``.nii.gz``/``.nii`` or is the reference; return whether to gzip."""
    path, reference = Path(path), Path(reference)
    name = path.name.lower()
    if not name.endswith(NIFTI_SUFFIXES):
        raise NiftiError(f"a NIfTI output must end in .nii.gz or .nii; got {path.name}")
    if path.exists() and reference.exists() and os.path.samefile(path, reference):
        raise NiftiError(f"the output {path} would overwrite the reference image {reference}; choose another -o")
    return name.endswith(".gz")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
