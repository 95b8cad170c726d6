r"""MONAI post-transforms: RankSEG in place of ``AsDiscrete(argmax=True)``.

MONAI post-processing sees one image at a time after ``decollate_batch``: a
channel-first ``(C, *spatial)`` tensor or ``MetaTensor`` of class
probabilities, without a batch axis.  :class:`RankSEG` turns it into the
labels that maximise the expected Dice (or IoU) of that image, in the layout
``AsDiscrete`` produces, so the rest of the pipeline (``DiceMetric``,
``SaveImage``, inverse transforms) is unchanged:

==========================================  ==========================  ==================================
transform                                   output                      replaces
==========================================  ==========================  ==================================
``RankSEG()``                               labels ``(1, *spatial)``    ``AsDiscrete(argmax=True)``
``RankSEG(to_onehot=True)``                 one-hot ``(C, *spatial)``   ``AsDiscrete(argmax=True,
                                                                        to_onehot=C)``
``RankSEG(output_mode="multilabel")``       masks ``(C, *spatial)``     ``AsDiscrete(threshold=0.5)``
==========================================  ==========================  ==================================

The output has the input's type (``MetaTensor`` with the input's meta data,
affine included; ``torch.Tensor``; ``numpy.ndarray``) and, as with
``AsDiscrete``, dtype ``float32`` unless ``dtype=`` says otherwise.
:class:`RankSEGd` is the dictionary version (``keys=``, ``allow_missing_keys``).

Needs ``monai`` and ``torch`` (``pip install rankseg-np[monai]``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from .._api import rankseg
from .._validate import check_options

__all__ = ["RankSEG", "RankSEGd"]


class RankSEG(Transform):
    r"""Metric-optimal labels for one channel-first image of class probabilities.

    Parameters
    ----------
    metric, smooth, output_mode, solver, pruning_prob, \*\*solver_params
        As in :func:`rankseg_np.rankseg`, and passed to it unchanged.
    to_onehot : bool or int, default False
        Multiclass only: return one-hot ``(C, *spatial)`` instead of labels
        ``(1, *spatial)``.  An int (MONAI's spelling, ``to_onehot=C``) must
        equal the number of channels of the input.
    dtype : torch.dtype, default torch.float32
        Output dtype, ``float32`` as ``AsDiscrete`` gives by default.

    Examples
    --------
    >>> import torch
    >>> from rankseg_np.integrations.monai import RankSEG
    >>> probs = torch.tensor([[[0.6, 0.8, 0.9]], [[0.4, 0.2, 0.1]]])   # (C=2, 1, 3)
    >>> RankSEG()(probs)
    tensor([[[0., 0., 0.]]])
    >>> RankSEG(to_onehot=True)(probs).shape
    torch.Size([2, 1, 3])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        metric: str = "dice",
        smooth: float = 0.0,
        output_mode: str = "multiclass",
        solver: str | None = None,
        pruning_prob: float = 0.5,
        to_onehot: bool | int = False,
        dtype: torch.dtype = torch.float32,
        **solver_params: Any,
    ) -> None:
        if not isinstance(to_onehot, (bool, int)):
            raise TypeError(f"to_onehot must be a bool or an int (the number of classes); got {to_onehot!r}")
        # Every rankseg argument is checked now, as rankseg_np.RankSEG does, not at the first image.
        options = check_options(metric, smooth, output_mode, solver, pruning_prob, **solver_params)
        if to_onehot is not False and options.output_mode != "multiclass":
            raise ValueError(
                "to_onehot applies to output_mode='multiclass' only; multilabel output is already "
                f"one mask per class (got output_mode={output_mode!r})"
            )
        self.metric = metric
        self.smooth = smooth
        self.output_mode = output_mode
        self.solver = solver
        self.pruning_prob = pruning_prob
        self.to_onehot = to_onehot
        self.dtype = dtype
        self.solver_params = dict(solver_params)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Labels ``(1, *spatial)``, one-hot or masks ``(C, *spatial)`` for ``img`` ``(C, *spatial)``."""
        # A plain tensor view of the data: rankseg reads it through DLPack without copying.
        probs = convert_to_tensor(img, track_meta=False)
        if probs.ndim < 2:
            raise ValueError(
                "img must be channel-first (C, *spatial) with at least one spatial axis and no batch "
                f"axis (as after decollate_batch); got shape {tuple(probs.shape)}"
            )
        num_class = int(probs.shape[0])
        if (
            self.to_onehot is not True
            and self.to_onehot is not False
            and self.to_onehot != num_class
        ):
            raise ValueError(
                f"to_onehot={self.to_onehot} does not match the {num_class} channels of img; "
                "pass to_onehot=True to one-hot over all channels"
            )
        out = rankseg(
            probs[None],
            metric=self.metric,
            smooth=self.smooth,
            output_mode=self.output_mode,
            solver=self.solver,
            pruning_prob=self.pruning_prob,
            **self.solver_params,
        )[0]
        if out.ndim == probs.ndim:  # multilabel: (C, *spatial) masks
            result = out
        elif self.to_onehot is not False:
            # Classes along axis 0, as DiceMetric expects; labels outside [0, C)
            # (unassigned_policy='void') get no channel.
            classes = torch.arange(num_class, device=out.device).view(-1, *([1] * out.ndim))
            result = out[None] == classes
        else:
            result = out[None]  # (1, *spatial) labels
        converted, *_ = convert_to_dst_type(result, img, dtype=self.dtype)
        return converted


class RankSEGd(MapTransform):
    r"""Dictionary version of :class:`RankSEG`, in place of ``AsDiscreted(keys, argmax=True)``.

    Parameters
    ----------
    keys : str or sequence of str
        The entries to transform (MONAI's ``KeysCollection``).
    allow_missing_keys : bool, default False
        Skip keys absent from the dictionary instead of raising ``KeyError``.
    metric, smooth, output_mode, solver, pruning_prob, to_onehot, dtype, \*\*solver_params
        As in :class:`RankSEG`, applied to every key.

    Examples
    --------
    >>> import torch
    >>> from rankseg_np.integrations.monai import RankSEGd
    >>> data = {"pred": torch.tensor([[[0.6, 0.8, 0.9]], [[0.4, 0.2, 0.1]]]), "label": None}
    >>> RankSEGd(keys="pred")(data)["pred"].shape
    torch.Size([1, 1, 3])
    """

    backend = RankSEG.backend

    def __init__(
        self,
        keys: KeysCollection,
        metric: str = "dice",
        smooth: float = 0.0,
        output_mode: str = "multiclass",
        solver: str | None = None,
        pruning_prob: float = 0.5,
        to_onehot: bool | int = False,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
        **solver_params: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RankSEG(
            metric=metric,
            smooth=smooth,
            output_mode=output_mode,
            solver=solver,
            pruning_prob=pruning_prob,
            to_onehot=to_onehot,
            dtype=dtype,
            **solver_params,
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
