r"""Check and fix the calibration of a segmentation model on labelled data.

RankSEG's masks are the Bayes decision for the expected Dice/IoU **when the
probabilities are calibrated** (``docs/MATH.md`` section 1): a pixel reported
at 0.7 must be foreground 70 % of the time.  This module measures that
(:func:`expected_calibration_error`, :func:`reliability_diagram`) and fixes
the most common failure, a model that is uniformly over- or under-confident,
with :class:`TemperatureScaling` (Guo et al., ICML 2017): logits divided by
one fitted temperature ``T`` (or one per class).

Recipe (fit on a held-out validation split, apply to new images)::

    ts = TemperatureScaling().fit(val_logits, val_labels)
    probs = ts.transform(test_logits)
    masks = rankseg(probs)

Every function takes any array type :func:`rankseg_np.rankseg` takes (NumPy,
CuPy, PyTorch, JAX, TensorFlow, DLPack arrays, Dask); Dask arrays are
streamed chunk by chunk, never loaded whole.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import _labelled as L

__all__ = ["TemperatureScaling", "NotFittedError", "expected_calibration_error", "reliability_diagram"]

INPUTS = ("logits", "probabilities")


class NotFittedError(ValueError, AttributeError):
    """``transform`` (or a fitted attribute) used before ``fit``; a ValueError, as in scikit-learn."""


# --------------------------------------------------------------------------- #
# Scores -> float64 logits, block by block
# --------------------------------------------------------------------------- #

def _clip_bounds(dtype: Any) -> tuple[float, float]:
    """Where exact 0 and 1 are moved before taking logs: the nearest values the input dtype holds.

    ``tiny`` (the smallest positive normal) and ``1 - epsneg`` (the largest
    value below 1) are the most extreme probabilities the input states at full
    precision, so only exact 0 and 1 (a saturated softmax/sigmoid) and the
    rare subnormals change; any other value keeps its exact logit.  float32: logits in about
    [-87.3, 16.6] for a sigmoid, log-probabilities >= -87.3 for a softmax.
    """
    info = np.finfo(np.dtype(str(dtype)))
    return float(info.tiny), 1.0 - float(info.epsneg)


def _logits64(s: Any, inputs: str, output_mode: str) -> Any:
    """Float64 logits of a block: the scores, or log p (multiclass) / logit p (multilabel).

    For multiclass, ``softmax(w * log p) = p**w / sum_c p_c**w``: the same
    probabilities a temperature ``1/w`` gives on the original logits, whatever
    constant the softmax removed.
    """
    xp = L.xp_of(s)
    z = s.astype(xp.float64)
    if inputs == "logits":
        return z
    lo, hi = _clip_bounds(s.dtype)
    if output_mode == "multiclass":
        return xp.log(xp.maximum(z, lo))
    z = xp.clip(z, lo, hi)
    return xp.log(z) - xp.log1p(-z)


def _check_block(s: Any, y: Any, inputs: str, data: L.Spec, check: bool) -> Any:
    if check:
        L.scores_values(s, "scores", inputs == "probabilities")
    xp = L.xp_of(y)
    if check:
        return L.valid_labels(y, s.shape[1], data.output_mode, data.ignore_index)
    return xp.ones(y.shape, dtype=bool) if data.ignore_index is None else y != data.ignore_index


def _nll_stats(s, y, w, inputs, data, check, hessian):
    """Per-block sums of the NLL at inverse temperature ``w`` (shape (C,)), its gradient and curvature.

    Returns ``(n, f, g, h)``: labelled pixels, NLL, and per class ``c`` the
    derivatives with respect to ``w_c``.  Multiclass (``s_c = w_c z_c``,
    ``p = softmax(s)``): ``f = sum logsumexp(s) - s_y``,
    ``g_c = sum (p_c - [y = c]) z_c``, ``h = sum Var_p(z)`` (the second
    derivative along ``w_c = w`` for all c; not computed per class).
    Multilabel, per class: ``f_c = sum softplus(s) - y s``,
    ``g_c = sum (sigmoid(s) - y) z``, ``h_c = sum sigmoid(s)(1 - sigmoid(s)) z^2``.
    """
    xp = L.xp_of(s)
    valid = _check_block(s, y, inputs, data, check)
    z = _logits64(s, inputs, data.output_mode)
    v = valid.astype(xp.float64)
    wz = z * xp.asarray(w, dtype=xp.float64)[:, None]
    if data.output_mode == "multilabel":
        t = y.astype(xp.float64)
        sig = xp.exp(-xp.logaddexp(0.0, -wz))
        n = v.sum(axis=(0, 2))
        f = ((xp.logaddexp(0.0, wz) - t * wz) * v).sum(axis=(0, 2))
        g = ((sig - t) * z * v).sum(axis=(0, 2))
        h = (sig * (1.0 - sig) * z * z * v).sum(axis=(0, 2)) if hessian else xp.zeros_like(g)
        return n, f, g, h
    top = wz.max(axis=1, keepdims=True)
    e = xp.exp(wz - top)
    total = e.sum(axis=1, keepdims=True)
    p = e / total
    yi = xp.where(valid, y, 0).astype(xp.int64)[:, None]
    wz_y = xp.take_along_axis(wz, yi, axis=1)[:, 0]
    f = ((top[:, 0] + xp.log(total[:, 0]) - wz_y) * v).sum()
    classes = xp.arange(z.shape[1]).reshape(1, -1, 1)
    g = ((p - (yi == classes)) * z * v[:, None]).sum(axis=(0, 2))
    if hessian:
        mean = (p * z).sum(axis=1, keepdims=True)
        h = ((p * (z - mean) ** 2).sum(axis=1) * v).sum()
    else:
        h = xp.zeros(())
    return v.sum(), f, g, h


def _solve_convex(grad_hess, k: int, lo: float, hi: float, rtol: float, max_passes: int):
    """Minimise ``k`` independent convex functions of one variable on ``[lo, hi]``.

    ``grad_hess(w)`` (one pass over the data) returns the derivatives
    ``(g, h)`` at ``w`` (shape (k,)).  Safeguarded Newton: a bracket
    ``[a, b]`` of the minimiser shrinks at every pass (``g > 0``: it lies
    left of ``w``); a Newton step (limited to a factor 4 in ``w``) outside
    the bracket is replaced by the unevaluated bound itself or by the
    geometric midpoint.  It stops when the Newton step is below ``rtol * w``
    (then takes that step: quadratic convergence leaves a relative error of
    order ``rtol**2``), or at a bound whose derivative points outward.
    Returns ``(w, passes, at_bound)``.
    """
    w = np.full(k, min(max(1.0, lo), hi))
    a, b = np.full(k, lo), np.full(k, hi)
    a_seen, b_seen = np.zeros(k, bool), np.zeros(k, bool)
    done, at_bound = np.zeros(k, bool), np.zeros(k, bool)
    for passes in range(1, max_passes + 1):
        g, h = grad_hess(w)
        live = ~done
        right = live & (g > 0)
        b, b_seen = np.where(right, w, b), b_seen | right
        left = live & (g <= 0)
        a, a_seen = np.where(left, w, a), a_seen | left
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(h > 0, g / np.where(h > 0, h, 1.0), 0.0)  # h = 0 forces g = 0: nothing to fit
        # Far from the optimum a Newton step can overshoot (even below 0): move at most 4x per pass.
        newton = np.clip(w - step, w / 4.0, 4.0 * w)
        stuck = ((w <= lo) & (g >= 0)) | ((w >= hi) & (g <= 0))
        small = np.abs(step) <= rtol * w
        proposal = np.where(
            (newton > a) & (newton < b), newton,
            np.where((newton >= b) & ~b_seen, hi,
                     np.where((newton <= a) & ~a_seen, lo, np.sqrt(a * b))))
        finish = live & (small | stuck)
        at_bound |= live & stuck & ~small
        w = np.where(finish, np.clip(np.where(small, w - step, w), lo, hi), np.where(live, proposal, w))
        done |= finish
        if done.all():
            return w, passes, at_bound
    return w, max_passes, at_bound


class TemperatureScaling:
    r"""Temperature scaling of logits, fitted by maximum likelihood on labelled data.

    Calibrated probabilities are ``softmax(z / T)`` over the class axis
    (multiclass) or ``sigmoid(z / T)`` per class (multilabel), with ``T > 1``
    softening an over-confident model and ``T < 1`` sharpening an
    under-confident one.  ``fit`` minimises the mean negative log-likelihood
    of the labels over ``w = 1/T``, where it is convex, in float64.

    Parameters
    ----------
    output_mode : {'multiclass', 'multilabel'}, default 'multiclass'
        How the model's scores become probabilities: softmax over axis 1,
        labels ``(B, *spatial)`` int; or a sigmoid per class, labels
        ``(B, C, *spatial)`` bool or 0/1.  As in :func:`rankseg_np.rankseg`.
    per_class : bool, default False
        One temperature per class (``temperature_`` has shape ``(C,)``)
        instead of one for all.  Multilabel classes are fitted independently
        (each is its own binary problem).
    inputs : {'logits', 'probabilities'}, default 'logits'
        What the scores are.  Probabilities (models exported with a final
        softmax/sigmoid) are turned into logits first: ``log p`` for
        multiclass (a softmax of ``log p / T`` is ``p**(1/T)`` renormalised),
        ``log(p / (1 - p))`` for multilabel; values are first clipped to
        ``[tiny, 1 - epsneg]`` of the input dtype (its smallest normal number
        and largest number below 1: logits within about [-87, 17] for
        float32), which moves only exact 0 and 1 (a saturated softmax or
        sigmoid) and subnormals, so the NLL stays finite.  Named ``inputs`` because it describes what ``fit`` and
        ``transform`` receive, not what they return.
    ignore_index : int or None, default None
        Label value of unlabelled pixels (e.g. 255), left out of the fit.
    bounds : (float, float), default (0.01, 100.0)
        Range of temperatures searched.  An optimum at a bound (for example
        labels that the scores separate perfectly, for which the likelihood
        grows without limit as ``T -> 0``) gives a ``RuntimeWarning``.

    Attributes
    ----------
    temperature_ : float or ndarray of shape (C,)
        The fitted temperature(s).
    n_classes_ : int
        ``C``, the number of channels seen in ``fit``.
    n_pixels_ : int
        Labelled pixels used (times the classes, for multilabel).
    nll_ : float
        Mean negative log-likelihood per labelled pixel (per pixel and class,
        for multilabel) at ``temperature_``; ``nll_initial_`` at ``T = 1``.
    n_passes_ : int
        Passes over the data ``fit`` made; each reads every block once (one
        ``dask.compute`` for Dask input): one at ``T = 1``, the solver's, and
        one for ``nll_``.  4 to 9 in all for temperatures between 0.03 and
        20 with one temperature or multilabel per-class temperatures
        (safeguarded Newton on the derivative); about 15 for multiclass
        per-class temperatures (L-BFGS-B, gradient only).

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np.calibration import TemperatureScaling
    >>> rng = np.random.default_rng(0)
    >>> true_logits = rng.normal(scale=3.0, size=(8, 3, 32, 32))
    >>> p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    >>> labels = (rng.random((8, 1, 32, 32)) > p.cumsum(axis=1)).sum(axis=1)  # drawn from p
    >>> ts = TemperatureScaling().fit(true_logits / 2.5, labels)          # an under-confident model
    >>> round(ts.temperature_, 1)
    0.4
    >>> ts.transform(true_logits / 2.5).shape
    (8, 3, 32, 32)
    """

    def __init__(
        self,
        output_mode: str = "multiclass",
        per_class: bool = False,
        inputs: str = "logits",
        ignore_index: int | None = None,
        bounds: tuple[float, float] = (0.01, 100.0),
    ) -> None:
        self.output_mode = output_mode
        self.per_class = per_class
        self.inputs = inputs
        self.ignore_index = ignore_index
        self.bounds = bounds

    # scikit-learn's parameter protocol (so that clone / GridSearchCV-style tools can use it)
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments, as a dict."""
        return {k: getattr(self, k) for k in ("output_mode", "per_class", "inputs", "ignore_index", "bounds")}

    def set_params(self, **params: Any) -> "TemperatureScaling":
        """Set constructor arguments; returns ``self``."""
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for TemperatureScaling; valid: {', '.join(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = TemperatureScaling().get_params()
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k])
        return f"TemperatureScaling({args})"

    def _checked(self) -> tuple[str, str, float, float]:
        mode = L.choice("output_mode", self.output_mode, L.OUTPUT_MODES)
        inputs = L.choice("inputs", self.inputs, INPUTS)
        if not isinstance(self.per_class, (bool, np.bool_)):
            raise TypeError(f"per_class must be True or False; got {type(self.per_class).__name__}")
        try:
            t_lo, t_hi = (float(v) for v in self.bounds)
        except (TypeError, ValueError):
            raise TypeError(f"bounds must be two positive numbers (T_min, T_max); got {self.bounds!r}") from None
        if not (0.0 < t_lo < t_hi < np.inf):
            raise ValueError(f"bounds must satisfy 0 < T_min < T_max < inf; got {self.bounds!r}")
        return mode, inputs, t_lo, t_hi

    def fit(self, scores: Any, labels: Any) -> "TemperatureScaling":
        r"""Fit the temperature(s) to ``scores`` and their ground truth ``labels``.

        Parameters
        ----------
        scores : array, shape (B, C, \*spatial), or a list of such arrays
            Logits (or probabilities, with ``inputs='probabilities'``), float.
            A Dask array is streamed: ``n_passes_`` reads of every chunk.  A
            list (same ``C``, any spatial sizes: volumes of different shapes)
            is fitted as one data set.
        labels : array, or a list of arrays (one per array of ``scores``)
            Multiclass: integer class ids ``(B, *spatial)`` in ``[0, C)``
            (or ``ignore_index``).  Multilabel: boolean or 0/1 masks
            ``(B, C, *spatial)``.

        Returns
        -------
        self

        Raises
        ------
        TypeError, ValueError
            Naming the argument: wrong array type, dtype or shape, NaN or inf
            scores, probabilities outside [0, 1], class ids out of range, no
            labelled pixel.
        """
        mode, inputs, t_lo, t_hi = self._checked()
        data = L.pairs(scores, labels, mode, self.ignore_index, "scores")
        c = int(data[0].scores.shape[1])
        spec = data[0].spec
        lo, hi = 1.0 / t_hi, 1.0 / t_lo
        passes = 0
        first = [True]  # values are checked on the first pass only

        cache: dict[bytes, tuple] = {}

        def stats(w_classes: np.ndarray, hessian: bool = True):
            nonlocal passes
            key = np.asarray(w_classes, dtype=np.float64).tobytes()
            if key in cache:  # the first pass (T = 1) is also the solvers' starting point
                return cache.pop(key)
            passes += 1
            out = L.block_sums(_nll_stats, data, w_classes, inputs, spec, first[0], hessian)
            first[0] = False
            return out

        n, f1, _g, _h = cache[np.ones(c).tobytes()] = stats(np.ones(c))
        count = float(n.sum())
        if count == 0:
            raise ValueError("labels has no labelled pixel (every label equals ignore_index)")
        self.nll_initial_ = float(f1.sum()) / count
        rtol, max_passes = 1e-7, 60  # Newton's last step leaves ~1e-14 relative error

        if mode == "multilabel" and self.per_class:
            def grad_hess(w):
                _n, _f, g, h = stats(w)
                return g, h
            w, used, at_bound = _solve_convex(grad_hess, c, lo, hi, rtol, max_passes)
            empty = n == 0
            w[empty] = 1.0  # a class with no labelled pixel keeps T = 1
            at_bound &= ~empty
            if empty.any():
                warnings.warn(f"classes {np.flatnonzero(empty).tolist()} have no labelled pixel; their "
                              "temperature stays 1", RuntimeWarning, stacklevel=2)
            w_classes = w
        elif mode == "multiclass" and self.per_class:
            from scipy.optimize import minimize

            def fun(w):
                _n, f, g, _h = stats(w, hessian=False)
                return float(f.sum()) / count, g / count

            res = minimize(fun, np.ones(c), jac=True, method="L-BFGS-B", bounds=[(lo, hi)] * c,
                           options={"maxfun": max_passes, "ftol": 1e-13, "gtol": 1e-10})
            w_classes = np.clip(res.x, lo, hi)
            at_bound = (w_classes <= lo * (1 + 1e-6)) | (w_classes >= hi * (1 - 1e-6))
        else:
            def grad_hess(w):
                _n, _f, g, h = stats(np.full(c, w[0]))
                return np.array([g.sum()]), np.array([h.sum()])
            w, used, at_bound = _solve_convex(grad_hess, 1, lo, hi, rtol, max_passes)
            w_classes = np.full(c, w[0])

        if np.any(at_bound):
            warnings.warn(f"the fitted temperature reached the bounds {self.bounds}: the likelihood keeps "
                          "improving beyond them (labels nearly separable, or scores that are not logits?)",
                          RuntimeWarning, stacklevel=2)
        _n, f, _g, _h = stats(w_classes, hessian=False)
        self.nll_ = float(f.sum()) / count
        self.n_pixels_ = int(count)
        self.n_passes_ = passes
        self.n_classes_ = c
        t = 1.0 / w_classes
        self.temperature_ = t if self.per_class else float(t[0])
        self._fitted_mode = (mode, inputs)
        return self

    def _inverse_temperature(self) -> np.ndarray:
        if not hasattr(self, "temperature_"):
            raise NotFittedError("this TemperatureScaling is not fitted yet: call fit(scores, labels) first")
        return 1.0 / np.broadcast_to(np.asarray(self.temperature_, dtype=np.float64), (self.n_classes_,))

    def _calibrate_block(self, s: Any, w: np.ndarray, mode: str, inputs: str) -> Any:
        xp = L.xp_of(s)
        L.scores_values(s, "scores", inputs == "probabilities")
        z = _logits64(s, inputs, mode) * xp.asarray(w, dtype=xp.float64).reshape((1, -1) + (1,) * (s.ndim - 2))
        if mode == "multilabel":
            p = xp.exp(-xp.logaddexp(0.0, -z))
        else:
            e = xp.exp(z - z.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        return p.astype(s.dtype)

    def transform(self, scores: Any) -> Any:
        r"""Calibrated probabilities for ``scores``.

        Parameters
        ----------
        scores : array, shape (B, C, \*spatial), or a list of such arrays
            Logits or probabilities (as declared by ``inputs``), with the
            ``C`` of ``fit``.  Not modified.  A list gives a list.

        Returns
        -------
        array, shape (B, C, \*spatial)
            Probabilities, computed in float64 and returned in the dtype and
            array type of ``scores`` (a lazy Dask array for Dask input).
        """
        w = self._inverse_temperature()
        mode, inputs = self._fitted_mode
        if L.is_sequence(scores):
            return [self.transform(s) for s in scores]
        s, _solve, restore = L.native(scores, "scores")
        shape = L.check_scores_structure(s, "scores")
        if shape[1] != self.n_classes_:
            raise ValueError(f"scores must have {self.n_classes_} classes (axis 1) as in fit; got shape {shape}")
        if L.kind_of(s) == "dask":
            s = s.rechunk({1: -1})
            return s.map_blocks(self._calibrate_block, w, mode, inputs, dtype=s.dtype)
        xp = L.xp_of(s)
        out = xp.empty(shape, dtype=s.dtype)
        step = max(1, L.BLOCK_ELEMENTS // int(np.prod(shape[1:])))
        for i in range(0, shape[0], step):
            out[i:i + step] = self._calibrate_block(s[i:i + step], w, mode, inputs)
        return restore(out)

    def fit_transform(self, scores: Any, labels: Any) -> Any:
        """``fit(scores, labels).transform(scores)``."""
        return self.fit(scores, labels).transform(scores)

    def to_dict(self) -> dict[str, Any]:
        """The fitted model as JSON-ready data (what ``rankseg-np calibrate`` writes)."""
        self._inverse_temperature()
        t = self.temperature_
        return {
            "temperature": t.tolist() if isinstance(t, np.ndarray) else t,
            **{k: v for k, v in self.get_params().items() if k != "bounds"},
            "bounds": list(self.bounds),
            "n_classes": self.n_classes_,
            "nll": getattr(self, "nll_", None),
            "nll_initial": getattr(self, "nll_initial_", None),
            "n_pixels": getattr(self, "n_pixels_", None),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TemperatureScaling":
        """A fitted model from :meth:`to_dict`'s output.

        Examples
        --------
        >>> from rankseg_np.calibration import TemperatureScaling
        >>> ts = TemperatureScaling.from_dict({"temperature": 1.5, "n_classes": 3})
        >>> ts.temperature_, ts.n_classes_
        (1.5, 3)
        """
        if not isinstance(data, dict) or "temperature" not in data or "n_classes" not in data:
            raise ValueError("a temperature file needs the keys 'temperature' and 'n_classes'")
        params = {k: data[k] for k in ("output_mode", "per_class", "inputs", "ignore_index") if k in data}
        if "bounds" in data:
            params["bounds"] = tuple(data["bounds"])
        ts = cls(**params)
        mode, inputs, _lo, _hi = ts._checked()
        c = data["n_classes"]
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"n_classes must be a positive int; got {c!r}")
        t = np.asarray(data["temperature"], dtype=np.float64)
        if t.ndim > 1 or (t.ndim == 1 and t.shape != (c,)) or not np.all(np.isfinite(t) & (t > 0)):
            raise ValueError(f"temperature must be a positive number or {c} positive numbers; "
                             f"got {data['temperature']!r}")
        ts.per_class = t.ndim == 1
        ts.temperature_ = t if t.ndim == 1 else float(t)
        ts.n_classes_ = c
        for key in ("nll", "nll_initial", "n_pixels"):
            if data.get(key) is not None:
                setattr(ts, key + "_", data[key])
        ts._fitted_mode = (mode, inputs)
        return ts


# --------------------------------------------------------------------------- #
# Expected calibration error and reliability diagram
# --------------------------------------------------------------------------- #

def _bin_stats(s, y, edges, data):
    """Per bin: count, sum of confidences, sum of hits (labelled pixels only)."""
    xp = L.xp_of(s)
    L.scores_values(s, "probs", True)
    valid = L.valid_labels(y, s.shape[1], data.output_mode, data.ignore_index)
    p = s.astype(xp.float64)
    if data.output_mode == "multiclass":
        conf = p.max(axis=1)
        hit = (p.argmax(axis=1) == y)
    else:  # every (pixel, class) is a probability of "present"
        conf, hit = p, y.astype(bool)
    conf, hit = conf[valid], hit[valid].astype(xp.float64)
    n_bins = len(edges) - 1
    # Bins are (lo, hi]; 0 goes to the first. searchsorted(left) - 1 finds exactly
    # that bin from the same edges a direct comparison would use.
    idx = xp.clip(xp.searchsorted(xp.asarray(edges), conf, side="left") - 1, 0, n_bins - 1)
    count = xp.bincount(idx, minlength=n_bins).astype(xp.float64)
    return count, xp.bincount(idx, weights=conf, minlength=n_bins), xp.bincount(idx, weights=hit, minlength=n_bins)


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15, output_mode: str = "multiclass",
                     ignore_index: int | None = None) -> dict[str, np.ndarray]:
    r"""Binned confidences and accuracies, the data of a reliability diagram.

    Returns a dict of float64 arrays: ``edges`` ``(n_bins + 1,)``, and per bin
    ``count``, ``confidence`` (mean probability) and ``accuracy`` (fraction
    correct; NaN for empty bins).  See :func:`expected_calibration_error` for
    what is binned.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np.calibration import reliability_bins
    >>> probs = np.array([[[0.9, 0.2]], [[0.1, 0.8]]]).reshape(1, 2, 2)
    >>> bins = reliability_bins(probs, np.array([[0, 0]]), n_bins=5)
    >>> bins["count"], bins["accuracy"]
    (array([0., 0., 0., 1., 1.]), array([nan, nan, nan,  0.,  1.]))
    """
    if isinstance(n_bins, (bool, np.bool_)) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int; got {n_bins!r}")
    data = L.pairs(probs, labels, output_mode, ignore_index, "probs")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    count, conf, hit = L.block_sums(_bin_stats, data, edges, data[0].spec)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": edges, "count": count, "confidence": conf / count, "accuracy": hit / count}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15, output_mode: str = "multiclass",
                               ignore_index: int | None = None) -> float:
    r"""Expected calibration error (ECE) of pixel probabilities, with equal-width bins.

    ``ECE = sum_k (n_k / N) |accuracy_k - confidence_k|`` over ``n_bins``
    bins ``(k/n_bins, (k+1)/n_bins]`` of [0, 1] (0 in the first bin), over
    all labelled pixels of all images, accumulated in float64.

    * multiclass: every pixel's top-label confidence ``max_c p_c``, correct
      when ``argmax_c p_c`` equals the label (Guo et al. 2017);
    * multilabel: every (pixel, class) probability ``p``, "correct" when the
      class is present: the reliability of ``p`` itself, pooled over classes.

    Parameters
    ----------
    probs : array, shape (B, C, \*spatial)
        Probabilities in [0, 1] (any array type; Dask is streamed).
    labels : array
        As in :meth:`TemperatureScaling.fit`.
    n_bins : int, default 15
    output_mode : {'multiclass', 'multilabel'}, default 'multiclass'
    ignore_index : int or None
        Label of pixels to leave out.

    Returns
    -------
    float
        In [0, 1]; 0 for perfectly calibrated bins.

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np.calibration import expected_calibration_error
    >>> probs = np.array([[[0.9, 0.2]], [[0.1, 0.8]]]).reshape(1, 2, 2)   # one image, 2 classes, 2 pixels
    >>> round(expected_calibration_error(probs, np.array([[0, 0]])), 3)   # confidences 0.9 (right), 0.8 (wrong)
    0.45
    """
    bins = reliability_bins(probs, labels, n_bins, output_mode, ignore_index)
    total = bins["count"].sum()
    if total == 0:
        raise ValueError("labels has no labelled pixel (every label equals ignore_index)")
    keep = bins["count"] > 0
    gap = np.abs(bins["accuracy"][keep] - bins["confidence"][keep])
    return float((bins["count"][keep] * gap).sum() / total)


def reliability_diagram(probs: Any, labels: Any, n_bins: int = 15, output_mode: str = "multiclass",
                        ignore_index: int | None = None, ax: Any = None, label: str | None = None) -> Any:
    r"""Plot accuracy against confidence per bin; returns the matplotlib figure.

    The diagonal is perfect calibration; points below it are over-confident
    bins, above it under-confident ones.  Draw several models on one axes by
    passing ``ax`` (and a ``label`` each).  The legend gives each curve's ECE.
    Needs matplotlib (``pip install rankseg-np[plot]``).

    Examples
    --------
    >>> import numpy as np
    >>> from rankseg_np.calibration import reliability_diagram
    >>> probs = np.array([[[0.9, 0.2]], [[0.1, 0.8]]]).reshape(1, 2, 2)
    >>> fig = reliability_diagram(probs, np.array([[0, 0]]), n_bins=5)  # doctest: +SKIP
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("reliability_diagram needs matplotlib: pip install 'rankseg-np[plot]'") from None
    bins = reliability_bins(probs, labels, n_bins, output_mode, ignore_index)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("confidence" if output_mode == "multiclass" else "predicted probability")
        ax.set_ylabel("accuracy" if output_mode == "multiclass" else "observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    fig = ax.figure
    keep = bins["count"] > 0
    total = bins["count"].sum()
    ece = float((bins["count"][keep] * np.abs(bins["accuracy"][keep] - bins["confidence"][keep])).sum() / total)
    text = f"{label + ', ' if label else ''}ECE {ece:.3f}"
    ax.plot(bins["confidence"][keep], bins["accuracy"][keep], marker="o", ms=4, label=text)
    ax.legend(loc="upper left", fontsize=8)
    return fig
