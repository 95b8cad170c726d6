"""The multiclass resolution alone (``cpu.multiclass``: claims, then conflicts) against one read of the input.

    NUMBA_NUM_THREADS=1 python benchmarks/bench_multiclass.py     # single-thread figures
    python benchmarks/bench_multiclass.py --repeat 9 --quick       # small shapes, a smoke test

For each shape and setting: the CPU time (``time.process_time``: all threads
together, so a descheduled worker does not count) of the class-sum-checking
claims pass (what the CPU executor runs), of the conflicts pass, and of
``rankseg_np.cli._baseline.argmax_once`` (one parallel read of the input), each
the best of ``--repeat`` runs after a warm-up, with the ratio to argmax_once.
The RMA decision is computed once per setting, outside the timings.

The script only calls kernels whose signatures are unchanged since the
multiclass rewrite, so running it with ``PYTHONPATH`` set to an older checkout
measures that checkout's kernels on the same machine.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from rankseg_np._solvers import METRIC_CODES
from rankseg_np._validate import Config
from rankseg_np.cli._baseline import argmax_once
from rankseg_np.cpu import multiclass, rma

from _common import softmax_probs

SHAPES = [(4, 21, 512, 512), (1, 3, 128, 256, 256)]
QUICK_SHAPES = [(2, 5, 64, 64), (1, 3, 16, 32, 32)]
SETTINGS = [
    Config(metric="dice"),
    Config(metric="dice", smooth=1.0),
    Config(metric="iou"),
    Config(metric="iou", smooth=1.0),
    Config(metric="dice", unassigned_policy="void", void_index=255),
]


def best_cpu_time(fn, repeat: int) -> float:
    """Best process CPU time of ``repeat`` calls of ``fn(timer)`` after one warm-up; ``fn`` times its own part."""
    fn(lambda: None)
    best = np.inf
    for _ in range(repeat):
        spans = []
        fn(lambda: spans.append(time.process_time()))
        best = min(best, spans[1] - spans[0])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    args = parser.parse_args()
    threads = os.environ.get("NUMBA_NUM_THREADS", "all")
    print(f"NUMBA_NUM_THREADS={threads}, best of {args.repeat}, CPU time (process_time), load {os.getloadavg()[0]:.2f}")
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        probs = softmax_probs(shape)
        p3 = np.ascontiguousarray(probs.reshape(shape[0], shape[1], -1))
        n_img, n_cls, d = p3.shape
        n_tasks = n_img * ((d + multiclass.TILE - 1) // multiclass.TILE)

        def one_read(mark):
            mark()
            argmax_once(probs)
            mark()

        base = best_cpu_time(one_read, args.repeat)
        print(f"\n{shape} float32: argmax_once {base * 1e3:.2f} ms")
        print(f"  {'setting':28s} {'claims ms':>9s} {'conflicts ms':>12s} {'sum ms':>7s} {'x 1-pass':>8s} {'open px':>8s}")
        for cfg in SETTINGS:
            threshold, tie_end, active, mu = rma.decide(p3, cfg)
            code = METRIC_CODES[cfg.metric]
            void = cfg.unassigned_policy == "void"
            state = {}

            def claims(mark):
                labels = np.empty((n_img, d), dtype=np.int64)
                tau_part, m_part = np.zeros((n_tasks, n_cls)), np.zeros((n_tasks, n_cls))
                mark()
                multiclass.checked_claims(p3, threshold, tie_end, active, labels, tau_part, m_part)
                mark()
                state["labels"] = labels
                state["tau"] = tau_part.reshape(n_img, -1, n_cls).sum(axis=1)
                state["m"] = m_part.reshape(n_img, -1, n_cls).sum(axis=1)

            def conflicts(mark):
                labels = state["labels"].copy()
                mark()
                multiclass.conflicts(p3, threshold, tie_end, active, labels, state["tau"], mu, state["m"], code,
                                     cfg.smooth, void, cfg.void_index)
                mark()

            t_claims = best_cpu_time(claims, args.repeat)
            t_conflicts = best_cpu_time(conflicts, args.repeat)
            total = t_claims + t_conflicts
            name = f"{cfg.metric} smooth={cfg.smooth:g} {cfg.unassigned_policy}"
            open_share = float(np.mean(state["labels"] < 0))
            print(f"  {name:28s} {t_claims * 1e3:9.2f} {t_conflicts * 1e3:12.2f} {total * 1e3:7.2f} "
                  f"{total / base:8.2f} {open_share:8.1%}")


if __name__ == "__main__":
    main()
