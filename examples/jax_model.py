"""JAX model -> probabilities -> RankSEG.

A small convolutional network written in plain JAX (``jax.lax`` convolutions,
no Flax needed), trained for a few seconds on toy scenes (``toy_data.py``; no
weights are downloaded).  Its multilabel sigmoid outputs (one independent
foreground mask per class) are post-processed with RankSEG::

    probs = jax.nn.sigmoid(apply(params, images))                           # (B, C, H, W)
    masks = RankSEG(metric="dice", output_mode="multilabel").predict(probs)  # a JAX bool array

``predict`` returns the caller's array type; ``np.asarray(probs)`` (a
zero-copy view on the CPU) works too and returns NumPy.

Run: ``python examples/jax_model.py`` (needs jax).
"""

from __future__ import annotations

import argparse

import numpy as np

from rankseg_np import RankSEG
from rankseg_np.metrics import dice_score, one_hot

try:  # run as a script: examples/ is on sys.path
    from toy_data import toy_data
except ImportError:  # pragma: no cover - imported as examples.jax_model
    from .toy_data import toy_data


def init_params(key, num_class: int, width: int = 16):
    """He-initialised weights of three convolutions (3x3, 3x3, 1x1), layout OIHW."""
    import jax

    shapes = [(width, 3, 3, 3), (width, width, 3, 3), (num_class, width, 1, 1)]
    params = []
    for shape, k in zip(shapes, jax.random.split(key, len(shapes))):
        fan_in = shape[1] * shape[2] * shape[3]
        params.append((jax.random.normal(k, shape) * np.sqrt(2.0 / fan_in), jax.numpy.zeros(shape[0])))
    return params


def apply(params, images):
    """Logits ``(B, C, H, W)`` for images ``(B, 3, H, W)``."""
    import jax

    x = images
    for i, (w, b) in enumerate(params):
        x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        x = x + b[None, :, None, None]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def train(params, images, targets, steps: int, lr: float = 1e-2):
    """Adam on the per-class binary cross-entropy, written out (a few lines; no optax needed)."""
    import jax
    import jax.numpy as jnp

    def loss_fn(p):
        logits = apply(p, images)
        return jnp.mean(jnp.logaddexp(0.0, logits) - targets * logits)  # BCE with logits

    @jax.jit
    def step(p, m, v, t):
        loss, g = jax.value_and_grad(loss_fn)(p)
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        scale = lr * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        p = jax.tree_util.tree_map(lambda a, mm, vv: a - scale * mm / (jnp.sqrt(vv) + 1e-8), p, m, v)
        return p, m, v, loss

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    m, v, loss = zeros, zeros, jnp.nan
    for t in range(1, steps + 1):
        params, m, v, loss = step(params, m, v, t)
    return params, float(loss)


def main(
    train_images: int = 16, test_images: int = 8, size: int = 64, num_class: int = 4, steps: int = 150, seed: int = 0,
    scenario: str = "small",
) -> dict:
    """Train briefly; threshold at 1/2 versus RankSEG multilabel masks; return what happened."""
    import jax
    import jax.numpy as jnp

    train_set = toy_data(train_images, num_class, size, scenario, seed=seed)
    # Multilabel targets: one binary mask per foreground class (class 0, background, is dropped).
    targets = one_hot(train_set.truth, num_class)[:, 1:].astype(np.float32)
    params = init_params(jax.random.PRNGKey(seed), num_class - 1)
    params, loss = train(params, jnp.asarray(train_set.images), jnp.asarray(targets), steps)

    test = toy_data(test_images, num_class, size, scenario, seed=seed + 1000)
    probs = jax.nn.sigmoid(apply(params, jnp.asarray(test.images)))  # (B, C-1, H, W)
    # --- the post-processing a user writes -------------------------------------------
    masks = RankSEG(metric="dice", output_mode="multilabel").predict(probs)  # jax.Array, bool
    threshold = probs > 0.5
    # ------------------------------------------------------------------------------------
    masks, threshold = np.asarray(masks), np.asarray(threshold)
    truth = one_hot(test.truth, num_class)[:, 1:]
    return {
        "train_loss": loss,
        "probs": np.asarray(probs),
        "masks": masks,
        "truth": truth,
        "dice_threshold": float(dice_score(threshold, truth).mean()),
        "dice_rankseg": float(dice_score(masks, truth).mean()),
        "changed_pixels": float((masks != threshold).mean()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--test-images", type=int, default=8)
    args = parser.parse_args()
    out = main(steps=args.steps, test_images=args.test_images)
    print(f"train loss {out['train_loss']:.3f}")
    print(f"mean Dice per (image, class)  threshold 0.5 {out['dice_threshold']:.4f}   "
          f"RankSEG {out['dice_rankseg']:.4f}   ({100 * out['changed_pixels']:.2f}% of mask pixels changed)")
