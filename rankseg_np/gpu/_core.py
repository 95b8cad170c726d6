"""The GPU executor, written once against an array namespace ``xp``.

:class:`XpExecutor` gives the shared pipeline (:mod:`rankseg_np._pipeline`)
its array operations: ``xp`` is ``cupy`` on a GPU and ``numpy`` in CI, and
the primitives come from a kernels object (:mod:`rankseg_np.gpu._kernels`):
the fused CuPy kernels, or the plain array-code fallback.  Nothing here
imports a framework, so the very code that runs on the GPU is exercised by
the default test suite on NumPy and compared with the Numba CPU path.

The solvers' decisions live in their own modules (``_rma``, ``_exact``; the
capability table names them); masks come from one ``materialize`` pass and
labels from the MATH section 5 resolution (claims, sole-claimant sums,
conflicts).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _pipeline
from .._decision import RowDecision
from .._layout import SUM_TOL
from .._solvers import METRIC_CODES
from .._validate import Config
from ._rows import checked_first_pass, to_host


def as_rows(probs: Any, xp: Any) -> Any:
    """``(B, C, *spatial)`` -> C-contiguous float32/float64 ``(B, C, d)`` (float16 upcast to float32)."""
    if probs.dtype == xp.float16:
        probs = probs.astype(xp.float32)
    b, c = probs.shape[:2]
    d = math.prod(probs.shape[2:])
    return xp.ascontiguousarray(probs.reshape(b, c, d))


class XpExecutor:
    """The GPU's operations for :func:`rankseg_np._pipeline.run`, in namespace ``xp``."""

    name = "gpu"

    def __init__(self, xp: Any, kern: Any) -> None:
        self.xp = xp
        self.kern = kern

    def rows(self, probs: Any) -> Any:
        return as_rows(probs, self.xp)

    def check_values(self, p3: Any) -> Any:
        checked_first_pass(p3, self.xp, self.kern)
        return p3

    def decide(self, module: Any, p3: Any, cfg: Config) -> RowDecision:
        return module.decide(p3, cfg, self.xp, self.kern)

    to_host = staticmethod(to_host)

    def from_host(self, decision: RowDecision) -> RowDecision:
        if self.xp is np:
            return decision
        return RowDecision(*(self.xp.asarray(np.asarray(f)) for f in decision))

    def whole_images(self, p3: Any, cfg: Config) -> None:
        return None  # in memory, every image is whole

    def masks(self, p3: Any, decision: RowDecision) -> Any:
        xp = self.xp
        return self.kern.materialize(p3, xp.asarray(decision.threshold), xp.asarray(decision.tie_end))

    def labels(self, p3: Any, decision: RowDecision, cfg: Config) -> tuple[Any, _pipeline.ClassSums]:
        """Multiclass labels ``(B, d)`` int64 from per-class decisions (MATH section 5), and the class sums."""
        kern = self.kern
        threshold, tie_end, active, mu = (self.xp.asarray(f) for f in decision)
        state = kern.claims(p3, threshold, tie_end, active)
        tau, m = kern.sole_sums(p3, state)
        labels = kern.conflicts(
            p3, threshold, tie_end, active, state, tau, mu, m,
            METRIC_CODES[cfg.metric], cfg.smooth, cfg.unassigned_policy == "void", cfg.void_index,
        )
        return labels, self._class_sums(p3)

    def _class_sums(self, p3: Any) -> _pipeline.ClassSums:
        """Every pixel's class sum against 1, and three scalars to the host (not fused into the
        claims kernel, unlike the CPU path).

        Summed as the CPU sums (``cpu.multiclass._claims``): in the input's precision, class
        after class, then compared with 1 in float64.  A sum that lands on the tolerance (values
        rounded to 1/100 often do) is then counted the same on every executor, so that the
        warning is the same too; ``xp.sum`` would add in another order (pairwise, or a tree).
        """
        xp = self.xp
        sums = xp.zeros((p3.shape[0], p3.shape[2]), dtype=p3.dtype)  # from +0.0, as the CPU: no -0.0 sum
        for cls in range(p3.shape[1]):
            sums += p3[:, cls]
        off = xp.abs(sums.astype(xp.float64) - 1.0) > SUM_TOL
        stats = xp.stack([xp.sum(off, dtype=xp.float64), xp.min(sums).astype(xp.float64), xp.max(sums).astype(xp.float64)])
        n_off, lo, hi = (float(v) for v in to_host(stats))
        return _pipeline.ClassSums(int(sums.size), int(n_off), lo, hi)

    @staticmethod
    def reshape(out: Any, shape: tuple[int, ...]) -> Any:
        return out.reshape(shape)


def solve(probs: Any, cfg: Config, xp: Any, kern: Any) -> Any:
    """Masks ``(B, C, *spatial)`` bool or labels ``(B, *spatial)`` int64 for a validated-structure array."""
    return _pipeline.run(XpExecutor(xp, kern), probs, cfg)
