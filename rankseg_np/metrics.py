"""Dice and IoU of hard masks against ground truth (per image and class).

Conventions follow MATH section 1: per-(image, class) scores with smoothing
``gamma``, and ``0/0 := 0`` (only possible when ``gamma = 0`` and both masks
are empty).  Averaging over images and classes is left to the caller.
"""

from __future__ import annotations

import numpy as np

from .expected import expected_metric  # noqa: F401  (exact expected Dice/IoU of any masks)


def one_hot(labels: np.ndarray, num_class: int) -> np.ndarray:
    """Label map ``(B, *spatial)`` -> boolean masks ``(B, C, *spatial)`` (values outside [0, C) map to no class)."""
    labels = np.asarray(labels)
    classes = np.arange(num_class).reshape((1, num_class) + (1,) * (labels.ndim - 1))
    return labels[:, None] == classes


def _counts(pred: np.ndarray, truth: np.ndarray):
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have the same shape; got {pred.shape} and {truth.shape}")
    if pred.ndim < 3:
        raise ValueError(f"masks must have shape (B, C, *spatial); got {pred.shape}")
    axes = tuple(range(2, pred.ndim))
    inter = np.logical_and(pred, truth).sum(axis=axes, dtype=np.float64)
    return inter, pred.sum(axis=axes, dtype=np.float64), truth.sum(axis=axes, dtype=np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def dice_score(pred: np.ndarray, truth: np.ndarray, smooth: float = 0.0) -> np.ndarray:
    """Dice ``(2|P&T| + g) / (|P| + |T| + g)`` per (image, class); masks ``(B, C, *spatial)``.

    Examples
    --------
    >>> import numpy as np
    >>> pred = np.array([[[1, 1, 0, 0]]], dtype=bool)
    >>> truth = np.array([[[1, 0, 0, 0]]], dtype=bool)
    >>> dice_score(pred, truth)
    array([[0.66666667]])
    """
    inter, p, t = _counts(pred, truth)
    return _ratio(2.0 * inter + smooth, p + t + smooth)


def iou_score(pred: np.ndarray, truth: np.ndarray, smooth: float = 0.0) -> np.ndarray:
    """IoU ``(|P&T| + g) / (|P or T| + g)`` per (image, class); masks ``(B, C, *spatial)``.

    Examples
    --------
    >>> import numpy as np
    >>> pred = np.array([[[1, 1, 0, 0]]], dtype=bool)
    >>> truth = np.array([[[1, 0, 0, 0]]], dtype=bool)
    >>> iou_score(pred, truth)
    array([[0.5]])
    """
    inter, p, t = _counts(pred, truth)
    return _ratio(inter + smooth, p + t - inter + smooth)
