"""Packaging habits (issue 12, item 13): LICENSE, py.typed, and a Numba cache for read-only installs.

That a wheel installed into a fresh, read-only environment runs the demo and the API,
as an unprivileged user with and without a writable home, is checked end to end by
``.ci/check_install`` (run by ``.ci/run``; it needs pip and network or a wheel cache).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import rankseg_np
from rankseg_np import _numba_cache

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_file_matches_pyproject():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "rankseg_np developers" in text
    project = pyproject()["project"]
    assert project["license"] == "BSD-3-Clause" and project["license-files"] == ["LICENSE"]


def test_py_typed_is_package_data():
    assert (Path(rankseg_np.__file__).parent / "py.typed").is_file()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["rankseg_np"]


@pytest.fixture
def nowhere_to_cache(tmp_path, monkeypatch):
    """The situation of a read-only install run without a writable home."""
    from numba.core import config

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(config, "CACHE_DIR", config.CACHE_DIR)  # restored after the test
    monkeypatch.setattr(_numba_cache, "PACKAGE", str(tmp_path / "readonly"))
    monkeypatch.setattr(_numba_cache, "_user_cache_dir", lambda: str(tmp_path / "no-home" / ".cache" / "numba"))
    real = _numba_cache._writable
    monkeypatch.setattr(_numba_cache, "_writable",
                        lambda d: not d.startswith((str(tmp_path / "readonly"), str(tmp_path / "no-home"))) and real(d))
    monkeypatch.setattr(_numba_cache.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return config, tmp_path / "tmp"


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_numba_cache_falls_back_to_a_private_dir(nowhere_to_cache):
    config, tmp = nowhere_to_cache
    chosen = _numba_cache.configure()
    assert chosen == str(tmp / f"rankseg_np-numba-{os.getuid()}") == config.CACHE_DIR
    assert stat.S_IMODE(os.stat(chosen).st_mode) == 0o700


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_numba_cache_never_uses_a_dir_others_can_write(nowhere_to_cache):
    config, tmp = nowhere_to_cache
    planted = tmp / f"rankseg_np-numba-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)  # as if another user had created it first: its pickles are not to be trusted
    chosen = _numba_cache.configure()
    assert chosen != str(planted) and chosen == config.CACHE_DIR
    assert stat.S_IMODE(os.stat(chosen).st_mode) == 0o700


def test_numba_cache_left_alone_when_numba_can_cache(monkeypatch):
    from numba.core import config

    monkeypatch.setattr(config, "CACHE_DIR", config.CACHE_DIR)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    before = config.CACHE_DIR
    if _numba_cache._writable(os.path.join(_numba_cache.PACKAGE, "cpu", "__pycache__")):
        assert _numba_cache.configure() is None and config.CACHE_DIR == before
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere")
    assert _numba_cache.configure() is None  # an explicit choice always wins
