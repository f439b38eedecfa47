"""The host helper: one stdlib-only script that aimactl ships to a host and runs with the host's python3.

Everything that must happen on a host (hardware probe, model fetch, process supervision) is a verb of
``aimahelper.py``, run as ``python3 aimahelper.py VERB`` (or ``python3 -c SOURCE VERB``) with one JSON object on
stdin and JSON lines on stdout. The protocol is specs/helper.md. This package hands out the script's text, where
it lives on a host, and BOOTSTRAP, the small fixed program that runs it there if it is present (one command for a
host that has it, no file-transfer session); connectors decide how to ship it.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aimactl.hosts.connector import Completed

HELPER_FILENAME = "aimahelper.py"
MISSING = "helper-missing"  # the error code of BOOTSTRAP when the helper is not at its path

# Run as `python3 -c BOOTSTRAP PATH VERB ...`: the one command that reaches a host whose helper may or may not be
# there yet, so that a converged host costs one exec and no SFTP. It resolves `~` in PATH on the host itself,
# runs the helper as `python3 PATH VERB ...` would, or answers `helper-missing` (with the home) so that the
# controller uploads it and asks again. Fixed text: values only ever arrive as argv, never pasted into code.
BOOTSTRAP = """import json, os, sys
home = os.path.expanduser("~")
path = sys.argv[1]
if path == "~" or path.startswith("~/"):
    path = home + path[1:]
if not os.path.isfile(path):
    sys.stdout.write(json.dumps({"ok": False, "error": {"code": "helper-missing", "message": "no helper at " + path,
                                                        "home": home}}) + "\\n")
    sys.exit(1)
sys.argv = [path] + sys.argv[2:]
with open(path, "rb") as handle:
    code = compile(handle.read(), path, "exec")
exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
"""


def helper_source() -> str:
    """The text of aimahelper.py, as packaged with aimactl."""
    return resources.files(__name__).joinpath(HELPER_FILENAME).read_text(encoding="utf-8")


def bootstrap_argv(python: str, path: str, *args: str) -> list[str]:
    """The argv that runs the helper at `path` (`~` allowed) through BOOTSTRAP: `[python, -c, BOOTSTRAP, path,
    *args]`; a missing helper answers the error code MISSING instead of a Python traceback."""
    return [python, "-c", BOOTSTRAP, path, *args]


def helper_file() -> str:
    """Path of the packaged aimahelper.py (run as it is on the local host)."""
    from pathlib import Path

    return str(Path(__file__).with_name(HELPER_FILENAME))


class Bootstrapped:
    """A connector whose commands `[python, helper, VERB]` run through the helper's bootstrap (call_helper
    parses the answer as usual; a missing helper is the error code `helper-missing`)."""

    def __init__(self, connector: Any):
        self.name = connector.name
        self.connector = connector

    def run(self, argv: Sequence[str], stdin: bytes = b"",
            timeout: float | None = None) -> tuple[Iterator[str], Callable[[], Completed]]:
        """`argv` run as `[argv[0], -c, BOOTSTRAP, argv[1], ...]`: still an argv list, quoted by the connector."""
        return self.connector.run(bootstrap_argv(argv[0], argv[1], *argv[2:]), stdin, timeout)

    def put(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """As the SSH connector's."""
        self.connector.put(data, path, mode)

    def get(self, path: str) -> bytes:
        """As the SSH connector's."""
        return self.connector.get(path)

    def close(self) -> None:
        """Nothing: the connection belongs to Connections."""


@functools.lru_cache(maxsize=1)
def _digest() -> str:
    return hashlib.sha256(helper_source().encode()).hexdigest()[:12]


def helper_location(data_dir: str) -> str:
    """Where a host keeps this aimactl's helper: `<dataDir>/helper/aimahelper-<sha256[:12]>.py` (a new aimactl
    ships its own beside the old)."""
    return posixpath.join(data_dir, "helper", f"aimahelper-{_digest()}.py")
