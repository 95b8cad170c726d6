"""Fork and thread safety of the CPU kernels (issue 12, items 4 and 5).

Each scenario runs in a fresh interpreter under a time limit, so that a hang
(a ``multiprocessing`` pool whose worker was killed) or an abort (SIGABRT from
Numba's workqueue layer) fails the test instead of taking the suite down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from rankseg_np.cpu import _threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Generous: the children compile the serial twins on a cold cache (a few
# seconds each on a busy 2-core machine); a hang is what this must catch.
LIMIT_S = 240


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    # RANKSEG_NP_FIRST_CALLS=numba: these small calls would otherwise run in NumPy
    # (rankseg_np._first_calls), and the Numba kernels this file is about would never run.
    full_env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), RANKSEG_NP_FIRST_CALLS="numba",
        **env,
    )
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            capture_output=True, text=True, timeout=LIMIT_S, env=full_env, cwd=ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {LIMIT_S} s (hang): {exc.stderr!r}")


FORK_SCRIPT = """
    import multiprocessing as mp
    import numpy as np
    from rankseg_np import expected_metric, rankseg

    def work(seed):
        p = np.random.default_rng(seed).dirichlet(np.ones(3), size=(40, 50)).transpose(2, 0, 1)[None]
        labels = rankseg(p)
        masks = rankseg(p, solver="exact", output_mode="multilabel")
        return labels, masks, expected_metric(p, masks)

    if __name__ == "__main__":
        parent = [work(s) for s in range(3)]          # the parent runs every kernel first
        with mp.get_context("fork").Pool(2) as pool:
            children = pool.map(work, range(3))
        for a, b in zip(parent, children):
            for x, y in zip(a, b):
                assert np.array_equal(x, y), "a forked worker disagrees with the parent"
        from rankseg_np import _first_calls
        assert _first_calls.ACCOUNT.spent == 0, "the parent's calls ran in NumPy, not Numba"
        print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_pool_after_parent_call_returns_parent_answers():
    done = _run(FORK_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "fork() called from a process already using GNU OpenMP" not in done.stderr


THREADS_SCRIPT = """
    import threading
    import numba
    import numpy as np
    from rankseg_np import expected_metric, rankseg

    inputs = [np.random.default_rng(i).random((1, 3, 64, 64)) for i in range(4)]
    results = {}

    def go(i):
        for _ in range(5):
            labels = rankseg(inputs[i])
            masks = rankseg(inputs[i], solver="exact", output_mode="multilabel")
            results[i] = labels, masks, expected_metric(inputs[i], masks)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert numba.threading_layer() == "workqueue"
    for i, p in enumerate(inputs):
        masks = rankseg(p, solver="exact", output_mode="multilabel")
        assert np.array_equal(results[i][0], rankseg(p))
        assert np.array_equal(results[i][1], masks)
        assert np.array_equal(results[i][2], expected_metric(p, masks))
    from rankseg_np import _first_calls
    assert _first_calls.ACCOUNT.spent == 0, "the calls ran in NumPy, not Numba"
    print("ok")
"""


def test_workqueue_layer_four_threads_do_not_abort():
    done = _run(THREADS_SCRIPT, NUMBA_THREADING_LAYER="workqueue")
    assert done.returncode == 0, f"rc={done.returncode}: {done.stderr}"
    assert done.stdout.strip() == "ok"


def test_serial_twin_is_the_same_kernel_without_parallel():
    import numpy as np

    from rankseg_np.cpu import _kernels

    kernel = _kernels.row_stats
    assert isinstance(kernel, _threads.ParallelKernel)
    assert kernel.parallel.targetoptions.get("parallel") is True
    assert not kernel.serial.targetoptions.get("parallel")
    # Separate cache names, so a cached parallel build is never loaded as the twin.
    assert kernel.serial.py_func.__qualname__ != kernel.parallel.py_func.__qualname__
    p2 = np.random.default_rng(0).random((5, 100))
    for a, b in zip(kernel.parallel(p2), kernel.serial(p2)):
        assert np.array_equal(a, b)
