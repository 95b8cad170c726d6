"""Scores with their ground truth: argument checks and block-wise float64 sums.

Calibration (:mod:`rankseg_np.calibration`) and evaluation
(:mod:`rankseg_np.evaluation`) read a batch of scores ``(B, C, *spatial)``
(logits or probabilities) together with its labels: integer class ids
``(B, *spatial)`` for multiclass output, boolean / 0-1 masks
``(B, C, *spatial)`` for multilabel output.  This module

* turns both into one backend's arrays (NumPy, CuPy or Dask, through
  :func:`rankseg_np._dispatch.prepare`), labels following the scores;
* checks shapes and dtypes up front, with one error naming the argument;
* runs a statistic block by block and adds the per-block results in float64,
  in a fixed block order (deterministic): NumPy/CuPy arrays in slices of whole
  images (or of one image's pixels, for very large images), Dask arrays chunk
  by chunk in one ``dask.compute`` per pass, so that data larger than memory
  is streamed, never held whole.

Values (NaN, probabilities outside [0, 1], class ids out of range) are checked
inside the blocks, by :func:`scores_values` and :func:`valid_labels`.
"""

from __future__ import annotations

from math import prod
from numbers import Integral
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from . import _dispatch

OUTPUT_MODES = ("multiclass", "multilabel")

# Elements of scores per in-memory block.  The statistics make a handful of
# float64 temporaries of a block's size, so this keeps each near 8 MiB.
BLOCK_ELEMENTS = 1 << 20


class Spec(NamedTuple):
    """What a block statistic needs to know besides the blocks (small, cheap to ship to Dask workers)."""

    output_mode: str
    ignore_index: int | None


class Labelled(NamedTuple):
    scores: Any  # NumPy, CuPy or Dask array (B, C, *spatial)
    labels: Any  # same backend; (B, *spatial) multiclass, (B, C, *spatial) multilabel
    kind: str  # 'numpy' | 'cupy' | 'dask'
    output_mode: str
    ignore_index: int | None
    restore: Callable[[Any], Any]  # backend answer -> the caller's array type of scores

    @property
    def spec(self) -> Spec:
        return Spec(self.output_mode, self.ignore_index)


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` lower-cased if it is one of ``allowed``; else a TypeError/ValueError naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {type(value).__name__}")
    key = value.strip().lower()
    if key not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return key


def check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, Integral):
        raise TypeError(f"ignore_index must be an int or None; got {type(ignore_index).__name__}")
    return int(ignore_index)


def native(x: Any, name: str):
    """``prepare(x)``, with errors naming the argument ``name``."""
    try:
        return _dispatch.prepare(x)
    except TypeError as exc:
        raise TypeError(str(exc).replace("probs", name, 1)) from None


def kind_of(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    return "dask" if type(x).__module__.startswith("dask") else "cupy"


def host(x: Any) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy, CuPy or Dask array."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "compute"):
        return np.asarray(x.compute())
    if hasattr(x, "get"):
        return x.get()
    return np.asarray(x)


def check_scores_structure(scores: Any, name: str) -> tuple[int, ...]:
    """Float dtype and shape ``(B, C, *spatial)``; the shape as ints."""
    if any(s is None or s != s for s in scores.shape):
        raise ValueError(f"{name} has unknown axis sizes {tuple(scores.shape)}; call x.compute_chunk_sizes() first")
    shape = tuple(int(s) for s in scores.shape)
    dtype = np.dtype(str(scores.dtype))
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"{name} must have dtype float16, float32 or float64; got {scores.dtype}")
    if len(shape) < 3:
        raise ValueError(f"{name} must have shape (batch, classes, *spatial) with at least one spatial axis; "
                         f"got shape {shape}")
    if shape[1] == 0 or any(s == 0 for s in shape[2:]):
        raise ValueError(f"{name} must have at least one class and non-empty spatial axes; got shape {shape}")
    return shape


def _check_labels_structure(labels: Any, shape: tuple[int, ...], output_mode: str, name: str) -> None:
    dtype = np.dtype(str(labels.dtype))
    lshape = tuple(int(s) for s in labels.shape)
    if output_mode == "multiclass":
        if dtype.kind not in "iu":
            raise TypeError(f"labels must be integer class ids of shape (B, *spatial) for output_mode='multiclass'; "
                            f"got dtype {labels.dtype}")
        expected = (shape[0],) + shape[2:]
        if lshape != expected:
            hint = ""
            if lshape == shape:
                hint = " (one mask per class: pass output_mode='multilabel', or labels.argmax(axis=1))"
            elif lshape == (shape[0], 1) + shape[2:]:
                hint = " (drop the channel axis: labels[:, 0])"
            raise ValueError(f"labels must have shape {expected} to match {name} {shape}; got {lshape}{hint}")
    else:
        if dtype.kind not in "biu":
            raise TypeError(f"labels must be boolean (or 0/1 integer) masks of shape (B, C, *spatial) for "
                            f"output_mode='multilabel'; got dtype {labels.dtype} (convert with labels > 0.5)")
        if lshape != shape:
            raise ValueError(f"labels must have the shape of {name} {shape} for output_mode='multilabel'; got {lshape}")


def pair(scores: Any, labels: Any, output_mode: str, ignore_index: Any, name: str = "scores") -> Labelled:
    """Both arrays on the scores' backend, structure checked (values are checked block by block)."""
    output_mode = choice("output_mode", output_mode, OUTPUT_MODES)
    ignore_index = check_ignore_index(ignore_index)
    s, _solve, restore = native(scores, name)
    shape = check_scores_structure(s, name)
    y, _solve, _restore = native(labels, "labels")
    _check_labels_structure(y, shape, output_mode, name)
    kind = kind_of(s)
    if kind == "dask":
        import dask.array as da

        s = s.rechunk({1: -1})  # a softmax needs every class of a pixel in one block
        y = y if kind_of(y) == "dask" else da.from_array(host(y), chunks=-1)
        chunks = s.chunks if output_mode == "multilabel" else s.chunks[:1] + s.chunks[2:]
        y = y.rechunk(chunks)
    elif kind == "cupy":
        y = _dispatch.array_module(s).asarray(host(y) if kind_of(y) == "dask" else y)
    else:
        y = host(y)
    return Labelled(s, y, kind, output_mode, ignore_index, restore)


def is_sequence(x: Any) -> bool:
    """A list/tuple of arrays (not a nested list of numbers, which gets the usual 'must be an array' error)."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(hasattr(item, "shape") for item in x)


def pairs(scores: Any, labels: Any, output_mode: str, ignore_index: Any, name: str = "scores") -> list[Labelled]:
    """:func:`pair` for one array, or for lists of arrays (e.g. volumes of different sizes, same classes)."""
    if not is_sequence(scores):
        return [pair(scores, labels, output_mode, ignore_index, name)]
    if not is_sequence(labels) or len(labels) != len(scores):
        raise ValueError(f"labels must be a list of {len(scores)} arrays, one per array of {name}")
    out = [pair(s, y, output_mode, ignore_index, f"{name}[{i}]") for i, (s, y) in enumerate(zip(scores, labels))]
    classes = {int(d.scores.shape[1]) for d in out}
    if len(classes) > 1:
        raise ValueError(f"every array of {name} must have the same number of classes (axis 1); got {sorted(classes)}")
    return out


def _blocks(data: Labelled) -> Iterator[tuple[Any, Any]]:
    """In-memory blocks: slices of whole images, or slices of one image's pixels."""
    s, y = data.scores, data.labels
    b, c = s.shape[:2]
    d = prod(s.shape[2:])
    if c * d <= BLOCK_ELEMENTS:
        step = BLOCK_ELEMENTS // (c * d)
        for i in range(0, b, step):
            yield s[i:i + step], y[i:i + step]
        return
    step = max(1, BLOCK_ELEMENTS // c)
    for i in range(b):
        si = s[i:i + 1].reshape(1, c, d)  # copies one image at most (non-contiguous input)
        yi = y[i:i + 1].reshape((1, c, d) if data.output_mode == "multilabel" else (1, d))
        for j in range(0, d, step):
            yield si[:, :, j:j + step], yi[..., j:j + step]


def _host_tuple(parts: tuple) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(host(p), dtype=np.float64) for p in parts)


def block_sums(fn: Callable[..., tuple], data: Labelled | list[Labelled], *args: Any) -> tuple[np.ndarray, ...]:
    """``sum over blocks of fn(scores_block, labels_block, *args)`` (a tuple of arrays), in float64.

    ``fn`` receives blocks with spatial axes flattened: scores ``(n, C, m)``,
    labels ``(n, m)`` (multiclass) or ``(n, C, m)`` (multilabel).  Blocks are
    added in a fixed order, so the answer is deterministic.  A Dask input is
    read once per call (one ``dask.compute`` over all chunks).  A list of
    inputs (from :func:`pairs`) is summed over, in order.
    """
    if isinstance(data, list):
        total = None
        for item in data:
            part = block_sums(fn, item, *args)
            total = list(part) if total is None else [a + b for a, b in zip(total, part)]
        return tuple(total)

    def call(s, y):
        n, c = s.shape[:2]
        s = s.reshape(n, c, -1)
        y = y.reshape((n, c, -1) if data.output_mode == "multilabel" else (n, -1))
        return _host_tuple(fn(s, y, *args))

    if data.kind == "dask":
        import dask

        sb = data.scores.to_delayed()[:, 0].ravel()
        yb = data.labels.to_delayed()
        yb = (yb[:, 0] if data.output_mode == "multilabel" else yb).ravel()
        parts = dask.compute(*[dask.delayed(call)(s, y) for s, y in zip(sb, yb)])
    else:
        parts = [call(s, y) for s, y in _blocks(data)]
    total = None
    for part in parts:
        total = list(part) if total is None else [t + p for t, p in zip(total, part)]
    return tuple(total)


def xp_of(x: Any) -> Any:
    return _dispatch.array_module(x)


def scores_values(s: Any, name: str, probabilities: bool) -> None:
    """NaN/inf anywhere, or (probabilities) values outside [0, 1]: one ValueError naming ``name``."""
    xp = xp_of(s)
    if not bool(xp.isfinite(s).all()):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    if probabilities and s.size and (float(s.min()) < 0.0 or float(s.max()) > 1.0):
        raise ValueError(
            f"{name} were declared probabilities and must lie in [0, 1]; found values in "
            f"[{float(s.min())}, {float(s.max())}] (logits? use inputs='logits')"
            if name == "scores" else
            f"{name} must lie in [0, 1]; found values in [{float(s.min())}, {float(s.max())}] "
            "(logits? apply a softmax or sigmoid over the class axis first)"
        )


def valid_labels(y: Any, num_class: int, output_mode: str, ignore_index: int | None) -> Any:
    """Boolean mask of the labelled pixels; raises for class ids (or mask values) out of range."""
    xp = xp_of(y)
    valid = xp.ones(y.shape, dtype=bool) if ignore_index is None else y != ignore_index
    if y.dtype == bool:
        return valid
    top = num_class if output_mode == "multiclass" else 2
    bad = valid & ((y < 0) | (y >= top))
    if bool(bad.any()):
        found = sorted({int(v) for v in host(y[bad][:8])})
        allowed = f"class ids in [0, {num_class})" if output_mode == "multiclass" else "mask values 0 and 1"
        extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(f"labels must hold {allowed}{extra}; found {found}"
                         + ("" if ignore_index is not None else " (pass ignore_index=... for unlabelled pixels)"))
    return valid
