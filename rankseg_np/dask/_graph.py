"""A streaming task graph for multi-pass algorithms: the one module on Dask's private API.

:class:`Source` gives each input chunk as a *recipe* (its private sub-graph)
that the task needing the chunk runs itself, so that a pass streams the
input once and no chunk survives from one pass to the next; :class:`Graph`
collects the tasks of a strategy in one layer, builds tree reductions, and
wraps keys as Dask collections.  Uses ``dask._task_spec`` and
``dask.local.get_sync`` (private API): pinned here so that a Dask upgrade
touches one file.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import dask.local
from dask._task_spec import Alias, DataNode, Task
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

# Fan-in of the tree reductions.
SPLIT_EVERY = 8


class Recipe:
    """How to compute one input chunk: its private sub-graph, run inside the task that reads it.

    An opaque object, so the scheduler neither traverses nor schedules the
    sub-graph: the chunk exists only while the task that needs it runs.
    """

    __slots__ = ("graph", "key", "external")

    def __init__(self, graph: dict, key: Any, external: list):
        self.graph = graph
        self.key = key
        self.external = external

    def __repr__(self) -> str:
        return f"Recipe({self.key!r}, {len(self.graph)} tasks)"


def run_recipe(recipe: Recipe, external_values: list) -> Any:
    graph = dict(recipe.graph)
    for k, v in zip(recipe.external, external_values):
        graph[k] = DataNode(k, v)
    return dask.local.get_sync(graph, recipe.key)


class Source:
    """The input array as per-chunk recipes, for passes that each stream the whole input.

    A multi-pass algorithm must not let the scheduler keep input chunks from
    one pass to the next (that is the whole image in memory), nor compute
    them ahead of the pass that needs them.  Each pass's task therefore
    computes its chunk itself from the chunk's own sub-graph (the input's
    optimised graph culled to that chunk).  Keys shared by more than
    ``MAX_FAN`` chunks (a global scalar such as a normalisation constant) and
    already-computed data (``from_array``, persisted chunks, a Zarr handle)
    are *external*: ordinary graph keys, computed once and passed in.
    (``dask.graph_manipulation.bind`` would be the obvious tool, but Dask's
    array optimisation can drop the dependency it adds, and the next pass's
    chunks are then computed during the first pass and held.)
    """

    MAX_FAN = 4

    def __init__(self, x):
        from dask.core import flatten, get_dependencies

        keys = list(flatten(x.__dask_keys__()))
        dsk = dict(x.__dask_optimize__(x.__dask_graph__(), keys))
        deps = {k: set(getattr(v, "dependencies", None) or get_dependencies(dsk, k)) for k, v in dsk.items()}
        missing = set().union(*deps.values()) - set(dsk)
        if missing:  # e.g. persisted chunks (Futures), which optimisation leaves out
            raw = dict(x.__dask_graph__())
            for k in missing:
                dsk[k] = raw[k]
                deps[k] = set()
        ancestors = {}
        fan: dict = {}
        for ck in keys:
            seen = set()
            stack = [ck]
            while stack:
                k = stack.pop()
                if k in seen:
                    continue
                seen.add(k)
                stack.extend(deps[k])
            ancestors[ck] = seen
            for k in seen:
                fan[k] = fan.get(k, 0) + 1
        external = {k for k in dsk if not isinstance(dsk[k], (Task, Alias)) or fan.get(k, 0) > self.MAX_FAN}
        # Everything an external key needs is external too.
        stack = list(external)
        while stack:
            for dep in deps[stack.pop()]:
                if dep not in external:
                    external.add(dep)
                    stack.append(dep)
        self.layer = {k: dsk[k] for k in external}
        self.args = {}
        for ck in keys:
            if ck in external:
                self.args[ck] = ck  # an ordinary dependency
                continue
            private = {k: dsk[k] for k in ancestors[ck] if k not in external}
            ext = sorted((k for k in ancestors[ck] if k in external and k in set().union(*(deps[j] for j in private))), key=str)
            self.args[ck] = (run_recipe, Recipe(private, ck, ext), list(ext))
        self.name = f"rankseg-input-{tokenize(x)}"

    def chunk(self, x, idx: tuple) -> Any:
        """The task argument that evaluates to chunk ``idx`` of ``x``."""
        return self.args[(x.name,) + tuple(idx)]


class Graph:
    """Accumulates the tasks of one strategy in one layer and wraps keys as Delayed."""

    def __init__(self, name: str, source: Source):
        self.name = name
        self.layer: dict = dict(source.layer)

    def key(self, *parts) -> tuple:
        return (self.name,) + parts

    def tree(self, keys: list, combine, tag: Any) -> Any:
        level = 0
        while len(keys) > 1:
            nxt = []
            for j in range(0, len(keys), SPLIT_EVERY):
                k = self.key("combine", tag, level, j // SPLIT_EVERY)
                self.layer[k] = (combine, list(keys[j : j + SPLIT_EVERY]))
                nxt.append(k)
            keys = nxt
            level += 1
        return keys[0]

    def graph(self) -> HighLevelGraph:
        return HighLevelGraph.from_collections(self.name, self.layer, dependencies=[])

    def delayed(self, key) -> Delayed:
        return Delayed(key, self.graph(), layer=self.name)

    def array(self, name: str, layer: dict, dependency: Any, chunks: tuple, dtype: Any) -> Any:
        """A Dask array made of the tasks in ``layer`` (keys ``(name, *block)``), after ``dependency``."""
        hlg = HighLevelGraph.from_collections(name, layer, dependencies=[self.delayed(dependency)])
        return da.Array(hlg, name, chunks, dtype=dtype)
