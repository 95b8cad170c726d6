"""Ground-truth files for ``calibrate`` / ``evaluate``: pairing with inputs by file stem, reading labels.

A score file ``case01.npy`` (or ``.npz``, Zarr) is paired with the label file
of the same stem, ``case01.npy`` / ``case01.npz`` / ``case01.png``, found
under ``--labels`` (a directory, a quoted glob, or a single file when there is
one input).  Label files are read without unpickling (``.npy``/``.npz``, as
inputs are) or with Pillow (PNG masks: single-channel ``L``/``P``/``I``/``1``
images holding class ids, or 0/1 for one mask).

Labels may omit axes of size one: a PNG ``(H, W)`` pairs with scores
``(1, C, H, W)``; the shapes are matched by dropping such axes.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Sequence

import numpy as np

from ._common import InputError, _has, _one_line
from ._io import load_probs

LABEL_SUFFIXES = (".npy", ".npz", ".png")
PNG_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip("/\\")))[0]


def label_candidates(spec: str) -> list[str]:
    """Label files named by ``--labels``: a directory's label files, a glob's matches, or one file."""
    if os.path.isdir(spec):
        return sorted(os.path.join(spec, e) for e in os.listdir(spec)
                      if os.path.splitext(e)[1].lower() in LABEL_SUFFIXES and not e.startswith("."))
    if not os.path.exists(spec) and glob.has_magic(spec):
        return sorted(m for m in glob.glob(spec) if os.path.splitext(m)[1].lower() in LABEL_SUFFIXES)
    return [spec]


def pair_by_stem(inputs: Sequence[str], labels_spec: str) -> list[tuple[str, str]]:
    """``(input, label file)`` for every input; ValueError naming what is missing or ambiguous."""
    candidates = label_candidates(labels_spec)
    if len(inputs) == 1 and len(candidates) == 1 and not os.path.isdir(labels_spec):
        return [(inputs[0], candidates[0])]  # one input, one label file: no need for equal names
    by_stem: dict[str, list[str]] = {}
    for path in candidates:
        by_stem.setdefault(stem(path), []).append(path)
    out = []
    for src in inputs:
        found = by_stem.get(stem(src), [])
        if not found:
            raise ValueError(f"{src}: no label file named {stem(src)}.npy/.npz/.png under {labels_spec!r}")
        if len(found) > 1:
            raise ValueError(f"{src}: several label files share its name: {', '.join(found)}")
        out.append((src, found[0]))
    return out


def _npz_label_key(path: str, key: str | None) -> str | None:
    """The archive member to read: ``key``, the only member, or ``labels``."""
    if key is not None:
        return key
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
    except Exception as exc:
        raise InputError(f"not a valid .npz archive ({_one_line(exc)})") from None
    if len(names) == 1:
        return names[0]
    if "labels" in names:
        return "labels"
    raise InputError(f"holds several arrays ({', '.join(names)}) and none is named 'labels'; "
                     "choose one with --labels-key")


def load_labels(path: str, key: str | None = None) -> np.ndarray:
    """Integer or boolean labels from ``.npy`` / ``.npz`` / PNG; never unpickles."""
    if path.lower().endswith(".png"):
        if not _has("PIL"):
            raise InputError("reading PNG labels needs Pillow (pip install 'rankseg-np[images]')")
        from PIL import Image

        try:
            with Image.open(path) as image:
                if image.mode not in PNG_MODES:
                    raise InputError(f"is a {image.mode} image; label PNGs must be single-channel class ids "
                                     f"(mode {', '.join(PNG_MODES)}), e.g. a palette ('P') mask")
                arr = np.array(image)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"not a readable PNG ({_one_line(exc)})") from None
    else:
        if not os.path.exists(path):
            raise InputError("no such file")
        arr = load_probs(path, _npz_label_key(path, key) if path.lower().endswith(".npz") else key)
    if arr.dtype.kind not in "biu":
        raise InputError(f"holds {arr.dtype} values; labels must be integer class ids or boolean masks")
    return arr


def fit_shape(labels: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """``labels`` reshaped to ``expected`` when the two differ only by axes of size one."""
    if labels.shape == expected:
        return labels
    if tuple(s for s in labels.shape if s != 1) == tuple(s for s in expected if s != 1):
        return labels.reshape(expected)
    return labels


def expected_label_shape(scores_shape: tuple[int, ...], output_mode: str) -> tuple[int, ...]:
    return scores_shape if output_mode == "multilabel" else scores_shape[:1] + scores_shape[2:]


def load_pairs(pairs: Sequence[tuple[str, str]], output_mode: str, key: str | None, labels_key: str | None,
               no_batch_axis: bool, chunks: Any = None) -> tuple[list[Any], list[np.ndarray]]:
    """Scores (memory-mapped ``.npy``, or lazy with ``chunks``) and labels shaped to match, per pair.

    Raises InputError with the offending file's name in front.
    """
    scores, labels = [], []
    for src, lab in pairs:
        try:
            s = load_probs(src, key, chunks)
        except InputError as exc:
            raise InputError(f"{src}: {exc}") from None
        if no_batch_axis:
            s = s[None]
        if s.ndim < 3:
            raise InputError(f"{src}: holds an array of shape {tuple(s.shape)}; expected (batch, classes, *spatial)")
        try:
            y = load_labels(lab, labels_key)
        except InputError as exc:
            raise InputError(f"{lab}: {exc}") from None
        expected = expected_label_shape(tuple(int(d) for d in s.shape), output_mode)
        y = fit_shape(np.asarray(y), expected)
        if y.shape != expected:
            raise InputError(f"{lab}: labels of shape {y.shape} do not match {src} (expected {expected} "
                             f"for --output-mode {output_mode})")
        scores.append(s)
        labels.append(y)
    return scores, labels
