"""The compact per-row answer every solver returns, on every backend.

A solver does not return masks: for each (image, class) row it returns a
threshold ``t`` and a tie cut ``k`` meaning

    mask[i] = p[i] > t  or  (p[i] == t  and  i < k)

Every top-tau set can be written this way, with ties at the cut broken
towards the lowest pixel index, so solvers stay O(B*C) in memory and the
mask (multilabel) or label map (multiclass, MATH section 5) is materialised
by one shared kernel per backend.  An inactive (pruned) row has
``t = +inf`` and ``k = 0``: the empty mask.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# Ties in the increment score go to the lowest class index (MATH 5).  Ties are
# meant in exact arithmetic: two classes with equal increments can differ in
# the last bits because their row sums were accumulated in different orders,
# so scores within this relative distance of the best count as tied (at most
# a 1e-12 relative loss of objective, far below anything float32 inputs carry).
DELTA_TIE_RTOL = 1e-12


class RowDecision(NamedTuple):
    threshold: Any  # float64 (B, C)
    tie_end: Any  # int64 (B, C)
    active: Any  # bool (B, C): max probability > pruning_prob
    mu: Any  # float64 (B, C): sum of the row's probabilities
