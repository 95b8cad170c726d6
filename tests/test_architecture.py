"""The house rules of ../shared/DESIGN.md, checked on the import graph of the source.

Every ``import`` statement of every module counts, at module level or inside
a function (a lazy import is still a dependency).  ``from . import x`` where
``x`` is a submodule is an edge to that submodule, not to the package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rankseg_np"
LEAVES = {
    "rankseg_np._solvers", "rankseg_np._decision", "rankseg_np._quadrature", "rankseg_np._layout",
    "rankseg_np._first_calls",
}
EXECUTORS = ("rankseg_np.cpu", "rankseg_np.gpu", "rankseg_np.dask")
FRAMEWORKS = {"torch", "jax", "jaxlib", "tensorflow", "cupy"}
# Where a framework may be imported: the dispatch layer; CuPy in the GPU executor;
# integrations with a framework's own ecosystem (MONAI is PyTorch).
FRAMEWORK_HOMES = ("rankseg_np._dispatch", "rankseg_np.gpu", "rankseg_np.integrations")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import in module ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (module, alias.name))
    return found


def _internal_edges() -> dict[str, set[str]]:
    return {
        name: {m for m, _ in _imports(name) if m in MODULES and m != name}
        for name in MODULES
    }


def test_no_import_cycles():
    graph = _internal_edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_only_numpy_the_stdlib_and_other_leaves(leaf):
    """No Numba, no framework, no executor.  SciPy is allowed: a hard dependency like NumPy
    (the Gauss-Jacobi rule of _quadrature comes from scipy.special, lazily)."""
    for module, _ in _imports(leaf):
        top = module.split(".")[0]
        ok = module in LEAVES or module == "__future__" or top in ("numpy", "scipy") or top in sys.stdlib_module_names
        assert ok, f"{leaf} imports {module}"


def _owner(module: str) -> str | None:
    return next((e for e in EXECUTORS if module == e or module.startswith(e + ".")), None)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if _owner(m)))
def test_executors_keep_to_their_lane(name):
    """Never _api, _dispatch or cli; another executor only through its public names (Dask -> CPU)."""
    mine = _owner(name)
    for module, imported in _imports(name):
        assert module not in ("rankseg_np._api", "rankseg_np._dispatch") and not module.startswith("rankseg_np.cli"), (
            f"{name} imports {module}"
        )
        other = _owner(module)
        if other is None or other == mine:
            continue
        assert (mine, other) == ("rankseg_np.dask", "rankseg_np.cpu"), f"{name} imports {module}"
        private_module = any(part.startswith("_") for part in module.split("."))
        assert not private_module and not (imported or "").startswith("_"), (
            f"{name} uses a private name of the CPU executor: {module} {imported or ''}"
        )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_frameworks_only_in_the_dispatch_layer(name):
    for module, _ in _imports(name):
        if module.split(".")[0] in FRAMEWORKS:
            assert name.startswith(FRAMEWORK_HOMES), f"{name} imports {module}"
            if name.startswith("rankseg_np.gpu"):
                assert module.split(".")[0] == "cupy", f"{name} imports {module}"
