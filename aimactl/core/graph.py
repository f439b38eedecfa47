"""Dependency graphs: cycles and the waves apply and destroy run in. Pure, on plain strings."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Return one dependency cycle as a closed path (`a -> b -> a`), or None when the graph is a DAG.

    `edges[n]` are the nodes `n` depends on.
    """
    sorter = graphlib.TopologicalSorter({n: list(d) for n, d in edges.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle: list[str] = list(exc.args[1])
        # graphlib lists the cycle backwards (each node followed by one that depends on it).
        return cycle[::-1]
    return None


def waves(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Group nodes into waves: every node comes after all of its dependencies; each wave is sorted.

    Raises graphlib.CycleError when there is a cycle (validation reports cycles before this is called).
    """
    sorter = graphlib.TopologicalSorter({n: list(d) for n, d in edges.items()})
    sorter.prepare()
    out: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        out.append(ready)
        sorter.done(*ready)
    return out
