"""BA, TRNA and BA+TRNA: speed and agreement against ``rankseg`` 0.0.8, in one process.

    python benchmarks/bench_refined_normal.py           # (1, 21, 128, 128) and (4, 21, 256, 256) float32
    python benchmarks/bench_refined_normal.py --quick   # (1, 21, 48, 48): a smoke test
    python benchmarks/bench_refined_normal.py --shapes 2,21,96,96 --trna-limit 1000000
    python benchmarks/bench_refined_normal.py --agreement   # identical-row rates by image size (minutes)

Inputs are float32 softmax outputs of N(0, 3^2) logits over 21 classes (the
same generator as ``bench_exact.py``).  Ours: best of ``--repeat`` runs after
a warm-up (Numba compiles there).  ``rankseg``: one run (it takes seconds to
minutes); its TRNA only runs on inputs of at most ``--trna-limit`` pixels in
all, because it costs about 30 s per 128x128 image.  Also printed: the
fraction of active rows whose masks are identical (up to the order of pixels
with equal probability, which ``torch.sort`` does not fix).

``--agreement``: the identical-row rate alone, for BA and TRNA, float32 and
float64, on 21-class softmax images of growing size (logits N(0, T^2) with
T = 1, 2, 3, one image each; BA on batches of 2), against ``rankseg``; for
float32 also with ``law_math='numpy'`` (what a machine without PyTorch gets).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import best_time, softmax_probs

from rankseg_np import rankseg


def identical_rows(probs, a, b, pruning_prob=0.5):
    rows = probs.shape[0] * probs.shape[1]
    p2, a2, b2 = (x.reshape(rows, -1) for x in (probs, a, b))
    active = p2.max(axis=1) > pruning_prob
    same = [np.array_equal(np.sort(p2[r][a2[r]]), np.sort(p2[r][b2[r]])) for r in np.flatnonzero(active)]
    return int(np.sum(same)), int(active.sum())


def run(shape, repeat, trna_limit):
    probs = softmax_probs(shape)
    print(f"\n## probs {shape} float32 softmax ({probs.nbytes / 2**20:.0f} MiB)\n")
    argmax_t = best_time(lambda: np.argmax(probs, axis=1), repeat)
    ours = {}
    for solver in ("BA", "TRNA", "BA+TRNA"):
        ours[solver] = best_time(lambda s=solver: rankseg(probs, output_mode="multilabel", solver=s), repeat)
    print(f"np.argmax(probs, axis=1): {argmax_t:.4f} s\n")
    print("| solver | rankseg_np (s) | rankseg 0.0.8 (s) | rankseg / rankseg_np | identical active rows |")
    print("|---|---:|---:|---:|---:|")
    try:
        import rankseg as rs
        import torch
    except ImportError:
        rs = None
        print("(rankseg / torch not installed: pip install -e '.[compat]' to compare)")
    for solver, t in ours.items():
        theirs_t, agree = float("nan"), "-"
        if rs is not None and (solver != "TRNA" or probs.size <= trna_limit):
            model = rs.RankSEG(metric="dice", output_mode="multilabel", solver=solver)
            tensor = torch.from_numpy(probs)
            t0 = time.perf_counter()
            theirs = model.predict(tensor).numpy()
            theirs_t = time.perf_counter() - t0
            same, n = identical_rows(probs, rankseg(probs, output_mode="multilabel", solver=solver), theirs)
            agree = f"{same}/{n}"
        ratio = theirs_t / t
        print(f"| {solver} | {t:.3f} | {theirs_t:.2f} | {ratio:.1f} | {agree} |")


def agreement(sides, trna_max_side):
    import rankseg as rs
    import torch

    print("\n| solver | image | float32 | float32, `law_math='numpy'` | float64 |")
    print("|---|---|---:|---:|---:|")
    for solver in ("BA", "TRNA"):
        for side in sides:
            if solver == "TRNA" and side > trna_max_side:
                continue
            batch = 2 if solver == "BA" else 1
            counts = {}
            for dtype, law_math in ((np.float32, "auto"), (np.float32, "numpy"), (np.float64, "auto")):
                counts[dtype, law_math] = [0, 0]
            for i, temperature in enumerate((1.0, 2.0, 3.0)):
                for dtype in (np.float32, np.float64):
                    probs = softmax_probs((batch, 21, side, side), seed=100 + i, scale=temperature).astype(dtype)
                    model = rs.RankSEG(metric="dice", output_mode="multilabel", solver=solver)
                    theirs = model.predict(torch.from_numpy(probs)).numpy()
                    for law_math in ("auto", "numpy") if dtype == np.float32 else ("auto",):
                        ours = rankseg(probs, output_mode="multilabel", solver=solver, law_math=law_math)
                        a, n = identical_rows(probs, ours, theirs)
                        counts[dtype, law_math][0] += a
                        counts[dtype, law_math][1] += n
            cells = [f"{a}/{n} ({a / max(n, 1):.1%})" for a, n in counts.values()]
            print(f"| {solver} | {batch}x{side}x{side} | {' | '.join(cells)} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", nargs="*", default=None, help="shapes as B,C,H,W")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trna-limit", type=int, default=21 * 128 * 128, help="max pixels for rankseg's TRNA")
    parser.add_argument("--agreement", action="store_true", help="identical-row rates by image size only")
    args = parser.parse_args()
    if args.agreement:
        agreement((32, 64, 96, 128, 192, 256), trna_max_side=128)
        return
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    elif args.quick:
        shapes = [(1, 21, 48, 48)]
    else:
        shapes = [(1, 21, 128, 128), (4, 21, 256, 256)]
    for shape in shapes:
        run(shape, args.repeat, args.trna_limit)


if __name__ == "__main__":
    main()
