"""Hypothesis strategies for probability maps.

Inputs are drawn as a recipe (shape, dtype, kind, seed) and built with NumPy,
so large arrays stay cheap; the kinds cover softmax outputs at several
temperatures, independent sigmoids, heavy ties (values rounded to one
decimal) and exact 0/1 probabilities.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

KINDS = ("softmax", "sigmoid", "ties", "zero_one", "uniform")


def make_probs(shape, dtype, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "softmax":
        x = rng.standard_normal(shape) * rng.uniform(0.2, 5.0)
        z = np.exp(x - x.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
    elif kind == "sigmoid":
        p = 1.0 / (1.0 + np.exp(-(rng.standard_normal(shape) * 3.0 - 1.0)))
    elif kind == "ties":
        p = np.round(rng.uniform(0, 1, shape), 1)
    elif kind == "zero_one":
        p = rng.choice([0.0, 1.0, 0.5, 0.25, 0.75], size=shape)
    else:
        p = rng.uniform(0, 1, shape)
    return p.astype(dtype)


@st.composite
def prob_arrays(draw, max_batch=3, max_class=4, max_side=9, min_class=1, dtypes=(np.float64, np.float32, np.float16)):
    ndim = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
    shape = (draw(st.integers(1, max_batch)), draw(st.integers(min_class, max_class))) + spatial
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_probs(shape, dtype, kind, seed)


@st.composite
def rma_params(draw, output_mode=None):
    mode = output_mode or draw(st.sampled_from(["multiclass", "multilabel"]))
    params = dict(
        metric=draw(st.sampled_from(["dice", "iou"])),
        smooth=draw(st.sampled_from([0.0, 0.0, 0.1, 1.0, 7.5])),
        output_mode=mode,
        pruning_prob=draw(st.sampled_from([0.5, 0.5, 0.0, 0.2, 0.9, 1.0])),
    )
    if mode == "multiclass" and draw(st.booleans()):
        params["unassigned_policy"] = "void"
        params["void_index"] = draw(st.sampled_from([255, -1, 1000]))
    return params


@st.composite
def medium_rows(draw):
    """One row with d in the hundreds, from families that stress the quadrature regimes."""
    d = draw(st.integers(100, 400))
    kind = draw(st.sampled_from(["powered", "few_confident", "flat", "spread", "ties", "sparse", "ones"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "powered":  # many small values, a few large
        p = rng.uniform(0, 1, d) ** rng.uniform(1, 10)
    elif kind == "few_confident":  # small mu: the t-domain (Jacobi) rule
        p = np.r_[rng.uniform(0.5, 1, rng.integers(1, 8)), rng.uniform(0, rng.uniform(0.001, 0.1), d)]
    elif kind == "flat":  # a wide candidate window of volumes
        p = np.r_[rng.uniform(0.6, 1, rng.integers(0, 4)), np.full(d, rng.uniform(0.02, 0.5))]
    elif kind == "spread":
        p = rng.beta(0.3, 0.3, d)
    elif kind == "ties":
        p = np.round(rng.uniform(0, 1, d), 1)
    elif kind == "sparse":
        p = np.where(rng.random(d) < 0.1, rng.uniform(0.3, 1, d), rng.uniform(0, 1e-3, d))
    else:
        p = rng.choice([0.0, 1.0, 0.5, 0.9, 0.02], d)
    p = np.asarray(p, dtype=np.float64)
    p[rng.integers(p.size)] = max(p.max(), 0.6)  # keep it interesting: one confident pixel
    return p
