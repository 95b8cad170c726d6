"""The README's examples run as copied.

* ``>>>`` blocks are doctests: they run in order and must print what the README says.
* Every other ```` ```python ```` block is self-contained: it runs on its own, in a fresh
  namespace, in an empty working directory.  A block is skipped only when it imports an
  optional package listed in ``OPTIONAL`` that is absent here (CuPy also needs a CUDA
  device); anything else that fails, fails the test.
* ```` ```bash ```` blocks install or run scripts: the scripts, extras and subcommands they
  name must exist.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)

# The only imports that may make a block skip: optional extras (or packages the project
# never installs, such as TensorFlow).  Keys are top-level module names.
OPTIONAL = {"cupy", "dask", "jax", "onnx", "onnxruntime", "tensorflow", "torch", "zarr"}


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block in that language."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


SCRIPTS = [(line, code) for line, code in blocks("python") if not code.lstrip().startswith(">>>")]


def missing_optional(code: str) -> str | None:
    """Why a block cannot run here (an optional package it imports is absent), or None."""
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    for name in sorted(modules & OPTIONAL):
        if importlib.util.find_spec(name) is None:
            return f"needs {name}, which is not installed"
        if name == "cupy":
            import cupy

            try:
                if cupy.cuda.runtime.getDeviceCount() == 0:
                    return "needs a CUDA device"
            except cupy.cuda.runtime.CUDARuntimeError:
                return "needs a CUDA device"
    return None


def test_readme_doctests():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_has_script_blocks():
    """The parametrised test below must not pass by finding nothing."""
    assert len(SCRIPTS) >= 8


@pytest.mark.parametrize("code", [code for _, code in SCRIPTS], ids=[f"line{line}" for line, _ in SCRIPTS])
def test_readme_block_runs_as_copied(code, tmp_path, monkeypatch):
    reason = missing_optional(code)
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    assert "labels" in namespace or "mask" in namespace, "each example ends with the call's result"


def test_readme_commands_name_what_exists(capsys):
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    from rankseg_np.cli import main

    commands = [part for _, code in blocks("bash") for part in re.split(r"&&|\n", code) if part.strip()]
    assert commands
    for command in commands:
        words = shlex.split(command, comments=True)
        if words[:2] == ["python", "-m"] or not words:
            continue
        if words[0] == "python":
            assert (ROOT / words[1]).is_file(), command
        elif words[:3] == ["pip", "install", "-e"]:
            extra = re.fullmatch(r"\.(?:\[(.*)\])?", words[3])
            assert extra, command
            assert set(filter(None, (extra.group(1) or "").split(","))) <= extras, command
        elif words[0] == "rankseg-np":
            assert main([words[1], "--help"]) == 0, command
        else:
            assert words[0] == "pytest", command
