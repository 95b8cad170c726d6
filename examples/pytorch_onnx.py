"""PyTorch model -> ONNX -> ONNX Runtime -> RankSEG.

A deployment pipeline without PyTorch at inference time: a small PyTorch
segmentation network (trained for a few seconds on toy scenes, see
``toy_data.py``; no weights are downloaded) is exported to ONNX, run with
ONNX Runtime, and its softmax probabilities go through ``RankSEG`` instead of
``argmax``.  The post-processing is three lines::

    logits = session.run(None, {"image": images})[0]         # (B, C, H, W)
    probs = scipy.special.softmax(logits, axis=1)               # class axis
    labels = RankSEG(metric="dice").predict(probs)              # replaces logits.argmax(1)

Run: ``python examples/pytorch_onnx.py`` (needs torch, onnx, onnxruntime).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings

import numpy as np
import scipy.special

from rankseg_np import RankSEG

try:  # run as a script: examples/ is on sys.path
    from toy_data import mean_dice, toy_data
except ImportError:  # pragma: no cover - imported as examples.pytorch_onnx
    from .toy_data import mean_dice, toy_data


def build_model(num_class: int):
    """A tiny fully convolutional network: 3 colour channels in, ``num_class`` logits out."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, num_class, 1),
    )


def train(model, images: np.ndarray, truth: np.ndarray, steps: int, seed: int = 0):
    """A few Adam steps of cross-entropy: enough for sensible probabilities on toy scenes."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(images)
    y = torch.from_numpy(truth)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def export_onnx(model, path: str, num_channels: int = 3) -> None:
    """Export with dynamic batch and image size (the TorchScript exporter: no extra dependency)."""
    import torch

    dummy = torch.zeros(1, num_channels, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch announces its newer exporter; the classic one is what we want
        torch.onnx.export(
            model,
            (dummy,),
            path,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
            dynamo=False,
        )


def main(
    train_images: int = 16, test_images: int = 8, size: int = 64, num_class: int = 4, steps: int = 150, seed: int = 0,
    scenario: str = "small",
) -> dict:
    """Train, export, run with ONNX Runtime, post-process with argmax and RankSEG; return what happened."""
    import onnx
    import onnxruntime as ort
    import torch

    torch.manual_seed(seed)
    model = build_model(num_class)
    train_set = toy_data(train_images, num_class, size, scenario, seed=seed)
    loss = train(model, train_set.images, train_set.truth, steps, seed)
    test = toy_data(test_images, num_class, size, scenario, seed=seed + 1000)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "segmenter.onnx")
        export_onnx(model, path)
        onnx.checker.check_model(onnx.load(path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # deterministic and polite on shared machines
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        logits = session.run(None, {"image": test.images})[0]

    # --- the post-processing a user writes -------------------------------------------
    probs = scipy.special.softmax(logits, axis=1)  # float32 in, float32 out
    labels = RankSEG(metric="dice").predict(probs)  # (B, H, W) int64
    argmax = probs.argmax(axis=1)
    # ------------------------------------------------------------------------------------

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(test.images)).numpy()
    return {
        "train_loss": loss,
        "logits": logits,
        "torch_logits": torch_logits,
        "probs": probs,
        "labels": labels,
        "truth": test.truth,
        "dice_argmax": mean_dice(argmax, test.truth, num_class),
        "dice_rankseg": mean_dice(labels, test.truth, num_class),
        "changed_pixels": float((labels != argmax).mean()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--test-images", type=int, default=8)
    args = parser.parse_args()
    out = main(steps=args.steps, test_images=args.test_images)
    print(f"train loss {out['train_loss']:.3f}; ONNX Runtime vs PyTorch max |logit diff| "
          f"{np.abs(out['logits'] - out['torch_logits']).max():.2e}")
    print(f"mean foreground Dice  argmax {out['dice_argmax']:.4f}   RankSEG {out['dice_rankseg']:.4f}   "
          f"({100 * out['changed_pixels']:.2f}% of pixels relabelled)")
