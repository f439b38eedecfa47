"""reconcile: flag handling, signals and log lines around converge.reconcile."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import typer

from aimactl.cli.output import console, error
from aimactl.cli.stack import Common, check_stack


@dataclass
class LoopFlags:
    """Flags of `aimactl reconcile` besides the common ones."""

    git: str | None = None
    branch: str = "main"
    path: str = "."
    interval: float = 30.0
    once: bool = False
    metrics_addr: str | None = None
    output: str = "text"
    retry_budget: int = 5
    backoff: float = 5.0
    max_backoff: float = 300.0
    lock_timeout: float = 2.0


def retry_command(stack: str, names: list[str], output: str = "text") -> None:
    """Clear the backoff and Stalled state of resources so that the running loop tries them again now."""
    from aimactl.cli.output import print_json
    from aimactl.store import current_host, current_user, open_store
    from aimactl.store.resources import request_retry

    store = open_store(environ=os.environ)
    missing, retried = [], []
    try:
        for name in names:
            hits = request_retry(store, check_stack(stack), name)
            for address in hits:
                store.add_event(stack, address, "retry", f"retry requested by {current_user()}@{current_host()}")
                if output != "json":
                    console().print(f"{address}: retry requested", markup=False)
            retried += hits
            if not hits:
                missing.append(name)
    finally:
        store.close()
    if output == "json":
        print_json({"retried": retried, "unknown": missing})
    if missing:
        error(f"no resource of stack {stack} named {', '.join(missing)} is known to the reconcile loop")
        raise typer.Exit(1)


def _source(common: Common, flags: LoopFlags, store: Any) -> Any:
    """The manifest source: the -f paths, or a clone of --git in the state directory."""
    from aimactl.cli.manifests import read_manifests
    from aimactl.converge.reconcile.gitsource import DirSource, GitSource, applied_commit

    def load(paths: Any) -> Any:
        """Load and validate with the command's template flags."""
        return read_manifests(list(paths), common.var, common.var_file, common.allow_env)

    if flags.git is None:
        return DirSource(common.files, load)
    previous = [r.get("source") for r in store.revisions(common.stack, limit=200) if r["kind"] == "reconcile"]
    applied = next((c for c in (applied_commit(s, flags.git, flags.branch) for s in previous) if c), None)
    workdir = store.path.parent / "reconcile" / common.stack / "repo"
    try:
        return GitSource(flags.git, flags.branch, flags.path, workdir, load, applied)
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(1) from None


def _text_line(report: Any) -> str:
    """One line per pass for people: what woke it, what it did, what waits."""
    import time

    why = "; ".join(report.trigger)
    parts = [f"{time.strftime('%H:%M:%S')} pass {report.number} ({why}): {report.result} in {report.seconds:.2f}s"]
    parts += [f"  applied {a}: {m}" for a, m in report.applied.items()]
    parts += [f"  drift {a}: {m}" for a, m in report.drift.items()]
    parts += [f"  failed {a}: {m.splitlines()[0] if m else ''}" for a, m in report.failed.items()]
    parts += [f"  stalled {a}" for a in report.stalled]
    parts += [f"  recovered {a}" for a in report.recovered]
    parts += [f"  waiting {a}: {m}" for a, m in report.waiting.items()]
    parts += [f"  error: {e}" for e in report.errors]
    return "\n".join(parts)


class _Quiet:
    """Step progress is not printed in JSON mode: one JSON object per pass only."""

    def started(self, change: Any) -> None:
        """Nothing."""

    def finished(self, change: Any, result: Any) -> None:
        """Nothing."""

    def progress(self, change: Any, event: Any) -> None:
        """Nothing."""


def _printer(json_out: bool) -> Any:
    """How each pass is shown: one JSON object per line, or the text lines."""

    def log(report: Any) -> None:
        """Print one pass and flush (the loop is often read through a pipe)."""
        if json_out:
            sys.stdout.write(json.dumps(report.to_dict(), default=str) + "\n")
        else:
            console().print(_text_line(report), markup=False, highlight=False)
        sys.stdout.flush()

    return log


def _metrics_server(metrics: Any, addr: str | None) -> Any:
    """Serve --metrics-addr (None without it); a bad or busy address is a clear error."""
    from aimactl.converge.reconcile.metrics import serve

    if not addr:
        return None
    try:
        return serve(metrics, addr)
    except ValueError as exc:
        error(str(exc))
    except OSError as exc:
        error(f"--metrics-addr {addr}: {exc.strerror or exc}")
    raise typer.Exit(1)


def reconcile_command(common: Common, flags: LoopFlags) -> None:
    """Run the loop until SIGTERM or Ctrl-C (or one pass with --once); exit 0 when it stopped cleanly."""
    import signal
    import threading

    from aimactl.cli.stack import LineReporter
    from aimactl.converge.reconcile.backoff import Policy
    from aimactl.converge.reconcile.loop import Reconciler, Settings
    from aimactl.converge.reconcile.metrics import Metrics
    from aimactl.converge.reconcile.passes import Context
    from aimactl.store import StoreError, open_store

    stack = check_stack(common.stack)
    if bool(flags.git) == bool(common.files) or "-" in common.files:
        error("give the manifests with -f DIR (files or directories, not stdin) or with --git URL, not both")
        raise typer.Exit(1)
    try:
        store = open_store(environ=os.environ)
    except StoreError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    metrics, server, json_out = Metrics(stack), None, flags.output == "json"
    try:
        server = _metrics_server(metrics, flags.metrics_addr)
        ctx = Context(stack, store, os.environ, _Quiet() if json_out else LineReporter(), metrics, threading.Event(),
                      Policy(flags.backoff, flags.max_backoff, flags.retry_budget), common.parallelism,
                      flags.lock_timeout, common.allow_empty)
        source = _source(common, flags, store)
        loop = Reconciler(ctx, source, Settings(flags.interval, flags.once), _printer(json_out))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, frame: loop.request_stop(signal.Signals(number).name))
        if not json_out:
            console().print(f"Reconciling stack {stack} from {source.describe()} every {flags.interval:g}s "
                            f"(Docker events and process polling in between).", markup=False)
        code = loop.run()
    finally:
        if server is not None:
            server.shutdown()
        store.close()
    if not json_out and not flags.once:
        console().print("Stopped.", markup=False)
    raise typer.Exit(code)
