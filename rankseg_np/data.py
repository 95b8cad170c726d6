"""Calibrated synthetic segmentation data, generated on the spot (nothing is downloaded).

A scene is a set of blurred blobs per class; class logits are the blob fields
plus smooth noise, probabilities are their softmax (multiclass) or sigmoid
(multilabel), and the ground truth is **drawn from those probabilities**,
pixel by pixel.  The model is therefore calibrated by construction, which is
the setting in which RankSEG's decisions are Bayes-optimal; the
``temperature`` argument miscalibrates it on purpose (``> 1`` under-confident,
``< 1`` over-confident truth draws relative to the reported probabilities).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.special import expit

SCENARIOS = {
    # name: (blob radius range in pixels, blobs per class, logit strength, noise)
    "small": ((1.5, 4.0), 6, 3.0, 1.5),
    "large": ((12.0, 30.0), 2, 4.0, 1.0),
    "mixed": ((1.5, 25.0), 4, 3.5, 1.2),
}


class SyntheticBatch(NamedTuple):
    probs: np.ndarray  # (B, C, *spatial) float32
    truth: np.ndarray  # multiclass: int64 labels (B, *spatial); multilabel: bool (B, C, *spatial)


def _blob_field(rng: np.random.Generator, shape: tuple[int, ...], n_blobs: int, radii: tuple[float, float]):
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(n_blobs):
        r = rng.uniform(*radii)
        dist2 = sum((g - rng.uniform(0, s)) ** 2 for g, s in zip(grids, shape))
        # A soft disk: ~1 inside radius r, falling to 0 over about one pixel
        # (plus the noise blur below), so small objects keep uncertain rims.
        field = np.maximum(field, expit(r - np.sqrt(dist2)).astype(np.float32))
    return field


def synthetic_batch(
    batch: int = 4,
    num_class: int = 3,
    shape: tuple[int, ...] = (128, 128),
    scenario: str = "mixed",
    output_mode: str = "multiclass",
    temperature: float = 1.0,
    seed: int = 0,
) -> SyntheticBatch:
    """A calibrated batch ``(probs, truth)``.

    Parameters
    ----------
    batch, num_class : int
        Images and classes (class 0 is background in multiclass mode).
    shape : tuple of int
        Spatial shape (any number of axes: 2-D images, 3-D volumes).
    scenario : {'small', 'large', 'mixed'}
        Object sizes (see ``SCENARIOS``).
    output_mode : {'multiclass', 'multilabel'}
        Softmax probabilities with categorical truth, or independent sigmoid
        probabilities with Bernoulli truth.
    temperature : float
        The truth is drawn from the probabilities at logit temperature
        ``temperature`` (1 = calibrated).
    seed : int
        Everything is a deterministic function of the arguments.

    Examples
    --------
    >>> probs, truth = synthetic_batch(batch=2, num_class=3, shape=(32, 32), seed=1)
    >>> probs.shape, probs.dtype, truth.shape
    ((2, 3, 32, 32), dtype('float32'), (2, 32, 32))
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(map(repr, SCENARIOS))}; got {scenario!r}")
    if output_mode not in ("multiclass", "multilabel"):
        raise ValueError(f"output_mode must be 'multiclass' or 'multilabel'; got {output_mode!r}")
    radii, n_blobs, strength, noise = SCENARIOS[scenario]
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    logits = np.empty((batch, num_class) + shape, dtype=np.float32)
    first = 1 if output_mode == "multiclass" else 0
    for b in range(batch):
        for c in range(num_class):
            smooth_noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
            smooth_noise *= noise / max(float(smooth_noise.std()), 1e-6)
            if c < first:  # background: a flat logit the objects must beat
                logits[b, c] = smooth_noise
            else:
                field = _blob_field(rng, shape, n_blobs, radii)
                logits[b, c] = strength * (2.0 * field - 1.0) + smooth_noise - (0.0 if first else 1.0)
    probs = _normalise(logits, output_mode)
    truth_probs = probs if temperature == 1.0 else _normalise(logits / temperature, output_mode)
    u = rng.random((batch,) + shape, dtype=np.float32) if output_mode == "multiclass" else None
    if output_mode == "multiclass":
        cdf = np.cumsum(truth_probs, axis=1)
        truth = (u[:, None] > cdf).sum(axis=1).astype(np.int64)
        truth = np.minimum(truth, num_class - 1)  # guard the float32 cdf ending just below 1
    else:
        truth = rng.random(probs.shape, dtype=np.float32) < truth_probs
    return SyntheticBatch(probs, truth)


def _normalise(logits: np.ndarray, output_mode: str) -> np.ndarray:
    if output_mode == "multilabel":
        return expit(logits).astype(np.float32)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
