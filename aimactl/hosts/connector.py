"""How a machine is reached: one small protocol, `run`, `put`, `get`, `close`, implemented for the local host
now and for SSH hosts in the fleet work. Everything else (the helper, the runtimes) is built on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aimactl.runtimes import RuntimeFailure


class HostUnreachable(RuntimeFailure):
    """A host could not be reached; the message names it and the reason (a RuntimeFailure like any effect)."""


@dataclass
class Completed:
    """The end of a command: its exit status and what it wrote on stderr."""

    returncode: int
    stderr: str


class Connector(Protocol):
    """A connection to one host. Arguments are argv lists, never shell strings."""

    name: str

    def run(self, argv: Sequence[str], stdin: bytes = b"",
            timeout: float | None = None) -> tuple[Iterator[str], Callable[[], Completed]]:
        """Start `argv`; returns its stdout lines as they come and a function that waits for the end."""
        ...

    def put(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """Write a file on the host atomically."""
        ...

    def get(self, path: str) -> bytes:
        """Read a file from the host."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


def at_home(path: str, home: str) -> str:
    """`~` and `~/...` resolved against a host's `home`; other paths (`~user` included) unchanged."""
    return home + path[1:] if path[:2] in ("~", "~/") else path


class HelperError(Exception):
    """The helper reported a failure: `code` for machines (not-found, checksum-mismatch, no-space ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def call_helper(connector: Connector, python: str, helper_path: str, verb: str, payload: dict[str, Any],
                on_event: Callable[[dict[str, Any]], None] | None = None, timeout: float | None = None) -> Any:
    """Run one helper verb on the host: JSON in on stdin, JSON lines out; returns the final `result`.

    Progress lines (`{"event": ...}`) go to `on_event`; a failure raises HelperError with the helper's code.
    """
    lines, wait = connector.run([python, helper_path, verb], json.dumps(payload).encode(), timeout)
    final: dict[str, Any] | None = None
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "event" in message and on_event is not None:
            on_event(message)
        elif "ok" in message:
            final = message
    done = wait()
    if final is None:
        raise HelperError("no-answer", no_answer(connector.name, done.returncode, done.stderr))
    if not final["ok"]:
        error = final.get("error") or {}
        raise HelperError(str(error.get("code", "error")), str(error.get("message", "unknown error")))
    return final.get("result")


def no_answer(host: str, returncode: int, stderr: str) -> str:
    """What a helper that ended without its final line is reported as: the exit status and stderr's end."""
    return f"the helper on {host} gave no answer (exit {returncode}): {stderr.strip()[-500:]}"
