"""The host helper run as a real subprocess: fetch against a local HTTP server, proc with real processes, probe."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aimactl.helper import helper_source

HELPER = Path(__file__).parent.parent / "aimactl" / "helper" / "aimahelper.py"
PAYLOAD = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Outcome:
    """What one helper run printed: the event lines, the final line, and the exit code."""

    def __init__(self, completed: subprocess.CompletedProcess) -> None:
        lines = [json.loads(line) for line in completed.stdout.splitlines()]
        assert lines and all("event" in line for line in lines[:-1]), completed.stdout + completed.stderr
        self.events, self.final, self.returncode = lines[:-1], lines[-1], completed.returncode
        assert self.returncode == (0 if self.final["ok"] else 1)

    @property
    def result(self) -> dict:
        assert self.final["ok"], self.final
        return self.final["result"]

    @property
    def error(self) -> dict:
        assert not self.final["ok"], self.final
        return self.final["error"]


def helper(verb: str, params: dict | None = None, *, env: dict | None = None, source: bool = False) -> Outcome:
    """Run the helper as the hosts run it: python3 aimahelper.py VERB (or -c SOURCE), JSON on stdin."""
    program = ["-c", helper_source()] if source else [str(HELPER)]
    completed = subprocess.run([sys.executable, *program, verb], input=json.dumps(params or {}),
                               capture_output=True, text=True, timeout=20, env=env)
    return Outcome(completed)


# -- a Range-capable HTTP server that can drop connections ------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                     "authorization": self.headers.get("Authorization")})
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/model.bin":
            self._send_payload()
        else:
            self.send_error(404)

    def _send_payload(self) -> None:
        payload = self.server.payload
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and not self.server.ignore_range else 0
        if start >= len(payload) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(payload)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.send_header("Content-Length", str(len(payload) - start))
        self.end_headers()
        limit = self.server.drops.pop(0) if self.server.drops else None
        self.wfile.write(payload[start:] if limit is None else payload[start:start + limit])
        # HTTP/1.0: returning closes the connection, so a limited body is a dropped connection.


class ModelServer(ThreadingHTTPServer):
    """Serves PAYLOAD at /model.bin with Range support; drops lists byte limits for the next responses."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payload, self.drops, self.ignore_range, self.requests = PAYLOAD, [], False, []
        self.redirect_to = ""

    def url(self, path: str = "/model.bin", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[ModelServer]:
    srv = ModelServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _fetch(server: ModelServer, dest: Path, **params: object) -> Outcome:
    return helper("fetch", {"url": server.url(), "dest": str(dest), "progress_interval": 0, **params})


# -- fetch -------------------------------------------------------------------------------------------------------


def test_fetch_downloads_with_checksum_and_atomic_rename(server: ModelServer, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "m.bin"
    result = _fetch(server, dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD)).result
    assert result["path"] == str(dest) and result["size"] == len(PAYLOAD) and result["sha256"] == PAYLOAD_SHA
    assert result["resumed"] is False and result["existing"] is False and result["seconds"] >= 0
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.bin"]
    again = _fetch(server, dest, sha256=PAYLOAD_SHA).result
    assert again["existing"] is True and len(server.requests) == 1


def test_fetch_reports_progress_lines(server: ModelServer, tmp_path: Path) -> None:
    outcome = _fetch(server, tmp_path / "m.bin")
    progress = [e for e in outcome.events if e["event"] == "progress"]
    assert len(progress) >= 3
    assert [e["bytes"] for e in progress] == sorted(e["bytes"] for e in progress)
    assert progress[-1]["bytes"] == len(PAYLOAD) and progress[-1]["total"] == len(PAYLOAD)
    assert all(e["rate"] >= 0 for e in progress)


def test_fetch_resumes_after_the_server_drops_the_connection(server: ModelServer, tmp_path: Path) -> None:
    cut = 1024 * 1024 + 777
    server.drops = [cut]
    result = _fetch(server, tmp_path / "m.bin", sha256=PAYLOAD_SHA).result
    assert result["resumed"] is True and result["sha256"] == PAYLOAD_SHA
    assert (tmp_path / "m.bin").read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, f"bytes={cut}-"]


def test_fetch_gives_up_after_retries_and_keeps_the_part(server: ModelServer, tmp_path: Path) -> None:
    server.drops = [1000, 1000]
    error = _fetch(server, tmp_path / "m.bin", retries=1).error
    assert error["code"] == "interrupted" and "2000" in error["message"]
    assert (tmp_path / "m.bin.part").stat().st_size == 2000
    result = _fetch(server, tmp_path / "m.bin", sha256=PAYLOAD_SHA).result
    assert result["resumed"] is True and server.requests[-1]["range"] == "bytes=2000-"


def test_fetch_restarts_when_the_server_ignores_range(server: ModelServer, tmp_path: Path) -> None:
    garbage = b"garbage that is not the start of the payload"
    (tmp_path / "m.bin.part").write_bytes(garbage)
    server.ignore_range = True
    result = _fetch(server, tmp_path / "m.bin", sha256=PAYLOAD_SHA).result
    assert result["resumed"] is False and (tmp_path / "m.bin").read_bytes() == PAYLOAD
    assert server.requests[0]["range"] == f"bytes={len(garbage)}-"


def test_fetch_treats_416_on_a_complete_part_as_done(server: ModelServer, tmp_path: Path) -> None:
    (tmp_path / "m.bin.part").write_bytes(PAYLOAD)
    result = _fetch(server, tmp_path / "m.bin", sha256=PAYLOAD_SHA).result
    assert result["resumed"] is True and result["size"] == len(PAYLOAD)
    assert not (tmp_path / "m.bin.part").exists() and (tmp_path / "m.bin").read_bytes() == PAYLOAD


def test_fetch_quarantines_on_checksum_mismatch(server: ModelServer, tmp_path: Path) -> None:
    wrong = "0" * 64
    error = _fetch(server, tmp_path / "m.bin", sha256=wrong).error
    assert error["code"] == "checksum-mismatch"
    assert wrong in error["message"] and PAYLOAD_SHA in error["message"]
    assert (error["expected"], error["actual"]) == (wrong, PAYLOAD_SHA)
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "m.bin.part").exists()
    assert (tmp_path / "m.bin.quarantine").read_bytes() == PAYLOAD


def test_fetch_maps_404_and_leaves_nothing(server: ModelServer, tmp_path: Path) -> None:
    error = helper("fetch", {"url": server.url("/missing.bin"), "dest": str(tmp_path / "m.bin")}).error
    assert error["code"] == "not-found" and error["status"] == 404
    assert list(tmp_path.iterdir()) == []


def test_fetch_checks_free_space_before_downloading(server: ModelServer, tmp_path: Path) -> None:
    error = _fetch(server, tmp_path / "m.bin", size=10**15).error
    assert error["code"] == "no-space" and error["needed"] == 10**15
    assert str(10**15) in error["message"] and str(error["available"]) in error["message"]
    assert server.requests == [] and not (tmp_path / "m.bin.part").exists()


def test_fetch_rejects_a_source_of_another_size(server: ModelServer, tmp_path: Path) -> None:
    error = _fetch(server, tmp_path / "m.bin", size=len(PAYLOAD) - 1).error
    assert error["code"] == "size-mismatch" and error["actual"] == len(PAYLOAD)


def test_fetch_reports_unreachable_after_retries(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = helper("fetch", {"url": f"http://127.0.0.1:{port}/m.bin", "dest": str(tmp_path / "m.bin"),
                             "retries": 1, "timeout": 2}).error
    assert error["code"] == "unreachable" and f"127.0.0.1:{port}" in error["message"]


def test_fetch_drops_authorization_on_a_redirect_to_another_host(server: ModelServer, tmp_path: Path) -> None:
    server.redirect_to = server.url(host="localhost")
    params = {"headers": {"Authorization": "Bearer hf_secret"}, "sha256": PAYLOAD_SHA}
    assert helper("fetch", {"url": server.url("/redirect"), "dest": str(tmp_path / "a.bin"), **params}).result
    server.redirect_to = server.url()
    assert helper("fetch", {"url": server.url("/redirect"), "dest": str(tmp_path / "b.bin"), **params}).result
    assert [r["authorization"] for r in server.requests] == ["Bearer hf_secret", None] + ["Bearer hf_secret"] * 2


def test_fetch_copies_file_urls(tmp_path: Path) -> None:
    source = tmp_path / "local model.gguf"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "cache" / "m.gguf"
    result = helper("fetch", {"url": source.as_uri(), "dest": str(dest), "sha256": PAYLOAD_SHA}).result
    assert result["sha256"] == PAYLOAD_SHA and dest.read_bytes() == PAYLOAD
    missing = helper("fetch", {"url": (tmp_path / "nope").as_uri(), "dest": str(dest) + "2"}).error
    assert missing["code"] == "not-found"


def test_fetch_larger_than_the_write_back_step_is_whole(tmp_path: Path) -> None:
    """Files over 64 MiB are written back in the background while streaming; every byte still arrives."""
    source = tmp_path / "big.bin"
    block = PAYLOAD[: 1024 * 1024]
    with open(source, "wb") as handle:
        for index in range(70):
            handle.write(bytes([index]) + block[1:])
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "big.bin"
    result = helper("fetch", {"url": source.as_uri(), "dest": str(dest), "sha256": expected}).result
    assert result == {**result, "size": 70 * 1024 * 1024, "sha256": expected, "existing": False}
    assert dest.read_bytes() == source.read_bytes() and not (tmp_path / "cache" / "big.bin.part").exists()


def test_verify_hashes_reports_missing_and_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(PAYLOAD)
    assert helper("verify", {"path": str(path)}).result == {"path": str(path), "size": len(PAYLOAD),
                                                            "sha256": PAYLOAD_SHA}
    assert helper("verify", {"path": str(path), "sha256": PAYLOAD_SHA.upper()}).result["sha256"] == PAYLOAD_SHA
    assert helper("verify", {"path": str(path), "sha256": "1" * 64}).error["code"] == "checksum-mismatch"
    assert helper("verify", {"path": str(tmp_path / "nope")}).error["code"] == "missing"
    assert path.exists()


def test_cache_lists_model_directories_and_removes_only_inside_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "qwen").mkdir(parents=True)
    (root / "qwen" / "w.gguf").write_bytes(PAYLOAD)
    (root / "index.json").write_text("{}")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep").write_bytes(b"x")
    (root / "linked").symlink_to(outside)
    listed = helper("cache", {"action": "list", "root": str(root)}).result
    assert listed["entries"] == [{"name": "qwen", "path": str(root / "qwen"), "size": len(PAYLOAD)}]
    for name in ("../precious", "/etc", "", ".."):
        assert helper("cache", {"action": "remove", "root": str(root), "name": name}).error["code"] == "invalid-input"
    assert helper("cache", {"action": "remove", "root": str(root), "name": "linked"}).error["code"] in (
        "invalid-input", "missing")
    assert (outside / "keep").exists()
    assert helper("cache", {"action": "remove", "root": str(root), "name": "qwen"}).result["size"] == len(PAYLOAD)
    assert not (root / "qwen").exists() and (root / "index.json").exists()
    assert helper("cache", {"action": "list", "root": str(tmp_path / "none")}).result["entries"] == []
    assert helper("cache", {"action": "list", "root": "models"}).error["code"] == "invalid-input"


# -- proc --------------------------------------------------------------------------------------------------------

SLEEPER = "import time; print('hello', flush=True); time.sleep(30)"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A process state directory; every process that still has a pidfile in it is stopped at the end."""
    directory = tmp_path / "procs"
    yield directory
    for pidfile in directory.glob("*.pid"):
        helper("proc", {"action": "stop", "dir": str(directory), "name": pidfile.stem, "grace": 1})


def proc(state: Path, action: str, name: str = "aima-default-chat-0", **params: object) -> Outcome:
    return helper("proc", {"action": action, "dir": str(state), "name": name, **params})


def _wait_for(predicate: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_start_status_logs_stop(state: Path) -> None:
    began = time.monotonic()
    started = proc(state, "start", argv=[sys.executable, "-c", SLEEPER], spec={"image": "x"}, spec_hash="abc").result
    assert time.monotonic() - began < 5, "start must not wait for the detached process"
    status = proc(state, "status").result
    assert status["state"] == "running" and status["pid"] == started["pid"]
    assert status["spec"] == {"image": "x"} and status["spec_hash"] == "abc" and status["exit_code"] is None
    _wait_for(lambda: proc(state, "logs").result["lines"] == ["hello"])
    stopped = proc(state, "stop", grace=5).result
    assert stopped == {"stopped": True, "exit_code": -signal.SIGTERM}
    after = proc(state, "status").result
    assert after["state"] == "exited" and after["exit_code"] == -15 and after["pid"] == started["pid"]
    assert after["finished_at"] and after["spec"] == {"image": "x"}
    assert not (state / "aima-default-chat-0.pid").exists()
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()} == {
        "aima-default-chat-0.json": 0o600, "aima-default-chat-0.exit": 0o600, "aima-default-chat-0.log": 0o600}
    assert proc(state, "stop").result == {"stopped": False, "exit_code": -15}


def test_start_of_a_command_that_exits_reports_its_code_and_log(state: Path) -> None:
    code = "import sys; print('bad flag', flush=True); sys.exit(3)"
    error = proc(state, "start", argv=[sys.executable, "-c", code], grace_start=2).error
    assert error["code"] == "exited" and error["exit_code"] == 3 and "code 3" in error["message"]
    assert error["log_tail"] == ["bad flag"]
    assert proc(state, "status").result["state"] == "exited"


def test_start_of_a_missing_program_fails_cleanly(state: Path) -> None:
    error = proc(state, "start", argv=[str(state / "no-such-engine")]).error
    assert error["code"] == "spawn-failed" and "no-such-engine" in error["message"]


def test_a_killed_process_shows_its_signal_through_the_exit_file(state: Path) -> None:
    pid = proc(state, "start", argv=[sys.executable, "-c", SLEEPER]).result["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: proc(state, "status").result["state"] == "exited")
    _wait_for(lambda: proc(state, "status").result["exit_code"] == -9)
    assert json.loads((state / "aima-default-chat-0.exit").read_text())["pid"] == pid


def test_start_refuses_a_running_name_and_list_shows_all(state: Path) -> None:
    assert proc(state, "start", name="a-0", argv=[sys.executable, "-c", SLEEPER]).result
    assert proc(state, "start", name="b-0.x", argv=[sys.executable, "-c", SLEEPER]).result
    assert proc(state, "start", name="a-0", argv=[sys.executable, "-c", SLEEPER]).error["code"] == "already-running"
    assert proc(state, "stop", name="b-0.x").result
    listed = helper("proc", {"action": "list", "dir": str(state)}).result["processes"]
    assert [(p["name"], p["state"]) for p in listed] == [("a-0", "running"), ("b-0.x", "exited")]
    assert helper("proc", {"action": "list", "dir": str(state / "none")}).result == {"processes": []}


def test_stop_is_idempotent_and_forget_removes_the_records(state: Path) -> None:
    assert proc(state, "stop").result == {"stopped": False, "exit_code": None}
    assert proc(state, "status").result["state"] == "absent"
    assert proc(state, "start", argv=[sys.executable, "-c", SLEEPER]).result
    assert proc(state, "stop", forget=True).result["stopped"] is True
    assert proc(state, "status").result["state"] == "absent"
    assert sorted(p.name for p in state.iterdir()) == ["aima-default-chat-0.log"]


def test_stop_kills_a_process_that_ignores_sigterm(state: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('x', flush=True); " \
               "time.sleep(30)"
    assert proc(state, "start", argv=[sys.executable, "-c", stubborn]).result
    _wait_for(lambda: proc(state, "logs").result["lines"] == ["x"])
    assert proc(state, "stop", grace=0.3).result == {"stopped": True, "exit_code": -9}


def test_a_reused_pid_is_not_taken_for_the_process(state: Path) -> None:
    state.mkdir()
    (state / "aima-default-chat-0.json").write_text(json.dumps({"spec": None}))
    (state / "aima-default-chat-0.pid").write_text(json.dumps({"pid": os.getpid(), "start_time": 1}))
    assert proc(state, "status").result["state"] == "exited"
    assert proc(state, "stop", grace=0).result["stopped"] is False  # and this test process is still alive


@pytest.mark.parametrize("name", ["../x", "a/b", "", "Upper", "-lead", ".hidden"])
def test_names_that_are_not_tokens_are_rejected(state: Path, name: str) -> None:
    error = proc(state, "start", name=name, argv=["true"]).error
    assert error["code"] == "invalid-input"
    assert not state.exists()


def test_argv_and_env_reach_the_child_literally_and_no_shell_runs(state: Path, tmp_path: Path) -> None:
    hostile = ["; rm -rf /", "$(touch /tmp/pwned)", f"$(touch {tmp_path}/pwned)", f"`touch {tmp_path}/pwned2`",
               "a b 'c' \"d\" \\ | & > out"]
    pwned_before = os.path.exists("/tmp/pwned")
    seen = tmp_path / "seen.json"
    child = ("import json, os, sys, time; json.dump({'argv': sys.argv[2:], 'env': dict(os.environ)}, "
             "open(sys.argv[1], 'w')); time.sleep(30)")
    env = dict(os.environ, AIMA_LEAK="must-not-pass")
    assert helper("proc", {"action": "start", "dir": str(state), "name": "h-0", "argv": [sys.executable, "-c", child,
                    str(seen), *hostile], "env": {"ENGINE_FLAG": "$(touch x)"}}, env=env).result
    _wait_for(lambda: seen.exists() and seen.stat().st_size > 0)
    received = json.loads(seen.read_text())
    assert received["argv"] == hostile
    assert received["env"]["ENGINE_FLAG"] == "$(touch x)" and "AIMA_LEAK" not in received["env"]
    assert received["env"]["PATH"] == os.environ["PATH"]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert os.path.exists("/tmp/pwned") == pwned_before
    assert not (state / "out").exists()


# -- probe and protocol -------------------------------------------------------------------------------------------


def test_probe_reports_host_facts_and_creates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "aima"
    facts = helper("probe", {"data_dir": str(data_dir)}).result
    assert facts["hostname"] == socket.gethostname() and facts["cpu_count"] == os.cpu_count()
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert 0 < facts["mem_available"] <= facts["mem_total"]
    assert facts["disk"]["path"] == str(data_dir) and facts["disk"]["exists"] is False
    assert 0 < facts["disk"]["free"] <= facts["disk"]["total"]
    # Without an NVIDIA driver: a normal answer saying why, not an error (parsed by aimactl/hosts/gpus.py).
    assert facts["gpus"]["source"] in ("none", "nvml", "nvidia-smi")
    assert facts["gpus"]["source"] != "none" or "NVIDIA GPU driver" in facts["gpus"]["note"]
    assert not (tmp_path / "data").exists()


def test_the_source_runs_through_python_c(tmp_path: Path) -> None:
    assert helper("probe", {"data_dir": str(tmp_path)}, source=True).result["disk"]["exists"] is True


def test_bad_requests_get_one_error_line_and_exit_1() -> None:
    assert helper("teleport").error["code"] == "unknown-verb"
    completed = subprocess.run([sys.executable, str(HELPER), "probe"], input="{not json", capture_output=True,
                               text=True, timeout=20)
    assert completed.returncode == 1 and json.loads(completed.stdout)["error"]["code"] == "invalid-input"
    assert helper("fetch", {"url": "ftp://x/y", "dest": "/tmp/x"}).error["code"] == "invalid-input"
    assert helper("fetch", {"url": "http://x/y", "dest": "relative"}).error["code"] == "invalid-input"
    assert helper("fetch", {"url": "http://x/y", "dest": "/tmp/x", "size": True}).error["code"] == "invalid-input"
    assert helper("proc", {"action": "start", "dir": "/tmp", "name": "x", "argv": []}).error["code"] == "invalid-input"


def test_the_helper_is_stdlib_only_and_parses_as_python_3_8() -> None:
    tree = ast.parse(HELPER.read_text(), feature_version=(3, 8))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= sys.stdlib_module_names
    assert "shell=True" not in HELPER.read_text() and "os.system" not in HELPER.read_text()


def test_probe_says_which_engine_programs_and_modules_the_host_has(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text("#!/bin/sh\n")
    (bin_dir / "llama-server").chmod(0o755)
    asked = {"data_dir": str(tmp_path), "engine_programs": ["llama-server", "vllm-not-here"],
             "engine_modules": ["json", "no_such_engine_module"]}
    engines = helper("probe", asked, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}).result["engines"]
    assert engines == {"programs": ["llama-server"], "modules": ["json"]}
    # Names are data, never a shell word or a path: anything else is refused.
    refused = helper("probe", {"data_dir": str(tmp_path), "engine_programs": ["; touch /tmp/pwned"]})
    assert refused.error["code"] == "invalid-input"
