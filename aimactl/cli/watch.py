"""watch: flag handling around aimactl.watch (the view model, the renderer and the loop live there)."""

from __future__ import annotations

import os
import sys
from typing import Any

from aimactl.cli.output import print_json
from aimactl.cli.stack import Common, check_stack, load_or_exit


def watch_console() -> Any:
    """The dashboard's console: the terminal's width on a TTY; elsewhere `COLUMNS`, else 200, without colour."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    columns = os.environ.get("COLUMNS", "")
    width = None if tty else int(columns) if columns.isdigit() and int(columns) > 0 else 200
    return Console(width=width, no_color="NO_COLOR" in os.environ or not tty, highlight=False)


def watch_command(common: Common, interval: float, once: bool, output: str, events: int) -> None:
    """One frame (`--once`, text or JSON), or the live dashboard until `q` / Ctrl-C (frames as lines when not
    a terminal)."""
    from aimactl.core.plan import PlanOptions
    from aimactl.manifest import Manifests
    from aimactl.watch.live import FrameSource, run_lines, run_live

    manifests = load_or_exit(common) if common.files else Manifests()
    options = PlanOptions(check_stack(common.stack), allow_empty=True)
    source = FrameSource(manifests, options, os.environ, bool(common.files), common.parallelism, events)
    try:
        if once:
            frame = source()
            if output == "json":
                print_json(frame.to_dict())
            else:
                from aimactl.watch.render import Frame

                watch_console().print(Frame(frame))
            return
        console = watch_console()
        (run_live if console.is_terminal else run_lines)(source, interval, console)
    finally:
        source.close()
