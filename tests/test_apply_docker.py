"""plan / apply / destroy against the private Docker engine, driven as a user would: the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker
SECRET = "tok-" + uuid.uuid4().hex


class Stack:
    """A stack name, a manifest directory and an isolated state dir, with `aimactl` run as a subprocess."""

    def __init__(self, engine: object, tmp: Path):
        self.engine = engine
        self.name = "t" + uuid.uuid4().hex[:8]
        self.dir = tmp / "manifests"
        self.dir.mkdir(parents=True)
        self.env = {**os.environ, "DOCKER_HOST": engine.host, "AIMACTL_STATE_DIR": str(tmp / "state"),  # type: ignore[attr-defined]
                    "AIMACTL_STACK": self.name, "NO_COLOR": "1", "API_TOKEN": SECRET}

    def write(self, text: str) -> None:
        (self.dir / "stack.yaml").write_text(text)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "aimactl", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env)

    def containers(self) -> list[object]:
        client = self.engine.client()  # type: ignore[attr-defined]
        try:
            return client.containers.list(all=True, filters={"label": f"dev.aima.stack={self.name}"})
        finally:
            client.close()

    def cleanup(self) -> None:
        for c in self.containers():
            c.remove(force=True)  # type: ignore[attr-defined]


@pytest.fixture
def stack(docker_engine: object, tmp_path: Path):  # noqa: ANN201
    s = Stack(docker_engine, tmp_path)
    yield s
    s.cleanup()


BUSY = "aima-test/busybox:latest"
# busybox httpd as PID 1 ignores SIGTERM; the trap makes `docker stop` quick.
HTTPD = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 8080 -h /etc & wait"]'


def service(name: str, extra: str = "", env: str = "{MODE: one}") -> str:
    return (f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  engine: custom\n"
            f"  image: {BUSY}\n  command: {HTTPD}\n  containerPort: 8080\n  health: {{path: /passwd, "
            f"startupTimeout: 20s}}\n  env: {env}\n{extra}")


def app(name: str, port: int, extra: str = "") -> str:
    return (f"apiVersion: aima.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  image: {BUSY}\n"
            f"  command: {HTTPD}\n  ports: [\"127.0.0.1:{port}:8080\"]\n{extra}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_create_noop_replace_prune_destroy(stack: Stack) -> None:
    port = free_port()
    web = app("web", port, "  dependsOn: [api]\n  env: {API: '{{ services.api.url }}'}\n")
    stack.write(service("api") + "---\n" + web)
    created = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
    assert created.returncode == 0, created.stdout + created.stderr
    assert "Plan: 2 to add, 0 to change, 0 to destroy." in created.stdout
    assert created.stdout.index("service.api[0]@local: Creating") < created.stdout.index("app.web[0]@local: Creating")
    import urllib.request

    assert b"root" in urllib.request.urlopen(f"http://127.0.0.1:{port}/passwd", timeout=5).read()

    noop = stack.run("plan", "-f", str(stack.dir), "--detailed-exitcode")
    assert noop.returncode == 0 and "No changes." in noop.stdout

    [before] = [c.id for c in stack.containers() if c.name.endswith("-api-0")]  # type: ignore[attr-defined]
    stack.write(service("api", env="{MODE: two}") + "---\n" + app("web", port, "  dependsOn: [api]\n"))
    changed = stack.run("plan", "-f", str(stack.dir), "--detailed-exitcode", "-o", "json")
    assert changed.returncode == 2
    plan = json.loads(changed.stdout)
    by_address = {c["address"]: c for c in plan["changes"]}
    assert by_address["service.api[0]@local"]["actions"] == ["replace"]
    assert by_address["service.api[0]@local"]["reason"] == "env (MODE) changed"
    assert by_address["service.api[0]@local"]["diff"][0]["forces_replacement"] is True
    assert stack.run("apply", "-f", str(stack.dir), "--auto-approve").returncode == 0
    [after] = [c.id for c in stack.containers() if c.name.endswith("-api-0")]  # type: ignore[attr-defined]
    assert after != before

    stack.write(service("api", env="{MODE: two}"))
    pruned = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
    assert pruned.returncode == 0
    assert "app.web[0]@local will be destroyed: not in manifests" in pruned.stdout
    assert [c.name for c in stack.containers()] == [f"aima-{stack.name}-api-0"]  # type: ignore[attr-defined]

    destroyed = stack.run("destroy", "--auto-approve")
    assert destroyed.returncode == 0 and stack.containers() == []


def test_apply_then_plan_is_empty_for_equivalent_notations(stack: Stack) -> None:
    port = free_port()
    volumes = f"['data-{stack.name}:/data', '/tmp:/host:ro']"
    stack.write(app("web", port, f"  env: {{B: '2', A: '1'}}\n  volumes: {volumes}\n"))
    assert stack.run("apply", "-f", str(stack.dir), "--auto-approve").returncode == 0
    stack.write(f"apiVersion: aima.dev/v1\nkind: App\nmetadata: {{name: web}}\nspec:\n  image: aima-test/busybox\n"
                f"  command: {HTTPD}\n  ports: ['127.0.0.1:{port}:8080/tcp']\n  replicas: 1\n"
                f"  restart: unless-stopped\n  env: {{A: '1', B: '2'}}\n"
                f"  volumes: ['/tmp:/host:ro', 'data-{stack.name}:/data:rw']\n")
    again = stack.run("plan", "-f", str(stack.dir), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout


def test_readiness_timeout_shows_last_log_lines(stack: Stack) -> None:
    stack.write("apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: slow}\nspec:\n  engine: custom\n"
                f"  image: {BUSY}\n  command: [\"sh\", \"-c\", \"echo loading-weights-marker; trap 'exit 0' TERM; "
                "httpd -f -p 8080 -h /etc & wait\"]\n  containerPort: 8080\n"
                "  health: {path: /never-there, startupTimeout: 3s, interval: 1s}\n")
    result = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
    assert result.returncode == 1
    assert "not ready after 3s" in result.stdout
    assert "HTTP 404" in result.stdout
    assert "loading-weights-marker" in result.stdout


def test_an_app_that_crashes_at_start_fails_the_apply_though_its_restart_policy_revives_it(stack: Stack) -> None:
    # Without a health path an App is ready once it keeps running; `restart: always` brings a crashing command
    # back within ~0.1 s, so "running" alone is not enough: a restart while starting is a crash.
    stack.write("apiVersion: aima.dev/v1\nkind: App\nmetadata: {name: crashy}\nspec:\n"
                f"  image: {BUSY}\n  command: [\"sh\", \"-c\", \"echo crash-marker; sleep 0.1; exit 3\"]\n"
                "  restart: always\n")
    result = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
    assert result.returncode == 1, result.stdout
    assert "while starting" in result.stdout and "crash-marker" in result.stdout
    assert "Apply failed" in result.stdout


def test_port_held_by_unmanaged_container_is_reported_before_any_change(stack: Stack) -> None:
    port = free_port()
    client = stack.engine.client()  # type: ignore[attr-defined]
    squatter = client.containers.run(BUSY, ["httpd", "-f", "-p", "80"], detach=True, name=f"squatter-{stack.name}",
                                     ports={"80/tcp": ("127.0.0.1", port)})
    try:
        stack.write(service("first") + "---\n" + app("web", port))
        result = stack.run("plan", "-f", str(stack.dir))
        assert result.returncode == 1
        assert f"host port {port}/tcp on local is held by container 'squatter-{stack.name}'" in result.stdout
        applied = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
        assert applied.returncode == 1 and stack.containers() == []
    finally:
        squatter.remove(force=True)
        client.close()


def test_second_apply_waits_for_the_lock_then_names_the_holder(stack: Stack, tmp_path: Path) -> None:
    # The first apply holds the lock while its App takes 10 s to answer, even on a loaded machine.
    slow = app("slow", free_port(), "  health: {path: /passwd, startupTimeout: 60s}\n")
    slow = slow.replace("trap", "sleep 10; trap")
    stack.write(slow)
    first = stack.spawn("apply", "-f", str(stack.dir), "--auto-approve")
    deadline = time.monotonic() + 20
    while not stack.containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    more = tmp_path / "more.yaml"
    more.write_text(slow + "---\n" + app("extra", free_port()))
    second = stack.run("apply", "-f", str(more), "--auto-approve", "--lock-timeout", "1s")
    assert second.returncode == 1
    message = second.stdout + second.stderr
    assert "aimactl unlock" in message and "apply" in message and str(first.pid) in message
    third = stack.run("apply", "-f", str(more), "--auto-approve", "--lock-timeout", "60s")
    assert first.wait(60) == 0
    assert third.returncode == 0, third.stdout + third.stderr
    assert "app.extra[0]@local will be created" in third.stdout and "app.slow" not in third.stdout.split("Plan:")[0]
    assert len(stack.containers()) == 2


def test_stale_saved_plan_is_refused(stack: Stack, tmp_path: Path) -> None:
    stack.write(app("web", free_port()))
    assert stack.run("apply", "-f", str(stack.dir), "--auto-approve").returncode == 0
    stack.write(app("web", free_port(), "  env: {X: '1'}\n"))
    saved = tmp_path / "plan.json"
    assert stack.run("plan", "-f", str(stack.dir), "--out", str(saved)).returncode == 0
    for c in stack.containers():
        c.remove(force=True)  # type: ignore[attr-defined]
    refused = stack.run("apply", str(saved))
    assert refused.returncode == 1
    assert "stale" in refused.stderr and "app.web[0]@local" in refused.stderr


def test_saved_plan_applies_when_fresh(stack: Stack, tmp_path: Path) -> None:
    stack.write(app("web", free_port()))
    saved = tmp_path / "plan.json"
    assert stack.run("plan", "-f", str(stack.dir), "--out", str(saved)).returncode == 0
    assert stack.run("apply", str(saved)).returncode == 0
    assert len(stack.containers()) == 1


def test_secrets_never_leave_in_clear(stack: Stack, tmp_path: Path) -> None:
    stack.write(service("api", env="{MODE: one, TOKEN: {secretFrom: {env: API_TOKEN}}}"))
    outputs = [stack.run("plan", "-f", str(stack.dir)), stack.run("plan", "-f", str(stack.dir), "-o", "json"),
               stack.run("apply", "-f", str(stack.dir), "--auto-approve"), stack.run("describe", "service/api"),
               stack.run("get", "services", "-o", "json"), stack.run("history", "-o", "json")]
    assert outputs[2].returncode == 0
    for out in outputs:
        assert SECRET not in out.stdout + out.stderr
    [container] = stack.containers()
    assert SECRET not in json.dumps(container.labels)  # type: ignore[attr-defined]
    assert f"TOKEN={SECRET}" in container.attrs["Config"]["Env"]  # type: ignore[attr-defined]
    for db_file in (tmp_path / "state").iterdir():
        assert SECRET.encode() not in db_file.read_bytes()


def test_pruning_touches_only_this_stack_and_refuses_an_empty_manifest_set(stack: Stack, docker_engine: object,
                                                                          tmp_path: Path) -> None:
    other = Stack(docker_engine, tmp_path / "other")
    try:
        other.write(app("web", free_port()))
        assert other.run("apply", "-f", str(other.dir), "--auto-approve").returncode == 0
        stack.write(app("web", free_port()))
        assert stack.run("apply", "-f", str(stack.dir), "--auto-approve").returncode == 0
        stack.write("apiVersion: aima.dev/v1\nkind: Model\nmetadata: {name: m}\nspec: {source: 'file:///m.gguf'}\n")
        refused = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
        assert refused.returncode == 1 and "--allow-empty" in refused.stdout
        assert len(stack.containers()) == 1
        allowed = stack.run("apply", "-f", str(stack.dir), "--auto-approve", "--allow-empty")
        assert allowed.returncode == 0 and stack.containers() == []
        assert len(other.containers()) == 1
    finally:
        other.cleanup()


def test_kill_9_mid_apply_then_the_next_apply_converges(stack: Stack) -> None:
    docs = [app(f"w{i}", free_port(), "  health: {path: /passwd, startupTimeout: 30s}\n").replace(
        "trap", "sleep 2; trap") for i in range(4)]
    stack.write("---\n".join(docs))
    proc = stack.spawn("apply", "-f", str(stack.dir), "--auto-approve", "--parallelism", "1")
    deadline = time.monotonic() + 30
    while not stack.containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert stack.containers(), "the apply was killed before it created anything"
    replan = stack.run("plan", "-f", str(stack.dir))
    assert replan.returncode == 0
    converged = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
    assert converged.returncode == 0, converged.stdout
    assert sorted(c.name for c in stack.containers()) == [f"aima-{stack.name}-w{i}-0" for i in range(4)]  # type: ignore[attr-defined]
    final = stack.run("plan", "-f", str(stack.dir), "--detailed-exitcode")
    assert final.returncode == 0, final.stdout
    history = json.loads(stack.run("history", "-o", "json").stdout)
    assert history[-1]["status"] in ("running", "interrupted")


def test_ctrl_c_stops_a_readiness_wait_and_leaves_nothing_unaccounted(stack: Stack) -> None:
    stack.write(app("stuck", free_port(), "  health: {path: /never, startupTimeout: 120s}\n"))
    proc = stack.spawn("apply", "-f", str(stack.dir), "--auto-approve")
    deadline = time.monotonic() + 20
    while not stack.containers() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    assert time.monotonic() - started < 10
    history = json.loads(stack.run("history", "-o", "json").stdout)
    assert history[0]["status"] == "interrupted"
    replan = stack.run("plan", "-f", str(stack.dir), "-o", "json")
    [change] = json.loads(replan.stdout)["changes"]
    assert change["container_id"] is not None, "the interrupted run's container is seen by the next plan"


def test_restart_policy_change_is_an_in_place_update_then_plan_is_empty(stack: Stack) -> None:
    stack.write(app("web", free_port(), "  restart: unless-stopped\n"))
    assert stack.run("apply", "-f", str(stack.dir), "--auto-approve").returncode == 0
    [before] = [c.id for c in stack.containers()]  # type: ignore[attr-defined]
    stack.write((stack.dir / "stack.yaml").read_text().replace("unless-stopped", "always"))
    update = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
    assert update.returncode == 0, update.stdout
    assert "app.web[0]@local will be updated in-place: restart changed" in update.stdout
    [container] = stack.containers()
    assert container.id == before  # type: ignore[attr-defined]
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"  # type: ignore[attr-defined]
    assert stack.run("plan", "-f", str(stack.dir), "--detailed-exitcode").returncode == 0


def test_apply_without_a_terminal_refuses_unless_auto_approved(stack: Stack) -> None:
    stack.write(app("web", free_port()))
    refused = stack.run("apply", "-f", str(stack.dir))
    assert refused.returncode == 1
    assert "refusing to perform these actions without approval" in refused.stderr
    assert "--auto-approve" in refused.stderr
    assert stack.containers() == []


def test_a_failure_skips_only_its_dependents(stack: Stack) -> None:
    broken = service("broken").replace("startupTimeout: 20s", "startupTimeout: 2s").replace("/passwd", "/missing")
    dependent = app("needs-broken", free_port(), "  dependsOn: [broken]\n")
    unrelated = app("unrelated", free_port())
    stack.write("---\n".join([broken, dependent, unrelated]))
    result = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
    assert result.returncode == 1
    assert "service.broken[0]@local: failed" in result.stdout
    assert "app.needs-broken[0]@local: skipped after 0.0s: dependency service/broken failed" in result.stdout
    assert "app.unrelated[0]@local: done" in result.stdout
    names = sorted(c.name for c in stack.containers())  # type: ignore[attr-defined]
    assert f"aima-{stack.name}-unrelated-0" in names and f"aima-{stack.name}-needs-broken-0" not in names


def test_get_describe_logs_history_and_rollback(stack: Stack) -> None:
    port = free_port()
    first = app("web", port, "  env: {VERSION: '1'}\n").replace("trap", "echo hello-from-web; trap")
    stack.write(first)
    assert stack.run("apply", "-f", str(stack.dir), "--auto-approve").returncode == 0
    stack.write(first.replace("VERSION: '1'", "VERSION: '2'"))
    assert stack.run("apply", "-f", str(stack.dir), "--auto-approve").returncode == 0

    table = stack.run("get", "apps", "-f", str(stack.dir), "-o", "wide")
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if line.startswith("web "))
    assert "1/1" in row and "running" in row and f"http://127.0.0.1:{port}" in row and "in-sync" in row
    [entry] = json.loads(stack.run("get", "apps", "-o", "json").stdout)
    assert entry["name"] == "web" and entry["ready"] == 1 and entry["state"] == "running"

    described = stack.run("describe", "app/web")
    assert described.returncode == 0
    assert "VERSION: '2'" in described.stdout and "replaced" in described.stdout and "created" in described.stdout
    assert "hello-from-web" in stack.run("logs", "web", "--tail", "5").stdout

    revisions = json.loads(stack.run("history", "-o", "json").stdout)
    assert [r["status"] for r in revisions] == ["succeeded", "succeeded"]
    back = stack.run("rollback", str(revisions[-1]["id"]), "--auto-approve")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "env (VERSION) changed" in back.stdout
    [container] = stack.containers()
    assert "VERSION=1" in container.attrs["Config"]["Env"]  # type: ignore[attr-defined]
    newest = json.loads(stack.run("history", "-o", "json").stdout)[0]
    assert newest["kind"] == "rollback" and newest["source"] == f"revision {revisions[-1]['id']}"
    missing = stack.run("rollback", "9999", "--auto-approve")
    assert missing.returncode == 1 and "revision 9999 not found for stack" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_container_recreated_by_hand_without_labels_is_taken_back(stack: Stack) -> None:
    port = free_port()
    stack.write(app("web", port))
    assert stack.run("apply", "-f", str(stack.dir), "--auto-approve").returncode == 0
    [ours] = stack.containers()
    name = ours.name  # type: ignore[attr-defined]
    client = stack.engine.client()  # type: ignore[attr-defined]
    try:
        ours.remove(force=True)  # type: ignore[attr-defined]
        # `docker run --name <aimactl's name>` by hand, other settings, no aimactl labels.
        by_hand = client.containers.run(BUSY, ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /etc & wait"],
                                        name=name, detach=True, environment={"MODE": "by-hand"},
                                        ports={"8080/tcp": ("127.0.0.1", port)})
        planned = stack.run("plan", "-f", str(stack.dir))
        assert planned.returncode == 0, planned.stdout + planned.stderr
        assert f"container {name} on local was recreated without aimactl's labels" in planned.stdout
        assert "held by" not in planned.stdout
        applied = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        [now] = stack.containers()
        assert now.name == name and now.id != by_hand.id  # type: ignore[attr-defined]
        assert "MODE=by-hand" not in (now.attrs["Config"]["Env"] or [])  # type: ignore[attr-defined]
        assert stack.run("plan", "-f", str(stack.dir), "--detailed-exitcode").returncode == 0
    finally:
        for leftover in client.containers.list(all=True, filters={"name": name}):
            leftover.remove(force=True)
        client.close()
