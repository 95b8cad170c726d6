"""Hugging Face ``transformers`` SegFormer -> upsampled probabilities -> RankSEG.

SegFormer predicts logits at 1/4 of the input resolution.  The usual recipe is
upsample the logits to the image size, then take the class with the largest
score; with RankSEG the last step becomes::

    logits = model(pixel_values=images).logits                           # (B, C, H/4, W/4)
    logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    probs = logits.softmax(dim=1)                                          # class axis
    labels = RankSEG(metric="dice").predict(probs)                        # replaces logits.argmax(1)

``predict`` takes the torch tensor as it is and returns a torch tensor (int64
labels, same device); ``probs.numpy()`` works too and returns NumPy.

The model here is built from a tiny ``SegformerConfig`` and trained for a few
seconds on toy scenes (``toy_data.py``): no weights are downloaded.  With a
pretrained checkpoint, ``SegformerForSemanticSegmentation.from_pretrained(...)``
replaces ``build_model`` and nothing else changes.

Run: ``python examples/segformer.py`` (needs torch and transformers).
"""

from __future__ import annotations

import argparse

from rankseg_np import RankSEG

try:  # run as a script: examples/ is on sys.path
    from toy_data import mean_dice, toy_data
except ImportError:  # pragma: no cover - imported as examples.segformer
    from .toy_data import mean_dice, toy_data


def build_model(num_class: int, seed: int = 0):
    """A two-stage SegFormer with a few thousand parameters, randomly initialised."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
        num_labels=num_class,
    )
    torch.manual_seed(seed)
    return SegformerForSemanticSegmentation(config)


def probabilities(model, images):
    """Logits at 1/4 resolution -> bilinear upsampling to the image size -> softmax over classes."""
    import torch

    logits = model(pixel_values=images).logits
    logits = torch.nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)


def main(
    train_images: int = 16, test_images: int = 8, size: int = 64, num_class: int = 4, steps: int = 80, seed: int = 0,
    scenario: str = "mixed",
) -> dict:
    """Train briefly, predict with argmax and with RankSEG; return what happened."""
    import torch

    model = build_model(num_class, seed)
    train_set = toy_data(train_images, num_class, size, scenario, seed=seed)
    x, y = torch.from_numpy(train_set.images), torch.from_numpy(train_set.truth)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = -torch.log(probabilities(model, x).clamp_min(1e-8)).gather(1, y[:, None]).mean()
        loss.backward()
        opt.step()
    model.eval()

    test = toy_data(test_images, num_class, size, scenario, seed=seed + 1000)
    with torch.no_grad():
        probs = probabilities(model, torch.from_numpy(test.images))
    # --- the post-processing a user writes -------------------------------------------
    labels = RankSEG(metric="dice").predict(probs)  # torch.int64 (B, H, W)
    argmax = probs.argmax(dim=1)
    # ------------------------------------------------------------------------------------
    labels, argmax = labels.numpy(), argmax.numpy()
    return {
        "train_loss": float(loss.detach()),
        "probs": probs.numpy(),
        "labels": labels,
        "truth": test.truth,
        "dice_argmax": mean_dice(argmax, test.truth, num_class),
        "dice_rankseg": mean_dice(labels, test.truth, num_class),
        "changed_pixels": float((labels != argmax).mean()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--test-images", type=int, default=8)
    args = parser.parse_args()
    out = main(steps=args.steps, test_images=args.test_images)
    print(f"train loss {out['train_loss']:.3f}")
    print(f"mean foreground Dice  argmax {out['dice_argmax']:.4f}   RankSEG {out['dice_rankseg']:.4f}   "
          f"({100 * out['changed_pixels']:.2f}% of pixels relabelled)")
