"""What every ``rankseg-np`` command shares: the program name, exit codes, one-line errors."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

PROG = "rankseg-np"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class InputError(Exception):
    """A problem with one input or output file: reported on one line, run continues."""



# The library's messages name Python fixes; on the command line the same fix is an option.
_CLI_FIXES = (
    ("channel_axis=", "--channel-axis -1 (or the class axis)"),
    ("probs[None]", "--no-batch-axis"),
    ("output_mode='multilabel'", "--output-mode multilabel"),
)


def for_cli(text: str) -> str:
    """``text`` plus the command-line spelling of the fixes it names."""
    if "[on the command line:" in text:
        return text
    fixes = [cli for py, cli in _CLI_FIXES if py in text]
    return f"{text} [on the command line: {'; '.join(fixes)}]" if fixes else text


def _one_line(exc: BaseException) -> str:
    """An exception as a single line (messages of nested libraries may span several)."""
    text = for_cli(" ".join(str(exc).split()))
    if isinstance(exc, (InputError, ValueError, TypeError)) and text:
        return text
    name = type(exc).__name__
    return f"{name}: {text}" if text else name



def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False



def compile_notice(err, probs: Any = None, kw: dict[str, Any] | None = None) -> bool:
    """One line on ``err`` when the next solve will compile Numba's kernels (their disk cache is empty).

    Returns False, and writes nothing, when ``rankseg(probs, **kw)`` will run
    without Numba (a small first call of the process, see
    :mod:`rankseg_np._first_calls`): ask again before the next call.  Else
    looks for the on-disk cache index of the RMA row kernel, parallel or
    serial (in ``__pycache__`` or ``NUMBA_CACHE_DIR``): when neither exists the
    environment is fresh.  Any problem reading it means no notice, never an error.
    """
    if probs is not None and isinstance(probs, np.ndarray):
        from .. import _first_calls
        from .._validate import check_options

        try:
            solver = check_options(**(kw or {})).solver
        except (TypeError, ValueError):  # reported by the call itself
            return False
        if _first_calls.ACCOUNT.would_rent(probs.size, solver):
            return False
    try:
        import os

        from ..cpu import rma

        kernel = rma._dice_rows  # the default objective's row kernel
        if any(os.path.exists(k._cache._cache_file._index_path) for k in (kernel.parallel, kernel.serial)):
            return True
    except Exception:  # Numba internals moved: stay quiet
        return True
    err.write(f"{PROG}: compiling the Numba kernels for the first call (once: they are then cached on disk) ...\n")
    err.flush()
    return True
