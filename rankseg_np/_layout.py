"""Where the class axis is, and whether multiclass probabilities look like it.

A leaf (NumPy and the standard library only).  Two concerns, both about
arrays in the wrong layout giving labels of the wrong shape with exit 0:

* ``channel_axis`` (scikit-image's name): the axis of ``probs`` that holds the
  classes.  The solvers work on ``(B, C, *spatial)``; :func:`to_channels_first`
  moves the class axis there (a view) and :func:`from_channels_first` puts it
  back in per-class masks, so ``rankseg(y, channel_axis=-1)`` equals
  ``rankseg(moveaxis(y, -1, 1))``, masks in the caller's layout.
* In multiclass mode the class probabilities of every pixel sum to 1.  The
  kernels count, in a pass they already make, the pixels whose sum is off by
  more than :data:`SUM_TOL`; :func:`check_class_sums` turns the count into a
  ``ValueError`` when the array is recognisably channels-last, else a
  ``UserWarning`` that names the likely causes.
"""

from __future__ import annotations

import os
import sys
import warnings
from numbers import Integral
from typing import Any

import numpy as np

# A pixel's class sum may differ from 1 by this much before it counts as off.
# Storage rounding alone moves a softmax's sum: float16 rounds each value to
# 2^-11 relative (sum within 4.9e-4 of 1), bfloat16 (upcast to float32 by the
# dispatch layer) to 2^-8 (within 3.9e-3), plus a few roundings when the
# softmax itself ran in that precision.  1e-2 clears them with a margin; the
# causes we look for (logits, sigmoid outputs, a misplaced class axis) are
# off by O(1).
SUM_TOL = 1e-2
# Pixels read (on the failure path only) to test another axis as the class axis.
_SAMPLE = 4096
# A layout is "recognisably" channels-last only from this many pixels: in a
# tiny array a few pixels can sum to 1 along the last axis by chance.
_RECOGNISE_FROM = 64


def normalize_channel_axis(channel_axis: Any, ndim: int) -> int:
    """``channel_axis`` as an index in ``[0, ndim)``; one error naming the allowed values.

    Examples
    --------
    >>> normalize_channel_axis(-1, 4)
    3
    """
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, Integral):
        raise TypeError(f"channel_axis must be an integer; got {type(channel_axis).__name__}")
    axis = int(channel_axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"channel_axis must lie in [{-ndim}, {ndim}) for probs with {ndim} axes; got {channel_axis}"
        )
    return axis % ndim


def _order(axis: int, ndim: int) -> list[int]:
    order = [a for a in range(ndim) if a != axis]
    order.insert(1, axis)
    return order


def to_channels_first(x: Any, axis: int) -> Any:
    """``x`` with axis ``axis`` moved to position 1 (a view for NumPy, CuPy and Dask)."""
    if axis == 1:
        return x
    return x.transpose(tuple(_order(axis, x.ndim)))


def from_channels_first(x: Any, axis: int) -> Any:
    """Undo :func:`to_channels_first` on an array of the same rank (C-contiguous when it has ``flags``)."""
    if axis == 1:
        return x
    inverse = tuple(int(i) for i in np.argsort(_order(axis, x.ndim)))
    out = x.transpose(inverse)
    return out.copy(order="C") if hasattr(out, "flags") else out


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside this package (the user's call), for warnings."""
    level = 1
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def _host(x: Any) -> np.ndarray:
    return np.asarray(x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else x, dtype=np.float64)


def _sums_to_one(sample: np.ndarray, axis: int) -> bool:
    sums = sample.sum(axis=axis, dtype=np.float64)
    return bool(sums.size) and bool(np.all(np.abs(sums - 1.0) <= SUM_TOL))


def check_class_sums(n_pixels: int, n_off: int, lo: float, hi: float, probs: Any) -> None:
    """Raise or warn when multiclass ``probs`` ``(B, C, *spatial)`` has pixels whose class sum is off.

    ``n_off`` of ``n_pixels`` pixels had a class sum outside ``1 +- SUM_TOL``;
    ``lo``/``hi`` are the smallest and largest sums seen.  Nothing happens when
    ``n_off == 0``.  Otherwise a small sample of ``probs`` is read to test the
    last axis (and axis 0) as the class axis: a last axis whose entries sum to
    1 is a channels-last array (``ValueError``); anything else gets a
    ``UserWarning`` naming the likely causes.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.full((1, 8, 8, 2), 0.5)          # channels-last: (B, H, W, C)
    >>> check_class_sums(16, 16, 4.0, 4.0, p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: probs looks channels-last: ... pass channel_axis=-1 ...
    """
    if n_off == 0:
        return
    shape = tuple(int(s) for s in probs.shape)
    found = f"{n_off} of {n_pixels} pixels have class sums (axis 1, size {shape[1]}) off 1 by more than {SUM_TOL}, "
    found += f"sums in [{lo:.4g}, {hi:.4g}]"
    last = len(shape) - 1
    if last != 1 and shape[last] >= 2:
        # One image's first pixels, laid out as (pixels, last axis).
        sample = _host(probs[0].reshape(-1, shape[last])[:_SAMPLE])
        if sample.shape[0] >= _RECOGNISE_FROM and _sums_to_one(sample, 1):
            raise ValueError(
                f"probs looks channels-last: {found}, but along its last axis (size {shape[last]}) they sum to 1. "
                f"The class axis is axis 1 by default; pass channel_axis=-1 (e.g. rankseg(probs, channel_axis=-1)) "
                f"or move the classes to axis 1 first (np.moveaxis(probs, -1, 1))"
            )
    hint = ""
    if shape[0] >= 2 and _sums_to_one(_host(probs.reshape(shape[0], -1)[:, :_SAMPLE]), 0):
        hint = (
            f" Here axis 0 (size {shape[0]}) sums to 1: this looks like one image of shape (C, *spatial) "
            "without its batch axis; pass probs[None]."
        )
    warnings.warn(
        f"output_mode='multiclass' expects class probabilities that sum to 1 at every pixel; {found}.{hint} "
        "Likely causes: a missing batch axis (one image (C, H, W): pass probs[None]); logits (apply a softmax "
        "over the class axis first); independent per-class sigmoid outputs (use output_mode='multilabel'); "
        "or the class axis elsewhere (channel_axis=...).",
        UserWarning,
        stacklevel=_caller_stacklevel(),
    )
