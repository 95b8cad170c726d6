"""Cold start: the first call in a fresh process with an empty Numba cache.

    python benchmarks/bench_cold_start.py           # -> also benchmarks/results/bench_cold_start.md
    python benchmarks/bench_cold_start.py --quick   # one run of each (prints only)

Each case runs in its own fresh Python process whose ``NUMBA_CACHE_DIR`` is a
new empty temporary directory, so nothing compiled earlier (by this script,
the test suite, or a previous run) can be reused: this is what a user's very
first call costs in a new container or CI job.  Timed inside the child, from
just before the first call to just after it (imports are timed separately):

* **trivial parallel kernel**: compile and run a one-line ``prange`` loop
  under ``numba.njit(parallel=True)``: the floor any parallel Numba code pays
  (LLVM, the threading layer's start-up);
* ``rankseg(probs)`` (RMA Dice, multiclass, the default) on a small float32
  batch, then a second call, then one with float64 input and
  ``output_mode='multilabel'``: a process's first small calls run in NumPy
  and compile nothing (``rankseg_np._first_calls``);
* the first call on the demo's shape ``(4, 4, 256, 256)`` (also NumPy);
* the same small first call with ``RANKSEG_NP_FIRST_CALLS=numba``: what
  compiling RMA's Numba kernels costs (every process that goes on to call
  more than ``_first_calls.BUDGET`` probabilities pays it once, or loads
  them from the disk cache);
* the same again in a second process on the same cache: loading the
  kernels from the disk cache;
* ``rankseg(probs, solver="exact")`` (always Numba);
* then, in this process, what the NumPy code of rented calls costs per call
  and per probability, up to the per-call cap.

The ratio of the first ``rankseg`` call to the trivial kernel is the figure
issue 15 states its goal in.  Best (minimum) over ``--runs`` fresh processes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRIVIAL = """
import numba, numpy as np
@numba.njit(parallel=True)
def double(x, out):
    for i in numba.prange(x.size):
        out[i] = 2.0 * x[i]
x = np.arange(1000.0); out = np.empty_like(x)
t0 = time.perf_counter(); double(x, out); times["trivial parallel kernel"] = time.perf_counter() - t0
"""

RANKSEG = """
t0 = time.perf_counter(); import rankseg_np; times["import rankseg_np"] = time.perf_counter() - t0
import numpy as np
rng = np.random.default_rng(0)
logits = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
t0 = time.perf_counter(); rankseg_np.rankseg(probs); times["first rankseg(probs)"] = time.perf_counter() - t0
t0 = time.perf_counter(); rankseg_np.rankseg(probs); times["second rankseg(probs)"] = time.perf_counter() - t0
t0 = time.perf_counter()
rankseg_np.rankseg(probs.astype(np.float64), output_mode="multilabel")
times["then float64 multilabel"] = time.perf_counter() - t0
"""

def _softmax(shape: tuple[int, ...]) -> str:
    """Child code: import rankseg_np and build float32 softmax ``probs`` of ``shape``."""
    return f"""
import rankseg_np, numpy as np
rng = np.random.default_rng(0)
logits = rng.standard_normal({shape}).astype(np.float32)
probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
"""


def _first_call(label: str, args: str = "") -> str:
    """Child code: time ``rankseg_np.rankseg(probs{args})`` under ``label``."""
    return f"""
t0 = time.perf_counter(); rankseg_np.rankseg(probs{args})
times[{label!r}] = time.perf_counter() - t0
"""


DEMO_SHAPE = _softmax((4, 4, 256, 256)) + _first_call("first rankseg(probs), probs (4, 4, 256, 256)")
COMPILING = _softmax((2, 4, 64, 64)) + _first_call("first rankseg(probs) with RANKSEG_NP_FIRST_CALLS=numba (compiles)")
LOADING = _softmax((2, 4, 64, 64)) + _first_call(
    "first rankseg(probs) with RANKSEG_NP_FIRST_CALLS=numba (loads them from a warm disk cache)"
)
EXACT = _softmax((2, 4, 64, 64)) + _first_call("first rankseg(probs, solver='exact')", ', solver="exact"')



def fresh(body: str, warm: bool = False, **env_vars: str) -> dict[str, float]:
    """Run ``body`` in a new interpreter with an empty Numba cache; return its ``times``.

    ``warm``: run it once first in another process on the same cache, and return
    the second run's times (the kernels are then loaded from the disk cache).
    """
    code = "import json, time\ntimes = {}\n" + textwrap.dedent(body) + "\nprint(json.dumps(times))\n"
    with tempfile.TemporaryDirectory(prefix="numba-cold-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("RANKSEG_NP_FIRST_CALLS", None)
        env.update(env_vars)
        for _ in range(2 if warm else 1):
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# What the first calls rented in NumPy cost (rankseg_np._first_calls), in this process:
# shapes up to the per-call cap AT_MOST = 2^22 probabilities.
RENTED_SHAPES = ((1, 2, 8, 8), (2, 4, 64, 64), (4, 4, 256, 256), (4, 4, 512, 512), (1, 16, 512, 512), (4, 2, 512, 512))


def rented_costs(repeat: int) -> list[str]:
    """Markdown rows: the NumPy code of the first calls (``gpu.solve_with(probs, cfg, numpy)``),
    best of ``repeat``, per call and per probability, float32 softmax, multiclass and multilabel."""
    import time

    import numpy as np

    from rankseg_np import gpu
    from rankseg_np._validate import check_config

    rows = []
    for shape in RENTED_SHAPES:
        rng = np.random.default_rng(0)
        logits = rng.standard_normal(shape, dtype=np.float32) * np.float32(3.0)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        cells = []
        for mode in ("multiclass", "multilabel"):
            cfg = check_config(shape[1], output_mode=mode)
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                gpu.solve_with(probs, cfg, np)
                best = min(best, time.perf_counter() - t0)
            cells += [f"{1e3 * best:.2f}", f"{1e9 * best / probs.size:.0f}"]
        rows.append(f"| {shape} | {probs.size:,} | " + " | ".join(cells) + " |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one process per case, nothing written")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per case (best kept)")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    best: dict[str, float] = {}
    load0 = os.getloadavg()[0]
    numba_now = {"RANKSEG_NP_FIRST_CALLS": "numba"}
    cases = ((TRIVIAL, False, {}), (RANKSEG, False, {}), (DEMO_SHAPE, False, {}), (COMPILING, False, numba_now),
             (LOADING, True, numba_now), (EXACT, False, {}))
    for body, warm, env_vars in cases:
        for _ in range(runs):
            for name, t in fresh(body, warm, **env_vars).items():
                best[name] = min(t, best.get(name, float("inf")))
    import numba

    base = best["trivial parallel kernel"]
    lines = [
        f"# bench_cold_start ({datetime.date.today()}, {os.cpu_count()} cores, numba {numba.__version__}, "
        f"1-min load {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end; best of {runs} fresh processes, "
        "each with an empty NUMBA_CACHE_DIR)",
        "",
        "| first call in a fresh process | time (s) | x trivial parallel kernel |",
        "|---|---:|---:|",
    ]
    for name, t in best.items():
        lines.append(f"| {name} | {t:.2f} | {t / base:.2f} |")
    lines += [
        "",
        "What a rented first call costs: the NumPy code (`gpu.solve_with(probs, cfg, numpy)`) on float32",
        f"softmax, RMA Dice, one thread, best of {3 * runs} in this process:",
        "",
        "| shape | probabilities | multiclass (ms) | (ns per probability) | multilabel (ms) | (ns per probability) |",
        "|---|---:|---:|---:|---:|---:|",
    ] + rented_costs(3 * runs)
    print("\n".join(lines))
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / "bench_cold_start.md"
        tmp = out.with_suffix(".md.tmp")
        tmp.write_text("\n".join(lines) + "\n\nRegenerate: `python benchmarks/bench_cold_start.py`\n")
        os.replace(tmp, out)
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
