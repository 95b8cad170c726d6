"""GPU speed and memory: rankseg_np on CuPy against ``torch.argmax`` and ``rankseg`` 0.0.8 on CUDA.

    python benchmarks/bench_gpu.py              # (8, 21, 1024, 1024) and (1, 14, 128, 256, 256) float32
    python benchmarks/bench_gpu.py --quick      # small shapes
    python benchmarks/bench_gpu.py --dry-run    # no GPU needed: the same code path on NumPy, tiny shapes
    python benchmarks/bench_gpu.py --dry-run --shape 1,16,1024,1024   # any shape (also on a GPU)

Needs CuPy (``pip install cupy-cuda12x``), and PyTorch with CUDA plus
``rankseg`` 0.0.8 for the baselines (``[compat]``).  Without a GPU it stops
with a message unless ``--dry-run`` is given; ``--dry-run`` runs the GPU
algorithm with ``xp = numpy`` (``rankseg_np.gpu.solve_with``) and the
baselines on the CPU, and writes its tables to a temporary folder unless
``--out`` says otherwise, so it never overwrites real results.

Method:
* one process, one input array per shape; PyTorch sees the CuPy array through
  DLPack (zero-copy), so every method reads the same device memory;
* time: wall clock between two device-wide synchronisations, best of
  ``--repeat`` runs after one warm-up run (kernel compilation, caches);
* memory: peak device memory the call needs beyond its input, output
  included.  CuPy: the memory pool's held bytes after the call, with all
  cached blocks released before it (the pool keeps freed blocks, so this is
  its high-water mark).  PyTorch: ``torch.cuda.max_memory_allocated`` above
  the allocation before the call.  A method that uses both reports the sum;
* ratios: time / time of ``torch.argmax(probs, 1)`` and time of
  ``rankseg`` 0.0.8's RMA (same shape, same process); the exact solver also
  against our RMA (the issue's "exact within 10x of our RMA");
* check: our labels against the CPU (Numba) path on the same values
  (pixels that differ), and agreement with ``rankseg`` 0.0.8's labels.

Results go to ``benchmarks/results/bench_gpu_<device>.json`` and ``.md``
with the device name, the date and library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import platform
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rankseg_np import rankseg
from rankseg_np import gpu as rs_gpu
from rankseg_np._validate import check_config

SHAPES = {"full": [(8, 21, 1024, 1024), (1, 14, 128, 256, 256)], "quick": [(2, 21, 256, 256), (1, 4, 32, 64, 64)]}
DRY_SHAPES = [(2, 5, 48, 40), (1, 3, 8, 16, 16)]
ARGMAX = "torch.argmax(probs, 1)"
RANKSEG = "rankseg 0.0.8 RMA dice multiclass"
OUR_RMA = "rankseg_np RMA dice multiclass"
EXACT = "rankseg_np exact dice multiclass"


class NoGPU(RuntimeError):
    pass


# --------------------------------------------------------------------------- #
# Execution contexts: a CUDA device, or NumPy for --dry-run
# --------------------------------------------------------------------------- #

class Context:
    """Namespace, synchronisation, memory measurement and the baselines' tensors."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        if not dry_run and not rs_gpu.is_available():
            raise NoGPU(
                "bench_gpu.py needs CuPy and a CUDA GPU (pip install cupy-cuda12x); none found. "
                "Run with --dry-run to exercise the benchmark on NumPy without a GPU."
            )
        try:
            import torch
        except ImportError:
            print("(torch not installed: torch.argmax and rankseg 0.0.8 baselines skipped)")
            torch = None
        self.torch = torch
        try:
            import rankseg as rankseg_torch
        except ImportError:
            print("(rankseg not installed: pip install -e '.[compat]' to compare)")
            rankseg_torch = None
        self.rankseg_torch = rankseg_torch
        if dry_run:
            self.xp = np
            self.device_name = f"CPU (dry run, {platform.processor() or platform.machine()})"
            return
        import cupy

        self.xp = cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self.device_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        if torch is not None and not torch.cuda.is_available():
            print("(torch has no CUDA: torch baselines skipped)")
            self.torch = None

    # -- arrays ----------------------------------------------------------------
    def softmax_probs(self, shape, seed=0, scale=3.0):
        xp = self.xp
        if xp is np:
            x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        else:
            x = xp.random.default_rng(seed).standard_normal(shape, dtype=xp.float32)
        x *= np.float32(scale)
        x -= x.max(axis=1, keepdims=True)
        xp.exp(x, out=x)
        x /= x.sum(axis=1, keepdims=True)
        return x

    def as_torch(self, probs):
        if self.torch is None:
            return None
        return self.torch.from_numpy(probs) if self.xp is np else self.torch.from_dlpack(probs)

    def host(self, a):
        if self.xp is np:
            return np.asarray(a)
        if self.torch is not None and isinstance(a, self.torch.Tensor):
            return a.cpu().numpy()
        return self.xp.asnumpy(a)

    # -- our solver --------------------------------------------------------------
    def ours(self, probs, **params):
        if self.xp is np:  # the GPU algorithm on NumPy, not the Numba CPU path
            return rs_gpu.solve_with(probs, check_config(probs.shape[1], **params), np)
        return rankseg(probs, **params)

    # -- timing and memory -------------------------------------------------------
    def sync(self):
        if self.xp is not np:
            self.xp.cuda.runtime.deviceSynchronize()

    def time_best(self, fn, repeat):
        fn()  # warm-up: kernel compilation, caches
        self.sync()
        best = float("inf")
        for _ in range(repeat):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def peak_bytes(self, fn):
        """Peak memory ``fn`` needs beyond what is live before it (output included)."""
        if self.xp is np:
            tracemalloc.start()
            tracemalloc.reset_peak()
            try:
                fn()
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        cupy = self.xp
        pool = cupy.get_default_memory_pool()
        self.sync()
        pool.free_all_blocks()
        base = pool.total_bytes()
        torch_base = 0
        if self.torch is not None:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            torch_base = self.torch.cuda.memory_allocated()
        out = fn()
        self.sync()
        used = pool.total_bytes() - base
        if self.torch is not None:
            used += self.torch.cuda.max_memory_allocated() - torch_base
        del out
        return used


# --------------------------------------------------------------------------- #
# Methods
# --------------------------------------------------------------------------- #

def methods(ctx: Context, probs) -> dict[str, Callable[[], Any]]:
    t = ctx.as_torch(probs)
    out: dict[str, Callable[[], Any]] = {}
    if t is not None:
        torch = ctx.torch
        out[ARGMAX] = lambda: torch.argmax(t, 1)
    out[OUR_RMA] = lambda: ctx.ours(probs, metric="dice")
    out["rankseg_np RMA iou multiclass"] = lambda: ctx.ours(probs, metric="iou")
    out["rankseg_np RMA dice multilabel"] = lambda: ctx.ours(probs, metric="dice", output_mode="multilabel")
    out["rankseg_np RMA dice smooth=1 multiclass"] = lambda: ctx.ours(probs, metric="dice", smooth=1.0)
    out[EXACT] = lambda: ctx.ours(probs, metric="dice", solver="exact")
    out["rankseg_np exact iou multiclass"] = lambda: ctx.ours(probs, metric="iou", solver="exact")
    if t is not None and ctx.xp is not np:
        out["rankseg_np RMA dice multiclass, torch in/out (DLPack)"] = lambda: rankseg(t, metric="dice")
    if t is not None and ctx.rankseg_torch is not None:
        rs = ctx.rankseg_torch
        out[RANKSEG] = lambda: rs.RankSEG(metric="dice").predict(t)
        out["rankseg 0.0.8 RMA dice multiclass safe_screening (Triton if available)"] = lambda: rs.RankSEG(
            metric="dice", safe_screening=True
        ).predict(t)
    return out


def check_answers(ctx: Context, probs) -> dict[str, Any]:
    """Our device labels against the CPU path on the same values, and against rankseg 0.0.8."""
    ours = ctx.host(ctx.ours(probs, metric="dice"))
    host_probs = ctx.host(probs)
    cpu = rankseg(np.ascontiguousarray(host_probs), metric="dice")
    report = {"pixels_differing_from_cpu_path": int((ours != cpu).sum()), "pixels": int(ours.size)}
    exact = ctx.host(ctx.ours(probs, metric="dice", solver="exact"))
    exact_cpu = rankseg(np.ascontiguousarray(host_probs), metric="dice", solver="exact")
    report["exact_pixels_differing_from_cpu_path"] = int((exact != exact_cpu).sum())
    if ctx.rankseg_torch is not None and ctx.torch is not None:
        theirs = ctx.host(ctx.rankseg_torch.RankSEG(metric="dice").predict(ctx.as_torch(probs)))
        report["agreement_with_rankseg_0.0.8"] = float((ours == theirs).mean())
    return report


def run_shape(ctx: Context, shape, repeat: int, check: bool) -> dict[str, Any]:
    probs = ctx.softmax_probs(shape)
    ctx.sync()
    input_bytes = int(np.prod(shape)) * 4
    rows = []
    for name, fn in methods(ctx, probs).items():
        try:
            seconds = ctx.time_best(fn, repeat)
            peak = ctx.peak_bytes(fn)
        except NotImplementedError as exc:
            rows.append({"method": name, "error": f"NotImplementedError: {exc}"})
            print(f"  {name:<70} not available: {exc}")
            continue
        except Exception as exc:  # e.g. out of memory in a baseline: record it, keep going
            rows.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"  {name:<70} failed: {type(exc).__name__}: {exc}")
            continue
        rows.append({"method": name, "seconds": seconds, "peak_extra_bytes": int(peak)})
        print(f"  {name:<70} {seconds * 1e3:10.2f} ms   peak extra {peak / 2**20:9.1f} MiB")
    timed = {r["method"]: r["seconds"] for r in rows if "seconds" in r}
    for r in rows:
        if "seconds" in r:
            if ARGMAX in timed:
                r["x_torch_argmax"] = r["seconds"] / timed[ARGMAX]
            if RANKSEG in timed:
                r["x_rankseg_0.0.8"] = r["seconds"] / timed[RANKSEG]
            if OUR_RMA in timed and "exact" in r["method"]:
                r["x_our_rma"] = r["seconds"] / timed[OUR_RMA]
    result = {"shape": list(shape), "dtype": "float32", "input_bytes": input_bytes, "methods": rows}
    if check:
        result["check"] = check_answers(ctx, probs)
        print(f"  check: {result['check']}")
    return result


# --------------------------------------------------------------------------- #
# Output
# --------------------------------------------------------------------------- #

def versions(ctx: Context) -> dict[str, str]:
    import rankseg_np

    v = {"python": platform.python_version(), "numpy": np.__version__, "rankseg_np": rankseg_np.__version__}
    if ctx.xp is not np:
        v["cupy"] = ctx.xp.__version__
        v["cuda_runtime"] = str(ctx.xp.cuda.runtime.runtimeGetVersion())
    if ctx.torch is not None:
        v["torch"] = ctx.torch.__version__
    if ctx.rankseg_torch is not None:
        v["rankseg"] = getattr(ctx.rankseg_torch, "__version__", "?")
    return v


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU benchmark: {report['device']}",
        "",
        f"Date: {report['date']}. Command: `{report['command']}`.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        "",
        "Time: best of the timed runs after a warm-up, between device synchronisations. "
        "Peak extra: device memory needed beyond the input, output included.",
        "",
    ]
    for res in report["results"]:
        lines += [
            f"## probs {tuple(res['shape'])} {res['dtype']} ({res['input_bytes'] / 2**20:.0f} MiB)",
            "",
            "| method | time (ms) | × torch.argmax | × rankseg 0.0.8 | × our RMA | peak extra (MiB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in res["methods"]:
            if "seconds" not in r:
                lines.append(f"| {r['method']} | {r['error']} | | | | |")
                continue
            xa = f"{r['x_torch_argmax']:.2f}" if "x_torch_argmax" in r else ""
            xr = f"{r['x_rankseg_0.0.8']:.3f}" if "x_rankseg_0.0.8" in r else ""
            xo = f"{r['x_our_rma']:.2f}" if "x_our_rma" in r else ""
            lines.append(
                f"| {r['method']} | {r['seconds'] * 1e3:.2f} | {xa} | {xr} | {xo} | {r['peak_extra_bytes'] / 2**20:.1f} |"
            )
        if "check" in res:
            lines += ["", f"Check: {res['check']}"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: run the GPU code on NumPy at tiny shapes")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per method (best is kept)")
    parser.add_argument("--no-check", action="store_true", help="skip the answer checks")
    parser.add_argument(
        "--shape", type=lambda v: tuple(int(n) for n in v.split(",")), action="append", default=None,
        help="B,C,H,W[,D] instead of the default shapes (repeatable); e.g. --dry-run --shape 1,16,1024,1024",
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    try:
        ctx = Context(dry_run=args.dry_run)
    except NoGPU as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shapes = args.shape or (DRY_SHAPES if args.dry_run else SHAPES["quick" if args.quick else "full"])
    repeat = 1 if args.dry_run else args.repeat
    print(f"device: {ctx.device_name}")
    results = []
    for shape in shapes:
        print(f"probs {shape} float32")
        results.append(run_shape(ctx, shape, repeat, check=not args.no_check))

    now = _dt.datetime.now(_dt.timezone.utc)
    report = {
        "device": ctx.device_name,
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "dry_run": args.dry_run,
        "command": "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": versions(ctx),
        "results": results,
    }
    if args.out is not None:
        out_dir = args.out
    elif args.dry_run:
        out_dir = Path(tempfile.mkdtemp(prefix="bench_gpu_dry_run_"))
    else:
        out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "dry_run" if args.dry_run else re.sub(r"[^a-z0-9]+", "_", ctx.device_name.lower()).strip("_")
    stem = out_dir / f"bench_gpu_{slug}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
