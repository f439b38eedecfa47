"""Consoles and small printing helpers shared by the commands. Colour only on a TTY without NO_COLOR."""

from __future__ import annotations

import json
import os
import sys
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=2)
def console(stderr: bool = False) -> Any:
    """A rich console; rich itself drops colour when not on a TTY or when NO_COLOR is set."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (CI logs, pipes): no colour, and wide enough that tables are not cut at 80 columns.
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, no_color="NO_COLOR" in os.environ, highlight=False, soft_wrap=True, width=width)


def print_json(data: Any) -> None:
    """Machine output: plain JSON on stdout, never styled."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def error(message: str) -> None:
    """One error line on stderr."""
    console(stderr=True).print(f"[red]Error:[/red] {message}", markup=True, highlight=False)
