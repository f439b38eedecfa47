"""`aimactl models ls|gc`: what the hosts' model caches hold, and removing what no manifest uses."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from aimactl.cli.output import console, error, print_json
from aimactl.cli.stack import Common, load_or_exit


def _connections(common: Common) -> tuple[object, set[str]]:
    from aimactl.converge.connections import Connections, resolve_hosts
    from aimactl.core.desired import host_infos
    from aimactl.manifest import Manifests

    manifests = load_or_exit(common) if common.files else Manifests()
    names = {r.name for r in manifests.resources if r.kind == "Model"}
    return Connections(resolve_hosts(host_infos(manifests.resources)), os.environ), names


def ls_command(common: Common, output: str) -> None:
    """One row per cached model per host."""
    from aimactl.converge.models import cached_models

    connections, _ = _connections(common)
    rows, errors = cached_models(connections)  # type: ignore[arg-type]
    for problem in errors:
        error(problem)
    if output == "json":
        print_json(rows)
        if errors:
            raise typer.Exit(1)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "HOST", "SIZE", "SHA256", "SOURCE", "REVISION", "FETCHED"):
        table.add_column(column)
    for r in rows:
        size = f"{(r.get('size') or 0) / 2**20:.1f} MiB"
        table.add_row(*(escape(str(x)) for x in (r["name"], r["host"], size, str(r.get("sha256", ""))[:12],
                                                 r.get("source", ""), r.get("revision") or "-",
                                                 r.get("fetched_at", ""))))
    console().print(table if rows else "No cached models.")
    if errors:
        raise typer.Exit(1)


def gc_command(common: Common, yes: bool) -> None:
    """Show the cached models no manifest references, then delete them after confirmation."""
    from aimactl.converge.models import remove_cached, unreferenced

    if not common.files:
        error("give the manifests with -f: models they do not name are the ones removed")
        raise typer.Exit(1)
    connections, names = _connections(common)
    garbage, errors = unreferenced(connections, names)  # type: ignore[arg-type]
    for problem in errors:
        error(f"{problem}; its cache is left alone")
    if not garbage:
        console().print("Nothing to remove: every cached model is referenced.")
        raise typer.Exit(1 if errors else 0)
    for host, path, size in garbage:
        console().print(f"  - {escape(path)} on {host} ({size / 2**20:.1f} MiB)")
    if not yes:
        if not sys.stdin.isatty():
            error("refusing to delete without confirmation: no terminal to ask on; pass --yes")
            raise typer.Exit(1)
        if typer.prompt("Delete these? Only 'yes' will be accepted", default="", show_default=False) != "yes":
            raise typer.Exit(1)
    from aimactl.converge.models import HOST_ERRORS

    removed = 0
    for host, path, _ in garbage:
        try:
            remove_cached(connections, host, path)  # type: ignore[arg-type]
            removed += 1
        except HOST_ERRORS as exc:
            errors.append(f"cannot remove {path} on {host}: {exc}")
            error(errors[-1])
    console().print(f"Removed {removed} cached model(s).")
    raise typer.Exit(1 if errors else 0)
