"""The local host: the connector protocol over subprocess and the local filesystem."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from aimactl.hosts.connector import Completed


class LocalConnector:
    """Runs argv lists with subprocess (never a shell) and reads and writes local files."""

    name = "local"

    def run(self, argv: Sequence[str], stdin: bytes = b"",
            timeout: float | None = None) -> tuple[Iterator[str], Callable[[], Completed]]:
        """Start the command; stdout lines stream while it runs. A program that cannot be started (a wrong
        `python` in the Host manifest) is a RuntimeFailure naming it, as written."""
        from aimactl.runtimes import RuntimeFailure

        try:
            process = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        except OSError as exc:
            raise RuntimeFailure(f"host local: cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        process.stdin.write(stdin)
        process.stdin.close()
        stdout, stderr = process.stdout, process.stderr

        def lines() -> Iterator[str]:
            for raw in stdout:
                yield raw.decode("utf-8", "replace")

        def wait() -> Completed:
            code = process.wait(timeout)
            return Completed(code, stderr.read().decode("utf-8", "replace"))

        return lines(), wait

    def put(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """Write atomically: a temporary file in the same directory, then rename."""
        target = Path(os.path.expanduser(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, path: str) -> bytes:
        """Read a file."""
        return Path(os.path.expanduser(path)).read_bytes()

    def close(self) -> None:
        """Nothing to close locally."""
