"""The model cache as a user meets it through the CLI: `plan/apply --verify` catching a file changed on disk,
the hub revision in the index and in `models ls`, and `models ls|gc` going through the host's helper."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

WEIGHTS = bytes(range(256)) * 4096  # 1 MiB


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        """slow.bin trickles out (64 KiB every 20 ms) so that a fetch lasts long enough to show progress."""
        if not self.path.endswith("slow.bin"):
            super().copyfile(source, outputfile)
            return
        for chunk in iter(lambda: source.read(64 * 1024), b""):
            outputfile.write(chunk)
            time.sleep(0.02)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[str]:
    """A local stand-in for a Hugging Face endpoint: files at /ORG/REPO/resolve/REVISION/FILE."""
    root = tmp_path / "hub"
    (root / "org" / "repo" / "resolve" / "v1.0").mkdir(parents=True)
    (root / "org" / "repo" / "resolve" / "v1.0" / "w.bin").write_bytes(WEIGHTS[::-1])
    (root / "org" / "repo" / "resolve" / "v1.0" / "slow.bin").write_bytes(WEIGHTS * 4)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "NO_COLOR": "1", "COLUMNS": "200",
               "DOCKER_HOST": f"unix://{tmp}/no-docker.sock", **(env or {})}
    return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=environ,
                          timeout=120)


def _manifest(tmp: Path, models: dict[str, str]) -> Path:
    """A Host with its data dir, the Models, and one process Service using each (only the Models are applied)."""
    docs = ["apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\n"
            f"spec: {{address: local, dataDir: '{tmp}/data', python: '{sys.executable}'}}\n"]
    for name, source in models.items():
        docs.append(f"apiVersion: aima.dev/v1\nkind: Model\nmetadata: {{name: {name}}}\nspec: {{source: '{source}'}}\n")
        docs.append(f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: use-{name}}}\n"
                    f"spec: {{engine: custom, runtime: process, model: {name}, command: [sleep, '300']}}\n")
    path = tmp / "stack.yaml"
    path.write_text("---\n".join(docs))
    return path


def _model_change(tmp: Path, manifest: Path, *flags: str) -> dict:
    planned = _run(tmp, "plan", "-f", str(manifest), "-o", "json", *flags)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    [change] = [c for c in json.loads(planned.stdout)["changes"] if c["address"].startswith("model.")]
    return dict(change)


def test_verify_rehashes_and_refetches_a_cached_file_changed_on_disk(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(WEIGHTS)
    manifest = _manifest(tmp_path, {"m": f"file://{source}"})
    fetched = _run(tmp_path, "apply", "-f", str(manifest), "--target", "model/m", "--auto-approve")
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    cached = tmp_path / "data" / "models" / "m" / "weights.bin"
    good = hashlib.sha256(WEIGHTS).hexdigest()
    assert (_model_change(tmp_path, manifest, "--verify")["reason"]) == "cached, verified"

    corrupted = bytearray(cached.read_bytes())
    corrupted[1000] ^= 0xFF
    cached.write_bytes(bytes(corrupted))
    bad = hashlib.sha256(corrupted).hexdigest()
    trusted = _model_change(tmp_path, manifest)
    assert (trusted["actions"], trusted["reason"]) == (["no-op"], "cached"), "without --verify the index is trusted"
    checked = _model_change(tmp_path, manifest, "--verify")
    assert checked["actions"] == ["replace"], checked
    assert checked["reason"] == f"sha256 mismatch: expected {good}, found {bad}"
    text = _run(tmp_path, "plan", "-f", str(manifest), "--verify")
    assert f"# model.m@local will be replaced: sha256 mismatch: expected {good}, found {bad}" in text.stdout

    repaired = _run(tmp_path, "apply", "-f", str(manifest), "--target", "model/m", "--verify", "--auto-approve")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "model.m@local: done" in repaired.stdout
    assert cached.read_bytes() == WEIGHTS
    assert _model_change(tmp_path, manifest, "--verify")["reason"] == "cached, verified"


def test_verify_notices_a_cached_file_that_was_deleted(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(WEIGHTS)
    manifest = _manifest(tmp_path, {"m": f"file://{source}"})
    assert _run(tmp_path, "apply", "-f", str(manifest), "--target", "model/m", "--auto-approve").returncode == 0
    cached = tmp_path / "data" / "models" / "m" / "weights.bin"
    cached.unlink()
    change = _model_change(tmp_path, manifest, "--verify")
    assert change["reason"] == f"the cached file {cached} is missing on local"


def test_hub_revision_is_recorded_and_listed(tmp_path: Path, hub: str) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(WEIGHTS)
    manifest = _manifest(tmp_path, {"hubbed": "hf://org/repo/w.bin@v1.0", "local": f"file://{source}"})
    env = {"HF_ENDPOINT": hub}
    fetched = _run(tmp_path, "apply", "-f", str(manifest), "--target", "model/hubbed", "--target", "model/local",
                   "--auto-approve", env=env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    index = json.loads((tmp_path / "data" / "models" / "index.json").read_text())
    assert {name: entry["revision"] for name, entry in index.items()} == {"hubbed": "v1.0", "local": None}
    listed = json.loads(_run(tmp_path, "models", "ls", "-f", str(manifest), "-o", "json").stdout)
    assert [(m["name"], m["revision"], m["size"]) for m in listed] == [("hubbed", "v1.0", len(WEIGHTS)),
                                                                        ("local", None, len(WEIGHTS))]
    table = _run(tmp_path, "models", "ls", "-f", str(manifest)).stdout
    assert "REVISION" in table
    [row] = [line for line in table.splitlines() if line.startswith("hubbed")]
    assert "hf://org/repo/w.bin@v1.0" in row and " v1.0 " in row


def test_gc_lists_and_removes_unreferenced_models_through_the_helper(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(WEIGHTS)
    manifest = _manifest(tmp_path, {"keep": f"file://{source}", "drop": f"file://{source}"})
    fetched = _run(tmp_path, "apply", "-f", str(manifest), "--target", "model/keep", "--target", "model/drop",
                   "--auto-approve")
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "file").write_text("not a model")
    # A link in the cache pointing elsewhere is not a model directory: gc neither lists nor follows it.
    (tmp_path / "data" / "models" / "linked").symlink_to(outside)
    keep_manifest = tmp_path / "keep.yaml"
    keep_manifest.write_text(manifest.read_text().split("---")[0] + "---\n" + "---\n".join(
        doc for doc in manifest.read_text().split("---\n")[1:] if "keep" in doc))

    refused = _run(tmp_path, "models", "gc", "-f", str(keep_manifest))
    assert refused.returncode == 1 and "no terminal to ask on" in refused.stderr
    drop_dir = tmp_path / "data" / "models" / "drop"
    assert f"{drop_dir} on local (1.0 MiB)" in refused.stdout and "linked" not in refused.stdout
    assert drop_dir.is_dir()

    collected = _run(tmp_path, "models", "gc", "-f", str(keep_manifest), "--yes")
    assert collected.returncode == 0 and "Removed 1 cached model(s)." in collected.stdout, collected.stdout
    assert not drop_dir.exists() and (outside / "file").exists()
    listed = json.loads(_run(tmp_path, "models", "ls", "-f", str(keep_manifest), "-o", "json").stdout)
    assert [m["name"] for m in listed] == ["keep"]
    nothing = _run(tmp_path, "models", "gc", "-f", str(keep_manifest), "--yes")
    assert nothing.returncode == 0 and "Nothing to remove" in nothing.stdout


def _run_on_a_terminal(tmp: Path, *args: str, env: dict[str, str]) -> str:
    """The CLI with its stdout on a pseudo-terminal (160 columns), as a user at a shell runs it."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    environ = {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "NO_COLOR": "1", "TERM": "xterm",
               "DOCKER_HOST": f"unix://{tmp}/no-docker.sock", **env}
    environ.pop("COLUMNS", None)
    process = subprocess.Popen([sys.executable, "-m", "aimactl", *args], stdin=subprocess.DEVNULL, stdout=slave,
                               stderr=subprocess.PIPE, env=environ)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=120) == 0, b"".join(chunks).decode("utf-8", "replace")
    return b"".join(chunks).decode("utf-8", "replace")


def test_fetch_progress_is_a_bar_on_a_terminal_and_lines_in_a_pipe(tmp_path: Path, hub: str) -> None:
    manifest = _manifest(tmp_path, {"slow": "hf://org/repo/slow.bin@v1.0"})
    args = ("apply", "-f", str(manifest), "--target", "model/slow", "--auto-approve")
    shown = _run_on_a_terminal(tmp_path, *args, env={"HF_ENDPOINT": hub})
    # rich's bar: bytes done of the total in MiB, speed, ETA; then the step's line.
    assert re.search(r"model\.slow@local .*4\.0/4\.0 MiB .*/s ETA", shown), shown
    assert "model.slow@local: done" in shown and "MiB of 4.0 MiB" not in shown

    (tmp_path / "data" / "models" / "slow" / "slow.bin").unlink()
    (tmp_path / "data" / "models" / "index.json").write_text("{}")
    piped = _run(tmp_path, *args, env={"HF_ENDPOINT": hub})
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert re.search(r"model\.slow@local: [0-9.]+ MiB of 4\.0 MiB, [0-9.]+ MiB/s", piped.stdout), piped.stdout
    assert "/4.0 MiB" not in piped.stdout and "\x1b[" not in piped.stdout


@pytest.mark.ssh
def test_ls_and_gc_reach_an_ssh_hosts_cache_through_its_helper(tmp_path: Path, ssh_hosts: Any) -> None:
    """The same commands on an SSH host: the index is read and the cache listed and pruned by the helper there;
    a host that cannot be reached is named, and the others are still served."""
    edge = ssh_hosts.by_name("edge-1")
    source = tmp_path / "weights.bin"
    source.write_bytes(WEIGHTS)
    host = (f"apiVersion: aima.dev/v1\nkind: Host\nmetadata: {{name: edge-1}}\nspec: {{address: "
            f"'ssh://{edge.user}@{edge.address}:{edge.port}', identityFile: '{ssh_hosts.client_key_path}', "
            f"knownHosts: '{ssh_hosts.known_hosts_path}', dataDir: '{tmp_path}/edge-data'}}\n")
    model = (f"apiVersion: aima.dev/v1\nkind: Model\nmetadata: {{name: m}}\nspec: {{source: 'file://{source}'}}\n"
             "---\napiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: use-m}\n"
             "spec: {engine: custom, runtime: process, model: m, command: [sleep, '300'], host: edge-1}\n")
    full, host_only = tmp_path / "full.yaml", tmp_path / "host.yaml"
    full.write_text(host + "---\n" + model)
    host_only.write_text(host)
    fetched = _run(tmp_path, "apply", "-f", str(full), "--target", "model/m", "--auto-approve")
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    cached = tmp_path / "edge-data" / "models" / "m"
    assert (cached / "weights.bin").read_bytes() == WEIGHTS  # the sshd runs on this machine: its disk is ours

    listed = _run(tmp_path, "models", "ls", "-f", str(full), "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [(m["name"], m["host"], m["size"]) for m in json.loads(listed.stdout)] == [("m", "edge-1", len(WEIGHTS))]
    collected = _run(tmp_path, "models", "gc", "-f", str(host_only), "--yes")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert f"{cached} on edge-1 (1.0 MiB)" in collected.stdout and "Removed 1 cached model(s)." in collected.stdout
    assert not cached.exists()
    assert json.loads(_run(tmp_path, "models", "ls", "-f", str(full), "-o", "json").stdout) == []

    edge.stop()
    try:
        down = _run(tmp_path, "models", "ls", "-f", str(full))
        gc_down = _run(tmp_path, "models", "gc", "-f", str(host_only), "--yes")
    finally:
        edge.start()
    assert down.returncode == 1 and "host edge-1 (" in down.stderr and "unreachable" in down.stderr
    assert "Traceback" not in down.stderr, down.stderr
    assert gc_down.returncode == 1 and "its cache is left alone" in gc_down.stderr, gc_down.stderr


def test_models_recorded_at_once_on_one_host_all_stay_in_its_index(tmp_path: Path) -> None:
    """The Models of one apply are fetched in parallel; each adds its entry to the host's index (before, two that
    finished together could each write the index without the other's entry)."""
    from aimactl.converge.connections import Connections
    from aimactl.converge.models import update_index
    from aimactl.core.desired import HostInfo

    connections = Connections({"local": HostInfo("local", data_dir=str(tmp_path / "data"))}, {})
    names = [f"m{i}" for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: update_index(connections, "local", lambda index: {**index, n: {"name": n}}), names))
    index = json.loads((tmp_path / "data" / "models" / "index.json").read_text())
    assert sorted(index) == sorted(names)
    update_index(connections, "local", lambda index: {k: v for k, v in index.items() if k != "m3"})
    assert "m3" not in json.loads((tmp_path / "data" / "models" / "index.json").read_text())
