"""RMA speed and memory against ``np.argmax`` and ``rankseg`` 0.0.8, in one process.

    python benchmarks/bench_rma.py            # (4, 21, 512, 512) and (1, 3, 128, 256, 256)
                                              # -> also benchmarks/results/bench_rma.md
    python benchmarks/bench_rma.py --quick    # small shapes, a smoke test (prints only)
    python benchmarks/bench_rma.py --sum-check  # cost of the multiclass class-sum check only

Times are the best of ``--repeat`` runs after a warm-up (Numba compiles on the
warm-up); ratios divide by ``np.argmax(probs, axis=1)`` measured in the same
process on the same array.  Peak memory is the rise of the process's peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` before each method) above
the RSS before the call: what the method allocates beyond its input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rankseg_np import rankseg

from _common import best_time, softmax_probs



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



def methods(probs):
    out = {
        "np.argmax(probs, axis=1)": lambda: np.argmax(probs, axis=1),
        "rankseg_np RMA dice multiclass": lambda: rankseg(probs, metric="dice"),
        "rankseg_np RMA iou multiclass": lambda: rankseg(probs, metric="iou"),
        "rankseg_np RMA dice multilabel": lambda: rankseg(probs, metric="dice", output_mode="multilabel"),
        "rankseg_np RMA iou multilabel": lambda: rankseg(probs, metric="iou", output_mode="multilabel"),
        "rankseg_np RMA dice smooth=1 multiclass": lambda: rankseg(probs, metric="dice", smooth=1.0),
    }
    try:
        import rankseg as rs
        import torch
    except ImportError:
        print("(rankseg / torch not installed: pip install -e '.[compat]' to compare)")
        return out
    tensor = torch.from_numpy(probs)
    out["rankseg 0.0.8 RMA dice multiclass"] = lambda: rs.RankSEG(metric="dice").predict(tensor)
    out["rankseg 0.0.8 RMA dice multiclass safe_screening"] = lambda: rs.RankSEG(
        metric="dice", safe_screening=True
    ).predict(tensor)
    out["rankseg 0.0.8 RMA iou multiclass"] = lambda: rs.RankSEG(metric="iou").predict(tensor)
    return out


LINES = []


def emit(line=""):
    """Print a line and keep it for the results file."""
    print(line, flush=True)
    LINES.append(line)


def run(shape, repeat):
    probs = softmax_probs(shape)
    emit(f"\n## probs {shape} float32 ({probs.nbytes / 2**20:.0f} MiB)\n")
    emit("| method | time (s) | x argmax | peak extra memory (MiB) |")
    emit("|---|---:|---:|---:|")
    base = None
    results = {}
    for name, fn in methods(probs).items():
        slow = name.startswith("rankseg 0.0.8")
        t = best_time(fn, 2 if slow else repeat)
        mem = peak_extra_bytes(fn)
        base = base or t
        results[name] = t
        emit(f"| {name} | {t:.4f} | {t / base:.2f} | {mem / 2**20:.0f} |")
    ours = results["rankseg_np RMA dice multiclass"]
    for ref_name in ("rankseg 0.0.8 RMA dice multiclass", "rankseg 0.0.8 RMA dice multiclass safe_screening"):
        if ref_name in results:
            emit(f"\nspeed-up of rankseg_np RMA dice multiclass over {ref_name}: {results[ref_name] / ours:.1f}x")
    return results


def sum_check_cost(shape, repeat):
    """Time of the multiclass claims pass with and without the class-sum check, against full RMA.

    The check rides in the claims pass (``cpu.multiclass.resolve(..., class_sums)``);
    its cost is the difference of the two resolve timings, as a share of the
    whole ``rankseg(probs)`` call (which includes it).
    """
    from rankseg_np import cpu
    from rankseg_np._validate import check_config

    probs = softmax_probs(shape)
    p3 = cpu.as_rows(probs)
    cfg = check_config(shape[1])
    decision = cpu.decide(p3, cfg)
    sums = np.zeros(4)
    whole = best_time(lambda: rankseg(probs), repeat)
    plain = best_time(lambda: cpu.multiclass.resolve(p3, decision, cfg), repeat)
    checked = best_time(lambda: cpu.multiclass.resolve(p3, decision, cfg, sums), repeat)
    print(f"| {shape} | {whole:.4f} | {plain:.4f} | {checked:.4f} | {(checked - plain) / whole:+.1%} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sum-check", action="store_true", help="only the class-sum check's cost")
    args = parser.parse_args(argv)
    import numba

    if args.sum_check:
        print(f"numba threads {numba.get_num_threads()}; best of {args.repeat}\n")
        print("| probs (float32 softmax) | rankseg RMA dice multiclass (s) | claims pass (s) | "
              "claims pass + sum check (s) | check / RMA |")
        print("|---|---:|---:|---:|---:|")
        for shape in [(2, 21, 128, 128)] if args.quick else [(4, 21, 512, 512), (1, 3, 128, 256, 256)]:
            sum_check_cost(shape, args.repeat)
        return

    import datetime
    import os
    import platform

    emit(f"# bench_rma ({datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
         f"numba threads {numba.get_num_threads()}, 1-min load {os.getloadavg()[0]:.1f} at start)")
    shapes = [(2, 21, 128, 128), (1, 3, 32, 64, 64)] if args.quick else [(4, 21, 512, 512), (1, 3, 128, 256, 256)]
    for shape in shapes:
        run(shape, args.repeat)
    if not args.quick:
        out = Path(__file__).resolve().parent / "results" / "bench_rma.md"
        out.write_text("\n".join(LINES) + "\n\nRegenerate: `python benchmarks/bench_rma.py`\n")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
