"""The `aimactl` command line: typer commands that parse flags and hand over to the packages doing the work.

Command modules are imported inside each command so that `aimactl --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    name="aimactl",
    help="Declarative GitOps for AI inference on edge GPU machines: plan, apply and watch models, "
         "inference services and apps from YAML manifests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich's help renderer costs ~0.14 s of start-up
    context_settings={"help_option_names": ["-h", "--help"]},
)

FILES = typer.Option(..., "-f", "--filename", help="Manifest file or directory (repeatable); '-' reads stdin.")
VARS = typer.Option([], "--var", help="Template variable NAME=VALUE (repeatable).")
VAR_FILES = typer.Option([], "--var-file", help="YAML/JSON file of template variables (repeatable).")
ALLOW_ENV = typer.Option(False, "--allow-env", help="Let templates read environment variables as {{ env.NAME }}.")


class Output(str, Enum):
    """Output formats of commands that print a report."""

    text = "text"
    json = "json"


@app.command()
def validate(
    files: list[str] = FILES,
    var: list[str] = VARS,
    var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV,
    output: Output = typer.Option(Output.text, "-o", "--output", help="text or json."),
) -> None:
    """Check manifests (syntax, fields, templates, references, cycles) without touching any host."""
    from aimactl.cli.manifests import validate_command

    validate_command(files, var, var_file, allow_env, output.value)


@app.command()
def schema(
    out: Path = typer.Option(None, "--out", help="Directory to write into (default: ./schemas)."),
    check: bool = typer.Option(False, "--check", help="Only compare with the files there; exit 1 if stale."),
) -> None:
    """Write the JSON Schema of each kind and of any kind, for editors and agents."""
    from aimactl.cli.manifests import schema_command

    schema_command(out, check)


@app.command()
def explain(
    field: str = typer.Argument(..., help="KIND[.FIELD...], e.g. service.spec.resources"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Show every nested field."),
) -> None:
    """Describe a manifest field and its sub-fields, like kubectl explain."""
    from aimactl.cli.manifests import explain_command

    explain_command(field, recursive)


OPT_FILES = typer.Option([], "-f", "--filename", help="Manifest file or directory (repeatable); '-' reads stdin.")
STACK = typer.Option("default", "--stack", envvar="AIMACTL_STACK", help="Stack: the unit of ownership and pruning.")
PARALLELISM = typer.Option(4, "--parallelism", min=1, max=64, help="Operations at once per wave.")
TARGETS = typer.Option([], "--target", help="Only this resource (and what it needs), e.g. service/chat.")
EXCLUDES = typer.Option([], "--exclude", help="Leave this resource (and what needs it) alone.")
REPLACES = typer.Option([], "--replace", help="Force this resource to be replaced.")
ALLOW_EMPTY = typer.Option(False, "--allow-empty", help="Allow manifests with no workloads to prune the whole stack.")
AUTO_APPROVE = typer.Option(False, "--auto-approve", help="Do not ask for approval.")
VERIFY = typer.Option(False, "--verify", help="Rehash cached model files on their hosts (re-fetch on a mismatch).")
ACCEPT_NEW_KEYS = typer.Option(False, "--accept-new-host-keys",
                               help="Record unknown SSH host keys in knownHosts (never accepts a changed key).")
LOCK_TIMEOUT = typer.Option("0s", "--lock-timeout", help="How long to wait for the stack lock, e.g. 30s.")


def _common(files: list[str], stack: str, var: list[str], var_file: list[str], allow_env: bool, parallelism: int,
            target: list[str], exclude: list[str], replace: list[str], allow_empty: bool, verify: bool = False,
            accept_new_host_keys: bool = False) -> Any:
    from aimactl.cli.stack import Common

    return Common(files, stack, var, var_file, allow_env, parallelism, target, exclude, replace, allow_empty,
                  verify, accept_new_host_keys=accept_new_host_keys)


def _seconds(text: str) -> float:
    from aimactl.manifest.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def plan(
    files: list[str] = FILES, stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV, parallelism: int = PARALLELISM, target: list[str] = TARGETS,
    exclude: list[str] = EXCLUDES, replace: list[str] = REPLACES, allow_empty: bool = ALLOW_EMPTY,
    output: Output = typer.Option(Output.text, "-o", "--output", help="text or json."),
    out: Path = typer.Option(None, "--out", help="Save the plan to apply it later with `aimactl apply FILE`."),
    detailed_exitcode: bool = typer.Option(False, "--detailed-exitcode", help="Exit 2 when there are changes."),
    verify: bool = VERIFY, accept_new_host_keys: bool = ACCEPT_NEW_KEYS,
) -> None:
    """Show what apply would change on the hosts, and why."""
    from aimactl.cli.stack import plan_command

    plan_command(_common(files, stack, var, var_file, allow_env, parallelism, target, exclude, replace, allow_empty,
                         verify, accept_new_host_keys), output.value, out, detailed_exitcode)


@app.command()
def apply(
    plan_file: Path = typer.Argument(None, help="A plan saved with `plan --out`; re-checked before use."),
    files: list[str] = OPT_FILES, stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV, parallelism: int = PARALLELISM, target: list[str] = TARGETS,
    exclude: list[str] = EXCLUDES, replace: list[str] = REPLACES, allow_empty: bool = ALLOW_EMPTY,
    auto_approve: bool = AUTO_APPROVE, lock_timeout: str = LOCK_TIMEOUT, verify: bool = VERIFY,
    max_fail_percent: int = typer.Option(None, "--max-fail-percent", min=0, max=100,
                                         help="Start no new step once more than this % of the hosts failed."),
    accept_new_host_keys: bool = ACCEPT_NEW_KEYS,
) -> None:
    """Converge the hosts to the manifests (or to a saved plan), waiting for readiness."""
    from aimactl.cli.stack import apply_command

    if plan_file is None and not files:
        raise typer.BadParameter("give manifests with -f, or a saved plan file")
    apply_command(_common(files, stack, var, var_file, allow_env, parallelism, target, exclude, replace, allow_empty,
                          verify, accept_new_host_keys), plan_file, auto_approve, _seconds(lock_timeout),
                  max_fail_percent)


@app.command()
def destroy(
    files: list[str] = OPT_FILES, stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV, parallelism: int = PARALLELISM, auto_approve: bool = AUTO_APPROVE,
    lock_timeout: str = LOCK_TIMEOUT, accept_new_host_keys: bool = ACCEPT_NEW_KEYS,
) -> None:
    """Remove every container of the stack (dependents first)."""
    from aimactl.cli.stack import destroy_command

    destroy_command(_common(files, stack, var, var_file, allow_env, parallelism, [], [], [], True,
                            accept_new_host_keys=accept_new_host_keys), auto_approve,
                    _seconds(lock_timeout))


class GetOutput(str, Enum):
    """Output formats of `get`."""

    text = "text"
    wide = "wide"
    json = "json"
    yaml = "yaml"


@app.command()
def get(
    what: str = typer.Argument(..., help="services or apps"),
    files: list[str] = OPT_FILES, stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV,
    output: GetOutput = typer.Option(GetOutput.text, "-o", "--output", help="text, wide, json or yaml."),
) -> None:
    """List Services or Apps with replicas, status and endpoint (sync too, given manifests)."""
    from aimactl.cli.inspect import get_command

    get_command(_common(files, stack, var, var_file, allow_env, 4, [], [], [], True), what, output.value)


@app.command()
def describe(
    ref: str = typer.Argument(..., help="service/NAME or app/NAME"),
    files: list[str] = OPT_FILES, stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV,
) -> None:
    """Show one resource: spec, containers, health and recent events."""
    from aimactl.cli.inspect import describe_command

    describe_command(_common(files, stack, var, var_file, allow_env, 4, [], [], [], True), ref)


@app.command()
def logs(
    name: str = typer.Argument(..., help="Service or App name"),
    files: list[str] = typer.Option([], "--filename", help="Manifests naming the Hosts (their data dirs)."),
    stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES, allow_env: bool = ALLOW_ENV,
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
    tail: int = typer.Option(None, "--tail", help="Only the last N lines."),
) -> None:
    """Print the logs of a Service or App (every replica; containers and native processes)."""
    from aimactl.cli.inspect import logs_command

    logs_command(_common(files, stack, var, var_file, allow_env, 4, [], [], [], True), name, follow, tail)


@app.command()
def history(
    stack: str = STACK,
    output: Output = typer.Option(Output.text, "-o", "--output", help="text or json."),
    limit: int = typer.Option(20, "--limit", help="How many revisions."),
) -> None:
    """List the revisions (applies, destroys, rollbacks) of a stack."""
    from aimactl.cli.inspect import history_command

    history_command(stack, output.value, limit)


@app.command()
def rollback(
    revision: int = typer.Argument(..., help="Revision id from `aimactl history`."),
    stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES, allow_env: bool = ALLOW_ENV,
    parallelism: int = PARALLELISM, auto_approve: bool = AUTO_APPROVE, lock_timeout: str = LOCK_TIMEOUT,
) -> None:
    """Plan and apply the manifests of an earlier revision."""
    from aimactl.cli.inspect import rollback_command

    rollback_command(_common([], stack, var, var_file, allow_env, parallelism, [], [], [], True), revision,
                     auto_approve, _seconds(lock_timeout))


@app.command()
def unlock(
    lock_id: str = typer.Argument(..., help="Lock id, as printed by the apply that waits for it."),
    force: bool = typer.Option(False, "--force", help="Really break it."),
) -> None:
    """Break a stack lock whose holder is gone."""
    from aimactl.cli.inspect import unlock_command

    unlock_command(lock_id, force)


@app.command()
def reconcile(
    files: list[str] = OPT_FILES, stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV, parallelism: int = PARALLELISM, allow_empty: bool = ALLOW_EMPTY,
    git: str = typer.Option(None, "--git", help="Repository URL to pull manifests from (cloned with git)."),
    branch: str = typer.Option("main", "--branch", help="Branch of --git to follow."),
    path: str = typer.Option(".", "--path", help="Directory of the manifests inside the repository."),
    interval: str = typer.Option("30s", "--interval", help="Time between full passes (and git fetches)."),
    once: bool = typer.Option(False, "--once", help="One pass, then exit (0 when converged, 1 otherwise)."),
    retry: list[str] = typer.Option([], "--retry", help="Clear NAME's backoff / Stalled state so the running loop "
                                    "tries it again now, then exit (repeatable)."),
    metrics_addr: str = typer.Option(None, "--metrics-addr", help="Serve Prometheus metrics, e.g. 127.0.0.1:9464."),
    retry_budget: int = typer.Option(5, "--retry-budget", min=1, help="Failures before a resource is Stalled."),
    backoff: str = typer.Option("5s", "--backoff", help="First wait after a failure; doubles each time."),
    max_backoff: str = typer.Option("5m", "--max-backoff", help="Longest wait between attempts."),
    lock_timeout: str = typer.Option("2s", "--lock-timeout", help="How long a pass waits for the stack lock."),
    output: Output = typer.Option(Output.text, "-o", "--output", help="text, or json (one object per pass)."),
) -> None:
    """Keep the hosts converged to the manifests (a directory or a git branch): heal drift, retry with backoff."""
    from aimactl.cli.reconcile import LoopFlags, reconcile_command, retry_command

    if retry:
        retry_command(stack, retry, output.value)
        return
    seconds = _seconds(interval)
    if seconds <= 0:
        raise typer.BadParameter("must be more than 0", param_hint="--interval")
    flags = LoopFlags(git, branch, path, seconds, once, metrics_addr, output.value, retry_budget, _seconds(backoff),
                      _seconds(max_backoff), _seconds(lock_timeout))
    reconcile_command(_common(files, stack, var, var_file, allow_env, parallelism, [], [], [], allow_empty), flags)


@app.command()
def watch(
    files: list[str] = OPT_FILES, stack: str = STACK, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
    allow_env: bool = ALLOW_ENV,
    interval: str = typer.Option("1s", "--interval", help="Time between refreshes, e.g. 1s, 500ms, 1m."),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit (plain text when not a terminal)."),
    output: Output = typer.Option(Output.text, "-o", "--output", help="text or json (json needs --once)."),
    events: int = typer.Option(8, "--events", min=0, max=200, help="How many recent events to show."),
) -> None:
    """Live dashboard: hosts, GPUs, Services and Apps (sync, health), Models and recent events; q quits."""
    from aimactl.cli.watch import watch_command

    seconds = _seconds(interval)
    if seconds <= 0:
        raise typer.BadParameter("must be more than 0", param_hint="--interval")
    if output == Output.json and not once:
        raise typer.BadParameter("-o json prints one frame: add --once", param_hint="--output")
    watch_command(_common(files, stack, var, var_file, allow_env, 4, [], [], [], True), seconds, once, output.value,
                  events)


def _models_app() -> typer.Typer:
    models = typer.Typer(help="Inspect and clean the hosts' model caches.", no_args_is_help=True,
                         rich_markup_mode=None)

    @models.command("ls")
    def models_ls(files: list[str] = OPT_FILES, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
                  allow_env: bool = ALLOW_ENV,
                  output: Output = typer.Option(Output.text, "-o", "--output", help="text or json.")) -> None:
        """List the models in each host's cache."""
        from aimactl.cli.models import ls_command

        ls_command(_common(files, "default", var, var_file, allow_env, 4, [], [], [], True), output.value)

    @models.command("gc")
    def models_gc(files: list[str] = OPT_FILES, var: list[str] = VARS, var_file: list[str] = VAR_FILES,
                  allow_env: bool = ALLOW_ENV, yes: bool = typer.Option(False, "--yes", help="Do not ask.")) -> None:
        """Delete cached models that no Model in the manifests names (shows them, then asks)."""
        from aimactl.cli.models import gc_command

        gc_command(_common(files, "default", var, var_file, allow_env, 4, [], [], [], True), yes)

    return models


app.add_typer(_models_app(), name="models", help="Inspect and clean the hosts' model caches.")


@app.command()
def hosts(
    files: list[str] = OPT_FILES, var: list[str] = VARS, var_file: list[str] = VAR_FILES, allow_env: bool = ALLOW_ENV,
    output: Output = typer.Option(Output.text, "-o", "--output", help="text or json."),
) -> None:
    """Show each host's CPUs, RAM, disk and GPUs (memory, utilisation, temperature, power, MIG, unified memory)."""
    from aimactl.cli.hosts import hosts_command

    hosts_command(_common(files, "default", var, var_file, allow_env, 4, [], [], [], True), output.value)


@app.command()
def version() -> None:
    """Print the aimactl version."""
    from aimactl import __version__

    typer.echo(f"aimactl {__version__}")


def main() -> None:
    """Entry point: run the CLI, turning unexpected failures into one clear line instead of a traceback."""
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the last guard; details with AIMACTL_DEBUG=1
        if os.environ.get("AIMACTL_DEBUG"):
            raise
        sys.stderr.write(f"Error: {type(exc).__name__}: {exc}\n(set AIMACTL_DEBUG=1 to see the traceback)\n")
        code = 1
    else:
        code = 0
    exit_now(code)


def exit_now(code: int | str | None) -> None:
    """End the process with `code` once nothing is left to do, without the interpreter's teardown.

    Tearing down the ~700 modules a plan loads takes 0.05-0.1 s, a fifth of a no-op plan. What exit must still
    do is done first: the atexit handlers (connections closed, logs flushed) and the output flushed. When a
    thread other than daemons is still running, the process exits the usual way and waits for it.
    """
    import atexit
    import threading

    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if busy:
        sys.exit(code)
    atexit._run_exitfuncs()
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 1  # as the interpreter: output that could not be written is a failure (EPIPE included)
    os._exit(code or 0)
