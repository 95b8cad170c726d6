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


def dice_smooth_step(q: Any, s: Any, tau: Any, mu: Any, smooth: float) -> tuple[Any, Any]:
    """The step f(tau + 1) - f(tau) of the RMA Dice objective with smooth g > 0 (MATH 4),
    f(tau) = 2 S_tau/(A+tau+1) + g/(A+tau), A = mu + g, when the next pixel is ``q``
    (``s`` = S_tau), times a positive factor shared by the whole row; as two parts
    ``(lead, rest)`` whose sum is the step.

    With u = mu + tau (so A + tau = g + u) the step is P / ((g+u)(g+u+1)(g+u+2)),

        P = 2 (q (g+u+1) - S)(g+u) - g (g+u+2) = c2 g^2 + c1 g + c0,
        c2 = 2q - 1,  c1 = 2q (2u+1) - 2S - u - 2,  c0 = 2u (q (u+1) - S),

    and P is evaluated through its coefficients: the differences between
    volumes live in c1 and c0, which the value of f (close to 1 for a large
    g) rounds away (with g = 1e6 they are about 1e-17 of f).  ``lead`` is the
    c2 part, exactly 0 for q = 1/2; summed apart, the much smaller ``rest``
    of such pixels is not rounded away by the leads before it.  For g > 1 the
    step is returned times g (no overflow or underflow up to the largest
    float64).  Plain arithmetic: the CPU compiles it with Numba for scalars,
    the GPU code runs it on arrays.

    Examples
    --------
    >>> lead, rest = dice_smooth_step(0.5, 2.0, 2, 3.0, 1e10)
    >>> lead, rest > 0  # a pixel at 1/2: only the rest, and here it still pays
    (0.0, True)
    """
    u = mu + tau
    c2 = 2.0 * q - 1.0
    c1 = 2.0 * q * (2.0 * u + 1.0) - 2.0 * s - u - 2.0
    c0 = 2.0 * u * (q * (u + 1.0) - s)
    g = smooth
    if g > 1.0:
        scale = (g / (g + u)) * (g / (g + u + 1.0)) * (g / (g + u + 2.0))
        return c2 * scale, (c1 / g + c0 / g / g) * scale
    scale = 1.0 / ((g + u) * (g + u + 1.0) * (g + u + 2.0))
    return c2 * g * g * scale, (c1 * g + c0) * scale
