"""The oracle: MATH sections 4-6 transcribed as directly as possible, in plain NumPy.

Slow and obvious on purpose (a full sort per row, ``(B, C, d)`` temporaries,
Python loops over rows).  Every fast path is tested against it.  Tie rule:
pixels are ranked by probability, equal probabilities by lower index first
(a stable sort), and the first maximum over volumes wins.
"""

from __future__ import annotations

import numpy as np

from ._decision import DELTA_TIE_RTOL
from ._validate import Config


def rma_objective_curve(q: np.ndarray, mu: float, metric: str, smooth: float) -> np.ndarray:
    """RMA objective pi(tau) of the top-tau sets, tau = 0..d, for ``q`` sorted descending."""
    s = np.concatenate([[0.0], np.cumsum(q, dtype=np.float64)])
    tau = np.arange(q.size + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "dice":
            pi = 2.0 * s / (mu + tau + smooth + 1.0) + smooth / (mu + tau + smooth)
        else:
            pi = (s + smooth) / (mu - s + tau + smooth)
    pi = np.where(np.isnan(pi), 0.0, pi)  # 0/0 := 0
    if smooth == 0.0:
        pi[0] = -np.inf  # the empty mask is not a candidate when smooth = 0
    return pi


def rma_objective(p: np.ndarray, mask: np.ndarray, metric: str, smooth: float) -> float:
    """RMA objective pi of MATH section 4 for an arbitrary mask of one row (float64)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool).ravel()
    mu = p.sum()
    s = p[mask].sum()
    tau = float(mask.sum())
    if metric == "dice":
        num, den = 2.0 * s, mu + tau + smooth + 1.0
        value = num / den
        if smooth > 0:
            value += smooth / (mu + tau + smooth)
        return float(value)
    num, den = s + smooth, mu - s + tau + smooth
    return 0.0 if den == 0 else float(num / den)


def top_tau_mask(p: np.ndarray, tau: int) -> np.ndarray:
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")
    mask = np.zeros(p.size, dtype=bool)
    mask[order[:tau]] = True
    return mask


def rma_row(p: np.ndarray, metric: str, smooth: float) -> np.ndarray:
    """Best RMA top-tau mask of one row (first maximum over tau)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.sort(p)[::-1]
    pi = rma_objective_curve(q, p.sum(), metric, smooth)
    return top_tau_mask(p, int(np.argmax(pi)))


def binary_masks(probs: np.ndarray, cfg: Config, row_solver=rma_row) -> tuple[np.ndarray, np.ndarray]:
    """Per-class masks ``(B, C, d)`` and the active flags ``(B, C)``."""
    b, c = probs.shape[:2]
    p3 = np.asarray(probs, dtype=np.float64).reshape(b, c, -1)
    active = p3.max(axis=2) > cfg.pruning_prob
    masks = np.zeros(p3.shape, dtype=bool)
    for i in range(b):
        for k in range(c):
            if active[i, k]:
                masks[i, k] = row_solver(p3[i, k], cfg.metric, cfg.smooth)
    return masks, active


def increments(p3: np.ndarray, tau: np.ndarray, m: np.ndarray, mu: np.ndarray, metric: str, smooth: float):
    """Increment scores Delta_c(i) of MATH section 5 (times max(1, smooth)), shape (B, C, d), float64."""
    tau, m, mu = (x[:, :, None] for x in (tau, m, mu))
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "dice":
            d = tau + mu + smooth + 1.0
            # No product d*d (it overflows for smooth > ~1.3e154); times max(1, smooth),
            # a positive constant that changes no comparison (MATH section 5).
            if smooth > 1.0:
                return 2.0 * (p3 - m / d) * (smooth / (d + 1.0)) - (smooth / d) * (smooth / (d - 1.0))
            inc = 2.0 * (p3 - m / d) / (d + 1.0)
            if smooth > 0:
                inc = inc - (smooth / d) / (d - 1.0)
            return inc
        e = tau + mu - m + smooth
        a = np.where(e > 0, (m + smooth) / e, 0.0)
        return (p3 - a * (1.0 - p3)) / (e + 1.0 - p3)


def resolve(probs: np.ndarray, masks: np.ndarray, active: np.ndarray, cfg: Config) -> np.ndarray:
    """Multiclass labels ``(B, d)`` from per-class masks, MATH section 5."""
    b, c = probs.shape[:2]
    p3 = np.asarray(probs, dtype=np.float64).reshape(b, c, -1)
    masks = masks.reshape(p3.shape)
    count = masks.sum(axis=1)  # claimants per pixel
    sole = masks & (count == 1)[:, None, :]
    tau = sole.sum(axis=2).astype(np.float64)
    m = (p3 * sole).sum(axis=2)
    inc = increments(p3, tau, m, p3.sum(axis=2), cfg.metric, cfg.smooth)
    # Unclaimed pixels: active classes compete, or every class if none is active.
    eligible_unclaimed = active | ~active.any(axis=1, keepdims=True)
    eligible = np.where(count[:, None, :] > 0, masks, eligible_unclaimed[:, :, None])
    inc = np.where(eligible, inc, -np.inf)
    best = inc.max(axis=1, keepdims=True)
    # Ties (to float64 noise, DELTA_TIE_RTOL) go to the lowest class index.
    labels = np.argmax(inc >= best - DELTA_TIE_RTOL * np.abs(best), axis=1).astype(np.int64)
    if cfg.unassigned_policy == "void":
        labels[count == 0] = cfg.void_index
    return labels


def rankseg_reference(probs: np.ndarray, cfg: Config) -> np.ndarray:
    """Reference answer of :func:`rankseg_np.rankseg` for RMA and accuracy (NumPy input)."""
    probs = np.asarray(probs)
    b, c = probs.shape[:2]
    spatial = probs.shape[2:]
    if cfg.metric == "accuracy":
        if cfg.solver == "tr":
            return probs > 0.5
        labels = np.argmax(probs, axis=1)
        if cfg.output_mode == "multiclass":
            return labels
        return labels[:, None] == np.arange(c).reshape((1, c) + (1,) * len(spatial))
    masks, active = binary_masks(probs, cfg)
    if cfg.output_mode == "multilabel":
        return masks.reshape(probs.shape)
    return resolve(probs, masks, active, cfg).reshape((b,) + spatial)
