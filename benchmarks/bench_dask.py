"""Out-of-core RankSEG on Dask: a probability map larger than memory -> a Zarr label array.

    python benchmarks/bench_dask.py --quick          # small sizes: a smoke test (~1 min)
    python benchmarks/bench_dask.py                  # (1, 3, 65536, 32768) float32 (24 GiB) and
                                                     # (1, 4, 512, 512, 512) float32 (2 GiB)
    python benchmarks/bench_dask.py --image 1,3,16384,16384 --volume 1,4,256,256,256

The probabilities are generated lazily, chunk by chunk, from a seed (a Numba
kernel: separable sinusoidal logits plus a tiled noise field, normalised
over classes),
so nothing larger than a chunk ever exists; ``rankseg(x)`` is stored to Zarr
as uint8 labels.  Reported, in one process:

* wall time, throughput (pixels/s) and the peak RSS of the process during the
  Dask run (sampled every 20 ms, and the kernel's high-water mark);
* the in-memory Numba path (``rankseg`` on a NumPy array) on a slice of the
  same map, ns per pixel, and the Dask/in-memory ratio per pixel;
* the generator alone, ns per pixel: each of the 3 passes of the reduction
  strategy regenerates its chunks, which the end-to-end figure includes and
  the in-memory figure does not;
* the answer on that slice, Dask vs in memory (must be equal).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from numba import njit

import dask
import dask.array as da
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from rankseg_np import rankseg

from _common import best_time

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None


# ---------------------------------------------------------------- generator


TILE = (61, 241)  # noise tile (coprime sides): no visible period along the diagonal


@njit(cache=True, nogil=True, fastmath=True)
def _fill(out, fz, fy, fx, noise, zy0):
    """out[c, z, y, x] from the logits fz[c,z] + fy[c,y] + fx[c,x] + noise[c, (zy0+z+y) % TY, x].

    Class weights ``1 / (1 + (top - logit)^2)^2`` normalised over classes (a
    cheap softmax-like map: the top class dominates away from boundaries),
    row by row in float32 loops that vectorise.
    """
    n_cls, nz, ny, nx = out.shape
    ty = noise.shape[1]
    top = np.empty(nx, dtype=np.float32)
    total = np.empty(nx, dtype=np.float32)
    for z in range(nz):
        for y in range(ny):
            trow = (zy0 + z + y) % ty
            for x in range(nx):
                top[x] = -1e30
                total[x] = 0.0
            for c in range(n_cls):
                base = fz[c, z] + fy[c, y]
                fxc = fx[c]
                nrow = noise[c, trow]
                row = out[c, z, y]
                for x in range(nx):
                    v = base + fxc[x] + nrow[x]
                    row[x] = v
                    top[x] = max(top[x], v)
            for c in range(n_cls):
                row = out[c, z, y]
                for x in range(nx):
                    d = top[x] - row[x]
                    w = np.float32(1.0) / (np.float32(1.0) + d * d)
                    w = w * w
                    row[x] = w
                    total[x] += w
            for x in range(nx):
                total[x] = np.float32(1.0) / total[x]
            for c in range(n_cls):
                row = out[c, z, y]
                for x in range(nx):
                    row[x] *= total[x]


def _axis_field(seed: int, n_cls: int, axis: int, start: int, stop: int, size: int) -> np.ndarray:
    """Smooth per-class logit profiles along one axis (a few sinusoids; deterministic in the seed)."""
    rng = np.random.default_rng([seed, axis])
    t = np.arange(start, stop, dtype=np.float64) / max(size, 1)
    out = np.zeros((n_cls, stop - start))
    for c in range(n_cls):
        for _ in range(3):
            freq = rng.uniform(2.0, 40.0)
            out[c] += rng.uniform(0.5, 2.0) * np.sin(2 * np.pi * (freq * t + rng.uniform()))
    return out.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _noise_columns(seed: int, n_cls: int, x0: int, x1: int, noise: float) -> np.ndarray:
    """The noise tile's columns laid out along one chunk column's x range (contiguous loads)."""
    tile = (np.random.default_rng([seed, 99]).random((n_cls,) + TILE, dtype=np.float32) - 0.5) * np.float32(noise)
    return np.ascontiguousarray(tile[:, :, np.arange(x0, x1) % TILE[1]])


def _block(seed, n_cls, spatial_start, spatial_stop, full_spatial, noise):
    """One chunk (1, C, *spatial) of the map, from its global coordinates only."""
    pad = 3 - len(full_spatial)
    start = (0,) * pad + tuple(spatial_start)
    stop = (1,) * pad + tuple(spatial_stop)
    full = (1,) * pad + tuple(full_spatial)
    fields = [_axis_field(seed, n_cls, a, start[a], stop[a], full[a]) for a in range(3)]
    x_noise = _noise_columns(seed, n_cls, start[2], stop[2], float(noise))
    out = np.empty((n_cls,) + tuple(b - a for a, b in zip(start, stop)), dtype=np.float32)
    _fill(out, *fields, x_noise, start[0] + start[1])
    return out.reshape((1, n_cls) + tuple(b - a for a, b in zip(spatial_start, spatial_stop)))


def lazy_probs(shape, chunks, seed=0, noise=4.0) -> da.Array:
    """A lazily generated probability map ``(B, C, *spatial)`` float32 (batch 1 per chunk)."""
    n_img, n_cls = shape[:2]
    spatial = tuple(shape[2:])
    chunk_sizes = (tuple([1] * n_img), (n_cls,)) + tuple(
        tuple(min(c, n - i) for i in range(0, n, c)) for n, c in zip(spatial, chunks)
    )
    name = f"probs-{tokenize(shape, chunks, seed, noise)}"
    layer = {}
    for idx in np.ndindex(*[len(c) for c in chunk_sizes]):
        b, _, *sidx = idx
        lo = [sum(chunk_sizes[2 + a][:i]) for a, i in enumerate(sidx)]
        hi = [lo[a] + chunk_sizes[2 + a][i] for a, i in enumerate(sidx)]
        layer[(name,) + idx] = (_block, seed + b, n_cls, lo, hi, spatial, noise)
    return da.Array(HighLevelGraph.from_collections(name, layer, dependencies=[]), name, chunk_sizes, dtype=np.float32)


# ---------------------------------------------------------------- measuring


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled, plus the kernel's VmHWM)."""

    def __enter__(self):
        self.peak = 0
        self._stop = threading.Event()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux)
        except OSError:
            pass
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        proc = psutil.Process() if psutil else None
        while not self._stop.is_set():
            if proc is not None:
                self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
        except OSError:
            self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)



def run_case(label, shape, chunks, slice_shape, workdir, workers, seed=0):
    x = lazy_probs(shape, chunks, seed=seed)
    n_pixels = shape[0] * math.prod(shape[2:])
    gib = math.prod(shape) * 4 / 2**30

    # In-memory baseline on a slice of the same map (same process).
    sl = (slice(0, 1), slice(None)) + tuple(slice(0, s) for s in slice_shape)
    local = x[sl].compute(scheduler="threads", num_workers=workers)
    slice_pixels = math.prod(slice_shape)
    t_mem = best_time(lambda: rankseg(local))
    t_gen = best_time(lambda: x[sl].compute(scheduler="threads", num_workers=workers))
    with dask.config.set(scheduler="threads", num_workers=workers):
        small = da.from_array(local, chunks=(1, shape[1]) + tuple(min(c, s) for c, s in zip(chunks, slice_shape)))
        same = bool((rankseg(small).compute() == rankseg(local)).all())
        lazy_slice_same = bool((rankseg(x[sl]).compute() == rankseg(local)).all())
    local = small = None  # free the slice before the out-of-core run

    # Out of core: the whole map -> Zarr uint8 labels.
    store = Path(workdir) / f"{label}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    labels = rankseg(x).astype(np.uint8)
    with dask.config.set(scheduler="threads", num_workers=workers), PeakRSS() as rss:
        t0 = time.perf_counter()
        labels.to_zarr(str(store), overwrite=True)
        t_dask = time.perf_counter() - t0
    shutil.rmtree(store, ignore_errors=True)

    ns_mem = t_mem / slice_pixels * 1e9
    ns_gen = t_gen / slice_pixels * 1e9
    ns_dask = t_dask / n_pixels * 1e9
    return {
        "case": label,
        "shape": list(shape),
        "chunks": [1, shape[1], *chunks],
        "input_GiB": round(gib, 2),
        "workers": workers,
        "dask_seconds": round(t_dask, 2),
        "dask_Mpixel_per_s": round(n_pixels / t_dask / 1e6, 2),
        "peak_rss_GiB": round(rss.peak / 2**30, 3),
        "dask_ns_per_pixel": round(ns_dask, 2),
        "in_memory_ns_per_pixel": round(ns_mem, 2),
        "generator_ns_per_pixel": round(ns_gen, 2),
        "ratio_dask_vs_in_memory": round(ns_dask / ns_mem, 2),
        "ratio_excluding_3_generations": round(max(ns_dask - 3 * ns_gen, 0.0) / ns_mem, 2),
        "slice": [1, shape[1], *slice_shape],
        "equal_on_slice": same and lazy_slice_same,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--image", default=None, help="B,C,H,W of the 2-D map (default 1,3,65536,32768)")
    ap.add_argument("--image-chunks", default="2048,2048")
    ap.add_argument("--volume", default=None, help="B,C,D,H,W of the 3-D map (default 1,4,512,512,512)")
    ap.add_argument("--volume-chunks", default="128,128,128")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", default=None, help="where the Zarr output goes (default: a temp dir)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    def ints(text):
        return tuple(int(v) for v in text.split(","))

    if args.quick:
        image, ichunks = ints(args.image or "1,3,4096,2048"), ints("1024,1024")
        volume, vchunks = ints(args.volume or "1,4,96,96,96"), ints("48,48,48")
    else:
        image, ichunks = ints(args.image or "1,3,65536,32768"), ints(args.image_chunks)
        volume, vchunks = ints(args.volume or "1,4,512,512,512"), ints(args.volume_chunks)
    islice = tuple(min(c * 2, s) for c, s in zip(ichunks, image[2:]))
    vslice = tuple(min(c * 2, s) for c, s in zip(vchunks, volume[2:]))

    rankseg(np.full((1, 2, 4, 4), 0.5, np.float32))  # compile outside the timings
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_dask_")
    rows = [
        run_case("image", image, ichunks, islice, workdir, args.workers),
        run_case("volume", volume, vchunks, vslice, workdir, args.workers),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_dask_quick" if args.quick else "bench_dask"
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    cols = [
        ("case", "case"), ("shape", "shape"), ("input_GiB", "GiB"), ("dask_seconds", "s"),
        ("dask_Mpixel_per_s", "Mpx/s"), ("peak_rss_GiB", "peak RSS GiB"), ("dask_ns_per_pixel", "dask ns/px"),
        ("in_memory_ns_per_pixel", "in-memory ns/px"), ("generator_ns_per_pixel", "generator ns/px"),
        ("ratio_dask_vs_in_memory", "dask/in-memory"), ("ratio_excluding_3_generations", "same, minus 3 generations"),
        ("equal_on_slice", "equal"),
    ]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) for k, _ in cols) + " |")
    table = "\n".join(lines)
    (out / f"{name}.md").write_text(table + "\n")
    print(table)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
