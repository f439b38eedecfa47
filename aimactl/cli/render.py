"""Terraform-like text for plans and apply results. Rendering only: the Plan object decides everything."""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape

from aimactl.converge.apply import DONE, FAILED, SKIPPED, StepResult
from aimactl.core.checks import ERROR
from aimactl.core.plan import CREATE, DELETE, NOOP, REPLACE, UPDATE, Change, Plan

SYMBOLS = {CREATE: ("+", "green", "create"), UPDATE: ("~", "yellow", "update in-place"),
           DELETE: ("-", "red", "destroy"), REPLACE: ("-/+", "red", "destroy and then create replacement")}
VERBS = {CREATE: "created", UPDATE: "updated in-place", DELETE: "destroyed", REPLACE: "replaced"}


def _value(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return escape(text if len(text) <= 80 else text[:77] + "...")


def _change_lines(change: Change) -> list[str]:
    symbol, colour, _ = SYMBOLS[change.action]
    where = escape(change.address)
    lines = [f"  [bold]# {where}[/bold] will be {VERBS[change.action]}: {escape(change.reason)}",
             f"[{colour}]{symbol:>3}[/{colour}] {where}"]
    if change.action == CREATE and change.desired:
        spec = change.desired.spec
        for key in ("image", "command", "ports", "volumes"):
            if spec.get(key):
                lines.append(f"      {key}: {_value(spec[key])}")
        if spec.get("env"):
            lines.append(f"      env: {escape(', '.join(spec['env']))}")
    for d in change.diff:
        note = "  [red]# forces replacement[/red]" if d.forces_replacement and change.action == REPLACE else ""
        lines.append(f"      [yellow]~[/yellow] {escape(d.path)}: {_value(d.before)} -> {_value(d.after)}{note}")
    return lines + [""]


def plan_text(plan: Plan) -> str:
    """The whole plan as rich markup: legend, changes (destroys and replaces first), checks, summary."""
    actionable = plan.actionable
    out: list[str] = []
    if actionable:
        used = [a for a in (CREATE, UPDATE, DELETE, REPLACE) if any(c.action == a for c in actionable)]
        out.append("Resource actions are indicated with the following symbols:")
        out += [f"  [{SYMBOLS[a][1]}]{SYMBOLS[a][0]:>3}[/{SYMBOLS[a][1]}] {SYMBOLS[a][2]}" for a in used]
        out += ["", f"aimactl will perform the following actions on stack [bold]{plan.stack}[/bold]:", ""]
        for change in actionable:
            out += _change_lines(change)
    out += placement_lines(plan)
    out += check_lines(plan)
    if actionable:
        s = plan.summary()
        out.append(f"[bold]Plan:[/bold] {s['add']} to add, {s['change']} to change, {s['destroy']} to destroy.")
    elif plan.unreachable and not plan.errors:
        down = ", ".join(sorted(plan.unreachable))
        out.append(f"No changes on the hosts that could be reached; not reached: {escape(down)}.")
    elif not plan.errors:
        unchanged = sum(c.action == NOOP for c in plan.changes)
        out.append(f"[green]No changes.[/green] The hosts match the manifests ({unchanged} up to date).")
    return "\n".join(out)


def placement_lines(plan: Plan) -> list[str]:
    """Where the changing Services and Apps go and why, and each Service's GPU memory estimate with its source."""
    from aimactl.core.feasibility import estimate_line

    keys = sorted({c.key for c in plan.actionable if c.kind != "model"})
    lines = []
    for key in keys:
        placed = plan.placements.get(key)
        if placed is None or (not key.startswith("service/") and not placed.gpu_count
                              and "hostSelector" not in placed.reason):
            continue
        lines.append(f"  {escape(key.replace('/', '.'))} -> {escape(placed.host or '?')}: {escape(placed.reason)}")
        if key.startswith("service/"):
            lines.append(f"      {escape(estimate_line(placed.estimate, placed.gpu_count))}")
    return (["Placement:"] + lines + [""]) if lines else []


def check_lines(plan: Plan) -> list[str]:
    """Errors and warnings, each with where it applies."""
    lines = []
    for check in plan.checks:
        where = escape(check.address or check.host)
        label = "[red]Error:[/red]" if check.severity == ERROR else "[yellow]Warning:[/yellow]"
        lines.append(f"{label} {escape(check.message)}" + (f"  [dim]({where}, {check.code})[/dim]" if where else
                                                            f"  [dim]({check.code})[/dim]"))
    return lines + ([""] if lines else [])


def step_line(change: Change, result: StepResult | None) -> str:
    """One progress line: `app.web[0]@local: Creating...` or its outcome."""
    if result is None:
        verb = {CREATE: "Creating", UPDATE: "Updating", DELETE: "Destroying", REPLACE: "Replacing"}[change.action]
        return f"{escape(change.address)}: {verb}..."
    colour = {DONE: "green", FAILED: "red", SKIPPED: "yellow"}.get(result.status, "dim")
    return (f"{escape(change.address)}: [{colour}]{result.status}[/{colour}] after {result.seconds:.1f}s"
            + (f": {escape(result.message)}" if result.message else ""))


def results_table(results: list[StepResult]) -> Any:
    """A rich table: one row per resource replica, with what happened."""
    from rich.table import Table

    table = Table(title="Apply results", show_lines=False)
    for column in ("RESOURCE", "ACTION", "RESULT", "TIME", "DETAIL"):
        table.add_column(column)
    for r in results:
        colour = {DONE: "green", FAILED: "red", SKIPPED: "yellow"}.get(r.status, "dim")
        detail = r.message.splitlines()[0] if r.message else ""
        table.add_row(escape(r.address), r.action, f"[{colour}]{r.status}[/{colour}]", f"{r.seconds:.1f}s",
                      escape(detail))
    return table


def hosts_table(summary: list[Any]) -> Any:
    """A rich table: one row per host, whether it was reached, and its steps done / failed / skipped."""
    from rich.table import Table

    table = Table(title="Hosts", show_lines=False)
    for column in ("HOST", "REACHABLE", "DONE", "FAILED", "SKIPPED", "DETAIL"):
        table.add_column(column)
    for row in summary:
        reach = "[green]yes[/green]" if row.reachable else "[red]no[/red]"
        failed = f"[red]{row.failed}[/red]" if row.failed else "0"
        skipped = f"[yellow]{row.skipped}[/yellow]" if row.skipped else "0"
        table.add_row(escape(row.host), reach, str(row.done), failed, skipped, escape(row.reason))
    return table
