"""A remote unix socket (a host's Docker engine) made local: a private socket on the controller whose every
connection is one SSH exec channel running the helper's `dial` verb on the host.

The Docker SDK and the stdlib Engine API reader then talk to `unix://<private socket>` exactly as they talk to
a local engine, through the host's one SSH connection (strict host keys, keepalive). The socket lives in a fresh
0700 directory, so only the controller's user can use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
CHUNK = 64 * 1024


class SocketForwarder:
    """Serves `path` (a local unix socket); each accepted connection is piped to `open_channel()`."""

    def __init__(self, name: str, open_channel: Callable[[], Any]):
        self.open_channel = open_channel
        self.directory = tempfile.mkdtemp(prefix=f"aimactl-{name}-")
        os.chmod(self.directory, 0o700)
        self.path = os.path.join(self.directory, "docker.sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        self._closed = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.last_error: str | None = None
        threading.Thread(target=self._accept, name=f"forward-{name}", daemon=True).start()

    @property
    def url(self) -> str:
        """The Docker endpoint to hand to the runtime: `unix://<path>`."""
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """Pump bytes both ways until either side ends; a channel that cannot open closes the client."""
        channel = None
        try:
            channel = self.open_channel()
            pump(client, channel)
            # Before the client sees the end: a dial that failed said why on stderr (e.g. no such socket).
            if channel.recv_exit_status() not in (0, -1):
                self.last_error = channel.makefile_stderr("rb").read().decode("utf-8", "replace").strip()
        except Exception as exc:  # a failed connection must not kill the forwarder; the client sees EOF
            self.last_error = str(exc)
            log.debug("forwarded connection failed: %s", exc)
        finally:
            if channel is not None:
                channel.close()
            with self._lock:
                self._open.discard(client)
            client.close()

    def close(self) -> None:
        """Stop accepting, end open connections and remove the private directory."""
        self._closed.set()
        self._server.close()
        with self._lock:
            for client in list(self._open):
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
        shutil.rmtree(self.directory, ignore_errors=True)


def pump(client: socket.socket, channel: Any) -> None:
    """Copy bytes between a socket and a paramiko channel until the channel ends (or the client broke); the
    caller closes the client."""
    client_open, channel_open = True, True
    while channel_open:
        watched = [channel] + ([client] if client_open else [])
        readable, _, _ = select.select(watched, [], [], 60)
        if client in readable:
            data = client.recv(CHUNK)
            if data:
                channel.sendall(data)
            else:
                client_open = False
                channel.shutdown_write()
        if channel in readable:
            data = channel.recv(CHUNK)
            if not data:
                channel_open = False
            else:
                try:
                    client.sendall(data)
                except OSError:
                    return
