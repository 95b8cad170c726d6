"""RMA speed and memory against the cost of reading the input once, ``np.argmax`` and ``rankseg`` 0.0.8.

    python benchmarks/bench_rma.py            # (4, 21, 512, 512) float32/64/16 and (1, 3, 128, 256, 256)
                                              # -> also benchmarks/results/bench_rma.md
    python benchmarks/bench_rma.py --quick    # small shapes, a smoke test (prints only)
    python benchmarks/bench_rma.py --sum-check  # cost of the multiclass class-sum check only

Every method runs in one process on the same array; times are the best of
``--repeat`` wall-clock runs after a warm-up call (Numba compiles there).
The one-pass argmax is timed again after every method and keeps its best
over the whole table: on the shared 2-core machine its best of 7 moved
between 2.3 and 5.2 ms from one run to the next, and a slow set of its runs
would flatter every ratio.
Two yardsticks, measured in the same table:

* **one-pass argmax**: ``rankseg_np.cli._baseline.argmax_once``, a parallel
  Numba argmax over classes that reads every probability exactly once: the
  physical floor of anything that looks at every value.  "x 1-pass" divides
  by it; it is the figure the speed goals are stated in.
* ``np.argmax(probs, axis=1)``: what a pipeline without RankSEG runs
  (single-threaded, strided over classes, so a weak yardstick).

With ``--clock cpu`` the times are the process's CPU time (all threads
together, ``time.process_time``) instead of wall-clock time: on a shared
machine, where a parallel region waits for descheduled workers, that measures
the work done rather than the wait (run it with ``NUMBA_NUM_THREADS=1`` for
single-thread figures).  Results files are written for wall-clock runs only.

"GB/s" is the input's size over the time: the rate at which a method reads
its input.  Peak memory is the rise of the process's peak RSS (``VmHWM``,
reset through ``/proc/self/clear_refs`` before each method) above the RSS
before the call: what the method allocates beyond its input.  The machine's
1-minute load average is printed with each table: on a shared machine the
ratios (all measured in one run) mean more than the times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np

from rankseg_np import rankseg
from rankseg_np.cli._baseline import argmax_once, best_times

from _common import softmax_probs

BASE = "one-pass argmax (parallel Numba)"
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def best_time(fn, repeat):
    """Best of ``repeat`` timed calls after a warm-up call, on the chosen clock."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best
RMA_MC = "RMA Dice multiclass"


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def peak_extra_bytes(fn):
    """Peak RSS above the current RSS while ``fn`` runs (Linux; 0 elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return 0
    before = _status("VmRSS")
    fn()
    return max(0, _status("VmHWM") - before)


def methods(probs, full, exact, compat):
    """(name, function, repeat factor) of every method timed on ``probs``."""
    # Numba has no float16: the one-pass argmax reads the float32 copy that RMA also makes.
    readable = probs if probs.dtype != np.float16 else probs.astype(np.float32)
    out = [
        (BASE, lambda: argmax_once(readable), 1),
        ("np.argmax(probs, axis=1)", lambda: np.argmax(probs, axis=1), 1),
        (RMA_MC, lambda: rankseg(probs, metric="dice"), 1),
        ("RMA Dice multilabel", lambda: rankseg(probs, metric="dice", output_mode="multilabel"), 1),
    ]
    if full:
        out += [
            ("RMA IoU multiclass", lambda: rankseg(probs, metric="iou"), 1),
            ("RMA IoU multilabel", lambda: rankseg(probs, metric="iou", output_mode="multilabel"), 1),
            ("RMA Dice smooth=1 multiclass", lambda: rankseg(probs, metric="dice", smooth=1.0), 1),
            ("RMA Dice smooth=1 multilabel",
             lambda: rankseg(probs, metric="dice", smooth=1.0, output_mode="multilabel"), 1),
        ]
    if exact:
        out += [
            ("exact Dice multiclass", lambda: rankseg(probs, metric="dice", solver="exact"), 0),
            ("exact IoU multiclass", lambda: rankseg(probs, metric="iou", solver="exact"), 0),
        ]
    if not compat:
        return out
    try:
        import rankseg as rs
        import torch
    except ImportError:
        emit("(rankseg / torch not installed: pip install -e '.[compat]' to compare)")
        return out
    tensor = torch.from_numpy(probs)
    out += [
        ("rankseg 0.0.8 RMA Dice multiclass", lambda: rs.RankSEG(metric="dice").predict(tensor), 0),
        ("rankseg 0.0.8 RMA Dice multiclass safe_screening",
         lambda: rs.RankSEG(metric="dice", safe_screening=True).predict(tensor), 0),
    ]
    return out


LINES = []


def emit(line=""):
    """Print a line and keep it for the results file."""
    print(line, flush=True)
    LINES.append(line)


def run(shape, dtype, repeat, full=True, exact=False, compat=False):
    probs = softmax_probs(shape).astype(dtype, copy=False)
    gb = probs.nbytes / 1e9
    emit(f"\n## probs {shape} {np.dtype(dtype).name} ({probs.nbytes / 2**20:.0f} MiB), "
         f"1-min load {os.getloadavg()[0]:.1f}\n")
    emit("| method | time (ms) | x 1-pass | x np.argmax | GB/s | peak extra memory (MiB) |")
    emit("|---|---:|---:|---:|---:|---:|")
    cases = methods(probs, full, exact, compat)
    runs = {name: max(2, repeat // 2) if factor == 0 else repeat for name, _, factor in cases}
    # The yardstick keeps its best over the whole table (see the module docstring).
    results = best_times([(name, fn) for name, fn, _ in cases], runs.__getitem__, BASE, timer=best_time)
    memory = {name: peak_extra_bytes(fn) for name, fn, _ in cases}
    base = results[BASE]
    npa = results["np.argmax(probs, axis=1)"]
    for name, t in results.items():
        emit(f"| {name} | {1e3 * t:.2f} | {t / base:.2f} | {t / npa:.2f} | {gb / t:.2f} | "
             f"{memory[name] / 2**20:.0f} |")
    emit(f"\n(1-min load {os.getloadavg()[0]:.1f} at the end of this table)")
    ours = results[RMA_MC]
    for name in ("exact Dice multiclass", "exact IoU multiclass"):
        if name in results:
            emit(f"{name}: {results[name] / ours:.2f}x {RMA_MC}")
    for name in ("rankseg 0.0.8 RMA Dice multiclass", "rankseg 0.0.8 RMA Dice multiclass safe_screening"):
        if name in results:
            emit(f"speed-up of {RMA_MC} over {name}: {results[name] / ours:.1f}x")
    return results


def sum_check_cost(shape, repeat):
    """CPU time of the multiclass claims pass with and without the class-sum check, against full RMA.

    The check rides in the claims pass (``cpu.multiclass.resolve(..., class_sums)``);
    its cost is the difference of the two resolve timings, as a share of the
    whole ``rankseg(probs)`` call (which includes it).  CPU time on one Numba
    thread, best of interleaved runs: on a shared machine wall time is noise.
    """
    from rankseg_np import cpu
    from rankseg_np._validate import check_config
    from rankseg_np.cpu import rma

    probs = softmax_probs(shape)
    p3 = cpu.as_rows(probs)
    cfg = check_config(shape[1])
    decision = rma.decide(p3, cfg)
    sums = np.zeros(4)
    import time

    import numba

    def cpu_time(fn):
        """CPU seconds of one call on one Numba thread (other processes' load does not count)."""
        t0 = time.process_time()
        fn()
        return time.process_time() - t0

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        variants = {
            "whole": lambda: rankseg(probs),
            "plain": lambda: cpu.multiclass.resolve(p3, decision, cfg),
            "checked": lambda: cpu.multiclass.resolve(p3, decision, cfg, sums),
        }
        best = {name: (fn(), float("inf"))[1] for name, fn in variants.items()}  # warm-up (compile)
        for _ in range(repeat):  # interleaved, so drifting load affects all alike
            for name, fn in variants.items():
                best[name] = min(best[name], cpu_time(fn))
    finally:
        numba.set_num_threads(threads)
    whole, plain, checked = best["whole"], best["plain"], best["checked"]
    print(f"| {shape} | {whole:.4f} | {plain:.4f} | {checked:.4f} | {(checked - plain) / whole:+.1%} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke test, prints only)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per method (best is kept)")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact solver rows")
    parser.add_argument("--no-rankseg", action="store_true", help="skip rankseg 0.0.8 (slow)")
    parser.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                        help="wall-clock time (default) or the process's CPU time (shared machines)")
    parser.add_argument("--sum-check", action="store_true", help="only the class-sum check's cost")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    import numba

    if args.sum_check:
        print(f"CPU time on one Numba thread (time.process_time), best of {args.repeat} interleaved runs\n")
        print("| probs (float32 softmax) | rankseg RMA dice multiclass (CPU s) | claims pass (CPU s) | "
              "claims pass + sum check (CPU s) | check / RMA |")
        print("|---|---:|---:|---:|---:|")
        for shape in [(2, 21, 128, 128)] if args.quick else [(4, 21, 512, 512), (1, 3, 128, 256, 256)]:
            sum_check_cost(shape, args.repeat)
        return

    emit(f"# bench_rma ({datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
         f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
         f"1-min load {os.getloadavg()[0]:.1f} at start; best of {args.repeat} runs, {args.clock} clock)")
    if args.quick or args.clock != "wall":
        if not args.quick:
            run((4, 21, 512, 512), np.float32, args.repeat, exact=not args.no_exact)
            return
        run((2, 21, 128, 128), np.float32, args.repeat, exact=not args.no_exact)
        run((1, 3, 32, 64, 64), np.float32, args.repeat, full=False)
        return
    run((4, 21, 512, 512), np.float32, args.repeat, exact=not args.no_exact, compat=not args.no_rankseg)
    run((4, 21, 512, 512), np.float64, args.repeat, full=False)
    run((4, 21, 512, 512), np.float16, args.repeat, full=False)
    run((1, 3, 128, 256, 256), np.float32, args.repeat)
    out = Path(__file__).resolve().parent / "results" / "bench_rma.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(LINES) + "\n\nRegenerate: `python benchmarks/bench_rma.py`\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
