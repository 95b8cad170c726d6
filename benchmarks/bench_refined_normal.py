"""BA, TRNA and BA+TRNA: speed and agreement against ``rankseg`` 0.0.8, in one process.

    python benchmarks/bench_refined_normal.py           # (1, 21, 128, 128) and (4, 21, 256, 256) float32
    python benchmarks/bench_refined_normal.py --quick   # (1, 21, 48, 48): a smoke test
    python benchmarks/bench_refined_normal.py --shapes 2,21,96,96 --trna-limit 1000000
    python benchmarks/bench_refined_normal.py --agreement   # identical-row rates by image size (about 20 minutes)

Inputs are float32 softmax outputs of N(0, 3^2) logits over 21 classes (the
same generator as ``bench_exact.py``).  Ours: best of ``--repeat`` runs after
a warm-up (Numba compiles there).  ``rankseg``: one run (it takes seconds to
minutes); its TRNA only runs on inputs of at most ``--trna-limit`` pixels in
all, because it costs about 30 s per 128x128 image.  Also printed: the
fraction of active rows whose masks are identical (up to the order of pixels
with equal probability, which ``torch.sort`` does not fix), with ``rankseg``
run in float64 on the same values (our answer does not depend on the dtype:
we compute in float64 from the values given).

``--agreement``: the identical-row rate alone, for BA, TRNA and BA+TRNA, on
21-class softmax images (logits N(0, T^2) with T = 1, 2, 3, one image each)
of 64^2, 128^2 and 256^2 pixels, float32 and float64 inputs, against
``rankseg`` run on the float64 values of the same input (a float32 input is
widened exactly).  ``rankseg``'s TRNA scores one volume at a time in Python
(about a minute for one 64x64 image on the 2-core test machine), so TRNA runs
on 64^2 with T = 1, 2, 3 and on 128^2 with T = 3 only (``--trna-sides``).
(``tests/test_refined_normal.py`` checks that every row that differs is a tie
of the float64 objective.)
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


def theirs(rs, torch, probs, solver):
    """rankseg 0.0.8 on the float64 values of ``probs``."""
    model = rs.RankSEG(metric="dice", output_mode="multilabel", solver=solver)
    return model.predict(torch.from_numpy(probs.astype(np.float64))).numpy()


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
            model.predict(tensor)  # timed on the float32 input, as a user would call it
            theirs_t = time.perf_counter() - t0
            other = theirs(rs, torch, probs, solver)
            same, n = identical_rows(probs, rankseg(probs, output_mode="multilabel", solver=solver), other)
            agree = f"{same}/{n}"
        ratio = theirs_t / t
        print(f"| {solver} | {t:.3f} | {theirs_t:.2f} | {ratio:.1f} | {agree} |")


def agreement(sides, trna_sides):
    import rankseg as rs
    import torch

    print("\nIdentical active rows, rankseg_np vs rankseg 0.0.8 run in float64 on the same values")
    print("(21-class softmax, logits N(0, T^2), pruning_prob=0.5, eps=1e-4, smooth=0):\n")
    print("| solver | image | T | float32 input | float64 input |")
    print("|---|---|---|---:|---:|")
    for solver in ("BA", "BA+TRNA", "TRNA"):
        for side in sides:
            temperatures = trna_sides.get(side, ()) if solver == "TRNA" else (1.0, 2.0, 3.0)
            if not temperatures:
                continue
            counts = {np.float32: [0, 0], np.float64: [0, 0]}
            for temperature in temperatures:
                for dtype in counts:
                    probs = softmax_probs((1, 21, side, side), seed=100, scale=temperature).astype(dtype)
                    other = theirs(rs, torch, probs, solver)
                    ours = rankseg(probs, output_mode="multilabel", solver=solver)
                    a, n = identical_rows(probs, ours, other)
                    counts[dtype][0] += a
                    counts[dtype][1] += n
            cells = [f"{a}/{n} ({a / max(n, 1):.1%})" for a, n in counts.values()]
            t_list = ", ".join(f"{t:g}" for t in temperatures)
            print(f"| {solver} | {side}x{side} | {t_list} | {' | '.join(cells)} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", nargs="*", default=None, help="shapes as B,C,H,W")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trna-limit", type=int, default=21 * 128 * 128, help="max pixels for rankseg's TRNA")
    parser.add_argument("--agreement", action="store_true", help="identical-row rates by image size only")
    parser.add_argument("--sides", default="64,128,256", help="image sides for --agreement")
    parser.add_argument(
        "--trna-sides", default="64:1,2,3;128:3", help="side:temperatures for TRNA in --agreement (rankseg is slow)"
    )
    args = parser.parse_args()
    if args.agreement:
        trna = {}
        for item in filter(None, args.trna_sides.split(";")):
            side, temps = item.split(":")
            trna[int(side)] = tuple(float(t) for t in temps.split(","))
        agreement(tuple(int(v) for v in args.sides.split(",")), trna)
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
