"""What every ``rankseg-np`` command shares: the program name, exit codes, one-line errors."""

from __future__ import annotations

import importlib.util

PROG = "rankseg-np"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class InputError(Exception):
    """A problem with one input or output file: reported on one line, run continues."""



def _one_line(exc: BaseException) -> str:
    """An exception as a single line (messages of nested libraries may span several)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (InputError, ValueError, TypeError)) and text:
        return text
    name = type(exc).__name__
    return f"{name}: {text}" if text else name



def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False

