"""A 100-class 3-D volume the size of a TotalSegmentator output, labelled through the Dask path.

    python benchmarks/bench_volume.py --quick                    # (1, 105, 64, 64, 64), 32^3 chunks: a smoke run
    python benchmarks/bench_volume.py                            # (1, 105, 256, 256, 256) float16, 3.5 GB
    python benchmarks/bench_volume.py --shape 1,105,128,128,128  # any size

1. **Input.** A synthetic softmax over 105 classes (background plus 104
   "organs": ellipsoids of random centre and radii with smooth wobbly
   boundaries), float16, written chunk by chunk to a Zarr store with
   ``--chunk``-sided spatial chunks holding all classes -- what a model's
   sliding-window output saved per block looks like.  No more than one chunk
   is ever in memory while generating.  Reused if the store already exists
   with the same parameters (``--workdir``).
2. **The same Dask graph for both methods**: ``da.from_zarr(store)`` ->
   ``method(x)`` -> ``.astype(uint8)`` -> ``.to_zarr(out)``, with ``method``
   either ``rankseg_np.rankseg`` (RMA, Dice; the reduction strategy: three
   streaming passes over the chunks) or ``x.argmax(axis=1)``.  Each method
   runs in a fresh Python process (so peak RSS is that method's alone) after a
   warm-up on a tiny volume (Numba compilation is not timed).  Reported: wall
   time and CPU time (user + system, all threads: less sensitive to other
   jobs on a shared machine), peak RSS of the process during the run (sampled
   every 20 ms and the kernel's high-water mark), the RSS before the run
   (imports), and the load average around the runs.  ``--repeat N`` runs each
   method N times, alternating, and keeps the best times and the worst peak.
3. The RankSEG labels are also written as NIfTI (``--nifti``, needs nibabel):
   the labels are 1 byte a voxel, so they are read whole from the output Zarr.
4. For volumes up to ``--check-max`` voxels the Dask answer is compared with
   the in-memory ``rankseg`` on the whole volume (must be equal).

Results go to ``benchmarks/results/bench_volume[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FULL = (1, 105, 256, 256, 256)
QUICK = (1, 105, 64, 64, 64)


# ---------------------------------------------------------------- the synthetic volume


def organs(n_cls: int, spatial: tuple[int, ...], seed: int) -> dict:
    """Centres, radii and boundary wobble of the 104 foreground "organs" (class 0 is background)."""
    rng = np.random.default_rng(seed)
    size = np.array(spatial, dtype=np.float64)
    n = n_cls - 1
    return {
        "centre": rng.uniform(0.1, 0.9, size=(n, 3)) * size,
        "radius": rng.uniform(0.03, 0.12, size=(n, 3)) * size.min(),
        "freq": rng.uniform(0.05, 0.2, size=(n, 3)),
        "phase": rng.uniform(0, 2 * np.pi, size=(n, 3)),
    }


def block(params: dict, lo: tuple[int, ...], hi: tuple[int, ...], sharpness: float = 6.0) -> np.ndarray:
    """Probabilities ``(C, *block)`` float16 of the spatial block ``[lo, hi)``: a softmax over classes.

    Organ ``c`` has logit ``sharpness * (1 - r_c^2) + wobble_c`` with ``r_c``
    the ellipsoidal distance to its centre; the background has logit 0.  So
    each organ is confident inside, uncertain in a shell around its boundary
    (and where organs touch), and absent far away.
    """
    axes = [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)]
    n = params["centre"].shape[0]
    logits = np.zeros((n + 1,) + tuple(b - a for a, b in zip(lo, hi)), dtype=np.float32)
    for c in range(n):
        r2 = np.float32(0)
        wobble = np.float32(0)
        for a, coord in enumerate(axes):
            shape = [1, 1, 1]
            shape[a] = -1
            d = ((coord - params["centre"][c, a]) / params["radius"][c, a]).reshape(shape)
            r2 = r2 + d * d
            wobble = wobble + np.sin(coord * params["freq"][c, a] + params["phase"][c, a]).reshape(shape)
        logits[c + 1] = np.float32(sharpness) * (1 - r2) + np.float32(0.7) * wobble
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits.astype(np.float16)


def generate(store: Path, shape: tuple[int, ...], chunk: int, seed: int) -> float:
    """Write the volume to a Zarr store chunk by chunk; reuse it if already there. Returns seconds."""
    import zarr

    meta = {"shape": list(shape), "chunk": chunk, "seed": seed, "generator": "bench_volume.block v1"}
    if store.exists():
        try:
            if dict(zarr.open_array(str(store), mode="r").attrs).get("bench_volume") == meta:
                return 0.0
        except Exception:  # noqa: BLE001 - an unreadable store is regenerated
            pass
        shutil.rmtree(store)
    t0 = time.perf_counter()
    spatial = shape[2:]
    tmp = store.with_name(store.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    arr = zarr.create_array(
        str(tmp), shape=shape, chunks=(1, shape[1]) + (chunk,) * len(spatial), dtype="float16",
        compressors=None,  # uncompressed: the timings measure the pipeline, not a codec
    )
    params = [organs(shape[1], spatial, seed + b) for b in range(shape[0])]
    for b in range(shape[0]):
        for idx in np.ndindex(*[math.ceil(s / chunk) for s in spatial]):
            lo = tuple(i * chunk for i in idx)
            hi = tuple(min(l + chunk, s) for l, s in zip(lo, spatial))
            arr[(b, slice(None)) + tuple(slice(l, h) for l, h in zip(lo, hi))] = block(params[b], lo, hi)
    arr.attrs["bench_volume"] = meta
    tmp.rename(store)  # complete stores only: an interrupted run leaves a .partial that is redone
    return time.perf_counter() - t0


# ---------------------------------------------------------------- one method, in its own process


def labels_graph(x, method: str):
    import dask.array as da  # noqa: F401 - x is a dask array

    if method == "argmax":
        return x.argmax(axis=1).astype(np.uint8)
    from rankseg_np import rankseg

    return rankseg(x, metric="dice", solver="RMA").astype(np.uint8)


def run_method(method: str, store: str, out: str, workers: int) -> dict:
    """Time ``store -> method -> out`` on the Dask threaded scheduler; peak RSS of this process."""
    import dask
    import dask.array as da
    import psutil

    sys.path.insert(0, str(HERE))
    from bench_dask import PeakRSS

    # Warm-up on a tiny volume of the same dtype and layout: Numba compiles here, not in the timing.
    tiny = da.from_array(block(organs(105, (16, 16, 16), 1), (0, 0, 0), (16, 16, 16))[None], chunks=(1, 105, 8, 8, 8))
    with dask.config.set(scheduler="threads", num_workers=workers):
        labels_graph(tiny, method).compute()

    x = da.from_zarr(store)
    labels = labels_graph(x, method)
    rss_before = psutil.Process().memory_info().rss
    with dask.config.set(scheduler="threads", num_workers=workers), PeakRSS() as rss:
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        labels.to_zarr(out, overwrite=True)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
    return {"method": method, "seconds": seconds, "cpu_seconds": cpu, "peak_rss": rss.peak, "rss_before": rss_before}


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: less sensitive than wall time to other jobs."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def in_subprocess(method: str, store: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--run", method, "--store", str(store), "--out-store", str(out),
           "--workers", str(workers)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def write_nifti(labels_store: Path, path: Path) -> float | None:
    try:
        import nibabel as nib
    except ImportError:
        return None
    import zarr

    t0 = time.perf_counter()
    labels = np.asarray(zarr.open_array(str(labels_store), mode="r")[0])  # (z, y, x) uint8
    # NIfTI's first axis is x: reverse the axes (as nnU-Net's (z, y, x) arrays are), 1.5 mm voxels.
    image = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), np.diag([1.5, 1.5, 1.5, 1.0]))
    image.header.set_data_dtype(np.uint8)
    tmp = path.with_name(path.name + ".partial.nii.gz")
    nib.save(image, str(tmp))
    tmp.replace(path)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"shape {QUICK} (a smoke run)")
    ap.add_argument("--shape", default=None, help=f"B,C,Z,Y,X (default {','.join(map(str, FULL))})")
    ap.add_argument("--chunk", type=int, default=None, help="side of the cubic spatial chunks (default 64; 32 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each method, alternating; best time kept")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", default=None, help="where the Zarr stores go (kept; default: a temp dir, removed)")
    ap.add_argument("--no-nifti", dest="nifti", action="store_false", help="skip the NIfTI output")
    ap.add_argument("--check-max", type=float, default=2**24, help="compare with in-memory up to this many voxels")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--run", choices=("argmax", "rankseg"), help=argparse.SUPPRESS)  # child process
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out-store", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.run:
        print(json.dumps(run_method(args.run, args.store, args.out_store, args.workers)))
        return {}

    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else (QUICK if args.quick else FULL)
    args.chunk = args.chunk or (32 if args.quick else 64)
    if len(shape) != 5:
        raise SystemExit(f"--shape must be B,C,Z,Y,X; got {args.shape}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_volume_"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "probs_{}.zarr".format("x".join(map(str, shape)))
    gib = math.prod(shape) * 2 / 2**30
    free = shutil.disk_usage(workdir).free / 2**30
    if not store.exists() and free < gib * 1.2 + 1:
        raise SystemExit(f"{workdir} has {free:.1f} GiB free; the store needs {gib:.2f} GiB")
    print(f"input {shape} float16, chunks (1, {shape[1]}, {args.chunk}^3): {gib:.2f} GiB, in {store}", flush=True)
    t_gen = generate(store, shape, args.chunk, args.seed)
    print(f"generated in {t_gen:.1f} s" if t_gen else "reusing the existing store", flush=True)

    load_before = os.getloadavg()[0]
    runs: dict[str, dict] = {}
    for _ in range(args.repeat):  # alternate the methods, so that a busy spell hits both
        for method in ("argmax", "rankseg"):
            out = workdir / f"labels_{method}.zarr"
            r = in_subprocess(method, store, out, args.workers)
            print(f"{method:8s} {r['seconds']:8.2f} s wall, {r['cpu_seconds']:8.2f} s CPU, "
                  f"peak RSS {r['peak_rss'] / 2**30:.3f} GiB (before the run {r['rss_before'] / 2**30:.3f} GiB)",
                  flush=True)
            best = runs.setdefault(method, dict(r))
            best["seconds"] = min(best["seconds"], r["seconds"])
            best["cpu_seconds"] = min(best["cpu_seconds"], r["cpu_seconds"])
            best["peak_rss"] = max(best["peak_rss"], r["peak_rss"])  # memory: the worst run

    load_after = os.getloadavg()[0]
    import zarr

    lab_r = zarr.open_array(str(workdir / "labels_rankseg.zarr"), mode="r")
    lab_a = zarr.open_array(str(workdir / "labels_argmax.zarr"), mode="r")
    differ = sum(int(np.count_nonzero(lab_r[b] != lab_a[b])) for b in range(shape[0]))
    voxels = shape[0] * math.prod(shape[2:])

    equal = None
    if voxels <= args.check_max:
        from rankseg_np import rankseg

        whole = np.asarray(zarr.open_array(str(store), mode="r")[...])
        equal = bool(np.array_equal(rankseg(whole, metric="dice").astype(np.uint8), np.asarray(lab_r[...])))

    t_nifti = write_nifti(workdir / "labels_rankseg.zarr", workdir / "labels_rankseg.nii.gz") if args.nifti else None

    chunk_mib = shape[1] * args.chunk**3 * 2 / 2**20
    row = {
        "shape": list(shape),
        "chunks": [1, shape[1], args.chunk, args.chunk, args.chunk],
        "input_GiB": round(gib, 3),
        "chunk_MiB_float16": round(chunk_mib, 1),
        "workers": args.workers,
        "load_average_1min_before_after": [round(load_before, 1), round(load_after, 1)],
        "generate_seconds": round(t_gen, 1) if t_gen else "store reused",
        "argmax_seconds": round(runs["argmax"]["seconds"], 2),
        "rankseg_seconds": round(runs["rankseg"]["seconds"], 2),
        "time_ratio_rankseg_vs_argmax": round(runs["rankseg"]["seconds"] / runs["argmax"]["seconds"], 2),
        "argmax_cpu_seconds": round(runs["argmax"]["cpu_seconds"], 1),
        "rankseg_cpu_seconds": round(runs["rankseg"]["cpu_seconds"], 1),
        "cpu_ratio_rankseg_vs_argmax": round(runs["rankseg"]["cpu_seconds"] / runs["argmax"]["cpu_seconds"], 2),
        "argmax_peak_rss_GiB": round(runs["argmax"]["peak_rss"] / 2**30, 3),
        "rankseg_peak_rss_GiB": round(runs["rankseg"]["peak_rss"] / 2**30, 3),
        "rankseg_rss_before_GiB": round(runs["rankseg"]["rss_before"] / 2**30, 3),
        "rankseg_peak_minus_before_in_chunks": round(
            (runs["rankseg"]["peak_rss"] - runs["rankseg"]["rss_before"]) / 2**20 / chunk_mib, 1),
        "voxels_differing_from_argmax": f"{differ / voxels:.4%}",
        "equal_to_in_memory": equal,
        "nifti_seconds": None if t_nifti is None else round(t_nifti, 2),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_volume_quick" if args.quick else "bench_volume"
    (out / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
    table = "| " + " | ".join(row) + " |\n|" + "---|" * len(row) + "\n| " + " | ".join(map(str, row.values())) + " |\n"
    (out / f"{name}.md").write_text(table)
    print(json.dumps(row, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return row


if __name__ == "__main__":
    main()
