"""The multiclass resolution kernels (MATH 5) against a plain transcription of their rule.

``cpu.multiclass`` evaluates the rule in vectorised, tiled loops (float32
compares on float32 input, per-class constants hoisted, open pixels gathered
into lists); the oracle here walks pixel by pixel and class by class in
Python floats.  Labels, tau and m must agree bit for bit, on inputs built to
hit every tie: values from a small set, thresholds at (or one float64 step
beside) data values, tie cuts anywhere, inactive classes, huge smooth.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankseg_np._decision import DELTA_TIE_RTOL, RowDecision
from rankseg_np._validate import Config
from rankseg_np.cpu import multiclass
from rankseg_np.cpu._threads import serial_here

NONE, MANY = -2, -1


def pair_state(low: int, high: int) -> int:
    """The documented claim state of a pixel claimed by exactly the two classes low < high."""
    return -3 - low - 2**32 * high


def oracle_increment(p: float, metric: str, smooth: float, tau: float, mu: float, m: float) -> float:
    """MATH 5's increment, factored as documented in ``multiclass._increment``, one Python float op at a time."""
    if metric == "dice":
        d = tau + mu + smooth + 1.0
        if smooth > 1.0:
            return 2.0 * (p - m / d) * (smooth / (d + 1.0)) - (smooth / d) * (smooth / (d - 1.0))
        inc = 2.0 * (p - m / d) / (d + 1.0)
        if smooth > 0.0:
            inc -= (smooth / d) / (d - 1.0)
        return inc
    e = tau + mu - m + smooth
    a = (m + smooth) / e if e > 0.0 else 0.0
    return (p - a * (1.0 - p)) / (e + 1.0 - p)


def oracle(p3, threshold, tie_end, active, mu, metric, smooth, void, void_index, tile=multiclass.TILE):
    """Labels, claim states (sole claimant, NONE, the pair of claimants or MANY), tau, m by the rule, pixel by pixel
    (float64 sums of the sole claims per tile in pixel order, then across tiles)."""
    n_img, n_cls, d = p3.shape
    labels = np.empty((n_img, d), dtype=np.int64)
    states = np.empty((n_img, d), dtype=np.int64)
    tau = np.zeros((n_img, n_cls))
    m = np.zeros((n_img, n_cls))
    claims = np.zeros((n_img, n_cls, d), dtype=bool)
    for b in range(n_img):
        for c in range(n_cls):
            for i in range(d):
                v, t = float(p3[b, c, i]), float(threshold[b, c])
                claims[b, c, i] = bool(active[b, c]) and (v > t or (v == t and i < tie_end[b, c]))
        for i0 in range(0, d, tile):
            part_tau = [0.0] * n_cls
            part_m = [0.0] * n_cls
            for i in range(i0, min(d, i0 + tile)):
                owners = np.flatnonzero(claims[b, :, i])
                if owners.size == 1:
                    part_tau[owners[0]] += 1.0
                    part_m[owners[0]] += float(p3[b, owners[0], i])
            tau[b] += part_tau
            m[b] += part_m
    for b in range(n_img):
        any_active = bool(active[b].any())
        for i in range(d):
            owners = np.flatnonzero(claims[b, :, i])
            if owners.size == 2:
                states[b, i] = pair_state(owners[0], owners[1])
            else:
                states[b, i] = owners[0] if owners.size == 1 else (NONE if owners.size == 0 else MANY)
            if owners.size == 1:
                labels[b, i] = owners[0]
                continue
            if owners.size == 0 and void:
                labels[b, i] = void_index
                continue
            if owners.size > 1:
                competing = owners
            else:
                competing = [c for c in range(n_cls) if active[b, c] or not any_active]
            inc = [-np.inf] * n_cls
            for c in competing:
                inc[c] = oracle_increment(float(p3[b, c, i]), metric, smooth, tau[b, c], mu[b, c], m[b, c])
            best = max(inc)
            floor = best - DELTA_TIE_RTOL * abs(best)
            labels[b, i] = next((c for c in range(n_cls) if inc[c] >= floor), 0)
    return labels, states, tau, m


def run_kernels(p3, decision, metric, smooth, void, void_index, checked, serial):
    cfg = Config(metric=metric, smooth=smooth, unassigned_policy="void" if void else "max_score",
                 void_index=void_index)
    n_img, n_cls, d = p3.shape
    n_tasks = n_img * ((d + multiclass.TILE - 1) // multiclass.TILE)
    tau_part, m_part = np.zeros((n_tasks, n_cls)), np.zeros((n_tasks, n_cls))
    labels = np.empty((n_img, d), dtype=np.int64)
    threshold, tie_end, active, mu = decision

    def go():
        if checked:
            multiclass.checked_claims(p3, threshold, tie_end, active, labels, tau_part, m_part)
        else:
            multiclass.claims(p3, threshold, tie_end, active, labels, tau_part, m_part)
        tau = tau_part.reshape(n_img, -1, n_cls).sum(axis=1)
        m = m_part.reshape(n_img, -1, n_cls).sum(axis=1)
        states = labels.copy()
        multiclass.conflicts(p3, threshold, tie_end, active, labels, tau, mu, m, 0 if metric == "dice" else 1,
                             smooth, void, void_index)
        return states, tau, m

    if serial:
        with serial_here():
            states, tau, m = go()
    else:
        states, tau, m = go()
    # The resolve entry point runs the same kernels.
    assert np.array_equal(multiclass.resolve(p3, decision, cfg), labels)
    return labels, states, tau, m


VALUES = (0.0, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.7, 1.0)


@st.composite
def cases(draw):
    n_img = draw(st.integers(1, 2))
    n_cls = draw(st.integers(2, 5))
    d = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = np.array(VALUES)[: draw(st.integers(2, len(VALUES)))]
    p3 = rng.choice(values, size=(n_img, n_cls, d)).astype(dtype)
    # Thresholds at a data value, one float64 step beside one (between float32
    # neighbours when the data is float32), or at the ends.
    at = rng.integers(0, d, size=(n_img, n_cls, 1))
    picks = np.take_along_axis(p3, at, axis=2)[..., 0].astype(np.float64)
    kind = rng.integers(0, 5, size=(n_img, n_cls))
    threshold = np.where(kind == 0, np.nextafter(picks, np.inf), picks)
    threshold = np.where(kind == 1, np.nextafter(picks, -np.inf), threshold)
    threshold = np.where(kind == 2, rng.choice([0.0, 1.0, np.inf, 0.3]), threshold)
    tie_end = rng.integers(-1, d + 2, size=(n_img, n_cls)).astype(np.int64)
    active = rng.random((n_img, n_cls)) < draw(st.sampled_from([0.0, 0.5, 0.8, 1.0]))
    mu = p3.astype(np.float64).sum(axis=2)
    metric = draw(st.sampled_from(["dice", "iou"]))
    smooth = draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 1e200]))
    void = draw(st.booleans())
    void_index = draw(st.sampled_from([255, -1]))
    return p3, RowDecision(threshold, tie_end, active, mu), metric, smooth, void, void_index


@settings(max_examples=300)
@given(cases(), st.booleans(), st.booleans())
def test_kernels_match_the_rule(case, checked, serial):
    p3, decision, metric, smooth, void, void_index = case
    labels, states, tau, m = run_kernels(p3, decision, metric, smooth, void, void_index, checked, serial)
    want, want_states, want_tau, want_m = oracle(p3, *decision, metric, smooth, void, void_index)
    assert np.array_equal(states, want_states)
    assert np.array_equal(tau, want_tau)
    assert np.array_equal(m, want_m)
    assert np.array_equal(labels, want)


@pytest.mark.parametrize("increments", [None, 4 * 7])
def test_kernels_match_the_rule_across_tiles(increments, monkeypatch):
    """Several tiles per image (tau/m summed per tile, then across tiles), a tie cut inside a later tile;
    also with room for the increments of only 7 open pixels at a time (as with 150,000 classes)."""
    if increments is not None:
        monkeypatch.setattr(multiclass, "INCREMENTS_AT_MOST", increments)
        assert multiclass.open_block(4) == 7
    rng = np.random.default_rng(7)
    n_img, n_cls, d = 2, 4, 2 * multiclass.TILE + 37
    p3 = rng.choice(np.array([0.0, 0.1, 0.25, 0.4, 0.5, 0.9], dtype=np.float32), size=(n_img, n_cls, d))
    threshold = np.array([[0.25, 0.4, 0.1, 0.5], [0.4, np.float32(0.1), 0.25, 0.9]])  # 0.1: float64, not a data value
    tie_end = np.array([[multiclass.TILE + 100, 5, 2 * multiclass.TILE + 1, 0], [d, 3, multiclass.TILE, 17]])
    active = np.array([[True, True, True, False], [True, True, True, True]])
    mu = p3.astype(np.float64).sum(axis=2)
    decision = RowDecision(threshold, tie_end, active, mu)
    for metric, smooth, void in [("dice", 0.0, False), ("iou", 1.0, False), ("dice", 1e200, True)]:
        labels, states, tau, m = run_kernels(p3, decision, metric, smooth, void, 255, True, False)
        want, want_states, want_tau, want_m = oracle(p3, *decision, metric, smooth, void, 255)
        assert np.array_equal(states, want_states)
        assert np.array_equal(tau, want_tau) and np.array_equal(m, want_m)
        assert np.array_equal(labels, want)
        # every kind of open pixel was resolved
        assert (states == MANY).any() and (states == NONE).any() and (states <= -3).any()
    # Some tile holds more open pixels than one block of conflicts resolves at once.
    per_tile = np.isin(states[:, : 2 * multiclass.TILE], (NONE, MANY)).reshape(n_img, 2, -1).sum(axis=2)
    assert per_tile.max() > multiclass.OPEN_BLOCK


def test_sole_sums_in_pixel_order():
    """A tile's sole-claim sums are added in pixel order: on values (above 1, refused before the kernels
    in the library) whose float64 sum depends on the order of the additions, m is the pixel-order sum."""
    rng = np.random.default_rng(11)
    d = multiclass.TILE
    # Large values and small ones of fine spacing: the sum needs more than float64's 53 bits, so its
    # rounding depends on the order of the additions.
    p3 = rng.choice(np.array([7.7, 9.9, 1.6e-5, 3.1e-5], dtype=np.float32), size=(1, 2, d))
    p3[0, 1] = np.float32(0.2)  # class 1 claims nothing: class 0's claims are all sole
    decision = RowDecision(np.array([[2e-5, 0.9]]), np.array([[0, 0]]), np.array([[True, True]]),
                           p3.astype(np.float64).sum(axis=2))
    labels, states, tau, m = run_kernels(p3, decision, "dice", 0.0, False, 255, False, True)
    want, want_states, want_tau, want_m = oracle(p3, *decision, "dice", 0.0, False, 255)
    # (an 8-lane sum of these values rounds differently from the pixel-order sum)
    row = p3[0, 0].astype(np.float64)
    assert row.reshape(-1, 8).sum(axis=0).sum() != want_m[0, 0]
    assert np.array_equal(m, want_m) and np.array_equal(tau, want_tau)
    assert np.array_equal(labels, want)


def test_oracle_increment_is_the_kernel_formula():
    """The oracle's formula is the reference scalar ``_increment`` (same operations, same bits)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        p, tau, mu = float(rng.random()), float(rng.integers(0, 50)), float(rng.random() * 60)
        m = float(rng.random() * min(tau, mu))
        for metric, code in (("dice", 0), ("iou", 1)):
            for smooth in (0.0, 0.5, 1.0, 3.0, 1e200):
                assert oracle_increment(p, metric, smooth, tau, mu, m) == multiclass._increment(p, code, smooth, tau, mu, m)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_threshold_rounding(dtype):
    """A float64 threshold between two float32 values, or equal to one, claims as in float64."""
    x = np.float32(0.1)
    p3 = np.array([[[x, np.nextafter(x, np.float32(1)), np.nextafter(x, np.float32(0)), x],
                    [0.5, 0.5, 0.5, 0.5]]], dtype=dtype)
    for t in (float(x), float(np.nextafter(float(x), 1.0)), float(np.nextafter(float(x), 0.0)), 0.1):
        decision = RowDecision(np.array([[t, 0.9]]), np.array([[2, 0]]), np.array([[True, True]]),
                               p3.astype(np.float64).sum(axis=2))
        labels, states, _, _ = run_kernels(p3, decision, "dice", 0.0, True, 255, False, True)
        want, want_states, _, _ = oracle(p3, *decision, "dice", 0.0, True, 255)
        assert np.array_equal(states, want_states), t
        assert np.array_equal(labels, want), t


@pytest.mark.parametrize("n_cls", [2**15 - 1, 2**15 + 3])
def test_many_classes(n_cls):
    """Class indices past 16 bits (the claim keys widen to 64 bits from 2**15 classes): sole
    claimants, pairs and triples of high classes, and an unclaimed pixel, as the rule says."""
    d = 5
    p3 = np.zeros((1, n_cls, d), dtype=np.float32)
    for pixel, owners in enumerate([(1, n_cls - 1), (n_cls - 1,), (n_cls - 2, n_cls - 1), (5, n_cls - 3, n_cls - 1)]):
        p3[0, list(owners), pixel] = np.float32(0.6) + np.float32(0.01) * np.arange(len(owners), dtype=np.float32)
    p3[0, n_cls - 2, 4] = np.float32(0.3)  # pixel 4: claimed by none
    decision = RowDecision(np.full((1, n_cls), 0.5), np.zeros((1, n_cls), dtype=np.int64),
                           np.ones((1, n_cls), dtype=bool), p3.astype(np.float64).sum(axis=2))
    labels, states, tau, m = run_kernels(p3, decision, "dice", 0.0, False, 255, True, False)
    want, want_states, want_tau, want_m = oracle(p3, *decision, "dice", 0.0, False, 255)
    assert states[0, 0] == pair_state(1, n_cls - 1) and states[0, 2] == pair_state(n_cls - 2, n_cls - 1)
    assert np.array_equal(states, want_states) and np.array_equal(labels, want)
    assert np.array_equal(tau, want_tau) and np.array_equal(m, want_m)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tie_cuts_at_tile_edges_and_several_in_one_tile(dtype):
    """Claims run in segments between the tie cuts inside a tile: cuts one before, at and one after a
    tile edge, three cuts inside one tile in one group of four rows, cuts before 0 and past d, an
    inactive class among them, and nine classes (the last group padded): states, tau, m and labels
    as the rule says, in every tile."""
    tile = multiclass.TILE
    n_cls, d = 9, 2 * tile + 37
    rng = np.random.default_rng(23)
    p3 = rng.choice(np.array([0.0, 0.25, 0.5, 0.75], dtype=dtype), size=(2, n_cls, d))
    # Exact thresholds (every value equal to one is a tie): classes 0-3 claim only their ties,
    # classes 4-7 the 0.75s and their ties, class 8 every value above 0.25 and its ties.
    threshold = np.tile(np.array([0.75] * 4 + [0.5] * 4 + [0.25]), (2, 1))
    tie_end = np.array([[tile - 1, tile, tile + 1, 2 * tile, 100, 200, 300, -5, d + 9],
                        [2 * tile + 1, tile - 1, 3, 0, tile + 7, tile + 2000, tile + 4000, d, 17]])
    active = np.ones((2, n_cls), dtype=bool)
    active[0, 6] = False
    active[1, 3] = False
    mu = p3.astype(np.float64).sum(axis=2)
    decision = RowDecision(threshold, tie_end, active, mu)
    for metric, smooth, void, checked, serial in [("dice", 0.0, False, False, False), ("iou", 1.0, True, True, True)]:
        labels, states, tau, m = run_kernels(p3, decision, metric, smooth, void, 255, checked, serial)
        want, want_states, want_tau, want_m = oracle(p3, *decision, metric, smooth, void, 255)
        assert np.array_equal(states, want_states)
        assert np.array_equal(tau, want_tau) and np.array_equal(m, want_m)
        assert np.array_equal(labels, want)
    for b in range(2):  # every kind of claim state in each of the first two tiles of each image
        for part in (states[b, :tile], states[b, tile: 2 * tile]):
            assert (part >= 0).any() and (part == NONE).any() and (part == MANY).any() and (part <= -3).any()
