"""Speed study: every solver against ``np.argmax`` and ``rankseg`` 0.0.8, over image sizes and class counts.

One image per call (batch 1), square images from 64^2 to 2048^2 pixels,
1 to 150 classes (arrays above ``--max-elements`` float32 values are skipped
so the study fits a small machine).  One class means independent masks
(``output_mode='multilabel'``, baseline ``probs > 0.5``); two or more mean
labels (``'multiclass'``, baseline ``np.argmax(probs, axis=1)``).  The BA
family is multilabel-only, so it is timed in multilabel mode at every class
count.  Solvers this installation lacks are skipped with a note.

Every time is the best of ``--repeat`` calls after one warm-up call (Numba
compiles there), measured in one process on the same array as its baseline;
the table gives seconds, nanoseconds per pixel (seconds / H / W) and the
ratio to the baseline.  A call predicted (linearly from the previous size)
to take longer than ``--max-seconds`` is skipped with a note.

Writes ``speed.md``, ``speed_cpu.json`` and ``speed.png`` (log-log time per
pixel against pixels, one panel per class count) into ``--out``.  Any other
``speed_*.json`` found there (e.g. ``speed_gpu.json`` written by
``--backend cupy`` on a GPU machine) is added to the table and the plot as
extra rows.  ``--quick`` runs a small grid and writes ``speed_quick.*``.

``--threads 1`` pins Numba and torch to one thread (``np.argmax`` uses one):
on a machine shared with other jobs, multithreaded calls on small arrays
spend most of their time waiting for a busy core, and single-threaded times
are the stable, comparable figure.

Run: ``python benchmarks/speed.py --threads 1`` (about 10 minutes on 2 cores) or ``--quick``
(seconds); ``--replot`` rebuilds the table and plot from the saved JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

import rankseg_np
from rankseg_np import rankseg

rankseg_np.use_numba()  # time the Numba kernels, not the first calls' NumPy path

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = "python benchmarks/speed.py"
SIZES = (64, 256, 512, 1024, 2048)
CLASSES = (1, 4, 21, 150)
QUICK_SIZES = (64, 128)
QUICK_CLASSES = (1, 4, 21)
BASELINES = ("np.argmax", "p > 0.5")
THREADS = [0]  # --threads: 0 = the libraries' defaults


def make_probs(num_class: int, size: int, seed: int = 0) -> np.ndarray:
    """Float32 ``(1, C, size, size)`` probabilities shaped like a network's: smooth class fields, sharp-ish softmax.

    Low-resolution random logits upsampled bilinearly (objects a few dozen
    pixels across) plus a little per-pixel noise, so a realistic fraction of
    pixels is uncertain; sigmoid for one class, softmax otherwise.
    """
    rng = np.random.default_rng(seed)
    low = max(4, size // 16)
    logits = rng.normal(0.0, 3.0, size=(num_class, low, low)).astype(np.float32)
    logits = ndimage.zoom(logits, (1, size / low, size / low), order=1)[:, :size, :size]
    logits += rng.normal(0.0, 0.3, size=logits.shape).astype(np.float32)
    if num_class == 1:
        probs = 1.0 / (1.0 + np.exp(-logits))
    else:
        logits -= logits.max(axis=0, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=0, keepdims=True)
    return np.ascontiguousarray(probs[None], dtype=np.float32)


def available(solver: str, output_mode: str, metric: str = "dice") -> str | None:
    """None when ``solver`` runs here for this mode; else why not (skipped with a note)."""
    probs = np.array([[[0.9, 0.6, 0.4, 0.1]], [[0.1, 0.4, 0.6, 0.9]]], dtype=np.float32).reshape(1, 2, 4)
    if output_mode == "multilabel":
        probs = probs[:, :1]
    try:
        rankseg(probs, metric=metric, output_mode=output_mode, solver=solver)
    except Exception as exc:  # not implemented in this installation (yet)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def cpu_methods(probs: np.ndarray, notes: set[str]) -> dict:
    """name -> zero-argument callable, baseline first."""
    c = probs.shape[1]
    mode = "multilabel" if c == 1 else "multiclass"
    out = {}
    if c == 1:
        out["p > 0.5"] = lambda: probs > 0.5
    else:
        out["np.argmax"] = lambda: np.argmax(probs, axis=1)
    out["RMA dice"] = lambda: rankseg(probs, metric="dice", output_mode=mode)
    out["RMA iou"] = lambda: rankseg(probs, metric="iou", output_mode=mode)
    for solver in ("exact",):
        reason = available(solver, mode)
        if reason is None:
            out[f"{solver} dice"] = lambda s=solver: rankseg(probs, metric="dice", output_mode=mode, solver=s)
        else:
            notes.add(f"`{solver}` skipped: {reason}")
    for solver in ("BA", "TRNA", "BA+TRNA"):
        reason = available(solver, "multilabel")
        suffix = "" if c == 1 else " (multilabel)"
        if reason is None:
            out[f"{solver} dice{suffix}"] = lambda s=solver: rankseg(
                probs, metric="dice", output_mode="multilabel", solver=s
            )
        else:
            notes.add(f"`{solver}` skipped: {reason}")
    try:
        import rankseg as reference
        import torch
    except ImportError:
        notes.add("`rankseg` 0.0.8 skipped: not installed (pip install -e .[compat]).")
        return out
    if THREADS[0]:
        torch.set_num_threads(THREADS[0])
    tensor = torch.from_numpy(probs)
    out["rankseg 0.0.8 RMA dice"] = lambda: reference.RankSEG(metric="dice", output_mode=mode).predict(tensor)
    out["rankseg 0.0.8 BA dice" + ("" if c == 1 else " (multilabel)")] = lambda: reference.RankSEG(
        metric="dice", output_mode="multilabel", solver="BA"
    ).predict(tensor)
    return out


def cupy_methods(probs: np.ndarray, notes: set[str]) -> dict:  # pragma: no cover - needs a GPU
    """The same comparison on a CUDA device: CuPy arrays in, and ``rankseg`` 0.0.8 on CUDA tensors."""
    import cupy as cp

    sync = cp.cuda.Device().synchronize
    x = cp.asarray(probs)
    c = probs.shape[1]
    mode = "multilabel" if c == 1 else "multiclass"

    def timed(fn):
        def call():
            out = fn()
            sync()
            return out

        return call

    out = {"p > 0.5" if c == 1 else "np.argmax": timed(lambda: (x > 0.5) if c == 1 else cp.argmax(x, axis=1))}
    out["RMA dice"] = timed(lambda: rankseg(x, metric="dice", output_mode=mode))
    out["RMA iou"] = timed(lambda: rankseg(x, metric="iou", output_mode=mode))
    try:
        import rankseg as reference
        import torch

        tensor = torch.as_tensor(probs, device="cuda")
        out["rankseg 0.0.8 RMA dice"] = lambda: (
            reference.RankSEG(metric="dice", output_mode=mode).predict(tensor), torch.cuda.synchronize())
    except Exception as exc:
        notes.add(f"`rankseg` 0.0.8 on CUDA skipped: {exc}")
    return out


def best_time(fn, repeat: int, min_total: float = 0.25, max_calls: int = 50) -> tuple[float, float]:
    """(warm-up seconds, best timed call): at least ``repeat`` calls, more for fast calls (up to
    ``min_total`` seconds or ``max_calls`` calls), since the minimum of many short calls is the
    stable figure on a shared machine."""
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    best, total, calls = warm, 0.0, 0
    while calls < repeat or (total < min_total and calls < max_calls):
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        best, total, calls = min(best, elapsed), total + elapsed, calls + 1
    return warm, best


def set_threads(n: int) -> None:
    """Pin Numba (and, when it is used, torch) to ``n`` threads; 0 leaves the defaults."""
    THREADS[0] = n
    if n:
        import numba

        numba.set_num_threads(n)


def device_name(backend: str) -> str:
    if backend == "cupy":  # pragma: no cover - needs a GPU
        import cupy as cp

        return "GPU " + cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    try:
        import numba

        threads = numba.get_num_threads()
    except Exception:  # pragma: no cover
        threads = os.cpu_count()
    torch_threads = f", torch {THREADS[0]}" if THREADS[0] else ""
    return f"CPU {platform.machine()}, {os.cpu_count()} cores, {threads} Numba thread{'s' if threads > 1 else ''}{torch_threads}"


def run_study(quick: bool, backend: str = "numpy", repeat: int = 3, max_elements: int = 2**26,
              max_seconds: float = 10.0, verbose: bool = True, sizes=None, classes=None, methods=None) -> dict:
    """Time every method over the grid; ``sizes``, ``classes`` and ``methods`` (names to keep; the
    baseline is always kept) narrow it, e.g. for a notebook."""
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    keep = None if methods is None else set(methods) | set(BASELINES)
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    classes = classes or (QUICK_CLASSES if quick else CLASSES)
    notes: set[str] = set()
    device = device_name(backend)
    records = []
    last: dict[tuple[int, str], tuple[float, int]] = {}  # (classes, method) -> (seconds, pixels) at the last size
    for c in classes:
        for size in sizes:
            if c * size * size > max_elements:
                notes.add(f"arrays above {max_elements:,} values skipped (e.g. {c} classes at {size}^2).")
                continue
            probs = make_probs(c, size)
            calls = (cupy_methods if backend == "cupy" else cpu_methods)(probs, notes)
            base = None
            for name, fn in calls.items():
                if keep is not None and name not in keep:
                    continue
                if (c, name) in last:
                    # Time grows at least linearly in the pixels: skip calls predicted to be too long.
                    prev_seconds, prev_pixels = last[(c, name)]
                    if prev_seconds * size * size / prev_pixels > max_seconds:
                        notes.add(f"`{name}` at {c} class{'es' if c > 1 else ''} not run above {int(np.sqrt(prev_pixels))}^2 "
                                  f"(predicted over {max_seconds:g} s per call).")
                        continue
                slow = name.startswith("rankseg 0.0.8") or (base is not None and base * 1000 > max_seconds)
                warm, seconds = best_time(fn, 1 if slow else repeat)
                base = base if base is not None else seconds
                last[(c, name)] = (seconds, size * size)
                rec = {"device": device, "method": name, "classes": c, "size": size, "pixels": size * size,
                       "seconds": seconds, "ns_per_pixel": 1e9 * seconds / (size * size), "x_baseline": seconds / base}
                records.append(rec)
                if verbose:
                    print(f"  C={c:<3} {size:>4}^2  {name:<36} {seconds:9.5f} s  x{rec['x_baseline']:.2f}",
                          file=sys.stderr, flush=True)
            del probs, calls
    command = COMMAND + (" --quick" if quick else "") + (f" --threads {THREADS[0]}" if THREADS[0] else "")
    return {"command": command, "device": device,
            "version": rankseg_np.__version__, "numpy": np.__version__, "repeat": repeat,
            "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")],
            "records": records, "notes": sorted(notes)}


def load_other_results(out: Path, own: str) -> list[dict]:
    """Studies saved by other runs (other devices) in ``out``: ``speed_*.json`` except our own file."""
    studies = []
    for path in sorted(out.glob("speed_*.json")):
        if path.name == own or "quick" in path.name:
            continue
        try:
            studies.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return studies


def _ns(ns: float) -> str:
    if ns < 1e3:
        return f"{ns:.3g} ns"
    return f"{ns / 1e3:.3g} µs" if ns < 1e6 else f"{ns / 1e6:.3g} ms"


def _ratio(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def markdown(studies: list[dict]) -> str:
    main = studies[0]
    lines = [
        f"Regenerate: `{main['command']}` (rankseg_np {main['version']}, numpy {main['numpy']}).  "
        f"Batch 1, float32, best of {main['repeat']} calls after a warm-up; ns/pixel = seconds / (H·W); "
        "× = ratio to the baseline on the same array in the same process "
        "(`np.argmax(probs, axis=1)` for labels, `probs > 0.5` for one class).",
        "",
    ]
    for study in studies:
        load = study.get("load_average")
        busy = "" if not load else f"; 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"
        lines += [f"**{study['device']}**{busy}" + ("" if study is main else f" (from `{study['command']}`)"), ""]
        recs = study["records"]
        methods = sorted(dict.fromkeys(r["method"] for r in recs), key=lambda m: m not in BASELINES)
        for c in sorted({r["classes"] for r in recs}):
            sizes = sorted({r["size"] for r in recs if r["classes"] == c})
            lines.append(f"| {c} class{'es' if c > 1 else ''} | " + " | ".join(f"{s}²" for s in sizes) + " |")
            lines.append("|---|" + "---:|" * len(sizes))
            for m in methods:
                row = {r["size"]: r for r in recs if r["classes"] == c and r["method"] == m}
                if not row:
                    continue
                cells = []
                for s in sizes:
                    r = row.get(s)
                    cells.append("—" if r is None else f"{_ns(r['ns_per_pixel'])} (×{_ratio(r['x_baseline'])})")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"- {n}" for n in study["notes"]]
        lines.append("")
    return "\n".join(lines)


def family(method: str) -> str:
    """Legend name: the BA family is timed in multilabel mode above one class; one colour either way."""
    if method in BASELINES:
        return "baseline: np.argmax / p > 0.5"
    return method.replace(" (multilabel)", "")


FAMILY_STYLE = {  # colour, line style: ours solid, rankseg 0.0.8 dashed
    "baseline: np.argmax / p > 0.5": ("black", "-"),
    "RMA dice": ("#1f77b4", "-"),
    "RMA iou": ("#17becf", "-"),
    "exact dice": ("#2ca02c", "-"),
    "BA dice": ("#9467bd", "-"),
    "TRNA dice": ("#e377c2", "-"),
    "BA+TRNA dice": ("#8c564b", "-"),
    "rankseg 0.0.8 RMA dice": ("#ff7f0e", "--"),
    "rankseg 0.0.8 BA dice": ("#d62728", "--"),
}


def plot(studies: list[dict], path: Path) -> None:
    """Log-log time per pixel against pixels, one panel per class count; extra studies (GPU) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted({r["classes"] for s in studies for r in s["records"]})
    methods = sorted(dict.fromkeys(r["method"] for s in studies for r in s["records"]), key=lambda m: m not in BASELINES)
    ncols = 2 if len(classes) > 1 else 1
    nrows = (len(classes) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols + 2.6, 3.6 * nrows + 0.6), sharey=True, squeeze=False)
    handles = {}
    for ax, c in zip(axes.flat, classes):
        for k, study in enumerate(studies):
            for m in methods:
                recs = sorted((r for r in study["records"] if r["classes"] == c and r["method"] == m),
                              key=lambda r: r["pixels"])
                if not recs:
                    continue
                fam = family(m)
                colour, style = FAMILY_STYLE.get(fam, ("grey", "-"))
                label = fam if k == 0 else f"{fam} [{study['device']}]"
                (line,) = ax.loglog([r["pixels"] for r in recs], [r["ns_per_pixel"] for r in recs],
                                    style if k == 0 else ":", marker="o" if k == 0 else "s", ms=3.5, color=colour,
                                    lw=2.4 if m in BASELINES else 1.4)
                handles.setdefault(label, line)
        mode = "independent masks" if c == 1 else "labels; BA family as independent masks"
        ax.set_title(f"{c} class{'es' if c > 1 else ''} ({mode})", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes[-1]:
        ax.set_xlabel("pixels per image (H·W)")
    for ax in axes[:, 0]:
        ax.set_ylabel("time per pixel (ns)")
    for ax in list(axes.flat)[len(classes):]:
        ax.set_visible(False)
    fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"{studies[0]['device']}  ({studies[0]['command']})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (5.2 * ncols + 2.6), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="RankSEG speed study.")
    parser.add_argument("--quick", action="store_true", help="small grid (seconds); writes speed_quick.*")
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy",
                        help="numpy (CPU, default) or cupy (CUDA GPU; writes speed_gpu.json)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-elements", type=int, default=2**26, help="skip arrays with more float32 values")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="skip calls predicted to take longer")
    parser.add_argument("--threads", type=int, default=0,
                        help="Numba and torch threads (default: their own defaults); 1 = single-threaded, "
                             "like np.argmax, and the stable choice on a busy machine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--replot", action="store_true",
                        help="time nothing: rebuild the table and plot from the saved JSON files in --out")
    args = parser.parse_args(argv)
    stem = "speed_quick" if args.quick else "speed"
    own = f"{stem}_{'gpu' if args.backend == 'cupy' else 'cpu'}.json"
    if args.replot:
        study = json.loads((args.out / own).read_text())
    else:
        set_threads(args.threads)
        study = run_study(args.quick, args.backend, args.repeat, args.max_elements, args.max_seconds)
        if args.backend == "cupy":
            study["command"] += " --backend cupy"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / own).write_text(json.dumps(study, indent=1))
    studies = [study] + ([] if args.quick else load_other_results(args.out, own))
    text = markdown(studies)
    (args.out / f"{stem}.md").write_text(text)
    try:
        plot(studies, args.out / f"{stem}.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e .[plot])", file=sys.stderr)
    print(text)
    return study


if __name__ == "__main__":
    main()
