"""The public entry points: the functional :func:`rankseg` and the :class:`RankSEG` class."""

from __future__ import annotations

from typing import Any

from . import _dispatch
from ._layout import from_channels_first, normalize_channel_axis, to_channels_first
from ._validate import Config, check_options, check_probs_structure, for_classes


def rankseg(
    probs: Any,
    metric: str = "dice",
    smooth: float = 0.0,
    output_mode: str = "multiclass",
    solver: str | None = None,
    pruning_prob: float = 0.5,
    channel_axis: int = 1,
    **solver_params: Any,
) -> Any:
    r"""Turn probability maps into the masks that maximise the expected Dice or IoU.

    Parameters
    ----------
    probs : array, shape (B, C, \*spatial)
        Per-pixel class probabilities in [0, 1], float16/float32/float64, any
        number of spatial axes and any strides.  A NumPy array runs on the
        CPU; other array types are dispatched by type (see the README).
        Never modified.
    metric : {'dice', 'iou', 'acc', 'accuracy'}, default 'dice'
        The per-image metric to maximise (case-insensitive).
    smooth : float, default 0.0
        Smoothing ``gamma >= 0`` added to the metric's numerator and denominator.
    output_mode : {'multiclass', 'multilabel'}, default 'multiclass'
        ``'multiclass'``: one label per pixel, int64 array ``(B, *spatial)``.
        ``'multilabel'``: one boolean mask per class, ``(B, C, *spatial)``.
    solver : str or None, default None
        ``'RMA'`` (reciprocal moment approximation) or ``'exact'`` for Dice and
        IoU; ``'BA'``, ``'TRNA'``, ``'BA+TRNA'`` for Dice multilabel;
        ``'argmax'`` or ``'TR'`` (threshold at 1/2) for accuracy.  ``None``
        picks ``'RMA'`` for Dice/IoU, ``'argmax'`` (multiclass) or ``'TR'``
        (multilabel) for accuracy.  The README's support table (generated from
        ``rankseg_np._solvers``) says which solver runs where.
    pruning_prob : float in [0, 1], default 0.5
        A class whose largest probability in an image is ``<= pruning_prob``
        gets an empty mask and takes no part in multiclass resolution.
    channel_axis : int, default 1
        The axis of ``probs`` that holds the classes (scikit-image's name):
        ``-1`` for channels-last arrays such as Keras/TensorFlow ``(B, H, W, C)``.
        ``rankseg(y, channel_axis=-1)`` equals ``rankseg(np.moveaxis(y, -1, 1))``;
        multilabel masks come back in the layout of ``probs``.  In multiclass
        mode a ``probs`` whose class sums are not 1 but whose last axis sums
        to 1 raises ``ValueError`` (pass ``channel_axis=-1``); other class sums
        off 1 by more than 1e-2 give a ``UserWarning`` naming likely causes.
    **solver_params
        ``unassigned_policy`` ({'max_score', 'void'}) and ``void_index`` (int
        outside ``[0, C)``, only with ``'void'``) for RMA/exact multiclass;
        ``eps`` in (0, 1) for BA/TRNA; ``safe_screening`` is accepted for
        compatibility with ``rankseg`` and has no effect.

    Returns
    -------
    array
        Labels ``(B, *spatial)`` int64 (multiclass) or masks
        ``(B, C, *spatial)`` bool (multilabel; the class axis at
        ``channel_axis``), of the caller's array type.

    Raises
    ------
    TypeError
        ``probs`` is not an array or not floating point; an argument has the
        wrong type; an unknown solver parameter.
    ValueError
        Bad values (NaN, inf, outside [0, 1]), bad shapes, or an argument
        outside its allowed values.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np import rankseg
    >>> probs = np.array([[[0.9, 0.6, 0.4, 0.1]]])        # one image, one class, 4 pixels
    >>> rankseg(probs, output_mode="multilabel")             # the 0.4 pixel raises expected Dice
    array([[[ True,  True,  True, False]]])
    >>> (probs > 0.5).astype(int)                            # thresholding keeps two
    array([[[1, 1, 0, 0]]])
    """
    cfg = check_options(metric, smooth, output_mode, solver, pruning_prob, **solver_params)
    return _run(probs, cfg, channel_axis)


def _run(probs: Any, options: Config, channel_axis: Any) -> Any:
    native, solve, restore = _dispatch.prepare(probs)
    axis = 1
    if len(native.shape) >= 3:  # fewer axes: the shape error below says what is expected
        axis = normalize_channel_axis(channel_axis, len(native.shape))
        native = to_channels_first(native, axis)
    check_probs_structure(native, _dispatch.backend_of(probs))
    cfg = for_classes(options, int(native.shape[1]))
    out = solve(native, cfg)
    if cfg.output_mode == "multilabel":
        out = from_channels_first(out, axis)
    return restore(out)


class RankSEG:
    r"""Metric-optimal segmentation post-processing, as an object.

    ``RankSEG(...).predict(probs)`` is ``rankseg(probs, ...)``: the arguments
    have the same names and meanings (see :func:`rankseg`), which follow the
    PyTorch package ``rankseg`` so that switching is a change of import.
    Arguments are checked at construction; the few checks that need the number
    of classes (e.g. ``void_index`` outside ``[0, C)``) when :meth:`predict`
    sees the array.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np import RankSEG
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(2, 3, 8, 8))
    >>> probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    >>> labels = RankSEG(metric="dice").predict(probs)
    >>> labels.shape, labels.dtype
    ((2, 8, 8), dtype('int64'))
    """

    def __init__(
        self,
        metric: str = "dice",
        smooth: float = 0.0,
        output_mode: str = "multiclass",
        solver: str | None = None,
        pruning_prob: float = 0.5,
        channel_axis: int = 1,
        **solver_params: Any,
    ) -> None:
        check_options(metric, smooth, output_mode, solver, pruning_prob, **solver_params)  # fail early
        self.metric = metric
        self.smooth = smooth
        self.output_mode = output_mode
        self.solver = solver
        self.pruning_prob = pruning_prob
        self.channel_axis = channel_axis
        self.solver_params = dict(solver_params)

    def predict(self, probs: Any) -> Any:
        """Masks or labels for ``probs`` (classes on ``channel_axis``); see :func:`rankseg`."""
        options = check_options(
            self.metric, self.smooth, self.output_mode, self.solver, self.pruning_prob, **self.solver_params
        )
        return _run(probs, options, self.channel_axis)

    __call__ = predict

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.solver_params.items())
        return (
            f"RankSEG(metric={self.metric!r}, smooth={self.smooth!r}, output_mode={self.output_mode!r}, "
            f"solver={self.solver!r}, pruning_prob={self.pruning_prob!r}"
            + (f", channel_axis={self.channel_axis!r}" if self.channel_axis != 1 else "")
            + f"{params})"
        )
