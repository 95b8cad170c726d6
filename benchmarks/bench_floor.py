"""How far multiclass RMA is from the cost of moving its data: its passes against plain reads.

    python benchmarks/bench_floor.py             # (4, 21, 512, 512) float32 softmax, as bench_rma.py
                                                 # -> also benchmarks/results/bench_floor.md
    python benchmarks/bench_floor.py --repeat 15

Multiclass RMA (MATH section 5) makes three dependent passes over
``(B, C, d)``: the per-row decisions (each row read whole), the claims (every
pixel's claimants, and the sums ``tau_c``, ``m_c`` over the pixels one class
alone claims), and the conflicts (the pixels two or more classes claim, or
none, scored with those image-wide sums, so not before the claims are done).
The first two read every value.  The third reads, in each class row, the
64-byte lines that hold a pixel that row's class competes for; on random
softmax those are most lines.

This script times, in one process on the array ``bench_rma.py`` uses:

* the yardstick of ``bench_rma.py`` (``rankseg_np.cli._baseline.argmax_once``,
  timed again after every case, keeping its best), and a **plain read**: a
  parallel sum of every value, four streams per thread, the fastest read of
  the input we know on this machine (no labels written);
* each pass of multiclass RMA on its own, and the whole call;
* the lines the conflicts pass must read, counted from the claim states.

"floor" is the time of the plain reads each pass cannot avoid (one for the
decision, one for the claims, the fraction of lines for the conflicts): a
lower bound that leaves out all computation and the labels written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from rankseg_np import rankseg
from rankseg_np._validate import check_config
from rankseg_np.cli._baseline import argmax_once, best_time, best_times
from rankseg_np.cpu import masks_from, multiclass, rma

from _common import softmax_probs

SHAPE = (4, 21, 512, 512)
LINE = 16  # float32 values in a 64-byte cache line
BASE = "one-pass argmax (bench_rma.py's yardstick)"
READ = "plain read (parallel sum, no output)"
DECIDE = "RMA pass 1: decisions"
CLAIMS = "RMA pass 2: claims (with the class-sum check)"
CONFLICTS = "RMA pass 3: conflicts (+ a copy of the states)"
COPY = "  the copy of the states alone"
WHOLE = "RMA Dice multiclass, whole call"


@njit(parallel=True, fastmath=True)
def plain_read(flat):
    """Sum of every value (float32 lanes, any order: only the time matters), read as four
    streams per thread: one stream per thread reads at about half the rate here."""
    n_part = numba.get_num_threads()
    size = flat.size // n_part
    part = np.zeros(n_part)
    for k in prange(n_part):
        x = flat[k * size:(k + 1) * size]
        q = size // 4
        acc = np.float32(0.0)
        for i in range(q):
            acc += x[i] + x[i + q] + x[i + 2 * q] + x[i + 3 * q]
        part[k] = acc
    return part.sum()


def values_needed(states: np.ndarray, claimed: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Mask (B, C, d) of the values a conflicts pass must read.

    ``states`` (B, d): the claim states of :mod:`rankseg_np.cpu.multiclass`;
    ``claimed`` (B, C, d): each class's mask of the decision; ``active`` (B, C).
    Class c's value at a pixel is needed when c claims the pixel and another
    class claims it too (the contest is among the claimants), or when no class
    claims it and c competes (every active class; every class when none is
    active).  A lower bound: the pass as written reads every competing class of
    a pixel three or more classes claim.
    """
    contested = (states <= multiclass.PAIR) | (states == multiclass.MANY)
    unclaimed = states == multiclass.NONE
    competing = active | ~active.any(axis=1, keepdims=True)
    return (claimed & contested[:, None, :]) | (unclaimed[:, None, :] & competing[:, :, None])


def lines_to_read(states: np.ndarray, claimed: np.ndarray, active: np.ndarray) -> float:
    """Fraction of the 64-byte lines of the class rows holding a value of :func:`values_needed`."""
    need = values_needed(states, claimed, active)
    n_img, n_cls, d = need.shape
    whole = d - d % LINE
    lines = need[:, :, :whole].reshape(n_img, n_cls, -1, LINE).any(axis=3)
    if whole < d:  # a partial last line
        lines = np.concatenate([lines, need[:, :, whole:].any(axis=2, keepdims=True)], axis=2)
    return float(lines.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="runs per case (best is kept)")
    args = parser.parse_args()

    probs = softmax_probs(SHAPE)
    p3 = probs.reshape(SHAPE[0], SHAPE[1], -1)
    cfg = check_config(SHAPE[1])
    decision = rma.decide(p3, cfg)
    threshold, tie_end, active, mu = decision
    n_img, n_cls, d = p3.shape
    n_tasks = n_img * ((d + multiclass.TILE - 1) // multiclass.TILE)
    states = np.empty((n_img, d), dtype=np.int64)

    def claims():
        tau_part = np.zeros((n_tasks, n_cls))
        m_part = np.zeros((n_tasks, n_cls))
        multiclass.checked_claims(p3, threshold, tie_end, active, states, tau_part, m_part)
        return tau_part.reshape(n_img, -1, n_cls).sum(axis=1), m_part.reshape(n_img, -1, n_cls).sum(axis=1)

    tau, m = claims()
    claimed = states.copy()
    labels = np.empty_like(states)

    def copy_states():
        labels[:] = claimed

    def conflicts():
        copy_states()  # the pass overwrites the states with labels
        multiclass.conflicts(p3, threshold, tie_end, active, labels, tau, mu, m, 0, 0.0, False, -1)

    cases = [
        (BASE, lambda: argmax_once(probs)),
        (READ, lambda: plain_read(probs.reshape(-1))),
        (DECIDE, lambda: rma.decide(p3, cfg)),
        (CLAIMS, claims),
        (CONFLICTS, conflicts),
        (COPY, copy_states),
        (WHOLE, lambda: rankseg(probs)),
    ]
    load = os.getloadavg()[0]
    times = best_times(cases, lambda name: args.repeat, BASE, timer=best_time)
    base, read = times[BASE], times[READ]
    open_px = float((claimed < 0).mean())
    claimed_masks = masks_from(p3, decision)
    fraction = lines_to_read(claimed, claimed_masks, active)
    values = float(values_needed(claimed, claimed_masks, active).mean())
    floors = {
        DECIDE: read,
        CLAIMS: read,
        CONFLICTS: fraction * read,
        WHOLE: (2.0 + fraction) * read,
    }
    rows = []
    for name, _ in cases:
        floor = floors.get(name)
        rows.append(
            f"| {name} | {times[name] * 1e3:.2f} | {times[name] / base:.2f} | {times[name] / read:.2f} | "
            + (f"{floor * 1e3:.2f} ({floor / base:.2f}x) |" if floor is not None else "|")
        )
    lines = [
        f"# bench_floor ({datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"numba {numba.__version__}, {numba.get_num_threads()} threads; best of {args.repeat} wall-clock runs)",
        "",
        f"probs {SHAPE} float32 softmax ({probs.nbytes / 2**20:.0f} MiB), 1-min load {load:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end. Pixels left open by the claims: {open_px:.1%}; "
        f"64-byte lines of the class rows the conflicts must read: {fraction:.1%} "
        f"(for {values:.1%} of the values: a copy of those, kept while the claims have each tile in cache, "
        f"would spare the third read).",
        "",
        "| case | time (ms) | x 1-pass argmax | x plain read | floor: plain reads it cannot avoid (x 1-pass) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"The whole call's floor, {2.0 + fraction:.2f} plain reads, is {(2.0 + fraction) * read / base:.2f}x the "
        f"one-pass argmax before any computation; the one-pass argmax itself takes {base / read:.2f} plain reads.",
        f"The passes alone: decisions {times[DECIDE] * 1e3:.2f} ms, claims {times[CLAIMS] * 1e3:.2f} ms, conflicts "
        f"{(times[CONFLICTS] - times[COPY]) * 1e3:.2f} ms (less the copy).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results" / "bench_floor.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)


if __name__ == "__main__":
    main()
