"""Exact expected Dice and IoU of arbitrary masks (MATH sections 1 and 3).

Under the model of MATH section 1 (independent ``Y_j ~ Bernoulli(p_j)``), the
expected score of any mask ``delta`` with ``tau = |delta|`` pixels is

* Dice: ``E[(2|delta & Y| + g) / (tau + |Y| + g)]
  = int_0^1 t^(tau+g-1) G(t) [2t sum_{j in delta} p_j/(1 - p_j(1-t)) + g] dt``,
* IoU:  ``E[(|delta & Y| + g) / (|delta or Y| + g)]
  = (sum_{j in delta} p_j + g) int_0^1 t^(tau+g-1) prod_{j not in delta} (1 - p_j(1-t)) dt``,

with ``G(t) = prod_j (1 - p_j(1-t))`` and ``0/0 := 0``.  The integrals are
evaluated with the quadrature of the exact solver (kernels in :mod:`rankseg_np.cpu.exact`,
``docs/exact.md``): about 1e-13 absolute error whatever the row length, one pass over each row plus a
few dozen nodes per pixel that is not small.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._layout import normalize_channel_axis, to_channels_first
from ._validate import check_probs_structure, finite_real, raise_bad_values

__all__ = ["expected_metric"]

_METRICS = ("dice", "iou")


def _as_masks(masks: Any, probs: np.ndarray) -> np.ndarray:
    """Boolean ``(B, C, *spatial)`` masks from masks of that shape or labels ``(B, *spatial)``."""
    masks = _host_array(masks)
    if masks.dtype == np.bool_:
        kind = "b"
    elif masks.dtype.kind in "iu":
        kind = "i"
    else:
        raise TypeError(f"masks must be boolean (or integer 0/1 masks, or integer labels); got dtype {masks.dtype}")
    b, c = probs.shape[:2]
    spatial = probs.shape[2:]
    if masks.shape == probs.shape:
        if kind == "i":
            if masks.size and (masks.min() < 0 or masks.max() > 1):
                raise ValueError("integer masks of shape (B, C, *spatial) must contain only 0 and 1")
            masks = masks.astype(np.bool_)
        return masks
    if kind == "i" and masks.shape == (b,) + spatial:
        # A multiclass label map: class c's mask is labels == c (other values, e.g. void, in no class).
        classes = np.arange(c).reshape((1, c) + (1,) * len(spatial))
        return masks[:, None] == classes
    raise ValueError(
        f"masks must have the shape of probs {probs.shape} (one mask per class), or be integer labels "
        f"of shape {(b,) + spatial}; got shape {masks.shape} and dtype {masks.dtype}"
    )


def _host_array(x: Any) -> np.ndarray:
    """Any array :func:`rankseg` accepts (NumPy, CuPy, torch, JAX, TensorFlow, Dask, DLPack),
    as a NumPy array on the host; the caller's array is never modified."""
    if isinstance(x, np.ndarray):
        return x
    from ._dispatch import backend_of, prepare

    try:
        backend_of(x)
    except TypeError:  # lists and other array-likes: NumPy's own conversion
        return np.asarray(x)
    native = prepare(x)[0]  # the array in its backend's type (bfloat16 upcast, detached)
    if hasattr(native, "compute"):  # Dask
        native = native.compute()
    if hasattr(native, "get") and not isinstance(native, np.ndarray):  # CuPy: to the host
        native = native.get()
    return np.asarray(native)


def expected_metric(
    probs: Any, masks: Any, metric: str = "dice", smooth: float = 0.0, channel_axis: int = 1
) -> np.ndarray:
    r"""Exact expected Dice or IoU of given masks, per image and class.

    The score each mask is expected to get when the ground truth is drawn
    pixel by pixel from ``probs`` (independent Bernoulli, MATH section 1):
    no ground truth is needed, so it compares decision rules on unlabelled
    data.  Any mask is allowed, not only the top-tau sets the solvers return.

    Parameters
    ----------
    probs : array, shape (B, C, \*spatial)
        Probabilities in [0, 1], float16/float32/float64 in either byte
        order: any array :func:`rankseg` accepts (NumPy, CuPy, PyTorch, JAX,
        TensorFlow, Dask, DLPack arrays), evaluated on the CPU.  Not modified.
    masks : ndarray
        Boolean masks of the same shape as ``probs`` (integer 0/1 accepted),
        or an integer label map ``(B, *spatial)`` as returned by multiclass
        prediction (class ``c``'s mask is ``labels == c``; labels outside
        ``[0, C)``, such as a void index, belong to no class).
    metric : {'dice', 'iou'}, default 'dice'
        Case-insensitive.
    smooth : float, default 0.0
        Smoothing ``gamma >= 0`` added to numerator and denominator.
    channel_axis : int, default 1
        The class axis of ``probs`` (and of per-class ``masks``), as in
        :func:`rankseg`: ``-1`` for channels-last arrays.

    Returns
    -------
    ndarray, float64, shape (B, C)
        ``E[metric(mask, Y)]``, with ``0/0 := 0`` (an empty mask scores 0
        when ``smooth = 0``).  Accurate to about 1e-13 absolute (see
        ``docs/exact.md``).

    Raises
    ------
    TypeError
        ``probs`` not floating point, ``masks`` not boolean/integer, or
        ``metric``/``smooth`` of the wrong type.
    ValueError
        Shapes that do not match, values outside [0, 1] or NaN, an unknown
        metric, or ``smooth < 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np import expected_metric
    >>> probs = np.array([[[0.9, 0.6, 0.4, 0.1]]])
    >>> masks = np.array([[[True, True, False, False]]])
    >>> round(float(expected_metric(probs, masks)[0, 0]), 6)  # = the sum over all 16 outcomes
    0.73356
    >>> expected_metric(probs, probs > 0.5, metric="iou").shape
    (1, 1)
    """
    probs = _host_array(probs)
    axis = normalize_channel_axis(channel_axis, probs.ndim)
    if axis != 1:
        masks = _host_array(masks)
        if masks.shape == probs.shape:  # per-class masks, in the layout of probs
            masks = to_channels_first(masks, axis)
        probs = to_channels_first(probs, axis)
    check_probs_structure(probs)
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a string, 'dice' or 'iou'; got {type(metric).__name__}")
    key = metric.strip().lower()
    if key not in _METRICS:
        raise ValueError(f"metric must be 'dice' or 'iou'; got {metric!r}")
    smooth = finite_real("smooth", smooth)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0; got {smooth}")
    m = _as_masks(masks, probs)

    b, c = probs.shape[:2]
    d = int(np.prod(probs.shape[2:]))
    from .cpu import as_rows  # float16 -> float32, native byte order, C-contiguous rows

    p2 = as_rows(probs).reshape(b * c, d)
    m2 = np.ascontiguousarray(m.reshape(b * c, d))
    out = np.empty(b * c)
    bad = np.zeros(b * c, dtype=np.bool_)
    if b * c:
        from .cpu import exact  # Numba kernels: imported on first use

        rule = exact.rules(smooth)
        metric_id = exact.DICE if key == "dice" else exact.IOU
        exact.expected_rows(p2, m2, metric_id, smooth, rule, out, bad)
    if bad.any():
        raise_bad_values(p2)
    return out.reshape(b, c)
