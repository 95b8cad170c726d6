"""Row-wise array helpers shared by the GPU's band searches (RMA smooth > 0, exact).

Written against an array namespace ``xp`` (CuPy on a device, NumPy in CI);
no argmax on booleans, explicit first/last rules, and the lowest-index tie
cut of :mod:`rankseg_np._decision`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .._validate import raise_bad_values


def errstate(xp: Any):
    """Silence NumPy's division warnings on rows that are masked out anyway."""
    errstate = getattr(xp, "errstate", None)
    return errstate(divide="ignore", invalid="ignore") if errstate is not None else contextlib.nullcontext()


def to_host(x: Any) -> np.ndarray:
    """A NumPy copy of ``x`` (CuPy arrays through ``.get()``)."""
    get = getattr(x, "get", None)
    return np.asarray(get() if callable(get) and not isinstance(x, np.ndarray) else x)


def first_true(mask: Any, xp: Any, default: Any) -> Any:
    """Per row, the first column where ``mask`` holds, else ``default`` (no argmax on bools)."""
    n = mask.shape[1]
    col = xp.min(xp.where(mask, xp.arange(n)[None, :], n), axis=1)
    return xp.where(col < n, col, default)


def last_true(mask: Any, xp: Any, default: Any) -> Any:
    """Per row, the last column where ``mask`` holds, else ``default``."""
    col = xp.max(xp.where(mask, xp.arange(mask.shape[1])[None, :], -1), axis=1)
    return xp.where(col >= 0, col, default)


def pick(a: Any, col: Any, xp: Any) -> Any:
    """``a[r, col[r]]`` for every row (``col`` clipped into range)."""
    return pick_cols(a, col[:, None], xp)[:, 0]


def pick_cols(a: Any, cols: Any, xp: Any) -> Any:
    """``a[r, cols[r, j]]`` for every row and j (``cols`` clipped into range; 0 for an empty ``a``)."""
    if a.shape[1] == 0:
        return xp.zeros(cols.shape)
    return xp.take_along_axis(a, xp.clip(cols, 0, a.shape[1] - 1), axis=1)


def gather_rows(x: Any, mask: Any, xp: Any, with_index: bool = False) -> Any:
    """The values of ``x`` where ``mask`` holds, row by row, left-aligned in a 0-padded float64 matrix.

    Values keep their pixel order; ``with_index=True`` also returns their
    column indices (0-padded).
    """
    rows = x.shape[0]
    counts = xp.sum(mask, axis=1)
    width = int(xp.max(counts)) if rows else 0
    out = xp.zeros((rows, width), dtype=xp.float64)
    index = xp.zeros((rows, width), dtype=xp.int64) if with_index else None
    if width:
        rr, cc = xp.nonzero(mask)  # row-major: grouped by row, pixel index ascending
        pos = xp.arange(rr.shape[0]) - (xp.cumsum(counts) - counts)[rr]
        out[rr, pos] = x[rr, cc]
        if with_index:
            index[rr, pos] = cc
    return (out, index) if with_index else out


def tie_cut(band_px: Any, band_ix: Any, real: Any, v: Any, need: Any, xp: Any) -> Any:
    """Per row, 1 + the pixel index of the ``need``-th pixel equal to ``v``, in pixel order.

    ``band_px``/``band_ix`` are a gathered band in pixel order (``gather_rows``)
    holding every pixel equal to ``v``; ``real`` marks its non-padding columns.
    This is the ``tie_end`` that keeps the lowest-index ties (see ``_decision``).
    """
    eq = (band_px == v[:, None]) & real
    nth = xp.cumsum(eq, axis=1)
    return pick(band_ix, first_true(eq & (nth == need[:, None]), xp, 0), xp) + 1


def checked_first_pass(p3: Any, xp: Any, kern: Any) -> tuple[Any, Any, Any, Any]:
    """``(mu, peak, s_half, n_half)`` of the ``(B*C, d)`` rows; a ValueError for values outside [0, 1]."""
    b, c, d = p3.shape
    mu, peak, bad, s_half, n_half = kern.first_pass(p3.reshape(b * c, d))
    if bool(xp.any(bad)):
        raise_bad_values(to_host(p3))
    return mu, peak, s_half, n_half
