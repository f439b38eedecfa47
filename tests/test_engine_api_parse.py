"""The Engine API reader's pure parsers, fed with answers recorded from a real engine (tests/data/docker/),
and the reader itself against a small real HTTP server on a unix socket (no Docker needed)."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from aimactl.core import labels as L
from aimactl.core.observed import PublishedPort
from aimactl.runtimes import ContainerNotFound, EngineError, EngineUnavailable
from aimactl.runtimes.engine_api import (
    DEFAULT_ENDPOINT,
    EngineReader,
    docker_endpoint,
    parse_container,
    parse_container_summary,
)

DATA = Path(__file__).parent / "data" / "docker"


def _load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def _summary(name: str) -> dict[str, Any]:
    return next(item for item in _load("list.json") if item["Names"] == [f"/{name}"])


def test_running_container_with_labels_ports_and_health() -> None:
    raw = _load("running.json")
    observed = parse_container(raw)
    assert observed.id == raw["Id"]
    assert observed.name == "aima-capture-web-0"
    assert observed.image == "aima-test/busybox:latest"
    assert observed.image_id.startswith("sha256:")
    assert (observed.state, observed.exit_code, observed.restart_count) == ("running", None, 0)
    assert observed.running and observed.health == "healthy"
    assert observed.started_at == raw["State"]["StartedAt"] and observed.finished_at is None
    assert observed.managed and observed.stack == "capture" and observed.resource_kind == "app"
    assert observed.resource_name == "web" and observed.replica == 0
    assert observed.spec_hash == "sha256:" + "ab" * 32
    assert observed.spec is not None and observed.spec["ports"] == ["8080/tcp"]
    live = raw["NetworkSettings"]["Ports"]
    web, every, udp = (live[key][0]["HostPort"] for key in ("8080/tcp", "8081/tcp", "9999/udp"))
    assert observed.ports == tuple(sorted(
        [PublishedPort("127.0.0.1", int(web), 8080), PublishedPort("", int(every), 8081),
         PublishedPort("", int(udp), 9999, "udp")],
        key=lambda p: (p.host_port, p.protocol),
    ))  # fmt: skip


def test_killed_container_is_exited_with_137() -> None:
    observed = parse_container(_load("exited-137.json"))
    assert (observed.name, observed.state, observed.exit_code) == ("capture-killed", "exited", 137)
    assert not observed.running and not observed.managed and observed.labels == {}
    assert observed.started_at and observed.finished_at and observed.finished_at > observed.started_at
    assert observed.ports == () and observed.health is None


def test_created_container_has_no_times_no_exit_code_and_its_requested_ports() -> None:
    raw = _load("created.json")
    observed = parse_container(raw)
    assert (observed.state, observed.exit_code) == ("created", None)
    assert observed.started_at is None and observed.finished_at is None
    assert observed.managed and observed.resource_name == "idle"
    requested = int(raw["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"])
    assert observed.ports == (PublishedPort("127.0.0.1", requested, 8080),)


def test_container_with_mounts_and_restart_policy_parses() -> None:
    observed = parse_container(_load("mounts.json"))
    assert (observed.name, observed.state, observed.ports) == ("capture-mounts", "running", ())
    assert not observed.managed


def test_exited_container_keeps_its_requested_ports() -> None:
    raw = _load("running.json")
    raw["State"].update(Status="exited", Running=False, ExitCode=1)
    raw["NetworkSettings"]["Ports"] = {}
    observed = parse_container(raw)
    assert observed.exit_code == 1
    requested = raw["HostConfig"]["PortBindings"]
    # the dynamic 9999/udp binding (HostPort "") holds no port while the container is down
    assert set(observed.ports) == {
        PublishedPort("127.0.0.1", int(requested["8080/tcp"][0]["HostPort"]), 8080),
        PublishedPort("", int(requested["8081/tcp"][0]["HostPort"]), 8081),
    }


def test_missing_sections_do_not_break_the_parser() -> None:
    observed = parse_container({"Id": "abc", "Name": "/x", "State": {"Status": "dead", "ExitCode": 2}})
    assert (observed.name, observed.state, observed.exit_code) == ("x", "dead", 2)
    assert observed.labels == {} and observed.ports == () and observed.image == ""


def test_summaries_of_the_list_endpoint() -> None:
    running = parse_container_summary(_summary("aima-capture-web-0"))
    full = parse_container(_load("running.json"))
    assert (running.id, running.name, running.state, running.health) == (full.id, full.name, "running", "healthy")
    assert running.labels == full.labels and running.ports == full.ports and running.exit_code is None
    killed = parse_container_summary(_summary("capture-killed"))
    assert (killed.state, killed.exit_code) == ("exited", 137)
    created = parse_container_summary(_summary("aima-capture-idle-0"))
    assert (created.state, created.exit_code, created.ports, created.stack) == ("created", None, (), "capture")


@pytest.mark.parametrize(
    ("status", "health"),
    [("Up 3 minutes (healthy)", "healthy"), ("Up 1 second (health: starting)", "starting"),
     ("Up 2 hours (unhealthy)", "unhealthy"), ("Up 2 hours", None)],
)  # fmt: skip
def test_summary_health_comes_from_the_status_text(status: str, health: str | None) -> None:
    assert parse_container_summary({"Id": "x", "Names": ["/x"], "State": "running", "Status": status}).health == health


def test_docker_endpoint_prefers_docker_host() -> None:
    assert docker_endpoint(None) == DEFAULT_ENDPOINT == "unix:///var/run/docker.sock"
    assert docker_endpoint("") == DEFAULT_ENDPOINT
    assert docker_endpoint("tcp://10.0.0.5:2375") == "tcp://10.0.0.5:2375"


# --- the reader against a real HTTP server on a unix socket ------------------------------------------------


class _FakeEngineHandler(BaseHTTPRequestHandler):
    """Answers like a Docker engine for the few paths the reader uses, and records the requests."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        answers = {
            "/version": (200, {"Version": "99.0", "ApiVersion": "1.41"}),
            "/v1.41/containers/json": (200, [_summary("capture-killed")]),
            "/v1.41/containers/known/json": (200, _load("exited-137.json")),
            "/v1.41/containers/broken/json": (500, {"message": "something broke\nbadly"}),
        }
        status, body = answers.get(path, (404, {"message": "No such object"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        """Stay quiet."""


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> Any:
        request, _ = super().get_request()
        return request, ("local", 0)


@pytest.fixture()
def fake_engine(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    server = _UnixServer(str(tmp_path / "engine.sock"), _FakeEngineHandler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"unix://{tmp_path}/engine.sock", server.requests  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_reader_negotiates_the_version_once_and_encodes_filters(fake_engine: tuple[str, list[str]]) -> None:
    url, requests = fake_engine
    reader = EngineReader(url)
    try:
        items = reader.containers({"label": "dev.aima.stack=prod", "status": ["running", "exited"]})
        assert [item["Names"] for item in items] == [["/capture-killed"]]
        assert reader.inspect_container("known")["Name"] == "/capture-killed"
        assert reader.inspect_image("missing:latest") is None
        assert reader.version()["Version"] == "99.0"
    finally:
        reader.close()
    assert requests[0] == "/version" and requests.count("/version") == 1
    query = parse_qs(urlsplit(requests[1]).query)
    assert query["all"] == ["1"]
    assert json.loads(query["filters"][0]) == {"label": ["dev.aima.stack=prod"], "status": ["running", "exited"]}
    assert urlsplit(requests[3]).path == "/v1.41/images/missing:latest/json"


def test_reader_errors_name_the_engine(fake_engine: tuple[str, list[str]]) -> None:
    url, _ = fake_engine
    reader = EngineReader(url)
    with pytest.raises(ContainerNotFound, match="container gone: no such container"):
        reader.inspect_container("gone")
    with pytest.raises(EngineError, match=r"HTTP 500: something broke") as caught:
        reader.inspect_container("broken")
    assert caught.value.status == 500
    reader.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [("unix:///nonexistent/docker.sock", "socket does not exist"), ("tcp://127.0.0.1:1", "connection refused"),
     ("ssh://user@host", "only unix:// and tcp://")],
)  # fmt: skip
def test_unreachable_engines_raise_engine_unavailable_naming_them(url: str, reason: str) -> None:
    with pytest.raises(EngineUnavailable, match=reason) as caught:
        EngineReader(url).ping()
    assert url in str(caught.value)
    assert isinstance(caught.value, RuntimeError)


def test_labels_module_and_parser_agree_on_names() -> None:
    observed = parse_container(_load("created.json"))
    assert observed.labels[L.MANAGED] == "true" and observed.labels[L.STACK] == "capture"
