"""plan, apply, destroy: flag handling and rendering around converge.session."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from aimactl.cli.output import console, error, print_json


@dataclass
class Common:
    """Flags shared by plan, apply and destroy."""

    files: list[str] = field(default_factory=list)
    stack: str = "default"
    var: list[str] = field(default_factory=list)
    var_file: list[str] = field(default_factory=list)
    allow_env: bool = False
    parallelism: int = 4
    targets: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    allow_empty: bool = False
    verify: bool = False
    accept_new_host_keys: bool = False


def check_stack(stack: str) -> str:
    """Stack names become container names: same rule as resource names."""
    from aimactl.manifest.kinds import check_name

    try:
        return check_name(stack)
    except ValueError as exc:
        error(f"--stack: {exc}")
        raise typer.Exit(1) from None


def load_or_exit(common: Common) -> Any:
    """Load and validate the manifests; print every error and exit 1 when any."""
    from aimactl.cli.manifests import read_manifests

    manifests = read_manifests(common.files, common.var, common.var_file, common.allow_env)
    if not manifests.valid:
        err = console(stderr=True)
        for e in manifests.errors:
            err.print(f"{e.location()}: {e.code}: " + (f"{e.path}: " if e.path else "") + e.message, markup=False)
        raise typer.Exit(1)
    return manifests


def make_session(common: Common, manifests: Any, destroy: bool = False) -> Any:
    """Observe and plan."""
    from aimactl.converge.session import plan_stack
    from aimactl.core.plan import PlanOptions

    options = PlanOptions(check_stack(common.stack), frozenset(common.replace), frozenset(common.targets),
                          frozenset(common.excludes), common.allow_empty, destroy, common.verify)
    return plan_stack(manifests, options, os.environ, common.parallelism, common.accept_new_host_keys)


def plan_command(common: Common, output: str, out: Path | None, detailed_exitcode: bool) -> None:
    """Print (or save) the plan; exit 0 no changes, 1 error, 2 changes with --detailed-exitcode."""
    from aimactl.cli.render import plan_text
    from aimactl.core.planfile import to_dict

    session = make_session(common, load_or_exit(common))
    try:
        plan = session.plan
        if output == "json":
            print_json(to_dict(plan))
        else:
            console().print(plan_text(plan))
        if out:
            out.write_text(json.dumps(to_dict(plan), indent=2) + "\n", encoding="utf-8")
            out.chmod(0o600)
            if output != "json":
                console().print(f"\nSaved the plan to {out}. Apply exactly this plan with: aimactl apply {out}")
        if plan.unreachable and output != "json":
            from aimactl.cli.render import hosts_table
            from aimactl.converge.session import host_summary

            console().print(hosts_table(host_summary(plan)))
    finally:
        session.close()
    if plan.errors or plan.unreachable:
        raise typer.Exit(1)
    raise typer.Exit(2 if detailed_exitcode and plan.actionable else 0)


class LineReporter:
    """Terraform-style progress lines, safe to print from worker threads."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.last_progress: dict[str, float] = {}

    def progress(self, change: Any, event: dict[str, Any]) -> None:
        """Download progress: size, speed and ETA, at most one line every 2 seconds per resource."""
        import time

        now = time.monotonic()
        if event.get("event") != "progress" or now - self.last_progress.get(change.address, 0) < 2:
            return
        self.last_progress[change.address] = now
        done, total, rate = event.get("bytes", 0), event.get("total"), event.get("rate") or 0
        size = f"{done / 2**20:.1f} MiB" + (f" of {total / 2**20:.1f} MiB" if total else "")
        eta = f", ETA {int((total - done) / rate)}s" if total and rate else ""
        with self.lock:
            console().print(f"{change.address}: {size}, {rate / 2**20:.1f} MiB/s{eta}", markup=False)

    def started(self, change: Any) -> None:
        from aimactl.cli.render import step_line

        with self.lock:
            console().print(step_line(change, None))

    def finished(self, change: Any, result: Any) -> None:
        from aimactl.cli.render import step_line

        with self.lock:
            console().print(step_line(change, result))


def approve(auto_approve: bool, what: str) -> None:
    """Ask before changing anything; refuse without a terminal unless --auto-approve."""
    if auto_approve:
        return
    if not sys.stdin.isatty():
        error(f"refusing to {what} without approval: no terminal to ask on. Review the plan, then pass "
              "--auto-approve")
        raise typer.Exit(1)
    answer = typer.prompt(f"\nDo you want to {what}? Only 'yes' will be accepted", default="", show_default=False)
    if answer.strip() != "yes":
        console().print(f"{what.capitalize()} cancelled.")
        raise typer.Exit(1)


def _nothing_to_apply(plan: Any) -> None:
    """Print the plan and exit when it has errors or nothing to do: 1 on errors or unreachable hosts, else 0."""
    from aimactl.cli.render import hosts_table, plan_text
    from aimactl.converge.session import host_summary

    if plan.errors or not plan.actionable:
        console().print(plan_text(plan))
        if plan.unreachable:
            console().print(hosts_table(host_summary(plan)))
        raise typer.Exit(1 if plan.errors or plan.unreachable else 0)


def converge_locked(stack: str, kind: str, lock_timeout: float, parallelism: int, build: Callable[[], Any],
                    auto_approve: bool, what: str, source: str | None = None, preview: bool = True,
                    max_fail_percent: int | None = None) -> None:
    """Hold the stack lock, then plan (`build`), show the plan, ask, apply, and print the results.

    The plan that is shown is made under the lock and is the plan that runs. A first plan without the lock
    (and without opening the state store, which is a third of a no-op's start-up) ends the command early when
    there is nothing to do. Unreachable hosts are left out; the others converge and the
    command exits 1 with a per-host summary.
    """
    from aimactl.cli.render import plan_text

    if preview:
        _preview(build)
    from aimactl.converge.session import apply_session, stack_lock
    from aimactl.hosts.hostlock import HostLockError
    from aimactl.store import StoreError

    try:
        with stack_lock(stack, kind, lock_timeout, os.environ) as store:
            session = build()
            try:
                _nothing_to_apply(session.plan)
                console().print(plan_text(session.plan))
                approve(auto_approve, what)
                from aimactl.cli.progress import make_reporter

                outcome = apply_session(session, store, make_reporter(), kind=kind, parallelism=parallelism,
                                        environ=os.environ, source=source, max_fail_percent=max_fail_percent,
                                        host_lock_wait=lock_timeout)
            finally:
                session.close()
    except (StoreError, HostLockError) as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    _print_outcome(outcome, kind)
    raise typer.Exit(1 if outcome.failed else 0)


def _preview(build: Callable[[], Any]) -> None:
    """Plan once without the lock (and without opening the state store): exit early when there is nothing to do."""
    first = build()
    try:
        # Errors are confirmed under the lock: a plan made without it can see an apply that runs right now
        # (the reconcile loop) half-way, e.g. a port its new container just bound, as held by a stranger.
        if not first.plan.errors:
            _nothing_to_apply(first.plan)
    finally:
        first.connections.close(keep_connections=True)  # the SSH connections serve the plan under the lock
        first.close()


def _print_outcome(outcome: Any, kind: str) -> None:
    """The per-resource results, the per-host summary when there are several hosts or failures, the last line."""
    from aimactl.cli.render import hosts_table, results_table

    console().print(results_table(outcome.results))
    if len(outcome.hosts) > 1 or any(not h.ok for h in outcome.hosts):
        console().print(hosts_table(outcome.hosts))
    verb = {"destroy": "Destroy", "rollback": "Rollback"}.get(kind, "Apply")
    console().print(f"{verb} {'[red]failed[/red]' if outcome.failed else '[green]complete[/green]'} "
                    f"(revision {outcome.revision}).")


def _saved_session(path: Path, common: Common) -> Any:
    """A session from a saved plan: its hosts reconnected, its targets re-checked (stale plans are refused)."""
    from aimactl.converge.connections import Connections
    from aimactl.converge.session import Session, stale_targets
    from aimactl.core.observed import Observed
    from aimactl.core.planfile import PlanFileError, from_dict

    try:
        plan = from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, PlanFileError) as exc:
        error(f"cannot read plan file {path}: {exc}")
        raise typer.Exit(1) from None
    session = Session(plan.stack, plan, Observed(), Connections(plan.hosts, os.environ, common.accept_new_host_keys))
    stale = stale_targets(session)
    if stale:
        session.close()
        error(f"the saved plan {path} is stale; what changed since it was made:\n  " + "\n  ".join(stale)
              + "\nRun `aimactl plan` again.")
        raise typer.Exit(1)
    return session


def apply_command(common: Common, plan_file: Path | None, auto_approve: bool, lock_timeout: float,
                  max_fail_percent: int | None = None) -> None:
    """Plan (or load and re-check a saved plan), ask, then converge."""
    stack = check_stack(common.stack)
    if plan_file is not None:
        # A saved plan was reviewed when it was made, as with `terraform apply PLANFILE`.
        converge_locked(stack, "apply", lock_timeout, common.parallelism,
                        lambda: _saved_session(plan_file, common), True, "perform these actions", preview=False,
                        max_fail_percent=max_fail_percent)
    manifests = load_or_exit(common)
    converge_locked(stack, "apply", lock_timeout, common.parallelism, lambda: make_session(common, manifests),
                    auto_approve, "perform these actions", max_fail_percent=max_fail_percent)


def destroy_command(common: Common, auto_approve: bool, lock_timeout: float) -> None:
    """Delete every container of the stack (dependents first when manifests are given); without `-f` on the hosts
    of the stack's last recorded revision."""
    if common.files:
        manifests = load_or_exit(common)
    else:
        from aimactl.converge.session import recorded_hosts

        manifests, where = recorded_hosts(check_stack(common.stack), os.environ, common.var, common.var_file,
                                          dict(os.environ) if common.allow_env else None)
        console(stderr=True).print(f"Destroying stack {common.stack}: {where}.", markup=False)
    converge_locked(check_stack(common.stack), "destroy", lock_timeout, common.parallelism,
                    lambda: make_session(common, manifests, destroy=True), auto_approve, "destroy these resources")
