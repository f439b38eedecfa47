"""Hostile manifest values reach hosts literally and run nothing (issue 6, item 5).

Every manifest field that ends up on a host is filled with shell metacharacters: `; rm`, `$(...)`, backticks,
newlines, both quotes, pipes, globs, `--flag` injection and the empty string. Each of them tries to create a
marker file in `marks/` if any layer (the controller, the helper, the container, SSH's remote shell) ever hands
it to a shell. The stack is applied for real: Docker fields through the private engine, the process runtime,
a Model fetched by the helper into a data dir whose own name is hostile. The values must arrive as written
(argv element by element, env, labels, mounts, files), and `marks/` must stay empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import wait_until
from tests.fixtures.sshd import SshHosts
from tests.test_apply_docker import BUSY, Stack

pytestmark = pytest.mark.docker


def hostile_values(marks: Path) -> list[str]:
    """Values that create a file in `marks` if any shell ever interprets them."""
    return [
        f"; touch {marks}/semicolon",
        f"$(touch {marks}/dollar)",
        f"`touch {marks}/backtick`",
        f"line1\ntouch {marks}/newline",
        f"'; touch {marks}/single-quote; '",
        f"\"; touch {marks}/double-quote; \"",
        f"&& touch {marks}/and",
        f"| touch {marks}/pipe",
        f"> {marks}/redirect",
        f"${{IFS}}touch${{IFS}}{marks}/ifs",
        "--flag=injected",
        "-rf",
        "*",
        "~",
        "  spaced  out  ",
        "",
    ]


@dataclass
class Hostile:
    """A stack whose every host-bound field is hostile, and where to look for what arrived."""

    stack: Stack
    marks: Path
    out: Path
    values: list[str]
    data_dir: Path
    model_src: Path
    volume_src: Path
    host: dict | None = None
    """The Host spec (default: the local host with the hostile data dir)."""

    def manifests(self) -> str:
        """Host, Model, a Docker Service and a process Service, all carrying the hostile values."""
        env = {f"H{i}": v for i, v in enumerate(self.values)}
        labels = {f"h{i}": v for i, v in enumerate(self.values)}
        record_sh = (f"printf '%s\\0' \"$@\" > {self.out}/docker-argv; cat /proc/$$/environ > {self.out}/docker-env; "
                     f"cat /hostile/content > {self.out}/docker-volume; trap 'exit 0' TERM; "
                     "while true; do sleep 1; done")
        record_py = ("import json, os, sys, time; "
                     f"open({str(self.out / 'process.json')!r}, 'w').write(json.dumps("
                     "{'argv': sys.argv[1:], 'env': dict(os.environ)})); time.sleep(3600)")
        host = self.host or {"address": "local", "dataDir": str(self.data_dir), "python": sys.executable}
        docker = {"engine": "custom", "image": BUSY, "command": ["sh", "-c", record_sh, "argv0"],
                  "args": self.values, "env": env,
                  "volumes": [f"{self.out}:{self.out}", f"{self.volume_src}:/hostile:ro"],
                  "health": {"startupTimeout": "30s"}}
        process = {"engine": "custom", "runtime": "process", "model": "tiny",
                   "command": [sys.executable, "-c", record_py, "{{ models.tiny.path }}"], "args": self.values,
                   "env": env, "health": {"startupTimeout": "30s"}}
        docs = [
            {"kind": "Host", "metadata": {"name": "local" if host["address"] == "local" else "edge-1"}, "spec": host},
            {"kind": "Model", "metadata": {"name": "tiny"}, "spec": {"source": f"file://{self.model_src}"}},
            {"kind": "Service", "metadata": {"name": "in-docker", "labels": labels}, "spec": docker},
            {"kind": "Service", "metadata": {"name": "as-process"}, "spec": process},
        ]
        # JSON is YAML: every value is written exactly, newlines and quotes included.
        return "---\n".join(json.dumps({"apiVersion": "aima.dev/v1", **d}) + "\n" for d in docs)

    def no_marks(self) -> None:
        """Nothing any hostile value asked for was done."""
        assert sorted(p.name for p in self.marks.iterdir()) == []


def _hostile_dir(parent: Path, name: str, spaces: bool = True) -> Path:
    """A directory whose own name is hostile (no `:` so that it can be a volume source; model sources refuse
    spaces, so theirs has none)."""
    path = parent / (f"{name} $(touch x) `touch y`; 'q\" & z" if spaces else f"{name}$(touch${{IFS}}x);`y`'q\"&z")
    path.mkdir(parents=True)
    return path


@pytest.fixture
def hostile(docker_engine: object, tmp_path: Path) -> Iterator[Hostile]:
    stack = Stack(docker_engine, tmp_path)
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    out.mkdir()
    model_dir = _hostile_dir(tmp_path, "models", spaces=False)
    model_src = model_dir / "tiny;$(touch${IFS}m)`n`.gguf"
    model_src.write_bytes(b"GGUF-hostile-test-model")
    volume_src = _hostile_dir(tmp_path, "volume")
    (volume_src / "content").write_text("mounted literally\n")
    case = Hostile(stack, marks, out, hostile_values(marks), tmp_path / "data $(touch d) `e`; 'f\"", model_src,
                   volume_src)
    # `~` must stay literal; were any shell to expand it, it would point at a scratch HOME, not the real one.
    stack.env["HOME"] = str(tmp_path / "home")
    yield case
    stack.run("destroy", "-f", str(stack.dir), "--auto-approve")
    stack.cleanup()


def _container(stack: Stack, name: str) -> dict:
    client = stack.engine.client()  # type: ignore[attr-defined]
    try:
        return client.api.inspect_container(f"aima-{stack.name}-{name}-0")
    finally:
        client.close()


def _environ(raw: bytes) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in raw.decode().split("\0") if item]
    return {k: v for k, v in pairs}


def test_hostile_values_arrive_literally_on_the_local_host(hostile: Hostile) -> None:
    _apply_and_check(hostile)


@pytest.mark.ssh
def test_hostile_values_arrive_literally_over_ssh(hostile: Hostile, ssh_hosts: SshHosts) -> None:
    """The same stack on an SSH host: every helper command line crosses the remote user's shell there, and the
    Docker engine is reached through the forwarded socket."""
    hostile.host = ssh_host_spec(ssh_hosts, hostile)
    _apply_and_check(hostile)
    assert [p.name[:11] for p in (hostile.data_dir / "helper").iterdir()] == ["aimahelper-"]  # uploaded over SFTP


@pytest.mark.ssh
@pytest.mark.parametrize("python", ["python3; touch {marks}/python", "$(touch {marks}/python)",
                                    "`touch {marks}/python`"])
def test_hostile_python_over_ssh_runs_nothing(hostile: Hostile, ssh_hosts: SshHosts, python: str) -> None:
    """The Host's `python` is the first word of every helper command on the host: quoted, it names a program
    that does not exist, and the host is reported as unable to run its helper."""
    python = python.format(marks=hostile.marks)
    spec = ssh_host_spec(ssh_hosts, hostile, python=python)
    process = {"engine": "custom", "runtime": "process", "command": ["sleep", "60"]}
    docs = [{"kind": "Host", "metadata": {"name": "edge-1"}, "spec": spec},
            {"kind": "Service", "metadata": {"name": "proc"}, "spec": process}]
    hostile.stack.write("---\n".join(json.dumps({"apiVersion": "aima.dev/v1", **d}) + "\n" for d in docs))
    result = hostile.stack.run("apply", "-f", str(hostile.stack.dir), "--auto-approve")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out and "AIMACTL_DEBUG" not in out, out
    assert "the helper on edge-1 gave no answer (exit 127)" in out, out
    assert f"{python}: No such file or directory" in out, out
    hostile.no_marks()


@pytest.mark.ssh
def test_hostile_docker_socket_over_ssh_runs_nothing(hostile: Hostile, ssh_hosts: SshHosts) -> None:
    """The Host's `docker` socket path reaches the host as an argument of the helper's `dial`: taken literally."""
    socket = f"/run/x.sock; touch {hostile.marks}/docker $(touch {hostile.marks}/docker2)"
    spec = ssh_host_spec(ssh_hosts, hostile, docker=socket)
    docs = [{"kind": "Host", "metadata": {"name": "edge-1"}, "spec": spec},
            {"kind": "App", "metadata": {"name": "web"}, "spec": {"image": BUSY}}]
    hostile.stack.write("---\n".join(json.dumps({"apiVersion": "aima.dev/v1", **d}) + "\n" for d in docs))
    result = hostile.stack.run("apply", "-f", str(hostile.stack.dir), "--auto-approve")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out and "AIMACTL_DEBUG" not in out, out
    assert socket in out, out
    hostile.no_marks()


def ssh_host_spec(ssh_hosts: SshHosts, hostile: Hostile, **extra: str) -> dict:
    """edge-1 over SSH, with the private Docker engine and the hostile data dir."""
    edge = ssh_hosts.by_name("edge-1")
    return {"address": f"ssh://{edge.user}@{edge.address}:{edge.port}", "identityFile": str(ssh_hosts.client_key_path),
            "knownHosts": str(ssh_hosts.known_hosts_path), "dataDir": str(hostile.data_dir),
            "docker": hostile.stack.engine.socket_path, **extra}  # type: ignore[attr-defined]


def _apply_and_check(hostile: Hostile) -> None:
    stack = hostile.stack
    stack.write(hostile.manifests())
    applied = stack.run("apply", "-f", str(stack.dir), "--auto-approve", timeout=180)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert wait_until(lambda: (hostile.out / "process.json").exists() and (hostile.out / "docker-volume").exists(),
                      20)
    values = hostile.values
    env = {f"H{i}": v for i, v in enumerate(values)}

    # Docker: argv element by element, environment, labels, the bind mount with a hostile source path.
    assert (hostile.out / "docker-argv").read_bytes().split(b"\0")[:-1] == [v.encode() for v in values]
    assert env.items() <= _environ((hostile.out / "docker-env").read_bytes()).items()
    assert (hostile.out / "docker-volume").read_text() == "mounted literally\n"
    labels = _container(stack, "in-docker")["Config"]["Labels"]
    assert {f"h{i}": v for i, v in enumerate(values)}.items() <= labels.items()

    # Process runtime through the helper: argv (after the model path), environment; the model fetched into
    # a data dir whose name is hostile, under a file name made safe.
    seen = json.loads((hostile.out / "process.json").read_text())
    model_path, *args = seen["argv"]
    assert args == values
    assert env.items() <= seen["env"].items()
    assert model_path.startswith(str(hostile.data_dir / "models" / "tiny") + "/")
    assert Path(model_path).read_bytes() == b"GGUF-hostile-test-model"
    assert (hostile.data_dir / "proc").is_dir()

    hostile.no_marks()
    again = stack.run("plan", "-f", str(stack.dir), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    hostile.no_marks()


@pytest.mark.parametrize(("field", "value"), [
    ("image", "{busy}; touch {marks}/image"),
    ("image", "{busy}$(touch {marks}/image)"),
    ("python", "python3; touch {marks}/python"),
    ("python", "$(touch {marks}/python)"),
])
def test_hostile_image_or_python_is_refused_and_runs_nothing(hostile: Hostile, field: str, value: str) -> None:
    stack = hostile.stack
    value = value.format(busy=BUSY, marks=hostile.marks)
    if field == "image":
        doc = {"kind": "App", "metadata": {"name": "web"}, "spec": {"image": value}}
    else:
        stack.write("")
        doc = {"kind": "Host", "metadata": {"name": "local"},
               "spec": {"address": "local", "python": value, "dataDir": str(hostile.data_dir)}}
        process = {"kind": "Service", "metadata": {"name": "proc"},
                   "spec": {"engine": "custom", "runtime": "process", "command": ["sleep", "60"]}}
        doc = [doc, process]  # type: ignore[assignment]
    docs = doc if isinstance(doc, list) else [doc]
    stack.write("---\n".join(json.dumps({"apiVersion": "aima.dev/v1", **d}) + "\n" for d in docs))
    result = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out and "AIMACTL_DEBUG" not in out  # no exception escaped
    # Refused with a clear reason, naming the value as written.
    if field == "image":
        assert "stack.yaml:1:" in out and "is not an image reference" in out, out
    else:
        assert f"host local: cannot run {value!r}: No such file or directory" in out, out
    hostile.no_marks()
    time.sleep(0.2)
    hostile.no_marks()


def test_no_shell_in_the_code_that_reaches_hosts() -> None:
    """The code paths from manifests to hosts use argv lists: no shell=True, os.system or `sh -c` anywhere."""
    root = Path(__file__).parent.parent / "aimactl"
    found = subprocess.run(["grep", "-rnE", r"shell=True|os\.system|os\.popen|\"sh\", \"-c\"|'sh', '-c'",
                            str(root), "--include=*.py", "--include=*.yaml"], capture_output=True, text=True)
    assert found.stdout == "", found.stdout
    assert os.path.isdir(root)
