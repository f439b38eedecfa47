"""get, describe, logs, history, rollback, unlock: looking at a stack and its history."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.markup import escape

from aimactl.cli.output import console, error, print_json
from aimactl.cli.stack import Common, check_stack, load_or_exit, make_session

KINDS = {"service": "service", "services": "service", "svc": "service", "app": "app", "apps": "app"}


def _kind(word: str) -> str:
    if word.lower() not in KINDS:
        error(f"unknown resource type {word!r}: use services or apps")
        raise typer.Exit(1)
    return KINDS[word.lower()]


def _observe(common: Common, kind: str | None) -> tuple[Any, list[Any]]:
    """Observe (and plan, when manifests are given, to know sync): the session and per-resource statuses.
    The caller closes the session."""
    from aimactl.converge.status import statuses
    from aimactl.manifest import Manifests

    manifests = load_or_exit(common) if common.files else Manifests()
    session = make_session(common, manifests)
    for host in session.observed.hosts.values():
        if not host.reachable:
            error(f"host {host.name} is unreachable: {host.error}")
    return session, statuses(session.observed, session.plan if common.files else None, kind)


def _statuses(common: Common, kind: str | None) -> list[Any]:
    """Per-resource statuses (the connections are closed again)."""
    session, rows = _observe(common, kind)
    session.close()
    return rows


def _reconcile_states(stack: str) -> tuple[dict[str, str], list[Any]]:
    """What the reconcile loop recorded: Stalled reasons (by address and kind/name) and every replica's state."""
    from aimactl.store import StoreError, default_state_dir, open_store
    from aimactl.store.resources import load_states, stalled_resources

    if not (default_state_dir(os.environ) / "aimactl.db").exists():
        return {}, []
    try:
        store = open_store(environ=os.environ)
    except StoreError:
        return {}, []
    try:
        return stalled_resources(store, stack), list(load_states(store, stack).values())
    finally:
        store.close()


def get_command(common: Common, what: str, output: str) -> None:
    """A table of Services or Apps (wide adds image, containers and sync); json/yaml for machines."""
    rows = _statuses(common, _kind(what))
    stalled, _ = _reconcile_states(common.stack)
    if output in ("json", "yaml"):
        data = [{**r.to_dict(), "stalled": stalled.get(f"{r.kind}/{r.name}")} for r in rows]
        if output == "json":
            print_json(data)
        else:
            from ruamel.yaml import YAML

            YAML(typ="safe", pure=True).dump(data, sys.stdout)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    columns = ["NAME", "HOST", "READY", "STATUS", "RESTARTS", "ENDPOINT"]
    columns += ["SYNC", "IMAGE", "CONTAINERS"] if output == "wide" else []
    for column in columns:
        table.add_column(column)
    for r in rows:
        desired = r.desired if r.desired is not None else len(r.containers)
        state = "Stalled" if f"{r.kind}/{r.name}" in stalled else r.state
        cells = [r.name, r.host, f"{r.ready}/{desired}", state, str(r.restarts), r.endpoint]
        if output == "wide":
            image = r.containers[0].image if r.containers else ""
            cells += [r.sync, image, ",".join(c.id[:12] for c in r.containers)]
        table.add_row(*(escape(c) for c in cells))
    if rows:
        console().print(table)
    else:
        console().print(f"No {what} in stack {common.stack}.")


def describe_command(common: Common, ref: str) -> None:
    """Spec, containers, health and recent events of one resource."""
    from aimactl.store import open_store

    kind_word, _, name = ref.partition("/")
    kind = _kind(kind_word)
    session, found = _observe(common, kind)
    session.close()
    rows = [r for r in found if r.name == name]
    placed = session.plan.placements.get(f"{kind}/{name}") if common.files else None
    if not rows:
        error(f"{kind} {name!r} not found in stack {common.stack}")
        raise typer.Exit(1)
    stalled, loop_states = _reconcile_states(common.stack)
    out = console()
    for row in rows:
        out.print(f"[bold]Name:[/bold]      {escape(row.name)}\n[bold]Kind:[/bold]      {row.kind}\n"
                  f"[bold]Host:[/bold]      {escape(row.host)}\n[bold]Status:[/bold]    {row.state} "
                  f"({row.ready}/{row.desired if row.desired is not None else len(row.containers)} ready)\n"
                  f"[bold]Sync:[/bold]      {row.sync}\n[bold]Endpoint:[/bold]  {escape(row.endpoint)}")
        if placed is not None:
            from aimactl.core.feasibility import estimate_line

            out.print(f"[bold]Placement:[/bold] {escape(placed.reason)}")
            if kind == "service":
                out.print(f"[bold]GPU memory:[/bold] {escape(estimate_line(placed.estimate, placed.gpu_count))}")
        for state in [s for s in loop_states if s.key == f"{row.kind}/{row.name}"]:
            extra = f"; {escape(stalled[state.resource])}" if state.resource in stalled else \
                f"; last failure: {escape(state.reason)}" if state.reason else ""
            out.print(f"[bold]Reconcile:[/bold] {escape(state.resource)}: {state.sync}, {escape(state.health)}"
                      f"{extra}")
        spec = row.containers[0].spec if row.containers else None
        if spec:
            from ruamel.yaml import YAML

            out.print("[bold]Spec:[/bold]")
            YAML(typ="safe", pure=True).dump(spec, sys.stdout)
        out.print("[bold]Containers:[/bold]")
        for c in row.containers:
            health = f", health {c.health}" if c.health else ""
            code = f" ({c.exit_code})" if c.exit_code not in (None, 0) or c.state == "exited" else ""
            out.print(f"  {escape(c.name)}  {c.id[:12]}  {c.state}{code}{health}, restarts {c.restart_count}, "
                      f"started {c.started_at or '-'}")
    store = open_store(environ=os.environ)
    try:
        events = [e for e in store.events(common.stack, limit=200) if f".{name}[" in e["resource"]][:15]
    finally:
        store.close()
    out.print("[bold]Events:[/bold]" + ("" if events else " none"))
    for e in events:
        out.print(f"  {e['created_at']}  {e['kind']:<9} {escape(e['resource'])}: {escape(e['message'] or '')}")


def logs_command(common: Common, name: str, follow: bool, tail: int | None) -> None:
    """Print (or follow) the logs of every replica of a Service or App."""
    from aimactl.core.labels import RUNTIME

    session, statuses = _observe(common, None)
    rows = [r for r in statuses if r.name == name and r.containers]
    if not rows:
        session.close()
        error(f"no containers for {name!r} in stack {common.stack}")
        raise typer.Exit(1)
    containers = [(r.host, c) for r in rows for c in r.containers]
    try:
        for host, c in containers:
            prefix = f"{c.name} | " if len(containers) > 1 else ""
            runtime = session.connections.runtime(host, c.labels.get(RUNTIME, "docker"))
            for line in runtime.logs(c.id, tail=tail, follow=follow and len(containers) == 1):
                sys.stdout.write(prefix + line + ("" if line.endswith("\n") else "\n"))
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        session.close()


def history_command(stack: str, output: str, limit: int) -> None:
    """Past applies, destroys and rollbacks of a stack."""
    from aimactl.store import open_store

    store = open_store(environ=os.environ)
    try:
        revisions = store.revisions(check_stack(stack), limit=limit)
    finally:
        store.close()
    if output == "json":
        print_json([{k: r[k] for k in ("id", "created_at", "kind", "status", "summary", "source", "user", "hostname")}
                    for r in revisions])
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("REVISION", "TIME", "KIND", "STATUS", "SUMMARY", "BY"):
        table.add_column(column)
    for r in revisions:
        table.add_row(str(r["id"]), r["created_at"], r["kind"], r["status"], escape(r.get("summary") or ""),
                      escape(f"{r.get('user')}@{r.get('hostname')}"))
    console().print(table if revisions else f"No history for stack {stack}.")


def rollback_command(common: Common, revision: int, auto_approve: bool, lock_timeout: float) -> None:
    """Plan and apply the manifests an earlier revision applied."""
    from aimactl.cli.stack import converge_locked
    from aimactl.converge.session import RevisionNotFound, plan_stack, revision_manifests
    from aimactl.core.plan import PlanOptions

    try:
        manifests = revision_manifests(common.stack, revision, os.environ, common.var, common.var_file,
                                       dict(os.environ) if common.allow_env else None)
    except RevisionNotFound as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    if not manifests.valid:
        for e in manifests.errors:
            error(str(e))
        raise typer.Exit(1)
    converge_locked(common.stack, "rollback", lock_timeout, common.parallelism,
                    lambda: plan_stack(manifests, PlanOptions(common.stack, allow_empty=True), os.environ,
                                       common.parallelism),
                    auto_approve, f"roll back to revision {revision}", source=f"revision {revision}")


def unlock_command(lock_id: str, force: bool) -> None:
    """Break a stack lock left by a dead or stuck apply."""
    from aimactl.store import force_unlock, open_store

    if not force:
        error("breaking a lock can let two applies race; pass --force if its holder is really gone")
        raise typer.Exit(1)
    store = open_store(environ=os.environ)
    try:
        removed = force_unlock(store, lock_id)
    finally:
        store.close()
    if not removed:
        error(f"no lock with id {lock_id}")
        raise typer.Exit(1)
    console().print(f"Lock {lock_id} removed.")
