"""The temperature file of ``rankseg-np calibrate``: written atomically, read by ``--temperature``."""

from __future__ import annotations

import json
import os
from typing import Any

from ._common import _one_line
from ._io import _atomic_path, check_replaceable


def load_temperature(path: str) -> Any:
    """A fitted :class:`TemperatureScaling` from a file ``calibrate`` wrote; ValueError naming the problem."""
    from ..calibration import TemperatureScaling

    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        raise ValueError(f"temperature file {path!r}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"temperature file {path!r}: not readable JSON ({_one_line(exc)})") from None
    try:
        return TemperatureScaling.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"temperature file {path!r}: {_one_line(exc)}") from None


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as JSON, atomically (a temporary file in the same directory, then os.replace)."""
    check_replaceable(path, "json")
    with _atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
