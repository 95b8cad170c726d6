"""The exact solver: speed against RMA and ``rankseg`` 0.0.8's BA, and a quality table.

    python benchmarks/bench_exact.py            # (4, 21, 256, 256) and (4, 21, 512, 512)
    python benchmarks/bench_exact.py --quick    # small shapes, a smoke test
    python benchmarks/bench_exact.py --accuracy # quadrature error against the oracles only
                                                # (and against mpmath for d = 1e4, 1e5, 1e6)
    python benchmarks/bench_exact.py --tiny     # rows of tiny / subnormal values against a uniform row

Speed: best of ``--repeat`` runs after a warm-up (Numba compiles there), all in
one process on the same float32 softmax array; ``rankseg`` BA runs once (it
takes seconds).  Ratios divide by ``np.argmax(probs, axis=1)`` and by
``rankseg`` BA.  On each speed input the exact masks are also checked against
RMA's by :func:`rankseg_np.expected_metric`: the number of rows where exact
scores below RMA must be 0.

Quality: mean exact expected Dice / IoU (``expected_metric``; no ground truth
needed) of argmax (multiclass) or ``p > 1/2`` (multilabel), RMA, BA (Dice only,
when ``rankseg_np``'s BA is available) and exact, on calibrated synthetic
scenarios from :func:`rankseg_np.data.synthetic_batch`.  Each method runs with
the metric it is scored on; per-class masks (``output_mode='multilabel'``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rankseg_np import expected_metric, rankseg
from rankseg_np.data import synthetic_batch

from _common import best_time, softmax_probs




def speed(shape, repeat, with_ba=True):
    probs = softmax_probs(shape)
    print(f"\n## speed: probs {shape} float32 softmax ({probs.nbytes / 2**20:.0f} MiB)\n")
    methods = {
        "np.argmax(probs, axis=1)": lambda: np.argmax(probs, axis=1),
        "rankseg_np RMA dice multilabel": lambda: rankseg(probs, metric="dice", output_mode="multilabel"),
        "rankseg_np exact dice multilabel": lambda: rankseg(probs, metric="dice", output_mode="multilabel", solver="exact"),
        "rankseg_np exact iou multilabel": lambda: rankseg(probs, metric="iou", output_mode="multilabel", solver="exact"),
        "rankseg_np exact dice multiclass": lambda: rankseg(probs, metric="dice", solver="exact"),
    }
    if with_ba:
        try:
            import rankseg as rs
            import torch

            tensor = torch.from_numpy(probs)
            model = rs.RankSEG(metric="dice", output_mode="multilabel", solver="BA")
            methods["rankseg 0.0.8 BA dice multilabel"] = lambda: model.predict(tensor)
        except ImportError:
            print("(rankseg / torch not installed: pip install -e '.[compat]' to compare with BA)\n")
    print("| method | time (s) | x argmax |")
    print("|---|---:|---:|")
    res = {}
    for name, fn in methods.items():
        slow = name.startswith("rankseg 0.0.8")
        if slow:
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
        else:
            t = best_time(fn, repeat)
        res[name] = t
        print(f"| {name} | {t:.4f} | {t / res['np.argmax(probs, axis=1)']:.1f} |", flush=True)
    ex = res["rankseg_np exact dice multilabel"]
    print(f"\nexact / our RMA (dice multilabel): {ex / res['rankseg_np RMA dice multilabel']:.2f}x the time")
    if "rankseg 0.0.8 BA dice multilabel" in res:
        ba = res["rankseg 0.0.8 BA dice multilabel"]
        print(f"exact / rankseg BA (dice multilabel): {ex / ba:.3f}x the time ({ba / ex:.1f}x faster)")
    for metric in ("dice", "iou"):
        exact_masks = rankseg(probs, metric=metric, output_mode="multilabel", solver="exact")
        rma_masks = rankseg(probs, metric=metric, output_mode="multilabel")
        diff = expected_metric(probs, exact_masks, metric) - expected_metric(probs, rma_masks, metric)
        print(
            f"{metric}: rows where exact < RMA in expected score: {(diff < 0).sum()} of {diff.size}; "
            f"min(exact - RMA) = {diff.min():.2e}, max = {diff.max():.2e}, "
            f"rows with a different mask: {(diff != 0).sum()}"
        )
    return res


SCENARIOS = {
    # name: synthetic_batch arguments (full size, quick size)
    "small objects, sigmoid, 4 classes": (dict(batch=4, num_class=4, shape=(128, 128), scenario="small",
                                                output_mode="multilabel"), dict(shape=(48, 48))),
    "large objects, softmax, 4 classes": (dict(batch=4, num_class=4, shape=(128, 128), scenario="large"),
                                          dict(shape=(48, 48))),
    "21-class softmax, 256x256": (dict(batch=2, num_class=21, shape=(256, 256), scenario="mixed"),
                                  dict(batch=1, shape=(64, 64))),
    "3-D volume, softmax, 3 classes, 48^3": (dict(batch=1, num_class=3, shape=(48, 48, 48), scenario="mixed"),
                                             dict(shape=(16, 16, 16))),
}


def _baseline(probs, multilabel):
    if multilabel:
        return probs > 0.5
    c = probs.shape[1]
    return np.argmax(probs, axis=1)[:, None] == np.arange(c).reshape((1, c) + (1,) * (probs.ndim - 2))


def _ba(probs):
    try:
        return rankseg(probs, metric="dice", output_mode="multilabel", solver="BA")
    except Exception as err:  # not available yet, or not for this input: skip the column
        return err


def quality(quick):
    print("\n## quality: mean exact expected score (expected_metric), per-class masks\n")
    print("| scenario | metric | argmax / p>1/2 | RMA | BA | exact | exact - RMA (max row) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (kwargs, small) in SCENARIOS.items():
        args = {**kwargs, **(small if quick else {})}
        probs = synthetic_batch(seed=0, **args).probs
        multilabel = args.get("output_mode") == "multilabel"
        for metric in ("dice", "iou"):
            base = expected_metric(probs, _baseline(probs, multilabel), metric)
            rma = expected_metric(probs, rankseg(probs, metric=metric, output_mode="multilabel"), metric)
            ex = expected_metric(probs, rankseg(probs, metric=metric, output_mode="multilabel", solver="exact"), metric)
            ba_txt = "-"
            if metric == "dice":
                ba = _ba(probs)
                ba_txt = f"{expected_metric(probs, ba, metric).mean():.5f}" if isinstance(ba, np.ndarray) else "n/a"
            print(
                f"| {name} | {metric} | {base.mean():.5f} | {rma.mean():.5f} | {ba_txt} | {ex.mean():.5f} | "
                f"{(ex - rma).max():.2e} |",
                flush=True,
            )


def accuracy(rows_per_family, seed=0):
    """Max |quadrature - oracle| over every volume of random rows, by family and rule regime."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from oracles import mask_score, topk_curve

    from rankseg_np._quadrature import rules
    from rankseg_np.cpu.exact import DICE, IOU, PACK_CUT, SWITCH, _scored_volumes

    rng = np.random.default_rng(seed)
    families = {
        "p = U^k (many small)": lambda d: rng.uniform(0, 1, d) ** rng.uniform(1, 10),
        "few confident + tiny": lambda d: np.r_[rng.uniform(0.5, 1, rng.integers(1, 8)),
                                                rng.uniform(0, rng.uniform(0.001, 0.1), d)],
        "flat (Poisson-like)": lambda d: np.full(d, rng.uniform(0.005, 0.5)),
        "Beta(0.3, 0.3)": lambda d: rng.beta(0.3, 0.3, d),
        "ties / zeros / ones": lambda d: rng.choice([0.0, 1.0, 0.5, 0.9, 0.02], d),
    }
    print("\n## quadrature error against the Poisson-binomial oracle (every volume tau = 0..d)\n")
    print(f"{rows_per_family} rows per family, d in [50, 400], dice and iou, smooth in (0, 0.05, 1, 4.5)\n")
    print("| family | max abs error, Jacobi (r0 <= %g) | max abs error, Laguerre | solver's own scores "
          "(candidate volumes) | solver gap to best volume |" % SWITCH)
    print("|---|---:|---:|---:|---:|")
    overall = [0.0, 0.0, 0.0, 0.0]
    for name, make in families.items():
        worst = [0.0, 0.0, 0.0, 0.0]
        for _ in range(rows_per_family):
            p = np.asarray(make(int(rng.integers(50, 401))), dtype=np.float64)
            order = np.argsort(-p, kind="stable")
            masks = np.zeros((p.size + 1, p.size), dtype=bool)
            for tau in range(1, p.size + 1):
                masks[tau, order[:tau]] = True
            cum = np.r_[0.0, np.cumsum(p[order])]
            for metric in ("dice", "iou"):
                for smooth in (0.0, 0.05, 1.0, 4.5):
                    curve = topk_curve(p, metric, smooth)
                    quad = expected_metric(np.broadcast_to(p, masks.shape)[:, None].copy(), masks[:, None],
                                           metric, smooth)[:, 0]
                    tau = np.arange(p.size + 1)
                    r0 = tau + smooth + p.sum() + 0.5 if metric == "dice" else tau + smooth + p.sum() - cum
                    err = np.abs(quad - curve)
                    jac = r0 <= SWITCH
                    worst[0] = max(worst[0], err[jac].max(initial=0.0))
                    worst[1] = max(worst[1], err[~jac].max(initial=0.0))
                    # the row solver's scores of its candidate volumes (its own truncation and nodes)
                    if p.max() > 0:  # an active row
                        zero, c0, f, *_ = _scored_volumes(p, p[p > PACK_CUT], int((p > PACK_CUT).sum()),
                                                          p.sum(), DICE if metric == "dice" else IOU, smooth,
                                                          rules(smooth))
                        own = np.abs(f - curve[c0 : c0 + f.size]).max(initial=0.0)
                        worst[2] = max(worst[2], own, abs(zero - curve[0]) if zero > -np.inf else 0.0)
                    if p.max() > 0:
                        ours = rankseg(p[None, None], metric=metric, smooth=smooth, output_mode="multilabel",
                                       solver="exact", pruning_prob=0.0)[0, 0]
                        best = curve[1:].max() if smooth == 0.0 else curve.max()
                        worst[3] = max(worst[3], best - mask_score(p, ours, metric, smooth))
        overall = [max(a, b) for a, b in zip(overall, worst)]
        print(f"| {name} | {worst[0]:.1e} | {worst[1]:.1e} | {worst[2]:.1e} | {worst[3]:.1e} |", flush=True)
    print(f"| **all** | {overall[0]:.1e} | {overall[1]:.1e} | {overall[2]:.1e} | {overall[3]:.1e} |")


def accuracy_by_length(rows_per_length, lengths=(10_000, 100_000, 1_000_000), seed=0):
    """Max |expected_metric - mpmath| per row length d, and adjacent volumes near the optimum.

    Rows of d pixels drawn from 24 distinct values (``tests/oracles.palette_row``),
    shuffled, with random masks; the reference is ``expected_score_mp`` (mpmath,
    30 digits, adaptive quadrature).  Then, on one row per d, the top-tau sets
    around the exact solver's volume: how many adjacent pairs
    ``expected_metric`` orders differently from the reference.
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from oracles import expected_score_mp, palette_row

    import mpmath

    rng = np.random.default_rng(seed)
    print("\n## expected_metric against mpmath (30 digits) by row length\n")
    print(f"{rows_per_length} rows per length (24 distinct values, shuffled, random masks), "
          "dice and iou, smooth in (0, 1)\n")
    print("| d | max abs error | adjacent top-tau pairs mis-ranked (near the optimum) | smallest reference gap |")
    print("|---:|---:|---:|---:|")
    for d in lengths:
        worst = 0.0
        for _ in range(rows_per_length):
            values, n_in, n_out, p, mask = palette_row(d, rng)
            for metric in ("dice", "iou"):
                for smooth in (0.0, 1.0):
                    ref = expected_score_mp(values, n_in, n_out, metric, smooth)
                    got = expected_metric(p[None, None], mask[None, None], metric, smooth)[0, 0]
                    worst = max(worst, abs(float(mpmath.mpf(float(got)) - ref)))
        # Adjacent volumes around the optimum of one row (Dice, smooth 0).
        values, _, _, p, _ = palette_row(d, rng)
        counts = np.array([(p == v).sum() for v in values])
        best = rankseg(p[None, None], solver="exact", output_mode="multilabel", pruning_prob=0.0)[0, 0]
        tau_star = int(best.sum())
        order = np.argsort(-p, kind="stable")
        refs, ours = [], []
        for tau in range(max(1, tau_star - 3), min(d, tau_star + 3) + 1):
            mask = np.zeros(d, dtype=bool)
            mask[order[:tau]] = True
            n_in = np.array([int(mask[p == v].sum()) for v in values])
            refs.append(expected_score_mp(values, n_in, counts - n_in, "dice", 0.0))
            ours.append(float(expected_metric(p[None, None], mask[None, None])[0, 0]))
        gaps = [refs[i + 1] - refs[i] for i in range(len(refs) - 1)]
        wrong = sum((ours[i + 1] - ours[i] > 0) != (gap > 0) for i, gap in enumerate(gaps) if gap != 0)
        smallest = min(abs(float(gap)) for gap in gaps)
        print(f"| {d:.0e} | {worst:.1e} | {wrong} of {len(gaps)} | {smallest:.1e} |", flush=True)


def tiny_rows(d=1_000_000, seed=0):
    """Exact-solver time on rows of tiny and subnormal values, against a uniform row of the same size.

    Such rows once cost 10-50x a uniform row (every pixel in histogram bin 0,
    so every volume was a candidate and every quadrature node did subnormal
    arithmetic); ``tests/test_exact_tiny_values.py`` holds the answers to exact
    rational oracles.
    """
    rng = np.random.default_rng(seed)
    rows = {
        "uniform [0, 1)": rng.random(d),
        "all subnormal (U * 1e-310)": rng.random(d) * 1e-310,
        "constant 5e-324": np.full(d, 5e-324),
        "half U * 1e-5, half subnormal": np.r_[rng.random(d // 2) * 1e-5, rng.random(d // 2) * 1e-310],
        "U * 1e-22 (all in bin 0)": rng.random(d) * 1e-22,
    }
    rankseg(rows["uniform [0, 1)"][None, None, :1000], solver="exact", output_mode="multilabel")  # compile
    print(f"\n## exact solver, one row of {d:.0e} pixels, pruning_prob=0, best of 2 after a warm-up\n")
    print("| row | dice (s) | iou (s) | dice / uniform |")
    print("|---|---:|---:|---:|")
    base = None
    for name, row in rows.items():
        t = {}
        for metric in ("dice", "iou"):
            t[metric] = best_time(lambda: rankseg(row[None, None], metric=metric, solver="exact",
                                                  output_mode="multilabel", pruning_prob=0.0), 2)
        base = base or t["dice"]
        print(f"| {name} | {t['dice']:.3f} | {t['iou']:.3f} | {t['dice'] / base:.1f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ba", action="store_true", help="skip rankseg 0.0.8's BA (slow)")
    parser.add_argument("--accuracy", action="store_true", help="only the quadrature error study")
    parser.add_argument("--rows", type=int, default=20, help="rows per family in the accuracy study")
    parser.add_argument("--length-rows", type=int, default=2, help="rows per length in the d = 1e4..1e6 study")
    parser.add_argument("--tiny", action="store_true", help="only the tiny/subnormal rows timing")
    args = parser.parse_args(argv)
    if args.tiny:
        tiny_rows()
        return
    if args.accuracy:
        accuracy(args.rows)
        accuracy_by_length(args.length_rows)
        return
    import numba

    print(f"numba threads: {numba.get_num_threads()}")
    shapes = [(2, 21, 64, 64)] if args.quick else [(4, 21, 256, 256), (4, 21, 512, 512)]
    for shape in shapes:
        speed(shape, args.repeat, with_ba=not args.no_ba)
    quality(args.quick)


if __name__ == "__main__":
    main()
