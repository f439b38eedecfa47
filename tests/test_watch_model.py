"""The dashboard's view model and renderer without a terminal: observation + plan + events -> rows -> text.

Table-driven: each case is what a host runs and what the plan says, and the row a user must see.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aimactl.core import labels as L
from aimactl.core.containers import ContainerSpec
from aimactl.core.desired import DesiredContainer, address
from aimactl.core.models import DesiredModel
from aimactl.core.observed import Observed, ObservedContainer, ObservedHost, PublishedPort
from aimactl.core.plan import CREATE, DELETE, NOOP, REPLACE, Change, Plan
from aimactl.watch.model import OUT_OF_SYNC, STALLED, SYNCED, UNKNOWN, Dashboard, WorkloadRow, dashboard
from aimactl.watch.render import Frame, bar, size

STACK = "demo"
GPU_DATA = Path(__file__).parent / "data" / "gpus"


def container(name: str, state: str = "running", replica: int = 0, port: int | None = None, restarts: int = 0,
              exit_code: int | None = None, health: str | None = None, kind: str = "service") -> ObservedContainer:
    labels = {L.MANAGED: "true", L.STACK: STACK, L.KIND: kind, L.NAME: name, L.REPLICA: str(replica)}
    ports = (PublishedPort("127.0.0.1", port, 8080),) if port else ()
    return ObservedContainer(f"{name}{replica}".ljust(64, "0"), L.container_name(STACK, name, replica),
                             "busybox:latest", "sha256:1", state, exit_code, restarts, labels=labels, ports=ports,
                             health=health)


def change(name: str, action: str, reason: str, replica: int = 0, kind: str = "service",
           host: str = "local") -> Change:
    want = None if action == DELETE else DesiredContainer(
        address(kind, name, replica, host), f"{kind}/{name}", kind, name, replica, host,
        ContainerSpec(L.container_name(STACK, name, replica), "busybox:latest"), {}, "hash")
    return Change(address(kind, name, replica, host), f"{kind}/{name}", kind, name, replica, host, action, reason,
                  desired=want)


@dataclass
class Case:
    id: str
    running: list[ObservedContainer]
    changes: list[Change] | None
    """None: no manifests given."""
    expected: WorkloadRow
    stalled: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("in sync and running, with its endpoint", [container("chat", port=9001)],
         [change("chat", NOOP, "up to date")],
         WorkloadRow("service", "chat", "local", SYNCED, "", "running", 0, 1, 1, "http://127.0.0.1:9001")),
    Case("stopped by hand: out of sync with the plan's reason, exited", [container("chat", "exited", exit_code=137)],
         [change("chat", REPLACE, "container exited (137)")],
         WorkloadRow("service", "chat", "local", OUT_OF_SYNC, "replace: container exited (137)", "exited", 0, 0, 1,
                     "")),
    Case("not created yet: missing", [], [change("chat", CREATE, "not running on local")],
         WorkloadRow("service", "chat", "local", OUT_OF_SYNC, "create: not running on local", "missing", 0, 0, 1,
                     "")),
    Case("gone from the manifests: out of sync, to be deleted", [container("old", kind="app")],
         [change("old", DELETE, "not in manifests", kind="app")],
         WorkloadRow("app", "old", "local", OUT_OF_SYNC, "delete: not in manifests", "running", 0, 1, 0, "")),
    Case("no manifests given: sync unknown, health still shown", [container("chat", restarts=2)], None,
         WorkloadRow("service", "chat", "local", UNKNOWN, "no manifests given (-f)", "running", 2, 1, 1, "")),
    Case("in sync but unhealthy: sync and health are separate", [container("chat", health="unhealthy")],
         [change("chat", NOOP, "up to date")],
         WorkloadRow("service", "chat", "local", SYNCED, "", "unhealthy", 0, 1, 1, "")),
    Case("restarts add up across replicas, one replica down is degraded",
         [container("chat", restarts=2), container("chat", "exited", replica=1, restarts=3, exit_code=1)],
         [change("chat", NOOP, "up to date"), change("chat", REPLACE, "container exited (1)", replica=1)],
         WorkloadRow("service", "chat", "local", OUT_OF_SYNC, "replace: container exited (1)", "degraded", 5, 1, 2,
                     "")),
    Case("stalled by the reconcile loop: its reason wins", [container("chat", "exited", exit_code=1)],
         [change("chat", REPLACE, "container exited (1)")],
         WorkloadRow("service", "chat", "local", STALLED, "Stalled after 5 failures: not ready after 20s", "exited",
                     0, 0, 1, ""),
         {"service.chat[0]@local": "Stalled after 5 failures: not ready after 20s"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_workload_rows(case: Case) -> None:
    observed = Observed({"local": ObservedHost("local", containers=case.running)})
    plan = None if case.changes is None else Plan(STACK, changes=case.changes)
    frame = dashboard(STACK, "now", observed, plan, stalled=case.stalled)
    assert frame.workloads == [case.expected]


def test_hosts_unreachable_and_without_docker() -> None:
    observed = Observed({"edge-2": ObservedHost("edge-2", reachable=False, error="ssh: connection refused"),
                         "edge-1": ObservedHost("edge-1", docker_error="the socket does not exist")})
    frame = dashboard(STACK, "now", observed, Plan(STACK))
    assert [(h.name, h.reachable, h.status, h.detail) for h in frame.hosts] == [
        ("edge-1", True, "no docker", "the socket does not exist"),
        ("edge-2", False, "unreachable", "ssh: connection refused")]
    assert frame.gpus == []


def test_models_cached_or_not() -> None:
    def model_change(name: str, action: str, reason: str) -> Change:
        want = DesiredModel(f"model.{name}@local", f"model/{name}", name, "local", f"hf://org/{name}", "https://x",
                            "/cache", size=5 * 2**30)
        return Change(want.address, want.key, "model", name, 0, "local", action, reason, runtime="helper", model=want)

    host = ObservedHost("local", models={"qwen": {"source": "hf://org/qwen", "size": 3 * 2**30}})
    plan = Plan(STACK, changes=[model_change("qwen", NOOP, "cached"),
                                model_change("llama", CREATE, "not in the model cache on local")])
    rows = dashboard(STACK, "now", Observed({"local": host}), plan).models
    assert [(m.name, m.cached, m.size, m.sync, m.reason) for m in rows] == [
        ("llama", False, 5 * 2**30, OUT_OF_SYNC, "create: not in the model cache on local"),
        ("qwen", True, 3 * 2**30, SYNCED, "")]
    assert dashboard(STACK, "now", Observed({"local": host}), plan).workloads == []


def test_an_ollama_model_not_pulled_yet_is_not_cached() -> None:
    want = DesiredModel("model.qwen3@local", "model/qwen3", "qwen3", "local", "ollama://qwen3:0.6b", None, "",
                        service="service.ol[0]@local")
    change = Change(want.address, want.key, "model", "qwen3", 0, "local", CREATE,
                    "not pulled yet in the Ollama of service.ol[0]@local", runtime="ollama", model=want)
    # What the plan's observation of that Ollama's /api/tags leaves in the host's models.
    host = ObservedHost("local", models={"qwen3": {"source": "ollama://qwen3:0.6b", "present": False}})
    [row] = dashboard(STACK, "now", Observed({"local": host}), Plan(STACK, changes=[change])).models
    assert (row.name, row.cached, row.sync) == ("qwen3", False, OUT_OF_SYNC)
    host.models["qwen3"]["present"] = True
    [row] = dashboard(STACK, "now", Observed({"local": host}), Plan(STACK, changes=[change])).models
    assert row.cached is True


def test_events_newest_first_limited_and_on_one_line() -> None:
    events = [{"id": 3 - i, "created_at": f"2026-11-23T12:0{3 - i}:05.123+00:00", "resource": "service.chat[0]@local",
               "kind": "replaced", "message": f"exited\n({i})"} for i in range(3)]
    rows = dashboard(STACK, "now", Observed(), Plan(STACK), events, event_limit=2).events
    assert [(e.time, e.kind, e.message) for e in rows] == [("12:03:05", "replaced", "exited (0)"),
                                                           ("12:02:05", "replaced", "exited (1)")]


def render(frame: Dashboard, width: int) -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(Frame(frame, "q quits"))
    return out.getvalue()


def busy_frame() -> Dashboard:
    running = [container("chat-with-a-long-name", port=9001), container("web", "exited", exit_code=137, kind="app")]
    observed = Observed({"local": ObservedHost("local", containers=running),
                         "edge-2": ObservedHost("edge-2", reachable=False, error="ssh: timed out after 10 s " * 4)})
    plan = Plan(STACK, changes=[change("chat-with-a-long-name", NOOP, "up to date"),
                                change("web", REPLACE, "container exited (137)", kind="app")])
    events = [{"created_at": "2026-11-23T12:00:00+00:00", "resource": "app.web[0]@local", "kind": "drift",
               "message": "container exited (137) " * 10}]
    return dashboard(STACK, "2026-11-23 12:00:01 UTC", observed, plan, events)


@pytest.mark.parametrize("width", [80, 200])
def test_frame_fits_the_width(width: int) -> None:
    text = render(busy_frame(), width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    for needle in ("Hosts", "Services and Apps", "Events", "service/chat-with-a-long-name", "app/web", "Synced",
                   "OutOfSync", "exited", "127.0.0.1:9001", "unreachable", "drift"):
        assert needle in text, (needle, text)
    # Why web is out of sync is on screen at both widths: a column when wide, a note under the table when narrow.
    assert "replace: container exited (137)" in text
    assert ("REASON" in text) is (width >= 120)


def test_bars_and_sizes() -> None:
    assert bar(0.5) == "█████·····" and bar(None).strip() == "" and bar(1.7) == "█" * 10
    assert (size(None), size(512), size(3 * 2**20 + 2**19), size(int(14.9 * 2**30))) == ("-", "512B", "3.5M", "14.9G")


def captured_facts(name: str) -> object:
    """Host facts built from NVML values captured on a real machine (tests/data/gpus/README.md)."""
    from aimactl.hosts.facts import FAKE_ENV, facts_from_probe, fake_source

    source = fake_source({FAKE_ENV: str(GPU_DATA / name)}, "local")
    assert source is not None
    raw = source.gpus()
    probe = {"cpu_count": 16, "load_1m": 12.0, "mem_total": raw.get("mem_total", 256 * 2**30),
             "mem_available": raw.get("mem_available", 200 * 2**30), "disk": None}
    return facts_from_probe(probe, raw, f"fake:{name}")


def gpu_frame() -> Dashboard:
    hosts = {"dgx": ObservedHost("dgx", facts=captured_facts("h100.json")),  # type: ignore[arg-type]
             "spark": ObservedHost("spark", facts=captured_facts("gb10.json"))}  # type: ignore[arg-type]
    return dashboard(STACK, "now", Observed(hosts), Plan(STACK))


def test_gpu_rows_from_captured_h100_and_gb10() -> None:
    frame = gpu_frame()
    assert [(g.host, g.index, g.name, g.util_percent, g.mem_used, g.mem_total, g.temperature_c, g.power_w,
             g.power_limit_w) for g in frame.gpus] == [
        ("dgx", 0, "NVIDIA H100 80GB HBM3", 0.0, 76325847040, 85520809984, 39.0, 145.0, 700.0),
        ("dgx", 1, "NVIDIA H100 80GB HBM3", 4.0, 76325847040, 85520809984, 32.0, 140.0, 700.0),
        # Unified memory: the GB10 has none of its own; usable is RAM minus the 16 GiB OS reserve, no power limit.
        ("spark", 0, "NVIDIA GB10", 0.0, 0, 128501256192 - 16 * 2**30, 36.0, 3.0, None)]
    assert [(h.name, h.cpu_count, h.load, h.mem_total, h.mem_used) for h in frame.hosts] == [
        ("dgx", 16, 12.0, 256 * 2**30, 56 * 2**30), ("spark", 16, 12.0, 128501256192, 128501256192 - 121590935552)]


@pytest.mark.parametrize("width", [80, 200])
def test_gpu_section_renders_bars_at_both_widths(width: int) -> None:
    text = render(gpu_frame(), width)
    assert max(len(line) for line in text.splitlines()) <= width, text
    [h100] = [line for line in text.splitlines() if "H100" in line and line.split()[1] == "1"]
    assert "4%" in h100 and "71.1G/79.6G" in h100 and "32°C" in h100 and "140W/700W" in h100
    assert "████" in h100  # memory 89% full: the bar is mostly filled
    [gb10] = [line for line in text.splitlines() if "GB10" in line]
    assert "103.7G" in gb10 and "36°C" in gb10 and "3W" in gb10
    [dgx] = [line for line in text.splitlines() if line.startswith("dgx") and "cores" in line]
    assert "12.0/16 cores" in dgx  # the CPU load as a bar beside the core count


def test_models_of_other_stacks_are_not_shown_given_manifests() -> None:
    host = ObservedHost("local", models={"shared": {"source": "hf://org/shared", "size": 2**30}})
    assert dashboard(STACK, "now", Observed({"local": host}), Plan(STACK)).models == []
    [row] = dashboard(STACK, "now", Observed({"local": host}), None).models
    assert (row.name, row.cached, row.size, row.sync) == ("shared", True, 2**30, UNKNOWN)


def test_workloads_on_an_unreachable_host_stay_listed() -> None:
    observed = Observed({"local": ObservedHost("local", containers=[container("chat")]),
                         "edge-2": ObservedHost("edge-2", reachable=False, error="connection refused")})
    plan = Plan(STACK, changes=[change("chat", NOOP, "up to date")])
    placed = [("service", "chat", "local", 1), ("app", "queue", "edge-2", 2)]
    rows = dashboard(STACK, "now", observed, plan, placed=placed).workloads
    assert [(w.name, w.host, w.sync, w.reason, w.health, w.desired) for w in rows] == [
        ("chat", "local", SYNCED, "", "running", 1),
        ("queue", "edge-2", UNKNOWN, "host unreachable: connection refused", "unknown", 2)]

    # The planner placed it by GPU memory on edge-2, although the manifests' first choice is local.
    from aimactl.core.placement import Placement

    plan.placements = {"app/queue": Placement("app/queue", "edge-2", "fits in GPU memory")}
    placed = [("service", "chat", "local", 1), ("app", "queue", "local", 2)]
    rows = dashboard(STACK, "now", observed, plan, placed=placed).workloads
    assert [(w.name, w.host, w.sync) for w in rows] == [("chat", "local", SYNCED), ("queue", "edge-2", UNKNOWN)]


def test_changes_held_back_by_an_unreachable_dependency_say_so() -> None:
    from aimactl.core.checks import warning

    observed = Observed({"local": ObservedHost("local", containers=[container("web", kind="app")]),
                         "edge-2": ObservedHost("edge-2", reachable=False, error="connection refused")})
    why = "app.web[0]@local is left as it is: it depends on service/api, which runs on unreachable host edge-2"
    plan = Plan(STACK, checks=[warning("held-back", why, "app.web[0]@local", "local")])
    [row] = dashboard(STACK, "now", observed, plan).workloads
    assert (row.name, row.sync, row.reason, row.health) == ("web", OUT_OF_SYNC, f"held back: {why}", "running")
