"""The MONAI post-transforms: a drop-in for ``AsDiscrete(argmax=True)`` in a real MONAI loop.

A tiny MONAI ``UNet`` (random weights, fixed seed) runs through
``sliding_window_inference`` -> ``decollate_batch`` -> ``RankSEGd`` ->
``DiceMetric``.  The labels are checked against ``rankseg_np.rankseg`` on the
same probabilities with the batch axis added back, and types, shapes and meta
data (the affine) against what the input carried.  Skipped without MONAI.
"""

from __future__ import annotations

import numpy as np
import pytest

monai = pytest.importorskip("monai")
torch = pytest.importorskip("torch")

from monai.data import MetaTensor, decollate_batch, list_data_collate  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.metrics import DiceMetric  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402
from monai.transforms import AsDiscrete  # noqa: E402

import rankseg_np  # noqa: E402
from rankseg_np.integrations.monai import RankSEG, RankSEGd  # noqa: E402

NUM_CLASS = 3
# A rotation with translation: any affine survives only if meta is really carried over.
AFFINE = torch.tensor(
    [[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -4.0], [0.0, 0.0, 0.7, 3.0], [0.0, 0.0, 0.0, 1.0]],
    dtype=torch.float64,
)


def softmax_probs(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(3.0 * torch.randn(shape, generator=gen, dtype=torch.float64), dim=0).to(dtype)


def test_unet_sliding_window_decollate_rankseg_dicemetric():
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=NUM_CLASS, channels=(4, 8), strides=(2,), num_res_units=0
    ).eval()
    gen = torch.Generator().manual_seed(1)
    # Two cases with their own affines, batched the way a MONAI DataLoader does.
    affines = [AFFINE, AFFINE.clone()]
    affines[1][:3, 3] += torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    cases = [
        {
            "image": MetaTensor(torch.rand((1, 20, 18, 16), generator=gen), affine=affine),
            "label": torch.randint(0, NUM_CLASS, (1, 20, 18, 16), generator=gen),
        }
        for affine in affines
    ]
    batch = list_data_collate(cases)
    images, truth = batch["image"], batch["label"]

    with torch.no_grad():
        logits = sliding_window_inference(images, roi_size=(16, 16, 16), sw_batch_size=2, predictor=net)
    probs = torch.softmax(logits, dim=1)
    assert isinstance(probs, MetaTensor)

    post = RankSEGd(keys="pred", metric="dice")
    to_onehot = AsDiscrete(to_onehot=NUM_CLASS)
    dice = DiceMetric(include_background=True, reduction="mean")
    items = decollate_batch({"pred": probs, "label": truth})
    for i, item in enumerate(items):
        out = post(item)
        pred = out["pred"]
        assert isinstance(pred, MetaTensor)
        assert pred.shape == (1, 20, 18, 16) and pred.dtype == torch.float32
        assert torch.equal(pred.affine, affines[i])
        # The labels are rankseg's on the same probabilities, batch axis added back.
        expected = rankseg_np.rankseg(item["pred"].as_tensor()[None].numpy())[0]
        np.testing.assert_array_equal(pred.as_tensor()[0].numpy().astype(np.int64), expected)
        # The untouched key passes through as it was.
        assert out["label"] is item["label"]
        dice(y_pred=[to_onehot(pred)], y=[to_onehot(out["label"])])
    score = dice.aggregate().item()
    assert 0.0 <= score <= 1.0


def test_onehot_matches_labels_and_asdiscrete_layout():
    probs = softmax_probs((NUM_CLASS, 9, 7), seed=2)
    labels = RankSEG()(probs)
    onehot = RankSEG(to_onehot=True)(probs)
    assert type(onehot) is torch.Tensor and onehot.shape == (NUM_CLASS, 9, 7) and onehot.dtype == torch.float32
    # One-hot of our labels equals MONAI's own one-hot of them: the layout DiceMetric takes.
    torch.testing.assert_close(onehot, AsDiscrete(to_onehot=NUM_CLASS)(labels), rtol=0, atol=0)
    assert torch.equal(RankSEG(to_onehot=NUM_CLASS)(probs), onehot)
    assert torch.equal(onehot.sum(dim=0), torch.ones(9, 7))


def test_metatensor_meta_kept_input_untouched_and_numpy_in_numpy_out():
    data = softmax_probs((NUM_CLASS, 6, 5, 4), seed=3, dtype=torch.float16)
    meta = {"filename_or_obj": "case_001.nii.gz", "spacing": [2.0, 1.5, 0.7]}
    img = MetaTensor(data.clone(), affine=AFFINE, meta=meta)
    out = RankSEG(metric="iou", dtype=torch.uint8)(img)
    assert isinstance(out, MetaTensor) and out.dtype == torch.uint8 and out.shape == (1, 6, 5, 4)
    assert torch.equal(out.affine, AFFINE)
    assert out.meta["filename_or_obj"] == "case_001.nii.gz"
    assert out.meta["spacing"] == [2.0, 1.5, 0.7]
    assert torch.equal(img.as_tensor(), data)  # never modified
    np.testing.assert_array_equal(
        out.as_tensor()[0].numpy(), rankseg_np.rankseg(data[None].numpy(), metric="iou")[0]
    )
    as_numpy = RankSEG(metric="iou")(data.numpy())
    assert isinstance(as_numpy, np.ndarray) and as_numpy.shape == (1, 6, 5, 4)


def test_multilabel_masks_and_arguments_pass_through():
    probs = torch.sigmoid(4.0 * torch.randn((NUM_CLASS, 8, 8), generator=torch.Generator().manual_seed(4)))
    masks = RankSEG(output_mode="multilabel", solver="exact", pruning_prob=0.1)(probs)
    assert masks.shape == (NUM_CLASS, 8, 8)
    expected = rankseg_np.rankseg(
        probs[None].numpy(), output_mode="multilabel", solver="exact", pruning_prob=0.1
    )[0]
    np.testing.assert_array_equal(masks.numpy().astype(bool), expected)


def test_missing_keys_and_clear_errors():
    post = RankSEGd(keys=["pred", "other"], allow_missing_keys=True)
    out = post({"pred": softmax_probs((2, 4, 4))})
    assert out["pred"].shape == (1, 4, 4) and "other" not in out
    with pytest.raises(KeyError):
        RankSEGd(keys=["pred", "other"])({"pred": softmax_probs((2, 4, 4))})
    with pytest.raises(ValueError, match="channel-first"):
        RankSEG()(torch.rand(5))
    with pytest.raises(ValueError, match="to_onehot=4"):
        RankSEG(to_onehot=4)(softmax_probs((3, 4, 4)))
    with pytest.raises(ValueError, match="to_onehot applies"):
        RankSEG(output_mode="multilabel", to_onehot=True)
    with pytest.raises(ValueError, match="metric"):
        RankSEG(metric="hausdorff")(softmax_probs((2, 4, 4)))
