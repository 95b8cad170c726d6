"""``expected_metric`` is accurate to 1e-13 whatever the row length (issue 12, item 10).

Against an independent evaluation (``oracles.expected_score_mp``: mpmath's
adaptive quadrature at 30 digits).  The row is long (1e6 pixels, 12 distinct
values, so the reference costs 12 terms per node): rounding each pixel's
``log(1 - p s)`` to an ulp of 1 (the old way) gave errors growing with d
(here 1.4e-12 to 2.7e-12; now below 1e-15); the d = 1e4..1e6 table is
``python benchmarks/bench_exact.py --accuracy``.
"""

from __future__ import annotations

import numpy as np
import pytest

from rankseg_np import expected_metric
from oracles import expected_score_mp, palette_row

pytest.importorskip("mpmath")

# The promise in expected_metric's docstring (measured: ~1e-15 here).
TOL = 1e-13


@pytest.mark.parametrize("metric,smooth", [("dice", 0.0), ("iou", 0.0), ("dice", 1.0)])
def test_expected_metric_error_on_long_rows_is_below_1e13(metric, smooth):
    rng = np.random.default_rng(12)
    values, n_in, n_out, p, mask = palette_row(1_000_000, rng, k=12)
    want = expected_score_mp(values, n_in, n_out, metric, smooth)
    got = expected_metric(p[None, None], mask[None, None], metric, smooth)[0, 0]
    assert abs(float(got - want)) <= TOL, float(got - want)
