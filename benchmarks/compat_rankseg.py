"""Agreement of RMA with ``rankseg`` 0.0.8 on random inputs (the ``compat`` extra).

    python benchmarks/compat_rankseg.py --seed 11 --trials 150

Random shapes (B<=3, C in 2..7, up to 63x63), float32/float64, softmax, sigmoid,
tied (one-decimal) and uniform values, dice/iou, several smooth and pruning
values, both unassigned policies.  Prints: rows compared, rows whose masks
differ, rows where our float64 RMA objective is below rankseg's (the contract
says 0), and multiclass label mismatches on inputs whose per-class masks agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from strategies import make_probs  # noqa: E402

from rankseg_np import _reference as ref  # noqa: E402
from rankseg_np import rankseg  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=150)
    args = parser.parse_args(argv)
    import rankseg as rs
    import torch

    rng = np.random.default_rng(args.seed)
    stats = dict(rows=0, rows_differ=0, rows_worse=0, label_cases=0, labels=0, labels_differ=0)
    for _ in range(args.trials):
        shape = (int(rng.integers(1, 4)), int(rng.integers(2, 8)), int(rng.integers(5, 64)), int(rng.integers(5, 64)))
        dtype = (np.float32, np.float64)[rng.integers(2)]
        kind = ("softmax", "sigmoid", "ties", "uniform")[rng.integers(4)]
        p = make_probs(shape, dtype, kind, int(rng.integers(1 << 30)))
        metric = ("dice", "iou")[rng.integers(2)]
        smooth = float(rng.choice([0, 0, 0.5, 1, 10]))
        pruning = float(rng.choice([0.5, 0, 0.3]))
        policy = ({}, {"unassigned_policy": "void"})[rng.integers(2)]
        kw = dict(metric=metric, smooth=smooth, pruning_prob=pruning)
        ours = rankseg(p, output_mode="multilabel", **kw)
        theirs = rs.RankSEG(output_mode="multilabel", **kw).predict(torch.from_numpy(p)).numpy()
        b, c = shape[:2]
        o2, t2, p2 = ours.reshape(b * c, -1), theirs.reshape(b * c, -1), p.astype(np.float64).reshape(b * c, -1)
        stats["rows"] += b * c
        for r in np.flatnonzero((o2 != t2).any(axis=1)):
            stats["rows_differ"] += 1
            mine = ref.rma_objective(p2[r], o2[r], metric, smooth)
            other = ref.rma_objective(p2[r], t2[r], metric, smooth)
            stats["rows_worse"] += int(mine < other - 1e-12 * abs(other))
        if np.array_equal(ours, theirs):
            a = rankseg(p, **kw, **policy)
            t = rs.RankSEG(**kw, **policy).predict(torch.from_numpy(p)).numpy()
            stats["label_cases"] += 1
            stats["labels"] += a.size
            stats["labels_differ"] += int((a != t).sum())
    print(stats)


if __name__ == "__main__":
    main()
