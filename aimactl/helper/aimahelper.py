#!/usr/bin/env python3
"""aimahelper: the one script aimactl runs on a host to do what must happen there (the Ansible module pattern).

Run as ``python3 aimahelper.py VERB`` or ``python3 -c "<this source>" VERB``. The input is one JSON object on
stdin; the output is JSON lines on stdout: zero or more ``{"event": ...}`` lines, then exactly one final line,
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"code": ..., "message": ...}}``. The exit code is 0
when ok and 1 otherwise. Verbs: fetch, verify, cache, proc, probe, lock,
unlock, stat, batch (and dial, serve). Standard library only, python3 >= 3.8, never a
shell.
The protocol is specified in specs/helper.md of the aimactl repository.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse

HELPER_VERSION = 1
CHUNK = 1024 * 1024
SYNC_EVERY = 64 * CHUNK
MAX_TAIL_BYTES = 16 * 1024 * 1024
NAME_RE = re.compile(r"[a-z0-9][-a-z0-9.]{0,252}\Z")
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
INHERITED_ENV = ("PATH", "HOME", "LANG")
_REQUIRED = object()


class HelperError(Exception):
    """A failure reported as ``{"ok": false, "error": {"code", "message", **details}}``."""

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class Transient(HelperError):
    """A failure worth retrying (connection refused or dropped, HTTP 5xx); final once the retries are spent."""


# -- output, input and small file tools -------------------------------------------------------------------------


def emit(obj: dict) -> None:
    """Write one JSON line to stdout; a caller that went away does not stop the work."""
    try:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def param(params: dict, key: str, kinds: tuple, default: object = _REQUIRED) -> object:
    """params[key] checked against kinds (a bool never passes as a number); the default when absent or null."""
    value = params.get(key)
    if value is None:
        if default is _REQUIRED:
            raise HelperError("invalid-input", f"missing required field {key!r}")
        return default
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(kind.__name__ for kind in kinds)
        raise HelperError("invalid-input", f"field {key!r} must be {names}, got {value!r}")
    return value


def number(params: dict, key: str, default: float) -> float:
    value = param(params, key, (int, float), default)
    if value < 0:
        raise HelperError("invalid-input", f"field {key!r} must not be negative")
    return value


def home_path(path: str) -> str:
    """`~` and `~/...` against this user's home (as the controller's SSH connector expands them); others as given.
    The controller sends an SSH host's paths unresolved when it has not yet learned that host's home."""
    if path == "~" or path.startswith("~/"):
        return os.path.expanduser("~") + path[1:]
    return path


def abs_path(params: dict, key: str, default: object = _REQUIRED) -> str:
    value = param(params, key, (str,), default)
    if value is not None:
        value = home_path(value)
    if value is not None and not os.path.isabs(value):
        raise HelperError("invalid-input", f"field {key!r} must be an absolute path, got {value!r}")
    return value


def str_dict(params: dict, key: str) -> dict:
    value = param(params, key, (dict,), {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise HelperError("invalid-input", f"field {key!r} must map strings to strings")
    return value


def sha256_param(params: dict) -> str | None:
    value = param(params, "sha256", (str,), None)
    if value is not None and not SHA256_RE.match(value.lower()):
        raise HelperError("invalid-input", "field 'sha256' must be 64 hex digits")
    return value.lower() if value else None


def read_json(path: str) -> dict | None:
    """The JSON object in path, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomic(path: str, value: dict) -> None:
    """Write value to path through a temporary file, fsync and rename: readers see the old or the new file."""
    temporary = f"{path}.tmp.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(value, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(directory: str) -> None:
    """Make a rename in directory durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: str) -> tuple:
    """(size, sha256 hex) of a file, read in 1 MiB chunks."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            hasher.update(chunk)
            size += len(chunk)
    return size, hasher.hexdigest()


def tail_lines(path: str, count: int) -> list:
    """The last count lines of a file, read backwards in blocks (at most MAX_TAIL_BYTES)."""
    try:
        handle = open(path, "rb")
    except OSError:
        return []
    with handle:
        position = handle.seek(0, os.SEEK_END)
        data = b""
        while position > 0 and data.count(b"\n") <= count and len(data) < MAX_TAIL_BYTES:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.decode("utf-8", "replace") for line in lines[-count:]] if count > 0 else []


def check_space(directory: str, need: int) -> None:
    free = shutil.disk_usage(directory).free
    if need > free:
        raise HelperError("no-space", f"need {need} bytes in {directory}, only {free} available",
                          needed=need, available=free)


def redact(url: str) -> str:
    """The URL without credentials or query string, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- fetch and verify -------------------------------------------------------------------------------------------


class BackgroundHash:
    """sha256 computed by a worker thread: hashlib releases the GIL, so hashing uses another core while the main
    thread receives and writes (on 2 cores this saves about 1 s per GiB)."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.chunks = queue.Queue(maxsize=8)  # type: queue.Queue
        self.worker = threading.Thread(target=self._run, daemon=True)
        self.worker.start()

    def _run(self) -> None:
        for chunk in iter(self.chunks.get, None):
            self.hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.chunks.put(chunk)

    def hexdigest(self) -> str:
        """Wait for every queued chunk, then return the digest (call once)."""
        self.chunks.put(None)
        self.worker.join()
        return self.hasher.hexdigest()

    def abandon(self) -> None:
        """Stop the worker without a result (the transfer restarts from zero)."""
        self.chunks.put(None)


class BackgroundSync:
    """fdatasync of the file being written, started every SYNC_EVERY bytes in a worker thread: the page cache
    is written back while the download goes on, so the final fsync has little left to do (instead of the whole
    file at the end, which cost ~0.3 x curl's time per GiB)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.thread = None  # type: threading.Thread | None
        self.error = None  # type: OSError | None

    def kick(self) -> None:
        """Start a write-back unless one is still running (then the next kick covers these bytes)."""
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            self.error = exc

    def wait(self) -> None:
        """Wait for the running write-back (before the final fsync, and before the file is closed)."""
        if self.thread is not None:
            self.thread.join()


class Transfer:
    """The .part file of one fetch: the bytes in it, their running sha256, and the progress lines about them."""

    def __init__(self, dest: str, size: int | None, interval: float) -> None:
        self.dest, self.part, self.size, self.total, self.interval = dest, dest + ".part", size, size, interval
        self.resumed = False
        self.started = time.monotonic()
        self.last_progress = float("-inf")
        self.fresh = 0
        self.hasher = BackgroundHash()
        self.file = open(self.part, "ab")
        self.offset = self.file.seek(0, os.SEEK_END)
        self.syncer, self.synced = BackgroundSync(self.file.fileno()), self.offset
        if size is not None and self.offset > size:
            self.restart()
        elif self.offset:
            with open(self.part, "rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    self.hasher.update(chunk)

    def restart(self) -> None:
        """Drop what the .part holds and start again from byte zero."""
        self.file.truncate(0)
        self.synced = 0
        self.hasher.abandon()
        self.offset, self.resumed, self.hasher = 0, False, BackgroundHash()

    def expect_total(self, total: int | None) -> None:
        """Record the full size announced by the source; check it against the input size and the free space."""
        if total is None:
            return
        if self.size is not None and total != self.size:
            raise HelperError("size-mismatch", f"source has {total} bytes, expected {self.size}",
                              expected=self.size, actual=total)
        self.total = total
        check_space(os.path.dirname(self.dest), total - self.offset)

    def write(self, chunk: bytes) -> None:
        try:
            self.file.write(chunk)
        except OSError as exc:
            raise self._disk_error(exc) from exc
        self.hasher.update(chunk)
        self.offset += len(chunk)
        self.fresh += len(chunk)
        if self.offset - self.synced >= SYNC_EVERY:
            self.file.flush()  # the bytes must be in the kernel for the write-back to see them
            self.synced = self.offset
            self.syncer.kick()
        self.progress()

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_progress >= self.interval:
            self.last_progress = now
            rate = int(self.fresh / max(now - self.started, 1e-6))
            emit({"event": "progress", "bytes": self.offset, "total": self.total, "rate": rate})

    def finish(self, expected: str | None) -> dict:
        """fsync the .part, check size and checksum, then rename it to dest (or to dest.quarantine when wrong)."""
        try:
            self.file.flush()
            self.syncer.wait()
            if self.syncer.error is not None:  # the kernel reports a write-back error once: do not lose it
                raise self.syncer.error
            os.fsync(self.file.fileno())
        except OSError as exc:
            raise self._disk_error(exc) from exc
        self.file.close()
        actual = self.hasher.hexdigest()
        quarantine = self.dest + ".quarantine"
        if self.size is not None and self.offset != self.size:
            os.replace(self.part, quarantine)
            raise HelperError("size-mismatch", f"got {self.offset} bytes, expected {self.size}; moved to {quarantine}",
                              expected=self.size, actual=self.offset)
        if expected and actual != expected:
            os.replace(self.part, quarantine)
            raise HelperError("checksum-mismatch", f"sha256 is {actual}, expected {expected}; moved to {quarantine}",
                              expected=expected, actual=actual)
        os.replace(self.part, self.dest)
        fsync_dir(os.path.dirname(self.dest))
        self.progress(force=True)
        return {"path": self.dest, "size": self.offset, "sha256": actual, "resumed": self.resumed,
                "seconds": round(time.monotonic() - self.started, 3)}

    def abandon(self) -> None:
        """Close after a failure; keep a non-empty .part for the next fetch to resume."""
        if not self.file.closed:
            self.syncer.wait()
            self.file.close()
        if os.path.exists(self.part) and os.path.getsize(self.part) == 0:
            remove(self.part)

    def _disk_error(self, exc: OSError) -> HelperError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return HelperError("no-space", f"disk full writing {self.part} after {self.offset} bytes",
                               needed=self.total, available=0)
        return HelperError("io-error", f"cannot write {self.part}: {exc}")


def build_opener() -> object:
    """A urllib opener that follows redirects but never carries Authorization to another host (e.g. a CDN)."""
    import urllib.request  # imported here: http.client and ssl cost ~40 ms that proc and probe do not need

    class RedirectHandler(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib calls it with these
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
                new.headers = {k: v for k, v in new.headers.items() if k.lower() != "authorization"}
            return new

    return urllib.request.build_opener(RedirectHandler)


def parse_content_range(value: str | None) -> tuple:
    """(first byte, total or None) from 'bytes 100-199/200' or 'bytes */200'; (None, None) when unreadable."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def http_attempt(job: Transfer, url: str, headers: dict, timeout: float) -> None:
    """One GET of url into job, resuming with a Range request when the .part already holds bytes."""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": f"aimahelper/{HELPER_VERSION}", **headers})
    request.add_header("Accept-Encoding", "identity")
    if job.offset:
        request.add_header("Range", f"bytes={job.offset}-")
    try:
        response = build_opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        http_error(job, url, exc)
        return
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        ssl = sys.modules.get("ssl")
        if ssl is not None and isinstance(reason, ssl.SSLCertVerificationError):
            raise HelperError("tls-error", f"cannot verify {redact(url)}: {reason}") from exc
        raise Transient("unreachable", f"cannot reach {redact(url)}: {reason}") from exc
    with response:
        if response.status == 206:
            first, total = parse_content_range(response.headers.get("Content-Range"))
            if first != job.offset:
                job.restart()
                raise Transient("interrupted", f"server resumed at byte {first}, not {job.offset}")
            job.resumed = job.offset > 0
        else:
            if job.offset:
                job.restart()
            length = response.headers.get("Content-Length") or ""
            total = int(length) if length.isdigit() else None
        job.expect_total(total)
        stream(job, response, url)


def http_error(job: Transfer, url: str, exc: urllib.error.HTTPError) -> None:
    """Map an HTTP error status: 416 on a resume means the .part is complete; 5xx and 429 are retried."""
    status = exc.code
    if status == 416 and job.offset:
        _, total = parse_content_range(exc.headers.get("Content-Range"))
        if total is not None and total != job.offset:
            job.restart()
            raise Transient("http-error", f"range not satisfiable for {redact(url)}; restarting", status=status)
        job.resumed = True
        return None
    if status == 404:
        raise HelperError("not-found", f"{redact(url)}: HTTP 404 Not Found", status=status)
    error = Transient if status in (408, 429) or status >= 500 else HelperError
    raise error("http-error", f"{redact(url)}: HTTP {status} {exc.reason}", status=status)


def stream(job: Transfer, source: object, url: str) -> None:
    """Copy source into job until EOF; a short body (connection dropped) is a Transient error."""
    import http.client

    while True:
        try:
            chunk = source.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            message = f"connection to {redact(url)} lost after {job.offset} bytes: {exc!r}"
            raise Transient("interrupted", message) from exc
        if not chunk:
            break
        job.write(chunk)
    if job.total is not None and job.offset < job.total:
        raise Transient("interrupted", f"connection to {redact(url)} closed after {job.offset} of {job.total} bytes")


def copy_local(job: Transfer, url: str) -> None:
    """file:// source: the same hashing, resume and atomic rename as HTTP, without a network."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise HelperError("invalid-input", f"file URL names another host: {url}")
    path = urllib.parse.unquote(parts.path)
    try:
        source = open(path, "rb")
    except FileNotFoundError as exc:
        raise HelperError("not-found", f"no such file: {path}") from exc
    except OSError as exc:
        raise HelperError("io-error", f"cannot read {path}: {exc}") from exc
    with source:
        total = os.fstat(source.fileno()).st_size
        if job.offset > total:
            job.restart()
        job.expect_total(total)
        source.seek(job.offset)
        job.resumed = job.offset > 0
        stream(job, source, url)


def download(job: Transfer, url: str, headers: dict, timeout: float, retries: int) -> None:
    """http_attempt until it succeeds, retrying Transient failures with a short exponential backoff."""
    attempt = 0
    while True:
        try:
            http_attempt(job, url, headers, timeout)
            return
        except Transient:
            attempt += 1
            if attempt > retries:
                raise
            time.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))


def verb_fetch(params: dict) -> dict:
    url = param(params, "url", (str,))
    dest = abs_path(params, "dest")
    expected = sha256_param(params)
    size = param(params, "size", (int,), None)
    if size is not None and size < 0:
        raise HelperError("invalid-input", "field 'size' must not be negative")
    headers = str_dict(params, "headers")
    timeout = number(params, "timeout", 30) or 30
    retries = int(number(params, "retries", 5))
    interval = number(params, "progress_interval", 0.5)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise HelperError("invalid-input", f"unsupported URL scheme {scheme!r}")
    directory = os.path.dirname(dest)
    os.makedirs(directory, exist_ok=True)
    if expected and os.path.isfile(dest) and file_digest(dest)[1] == expected:
        return {"path": dest, "size": os.path.getsize(dest), "sha256": expected, "resumed": False,
                "seconds": 0.0, "existing": True}
    if size is not None:
        part = dest + ".part"
        check_space(directory, size - (os.path.getsize(part) if os.path.isfile(part) else 0))
    job = Transfer(dest, size, interval)
    try:
        if scheme == "file":
            copy_local(job, url)
        else:
            download(job, url, headers, timeout, retries)
        return dict(job.finish(expected), existing=False)
    finally:
        job.abandon()


def verb_verify(params: dict) -> dict:
    path = abs_path(params, "path")
    expected = sha256_param(params)
    if not os.path.isfile(path):
        raise HelperError("missing", f"no such file: {path}")
    size, actual = file_digest(path)
    if expected and actual != expected:
        raise HelperError("checksum-mismatch", f"sha256 of {path} is {actual}, expected {expected}",
                          expected=expected, actual=actual)
    return {"path": path, "size": size, "sha256": actual}


# -- cache: what a host's model cache holds, and removing one model from it --------------------------------------


def tree_size(path: str) -> int:
    """Bytes of the regular files under path (symbolic links are not followed)."""
    total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def cache_entry(root: str, name: str) -> str:
    """root/name for a model directory name; refuses names that are not one plain entry of root."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise HelperError("invalid-input", f"model directory name {name!r} must match [a-z0-9][-a-z0-9.]*")
    path = os.path.join(root, name)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(root):
        raise HelperError("invalid-input", f"{path} is outside the model cache {root}")
    return path


def verb_cache(params: dict) -> dict:
    """list: the model directories under root with their sizes; remove: delete root/NAME (never a path)."""
    action = param(params, "action", (str,))
    root = os.path.expanduser(param(params, "root", (str,)))
    if not os.path.isabs(root):
        raise HelperError("invalid-input", f"field 'root' must be an absolute path, got {root!r}")
    if action == "list":
        names = sorted(os.listdir(root)) if os.path.isdir(root) else []
        entries = [{"name": name, "path": os.path.join(root, name), "size": tree_size(os.path.join(root, name))}
                   for name in names if NAME_RE.match(name) and os.path.isdir(os.path.join(root, name))
                   and not os.path.islink(os.path.join(root, name))]
        return {"root": root, "entries": entries}
    if action == "remove":
        path = cache_entry(root, param(params, "name", (str,)))
        if os.path.islink(path) or not os.path.isdir(path):
            raise HelperError("missing", f"no model directory {path}")
        size = tree_size(path)
        shutil.rmtree(path)
        return {"path": path, "size": size}
    raise HelperError("invalid-input", f"unknown cache action {action!r} (list, remove)")


# -- proc: detached processes with pidfile, log and exit status ---------------------------------------------------


class ProcFiles:
    """The files of one named process in its state directory: NAME.json, NAME.pid, NAME.exit, NAME.log."""

    def __init__(self, directory: str, name: str) -> None:
        if not NAME_RE.match(name):
            raise HelperError("invalid-input", f"process name {name!r} must match [a-z0-9][-a-z0-9.]*")
        base = os.path.join(directory, name)
        self.dir, self.name = directory, name
        self.spec, self.pid, self.exit, self.log = base + ".json", base + ".pid", base + ".exit", base + ".log"

    def log_path(self) -> str:
        spec = read_json(self.spec) or {}
        return spec.get("log") or self.log


def proc_stat(pid: int) -> tuple | None:
    """(state letter, start time in clock ticks: field 22) from /proc/PID/stat, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return fields[0], int(fields[19])


def process_alive(pid: int, start_time: int | None) -> bool:
    """True when pid runs (not a zombie) and is the process that was started (same start time)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start_time is None or stat[1] == start_time


def wait_until(predicate: object, seconds: float) -> bool:
    """Poll predicate every 20 ms for up to seconds; its last value."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def run_watcher(argv: list, env: dict, cwd: str, log: str, exit_path: str, report_fd: int) -> None:
    """In the detached grandchild: start the process, report its pid, wait for it, write NAME.exit; never return."""
    status = 0
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir("/")
        try:
            log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                child = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_fd,
                                         stderr=subprocess.STDOUT, close_fds=True, start_new_session=True)
            finally:
                os.close(log_fd)
        except Exception as exc:
            os.write(report_fd, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
            return
        stat = proc_stat(child.pid)
        started = {"pid": child.pid, "start_time": stat[1] if stat else None, "started_at": now_iso()}
        os.write(report_fd, json.dumps(started).encode())
        os.close(report_fd)
        code = child.wait()
        write_json_atomic(exit_path, dict(started, exit_code=code, finished_at=now_iso()))
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def spawn_watched(argv: list, env: dict, cwd: str, log: str, exit_path: str) -> dict:
    """Double fork: a detached watcher (own session) starts the process; its pid record comes back on a pipe."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    first = os.fork()
    if first == 0:
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() == 0:
                run_watcher(argv, env, cwd, log, exit_path, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(first, 0)
    chunks = []
    for chunk in iter(lambda: os.read(read_fd, 65536), b""):
        chunks.append(chunk)
    os.close(read_fd)
    message = json.loads(b"".join(chunks) or b'{"error": "the watcher died before starting the process"}')
    if "error" in message:
        raise HelperError("spawn-failed", f"cannot start {argv[0]}: {message['error']}")
    return message


def process_status(files: ProcFiles) -> dict:
    """State of one process from its files: running (pid alive, same start time), exited, or absent."""
    spec, pid_doc, exit_doc = read_json(files.spec), read_json(files.pid), read_json(files.exit)
    if pid_doc and exit_doc and exit_doc.get("pid") != pid_doc.get("pid"):
        exit_doc = None
    status = {"name": files.name, "state": "absent", "pid": None, "exit_code": None, "started_at": None,
              "finished_at": None, "spec": None, "spec_hash": None, "log": files.log_path()}
    if not (spec or pid_doc or exit_doc):
        return status
    record = pid_doc or exit_doc or {}
    running = bool(pid_doc) and process_alive(pid_doc.get("pid", 0), pid_doc.get("start_time"))
    if pid_doc and not running and not exit_doc:
        # Just died: its watcher writes the exit status a moment later; wait for it briefly.
        exit_doc = wait_exit_record(files, pid_doc.get("pid", 0), 1.0) or None
    status.update(state="running" if running else "exited", pid=record.get("pid"),
                  started_at=record.get("started_at"), spec=(spec or {}).get("spec"),
                  spec_hash=(spec or {}).get("spec_hash"))
    if exit_doc and not running:
        status.update(exit_code=exit_doc.get("exit_code"), finished_at=exit_doc.get("finished_at"))
    return status


def wait_exit_record(files: ProcFiles, pid: int, timeout: float = 2.0) -> dict:
    """NAME.exit for pid, waiting up to `timeout` s for the watcher to write it; {} when it does not appear."""
    def ready() -> bool:
        return (read_json(files.exit) or {}).get("pid") == pid

    wait_until(ready, timeout)
    return (read_json(files.exit) or {}) if ready() else {}


def proc_start(files: ProcFiles, params: dict) -> dict:
    argv = param(params, "argv", (list,))
    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise HelperError("invalid-input", "field 'argv' must be a non-empty list of strings")
    env = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
    env.update(str_dict(params, "env"))
    cwd = abs_path(params, "cwd", files.dir)
    log = abs_path(params, "log", files.log)
    grace = number(params, "grace_start", 0.2)
    record = {"name": files.name, "spec": params.get("spec"), "spec_hash": param(params, "spec_hash", (str,), None),
              "argv": argv, "cwd": cwd, "log": log}
    os.makedirs(files.dir, mode=0o700, exist_ok=True)
    current = process_status(files)
    if current["state"] == "running":
        raise HelperError("already-running", f"{files.name} is already running as pid {current['pid']}",
                          pid=current["pid"])
    remove(files.exit)
    remove(files.pid)
    write_json_atomic(files.spec, record)
    started = spawn_watched(argv, env, cwd, log, files.exit)
    write_json_atomic(files.pid, started)
    pid = started["pid"]
    if wait_until(lambda: not process_alive(pid, started["start_time"]), grace):
        code = wait_exit_record(files, pid).get("exit_code")
        raise HelperError("exited", f"{files.name} exited with code {code} within {grace}s of starting",
                          exit_code=code, log_tail=tail_lines(log, 20))
    return {"pid": pid, "started_at": started["started_at"]}


def signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def proc_stop(files: ProcFiles, params: dict) -> dict:
    """SIGTERM to the process group, SIGKILL after grace; already gone is fine. forget removes every record."""
    grace = number(params, "grace", 10)
    forget = param(params, "forget", (bool,), False)
    pid_doc = read_json(files.pid) or {}
    pid, start_time = pid_doc.get("pid"), pid_doc.get("start_time")
    stopped = bool(pid) and process_alive(pid, start_time)
    if stopped:
        signal_group(pid, signal.SIGTERM)
        if not wait_until(lambda: not process_alive(pid, start_time), grace):
            signal_group(pid, signal.SIGKILL)
            wait_until(lambda: not process_alive(pid, start_time), 5.0)
    exit_doc = wait_exit_record(files, pid) if stopped else read_json(files.exit) or {}
    exit_code = exit_doc.get("exit_code") if pid is None or exit_doc.get("pid") == pid else None
    remove(files.pid)
    if forget:
        remove(files.spec)
        remove(files.exit)
    return {"stopped": stopped, "exit_code": exit_code}


def verb_proc(params: dict) -> dict:
    action = param(params, "action", (str,))
    directory = abs_path(params, "dir")
    if not os.path.isdir("/proc"):
        raise HelperError("unsupported", "proc needs Linux /proc to recognise its processes")
    if action == "list":
        names = os.listdir(directory) if os.path.isdir(directory) else []
        found = sorted(entry[:-5] for entry in names if entry.endswith(".json") and NAME_RE.match(entry[:-5]))
        return {"processes": [process_status(ProcFiles(directory, name)) for name in found]}
    files = ProcFiles(directory, param(params, "name", (str,)))
    if action == "start":
        return proc_start(files, params)
    if action == "stop":
        return proc_stop(files, params)
    if action == "status":
        return process_status(files)
    if action == "logs":
        count = int(number(params, "tail", 100))
        return {"path": files.log_path(), "lines": tail_lines(files.log_path(), count)}
    raise HelperError("invalid-input", f"unknown proc action {action!r} (start, stop, status, logs, list)")


# -- probe ------------------------------------------------------------------------------------------------------


NVIDIA_SMI_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used", "memory.free", "utilization.gpu",
                     "temperature.gpu", "power.draw", "power.limit", "driver_version", "mig.mode.current")
NOT_SUPPORTED = "N/A"
DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl")


def _pynvml():
    """pynvml when the host has it (optional: the helper itself needs only the standard library)."""
    import importlib

    return importlib.import_module("pynvml")


def _nvml_value(call, *args):
    """One NVML query; NOT_SUPPORTED (unified memory, consumer boards) becomes "N/A", other failures None."""
    pynvml = _pynvml()
    try:
        return call(*args)
    except pynvml.NVMLError as exc:
        return NOT_SUPPORTED if getattr(exc, "value", None) == pynvml.NVML_ERROR_NOT_SUPPORTED else None


def _text(value):
    """Old pynvml versions answer bytes."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _nvml_gpu(index: int) -> dict:
    """Raw values of one GPU through NVML: bytes, percent, Celsius, milliwatts; parsed on the controller."""
    pynvml = _pynvml()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = _nvml_value(pynvml.nvmlDeviceGetMemoryInfo, handle)
    util = _nvml_value(pynvml.nvmlDeviceGetUtilizationRates, handle)
    mig = _nvml_value(pynvml.nvmlDeviceGetMigMode, handle)
    return {
        "index": index, "uuid": _text(_nvml_value(pynvml.nvmlDeviceGetUUID, handle)),
        "name": _text(_nvml_value(pynvml.nvmlDeviceGetName, handle)),
        "memory_total": memory if memory in (None, NOT_SUPPORTED) else memory.total,
        "memory_used": memory if memory in (None, NOT_SUPPORTED) else memory.used,
        "memory_free": memory if memory in (None, NOT_SUPPORTED) else memory.free,
        "utilization": util if util in (None, NOT_SUPPORTED) else util.gpu,
        "temperature": _nvml_value(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_draw_mw": _nvml_value(pynvml.nvmlDeviceGetPowerUsage, handle),
        "power_limit_mw": _nvml_value(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle),
        "mig_mode": mig if mig in (None, NOT_SUPPORTED) else ("Enabled" if mig[0] else "Disabled"),
    }


def _probe_nvml() -> dict:
    """GPU facts through pynvml (raises ImportError without it, pynvml.NVMLError without a driver)."""
    pynvml = _pynvml()
    pynvml.nvmlInit()
    try:
        driver = _nvml_value(pynvml.nvmlSystemGetDriverVersion)
        cuda = _nvml_value(pynvml.nvmlSystemGetCudaDriverVersion_v2)
        count = pynvml.nvmlDeviceGetCount()
        return {"source": "nvml", "driver_version": _text(driver),
                "cuda_driver_version": cuda, "gpus": [_nvml_gpu(i) for i in range(count)]}
    finally:
        pynvml.nvmlShutdown()


def _run_smi(argv: list) -> str:
    """stdout of one nvidia-smi run (argv, never a shell); HelperError when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HelperError("nvidia-smi", f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise HelperError("nvidia-smi", (done.stdout + done.stderr).decode("utf-8", "replace").strip()[-300:])
    return done.stdout.decode("utf-8", "replace")


def _probe_smi(program: str) -> dict:
    """GPU facts from nvidia-smi: the query CSV as text (parsed on the controller) and the banner's CUDA line."""
    query = ["--query-gpu=" + ",".join(NVIDIA_SMI_FIELDS), "--format=csv,noheader,nounits"]
    csv_text = _run_smi([program] + query)
    banner = ""
    try:  # only for the "CUDA Version: 12.4" line; its absence loses nothing else
        banner = _run_smi([program])
    except HelperError:
        pass
    cuda = re.search(r"CUDA Version\s*:\s*([0-9.]+)", banner)
    return {"source": "nvidia-smi", "fields": list(NVIDIA_SMI_FIELDS), "csv": csv_text,
            "cuda_version": cuda.group(1) if cuda else None}


def probe_gpus() -> dict:
    """Raw GPU facts: pynvml when importable, else nvidia-smi; no driver is `{"source": "none", "note": why}`.

    Values stay raw (the controller parses them with one tested parser for every host)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in DRIVER_PATHS):
        # No NVIDIA kernel driver: answer at once (importing pynvml alone costs ~65 ms on every plan).
        return {"source": "none", "note": "no NVIDIA kernel driver is loaded (" + ", ".join(DRIVER_PATHS) +
                " absent): no NVIDIA GPU driver"}
    try:
        return _probe_nvml()
    except ImportError:
        note = "pynvml is not installed"
    except Exception as exc:  # pynvml.NVMLError: no driver, library not found, no permission
        note = f"NVML: {exc}"
    program = shutil.which("nvidia-smi")
    if program is None:
        return {"source": "none", "note": note + "; nvidia-smi not found: no NVIDIA GPU driver"}
    try:
        return _probe_smi(program)
    except HelperError as exc:
        return {"source": "none", "note": note + "; nvidia-smi failed: " + exc.message}


def meminfo() -> dict:
    """MemTotal and MemAvailable in bytes from /proc/meminfo (None where absent)."""
    values = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    values[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    except OSError:
        pass
    return {"mem_total": values.get("MemTotal"), "mem_available": values.get("MemAvailable")}


def disk_facts(data_dir: str | None) -> dict | None:
    """Size and free space of the filesystem that holds (or would hold) data_dir; creates nothing."""
    if data_dir is None:
        return None
    existing = data_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    usage = shutil.disk_usage(existing)
    return {"path": data_dir, "exists": existing == data_dir, "total": usage.total, "free": usage.free}


def load_1m():
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


ENGINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def engine_facts(programs: list, modules: list) -> dict:
    """Which engine programs are on PATH and which Python modules this interpreter (the Host's `python`, the one
    a native engine would run with) can import: the controller picks each engine's native command from them."""
    import importlib.util

    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    names = [str(n) for n in list(programs) + list(modules)]
    if not all(ENGINE_NAME.match(n) for n in names):
        raise HelperError("invalid-input", "engine program and module names are plain names")
    return {"programs": [p for p in programs if shutil.which(p)],
            "modules": [m for m in modules if "." not in m and importable(m)]}


def verb_probe(params: dict) -> dict:
    facts = {"hostname": socket.gethostname(), "python": platform.python_version(), "arch": platform.machine(),
             "kernel": platform.release(), "cpu_count": os.cpu_count(), "load_1m": load_1m(),
             "helper_version": HELPER_VERSION,
             "disk": disk_facts(abs_path(params, "data_dir", None)), "gpus": probe_gpus()}
    facts.update(meminfo())
    if "engine_programs" in params or "engine_modules" in params:
        facts["engines"] = engine_facts(params.get("engine_programs") or [], params.get("engine_modules") or [])
    return facts


# -- lock / unlock: one controller at a time per host; dial: a unix socket on stdin/stdout -----------------------


def lock_guard(path: str) -> object:
    """An exclusive flock on PATH.guard, held while a lock file is read and replaced (released on close)."""
    import fcntl

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    guard = open(path + ".guard", "a")
    fcntl.flock(guard, fcntl.LOCK_EX)
    return guard


def verb_lock(params: dict) -> dict:
    """Take (or refresh, same token) the lock at path; a live lock of another token fails with code `locked`."""
    path, token = abs_path(params, "path"), param(params, "token", (str,))
    ttl = number(params, "ttl", 300)
    with lock_guard(path):
        current = read_json(path)
        now = time.time()
        live = current is not None and float(current.get("expires_at", 0)) > now
        # The controller read this lock and saw that its holder, on the controller's own machine, is dead.
        if live and params.get("take_over") and params.get("take_over") == current.get("token"):
            live = False
        if live and current.get("token") != token:
            who = {k: current.get(k) for k in ("holder", "pid", "hostname", "acquired", "expiry")}
            raise HelperError("locked", f"held by {who['holder']} (pid {who['pid']} on {who['hostname']}) since "
                                        f"{who['acquired']}, until {who['expiry']}", holder=who)
        refreshed = live and current.get("token") == token
        record = {"holder": param(params, "holder", (str,)), "pid": param(params, "pid", (int,), None),
                  "hostname": param(params, "hostname", (str,), None), "token": token,
                  "acquired": current["acquired"] if refreshed else now_iso(), "expires_at": now + ttl,
                  "expiry": datetime.datetime.fromtimestamp(now + ttl, datetime.timezone.utc)
                  .isoformat(timespec="seconds").replace("+00:00", "Z")}
        write_json_atomic(path, record)
    stale = None if live or current is None else {k: current.get(k) for k in ("holder", "expiry")}
    return {"path": path, "expiry": record["expiry"], "took_over": stale}


def verb_unlock(params: dict) -> dict:
    """Release the lock at path when this token holds it; another holder's lock is left alone."""
    path, token = abs_path(params, "path"), param(params, "token", (str,))
    with lock_guard(path):
        current = read_json(path)
        if current is None or current.get("token") != token:
            return {"released": False, "holder": current.get("holder") if current else None}
        remove(path)
    return {"released": True}


def dial(argv: list) -> int:
    """`dial SOCKET [--ready]`: connect stdin/stdout to a unix socket (the Docker engine's) until either side ends.

    Not a JSON verb: the bytes on stdin and stdout are the socket's. Failures go to stderr with exit code 1.
    """
    if len(argv) not in (1, 2) or argv[1:] not in ([], ["--ready"]):
        sys.stderr.write("usage: aimahelper.py dial SOCKET [--ready]\n")
        return 2
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(argv[0])
    except OSError as exc:
        sys.stderr.write(f"cannot connect to {argv[0]}: {exc.strerror or exc}\n")
        return 1
    if argv[1:] == ["--ready"]:  # for a caller that opens the stream ahead of use: connected, say so on stderr
        sys.stderr.write("ready\n")
        sys.stderr.flush()

    def upstream() -> None:
        try:
            while True:
                data = os.read(0, CHUNK)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    while True:
        data = sock.recv(CHUNK)
        if not data:
            return 0
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]


def verb_stat(params: dict) -> dict:
    """Whether a path exists and what it is, and (with `read`) a regular file's text: what the controller would
    otherwise ask over SFTP (the model cache index, the Docker socket), answered inside one `batch`."""
    path = abs_path(params, "path")
    read = param(params, "read", (bool,), False)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return {"path": path, "exists": False, "type": None, "text": None}
    kind = ("file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else
            "socket" if stat.S_ISSOCK(mode) else "other")
    text = None
    if read and kind == "file":
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_TAIL_BYTES + 1)
        except OSError as exc:
            raise HelperError("io-error", f"cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_TAIL_BYTES:
            raise HelperError("too-large", f"{path} is larger than {MAX_TAIL_BYTES} bytes")
        text = data.decode("utf-8", "replace")
    return {"path": path, "exists": True, "type": kind, "text": text}


# -- entry point ------------------------------------------------------------------------------------------------

BATCHABLE = ("probe", "proc", "stat")


def verb_batch(params: dict) -> dict:
    """Several read-only verbs in one run, so that observing a host costs one command there, not one per verb.

    `calls` is a list of {"verb": "probe" | "proc" | "stat", "params": {...}}; `results` answers each in order
    with {"ok": true, "result": ...} or {"ok": false, "error": {"code", "message"}}, as a lone verb would. `home`
    is the user's home, so that the controller resolves `~` in the host's paths without asking over SFTP.
    """
    out = []
    for call in param(params, "calls", (list,)):
        if not isinstance(call, dict) or call.get("verb") not in BATCHABLE or not isinstance(call.get("params"), dict):
            raise HelperError("invalid-input", f"each call is {{verb: {' | '.join(BATCHABLE)}, params: {{...}}}}")
        try:
            out.append({"ok": True, "result": VERBS[call["verb"]](call["params"])})
        except HelperError as exc:
            out.append({"ok": False, "error": dict(exc.details, code=exc.code, message=exc.message)})
        except Exception as exc:  # a bug in one verb must not hide the others' answers
            out.append({"ok": False, "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}})
    return {"results": out, "home": os.path.expanduser("~")}


VERBS = {"fetch": verb_fetch, "verify": verb_verify, "cache": verb_cache, "proc": verb_proc, "probe": verb_probe,
         "lock": verb_lock, "unlock": verb_unlock, "stat": verb_stat, "batch": verb_batch}


def serve() -> int:
    """Answer `batch` requests, one JSON object per line on stdin, one answer line each, until stdin ends.

    A controller that keeps its SSH connection between commands (the keeper) keeps this running, so that
    observing the host costs no login shell and no Python start. Only `batch` is served: it is read-only, and
    every verb that changes the host keeps its own command with its own progress stream.
    """
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or request.get("verb") != "batch":
                raise HelperError("invalid-input", "serve answers {\"verb\": \"batch\", \"params\": {...}} only")
            params = request.get("params")
            if not isinstance(params, dict):
                raise HelperError("invalid-input", "params must be a JSON object")
            emit({"ok": True, "result": verb_batch(params)})
        except HelperError as exc:
            emit({"ok": False, "error": dict(exc.details, code=exc.code, message=exc.message)})
        except ValueError as exc:
            emit({"ok": False, "error": {"code": "invalid-input", "message": f"not JSON: {exc}"}})
    return 0


def read_input() -> dict:
    text = sys.stdin.read() if sys.stdin is not None else ""
    try:
        params = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise HelperError("invalid-input", f"stdin is not JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise HelperError("invalid-input", "stdin must hold one JSON object")
    return params


def main(argv: list) -> int:
    """Run one verb; every outcome, a bug included, is one final JSON line on stdout."""
    try:
        verb = argv[1] if len(argv) > 1 else ""
        if verb == "dial":
            return dial(argv[2:])
        if verb == "serve":
            return serve()
        if verb not in VERBS:
            raise HelperError("unknown-verb", f"unknown verb {verb!r} ({', '.join(sorted(VERBS))})")
        result = VERBS[verb](read_input())
    except HelperError as exc:
        emit({"ok": False, "error": dict(exc.details, code=exc.code, message=exc.message)})
        return 1
    except KeyboardInterrupt:
        emit({"ok": False, "error": {"code": "cancelled", "message": "interrupted by SIGINT"}})
        return 1
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        emit({"ok": False, "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}})
        return 1
    emit({"ok": True, "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
