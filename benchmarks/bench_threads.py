"""Where do Numba's threads start to pay?  The measurement behind ``rankseg_np.cpu.SERIAL_BELOW``.

    python benchmarks/bench_threads.py          # -> also benchmarks/results/bench_threads.md
    python benchmarks/bench_threads.py --quick  # fewer sizes and repeats (prints only)

For batches of 4 images x 4 classes (float32 softmax) from 2^12 to 2^22
probabilities, RMA Dice multiclass (the default call) runs on the serial
kernels and on the parallel ones (all of Numba's threads), best of
``--repeat`` wall-clock runs each, in one process.  A parallel region costs
a wake-up of the worker threads, which on a busy machine can wait for a
descheduled worker; the table shows from which size the parallel kernels win
on this machine, at this load.  The library switches at ``SERIAL_BELOW``.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import numba
import numpy as np

from rankseg_np import cpu
from rankseg_np._validate import check_config
from rankseg_np.cpu._threads import serial_here

from _common import best_time, softmax_probs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    repeat = 5 if args.quick else args.repeat
    sides = (32, 128, 512) if args.quick else (32, 64, 128, 256, 362, 512, 1024)
    lines = [
        f"# bench_threads ({datetime.date.today()}, {os.cpu_count()} cores, {numba.get_num_threads()} Numba "
        f"threads, 1-min load {os.getloadavg()[0]:.1f} at start; best of {repeat}; library switch: "
        f"SERIAL_BELOW = {cpu.SERIAL_BELOW:,})",
        "",
        "| probabilities (4, 4, s, s) | serial (ms) | parallel (ms) | parallel / serial |",
        "|---|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for side in sides:
        probs = softmax_probs((4, 4, side, side))
        cfg = check_config(4, metric="dice")

        def serial():
            with serial_here():
                cpu._pipeline.run(cpu.EXECUTOR, probs, cfg)

        def parallel():
            cpu._pipeline.run(cpu.EXECUTOR, probs, cfg)

        ts = best_time(serial, repeat)
        tp = best_time(parallel, repeat)
        line = f"| {probs.size:,} (s = {side}) | {1e3 * ts:.2f} | {1e3 * tp:.2f} | {tp / ts:.2f} |"
        lines.append(line)
        print(line, flush=True)
    lines.append(f"\n(1-min load {os.getloadavg()[0]:.1f} at the end)")
    print(lines[-1])
    if not args.quick:
        out = Path(__file__).resolve().parent / "results" / "bench_threads.md"
        tmp = out.with_suffix(".md.tmp")
        tmp.write_text("\n".join(lines) + "\n\nRegenerate: `python benchmarks/bench_threads.py`\n")
        os.replace(tmp, out)
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
