"""Toy images for the framework examples: a scene you can learn, truth drawn from it.

Nothing is downloaded.  ``rankseg_np.data.synthetic_batch`` makes calibrated
class probabilities and a ground truth drawn from them; here each scene is
also *rendered* as a 3-channel image (every class has a colour, pixels are the
probability-weighted mix of colours, plus noise).  A small network trained on
(image, truth) pairs therefore learns to output probabilities close to the
scene's, i.e. a reasonably calibrated model, in a few seconds on a CPU.

The examples import this file from their own folder (``python examples/x.py``
puts ``examples/`` on ``sys.path``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rankseg_np.data import synthetic_batch


class ToyData(NamedTuple):
    images: np.ndarray  # (N, 3, H, W) float32, roughly in [0, 1]
    truth: np.ndarray  # (N, H, W) int64 labels drawn from ``probs``
    probs: np.ndarray  # (N, C, H, W) float32: the scene's true class probabilities


def toy_data(n: int, num_class: int = 4, size: int = 64, scenario: str = "small", seed: int = 0) -> ToyData:
    """``n`` rendered scenes of ``size x size`` pixels with ``num_class`` classes (class 0 = background)."""
    probs, truth = synthetic_batch(
        batch=n, num_class=num_class, shape=(size, size), scenario=scenario, output_mode="multiclass", seed=seed
    )
    # Fixed palette (same for every seed so train and test images agree): background
    # black, the other classes at affinely independent corners of the colour cube,
    # so the colour of a pixel determines its class probabilities.
    palette = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    if num_class > len(palette):
        extra = np.random.default_rng(12345).random((num_class - len(palette), 3), dtype=np.float32)
        palette = np.concatenate([palette, extra])
    images = np.einsum("bchw,ck->bkhw", probs, palette[:num_class])
    noise = np.random.default_rng(seed + 1).normal(0.0, 0.05, size=images.shape).astype(np.float32)
    return ToyData(np.ascontiguousarray(images + noise, dtype=np.float32), truth, probs)


def mean_dice(labels: np.ndarray, truth: np.ndarray, num_class: int) -> float:
    """Mean over images of the mean Dice over foreground classes present in the truth or the prediction."""
    from rankseg_np.metrics import dice_score, one_hot

    scores = dice_score(one_hot(labels, num_class), one_hot(truth, num_class))[:, 1:]
    present = one_hot(labels, num_class)[:, 1:].any(axis=(2, 3)) | one_hot(truth, num_class)[:, 1:].any(axis=(2, 3))
    per_image = np.where(present, scores, np.nan)
    return float(np.nanmean(np.nanmean(per_image, axis=1)))
