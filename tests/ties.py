"""Comparisons that accept only ties: two answers may differ only where the objective cannot tell them apart.

Executors accumulate float64 sums in different orders (rows, chunks, GPU
trees), so a pixel whose inclusion leaves the objective unchanged in exact
arithmetic may go either way.  These helpers accept exactly those differences.
"""

from __future__ import annotations

import numpy as np
import pytest

from rankseg_np import _reference as ref

# Increment scores (MATH 5) of two tied classes, computed from sums in different orders.
INC_RTOL = 1e-11


def assert_labels_tie_equal(probs, ours, expected, masks, cfg, rtol: float = INC_RTOL) -> None:
    """Equal labels, except pixels where the two classes' increment scores tie (to float64 noise)."""
    differ = ours != expected
    if not differ.any():
        return
    b, c = probs.shape[:2]
    p3 = probs.astype(np.float64).reshape(b, c, -1)
    m3 = masks.reshape(b, c, -1)
    sole = m3 & (m3.sum(axis=1) == 1)[:, None]
    inc = ref.increments(p3, sole.sum(2).astype(float), (p3 * sole).sum(2), p3.sum(2), cfg.metric, cfg.smooth)
    o, e = ours.reshape(b, -1), expected.reshape(b, -1)
    for bi, i in zip(*np.nonzero(differ.reshape(b, -1))):
        assert 0 <= o[bi, i] < c and 0 <= e[bi, i] < c, (o[bi, i], e[bi, i])
        assert inc[bi, o[bi, i], i] == pytest.approx(inc[bi, e[bi, i], i], rel=rtol, abs=1e-15)
