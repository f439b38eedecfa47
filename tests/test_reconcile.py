"""`aimactl reconcile` as a real subprocess against the private Docker engine: healing what dies or is removed,
reverting changes made by hand, selfHeal: false, backoff to Stalled and --retry, SIGTERM, metrics."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import free_port, http_get, wait_until
from tests.reconcile_harness import HTTPD, Stack, service

pytestmark = pytest.mark.docker
HEAL_BOUND_S = 5.0


@pytest.fixture
def stack(docker_engine: object, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(docker_engine, tmp_path)
    yield s
    s.cleanup()


def _ready_after(message: str) -> float:
    """The readiness time an apply reported (`... ready after 1.2s`)."""
    found = re.search(r"ready after ([0-9.]+)s", message)
    return float(found.group(1)) if found else 0.0


def _heal(stack: Stack, loop, url: str, damage: list[str], address: str) -> float:  # noqa: ANN001
    """Damage the container with a docker command, then wait for the heal pass; returns kill-to-ready seconds."""
    after = loop.last()
    started = time.monotonic()
    assert stack.docker(*damage).returncode == 0
    healed = loop.wait_for(lambda r: address in r["applied"], 60, after)
    assert wait_until(lambda: http_get(url) is not None, 10)
    elapsed = time.monotonic() - started
    assert any(t.startswith("docker: ") for t in healed["trigger"]), healed  # an event, not the interval
    assert elapsed < HEAL_BOUND_S + _ready_after(healed["applied"][address]) + 1.0, (elapsed, healed)
    return elapsed


def test_kill_and_rm_are_healed_within_the_bound_and_metrics_count_them(stack: Stack) -> None:
    port, metrics_port = free_port(), free_port()
    stack.write(service("web", port))
    loop = stack.loop("-f", str(stack.dir), "--interval", "5m", "--metrics-addr", f"127.0.0.1:{metrics_port}")
    try:
        first = loop.wait_for(lambda r: r["result"] == "ok", 60)
        assert "service.web[0]@local" in first["applied"], loop.log()
        url = f"http://127.0.0.1:{port}/passwd"
        assert http_get(url) is not None
        name = f"aima-{stack.name}-web-0"
        _heal(stack, loop, url, ["kill", name], "service.web[0]@local")
        _heal(stack, loop, url, ["rm", "-f", name], "service.web[0]@local")
        assert stack.container("web").status == "running"

        kinds = [(e["kind"], e["message"]) for e in stack.events() if e["resource"] == "service.web[0]@local"]
        drifts = [m for k, m in kinds if k == "drift"]
        assert any("exited (137)" in m for m in drifts), kinds
        assert any("not running on local" in m for m in drifts), kinds
        assert sum(k == "healed" for k, _ in kinds) == 2, kinds

        text = (http_get(f"http://127.0.0.1:{metrics_port}/metrics") or b"").decode()
        assert f'aimactl_reconcile_heals_total{{stack="{stack.name}"}} 2' in text, text
        assert f'aimactl_reconcile_drift_total{{stack="{stack.name}"}} 2' in text, text
        assert f'aimactl_reconcile_stalled_resources{{stack="{stack.name}"}} 0' in text, text
        passes = re.search(rf'aimactl_reconcile_passes_total{{stack="{stack.name}",result="ok"}} (\d+)', text)
        assert passes and int(passes.group(1)) >= 3, text
        last = re.search(r"aimactl_reconcile_last_success_timestamp_seconds\{[^}]*\} ([0-9.]+)", text)
        assert last and abs(float(last.group(1)) - time.time()) < 60, text
        assert "aimactl_reconcile_pass_duration_seconds_count" in text
    finally:
        assert loop.stop() == 0, loop.log()


def test_container_changed_by_hand_is_reverted_and_the_event_says_what_drifted(stack: Stack) -> None:
    port = free_port()
    stack.write(service("web", port, "  resources: {memory: 128Mi}\n"))
    loop = stack.loop("-f", str(stack.dir), "--interval", "5m")
    try:
        loop.wait_for(lambda r: r["result"] == "ok", 60)
        name = f"aima-{stack.name}-web-0"
        after = loop.last()
        assert stack.docker("update", "--memory", "64m", "--memory-swap", "128m", name).returncode == 0
        healed = loop.wait_for(lambda r: "service.web[0]@local" in r["applied"], 30, after)
        assert "updated in place: resources.memory" in healed["applied"]["service.web[0]@local"]
        assert wait_until(lambda: stack.container("web").attrs["HostConfig"]["Memory"] == 128 * 2**20, 10)
        [drift] = [e for e in stack.events() if e["kind"] == "drift"]
        assert "resources changed" in drift["message"]
        assert f"resources.memory is {64 * 2**20}, manifest says {128 * 2**20}" in drift["message"], drift
    finally:
        assert loop.stop() == 0, loop.log()


def test_self_heal_false_is_reported_as_drift_and_left_alone(stack: Stack) -> None:
    port = free_port()
    stack.write(service("keep", port, "  selfHeal: false\n"))
    loop = stack.loop("-f", str(stack.dir), "--interval", "1s")
    try:
        loop.wait_for(lambda r: "service.keep[0]@local" in r["applied"], 60)  # a new resource is created
        container = stack.container("keep")
        assert stack.docker("stop", "-t", "1", container.name).returncode == 0
        after = loop.last()
        report = loop.wait_for(lambda r: "service.keep[0]@local" in r["drift"], 30, after)
        assert "left alone (selfHeal: false): container exited" in report["drift"]["service.keep[0]@local"]
        loop.wait_for(lambda r: True, 10, report["number"] + 2)  # a few more passes
        assert stack.container("keep").id == container.id and stack.container("keep").status == "exited"
        assert not any("service.keep[0]@local" in r["applied"] for r in loop.reports if r["number"] > after)
        drifts = [e for e in stack.events() if e["kind"] == "drift"]
        assert len(drifts) == 1 and "left alone" in drifts[0]["message"], drifts  # reported once, not each pass
        got = stack.run("get", "services", "-f", str(stack.dir), "-o", "wide")
        assert re.search(r"keep .* drifted", got.stdout), got.stdout
        # Sync and health apart: the loop's record says drifted (left alone) and unhealthy (exited).
        described = stack.run("describe", "service/keep")
        assert "Reconcile: service.keep[0]@local: drifted, unhealthy: exited (0)" in described.stdout, described.stdout
    finally:
        assert loop.stop() == 0, loop.log()


def test_failures_back_off_then_stall_until_retry(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    command = HTTPD.replace("-h /etc", "-h /www")
    stack.write(service("flaky", port, f"  volumes: ['{www}:/www:ro']\n", command=command, health="/ok",
                        startup="2s"))
    loop = stack.loop("-f", str(stack.dir), "--interval", "5m", "--retry-budget", "3", "--backoff", "1s")
    try:
        stalled = loop.wait_for(lambda r: r["stalled"], 90)
        assert stalled["stalled"] == ["service.flaky[0]@local"]
        failures = [r for r in loop.reports if r["failed"]]
        assert len(failures) == 3, loop.log()
        gap = [b["number"] - a["number"] for a, b in zip(failures, failures[1:], strict=False)]
        assert all(g >= 1 for g in gap)
        events = [e for e in stack.events() if e["resource"] == "service.flaky[0]@local"]
        assert [e["kind"] for e in events if e["kind"] in ("failed", "stalled")][-1] == "stalled"
        assert "Stalled after 3 failures: not ready after 2s" in events[-1]["message"], events[-1]

        got = stack.run("get", "services")
        assert re.search(r"flaky .*Stalled", got.stdout), got.stdout
        described = stack.run("describe", "service/flaky")
        assert "Stalled after 3 failures" in described.stdout and "stalled" in described.stdout, described.stdout

        quiet_from = loop.last()
        time.sleep(4)
        assert not any(r["failed"] for r in loop.reports if r["number"] > quiet_from)  # no more attempts

        (www / "ok").write_text("fine\n")
        retried = stack.run("reconcile", "--retry", "flaky")
        assert retried.returncode == 0 and "service.flaky[0]@local: retry requested" in retried.stdout
        address = "service.flaky[0]@local"
        loop.wait_for(lambda r: address in r["applied"] or address in r["recovered"], 30, quiet_from)
        assert http_get(f"http://127.0.0.1:{port}/ok") == b"fine\n"
        unknown = stack.run("reconcile", "--retry", "nothing-like-it", "-o", "json")
        assert unknown.returncode == 1 and json.loads(unknown.stdout) == {"retried": [], "unknown": ["nothing-like-it"]}
    finally:
        assert loop.stop() == 0, loop.log()


def test_sigterm_during_an_apply_exits_0_and_frees_the_lock(stack: Stack) -> None:
    slow = HTTPD.replace("trap", "sleep 30; trap")
    stack.write(service("slow", free_port(), command=slow))
    loop = stack.loop("-f", str(stack.dir), "--interval", "5m")
    try:
        assert wait_until(lambda: stack.container("slow") is not None, 30), loop.log()
        assert wait_until(lambda: stack.query("SELECT * FROM locks"), 5)
        started = time.monotonic()
        assert loop.stop() == 0, loop.log()
        assert time.monotonic() - started < 15
        assert stack.query("SELECT * FROM locks") == []
        assert [r["status"] for r in stack.query("SELECT status FROM revisions")] == ["interrupted"]
        applied = stack.run("apply", "-f", str(stack.dir), "--auto-approve", "--lock-timeout", "0s", timeout=120)
        assert "locked" not in applied.stdout + applied.stderr
    finally:
        loop.stop()


def test_manual_apply_waits_for_the_loop_and_the_loop_waits_for_it(stack: Stack) -> None:
    slow = HTTPD.replace("trap", "sleep 4; trap")
    stack.write(service("web", free_port(), command=slow))
    loop = stack.loop("-f", str(stack.dir), "--interval", "5m")
    try:
        assert wait_until(lambda: stack.query("SELECT * FROM locks"), 30), loop.log()
        manual = stack.run("apply", "-f", str(stack.dir), "--auto-approve", "--lock-timeout", "60s")
        assert manual.returncode == 0, manual.stdout + manual.stderr
        loop.wait_for(lambda r: r["result"] == "ok", 30)
        assert "No changes" in manual.stdout or "already converged" in manual.stdout, manual.stdout
    finally:
        assert loop.stop() == 0, loop.log()


def test_a_crash_loop_backs_off_and_stalls_instead_of_flapping_forever(stack: Stack) -> None:
    crash = '["sh", "-c", "sleep 3; exit 1"]'
    stack.write(f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: crash}}\nspec:\n  engine: custom\n"
                f"  image: aima-test/busybox:latest\n  command: {crash}\n  restart: 'no'\n")
    loop = stack.loop("-f", str(stack.dir), "--interval", "5m", "--retry-budget", "3", "--backoff", "1s")
    try:
        stalled = loop.wait_for(lambda r: r["stalled"], 90)
        assert stalled["stalled"] == ["service.crash[0]@local"]
        assert "keeps failing: container exited (1)" in stalled["failed"]["service.crash[0]@local"], stalled
        heals = [r for r in loop.reports if "service.crash[0]@local" in r["applied"]]
        assert 3 <= len(heals) <= 4, loop.log()  # created, restored at once, then restored after backoffs
        after = loop.last()
        time.sleep(5)
        assert not any(r["applied"] for r in loop.reports if r["number"] > after)
        assert stack.container("crash").status == "exited"
    finally:
        assert loop.stop() == 0, loop.log()
