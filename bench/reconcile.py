"""`aimactl reconcile`: idle CPU with N Services, and heal latency (kill to ready) against Docker's own restart
policy.

Run (as root): `.venv/bin/python bench/reconcile.py [--services 10] [--idle 60] [--kills 20]`. It starts its own
private dockerd (tests/fixtures/dockerd.py) and a reconcile loop (`aimactl reconcile -f DIR`, default 30 s
interval) on a stack of N busybox httpd Services, each with a health path.

- Idle CPU: user + system CPU time of the loop process (from /proc/PID/stat) over `--idle` seconds once every
  Service is ready, as a percentage of one core. Target (the issue): under 1 %.
- Heal latency: SIGKILL of a Service's main process from the host (a crash), to the moment its health path
  answers again (polled every 10 ms), `--kills` times round-robin over the Services. The Services say
  `restart: "no"`, so the loop heals them. The peer: the same stack with `restart: always` and no loop, where
  dockerd restarts the container itself. min / median / max side by side.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures.dockerd import BUSYBOX_IMAGE, private_docker_engine  # noqa: E402

COMMAND = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /etc & wait"]
TARGET_IDLE_PERCENT = 1.0


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def manifests(ports: list[int], restart: str) -> str:
    """N custom Services on fixed ports, ready when /passwd answers."""
    return "---\n".join(
        f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: web{i}}}\nspec:\n  engine: custom\n"
        f"  image: {BUSYBOX_IMAGE}\n  command: {json.dumps(COMMAND)}\n  containerPort: 80\n  port: {port}\n"
        f"  restart: '{restart}'\n  health: {{path: /passwd, startupTimeout: 60s, interval: 1s}}\n"
        for i, port in enumerate(ports))


def answers(port: int) -> bool:
    """True when the Service's health path answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/passwd", timeout=0.5) as response:
            return response.status == 200
    except OSError:
        return False


def down(port: int) -> bool:
    """True while the Service does not answer."""
    return not answers(port)


def wait(predicate, timeout: float, interval: float = 0.01) -> bool:  # noqa: ANN001
    """Poll `predicate` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_pid(client, name: str) -> int:  # noqa: ANN001
    """The host pid of a container's main process."""
    return int(client.api.inspect_container(name)["State"]["Pid"])


def kill_and_time(client, names: list[str], ports: list[int], kills: int) -> list[float]:  # noqa: ANN001
    """SIGKILL the main process of each container in turn; seconds until its health path answers again."""
    times = []
    for k in range(kills):
        i = k % len(names)
        up = functools.partial(answers, ports[i])
        assert wait(up, 60), f"{names[i]} not ready before kill {k}"
        pid = main_pid(client, names[i])
        start = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        wait(functools.partial(down, ports[i]), 2, 0.002)  # it is down (the kill really landed) ...
        if not wait(up, 120):
            print(f"  kill {k}: {names[i]} not back within 120 s")
            continue
        times.append(time.perf_counter() - start)  # ... and up again
        time.sleep(0.5)
    return times


def stats(values: list[float]) -> str:
    """min / median / max in seconds."""
    if not values:
        return "no data"
    return f"{min(values):6.2f} / {statistics.median(values):6.2f} / {max(values):6.2f}"


def run_aimactl(engine, tmp: Path, n: int, idle: float, kills: int) -> tuple[float, list[float]]:  # noqa: ANN001
    """The loop on N Services: idle CPU %, then heal latencies."""
    ports = free_ports(n)
    (tmp / "m").mkdir()
    (tmp / "m" / "stack.yaml").write_text(manifests(ports, "no"))
    env = {**os.environ, "DOCKER_HOST": engine.host, "AIMACTL_STATE_DIR": str(tmp / "state"),
           "AIMACTL_STACK": "benchrec", "NO_COLOR": "1"}
    log = (tmp / "loop.log").open("w")
    loop = subprocess.Popen([sys.executable, "-m", "aimactl", "reconcile", "-f", str(tmp / "m"), "-o", "json"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    client = engine.client()
    try:
        if not wait(lambda: all(answers(p) for p in ports), 180, 0.2):
            raise SystemExit(f"the loop did not bring {n} Services up; see {tmp / 'loop.log'}")
        time.sleep(3)  # let the pass that follows its own apply's events end
        before, start = cpu_seconds(loop.pid), time.monotonic()
        time.sleep(idle)
        used, spent = cpu_seconds(loop.pid) - before, time.monotonic() - start
        names = [f"aima-benchrec-web{i}-0" for i in range(n)]
        latencies = kill_and_time(client, names, ports, kills)
        return 100.0 * used / spent, latencies
    finally:
        loop.send_signal(signal.SIGTERM)
        loop.wait(60)
        log.close()
        subprocess.run([sys.executable, "-m", "aimactl", "destroy", "--auto-approve"], env=env, capture_output=True)
        client.close()


def run_docker_restart(engine, n: int, kills: int) -> list[float]:  # noqa: ANN001
    """The peer: containers with `restart: always`, healed by dockerd itself."""
    ports = free_ports(n)
    client = engine.client()
    names = [f"benchpeer{i}" for i in range(n)]
    try:
        for name, port in zip(names, ports, strict=True):
            client.containers.run(BUSYBOX_IMAGE, COMMAND, name=name, detach=True, ports={"80/tcp": ("127.0.0.1", port)},
                                  restart_policy={"Name": "always"})
        return kill_and_time(client, names, ports, kills)
    finally:
        for name in names:
            try:
                client.containers.get(name).remove(force=True)
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
        client.close()


def main() -> None:
    """Parse flags, run both measurements on a private engine, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with private_docker_engine() as engine, tempfile.TemporaryDirectory() as tmp:
        version = engine.client().version()["Version"]
        idle_percent, healed = run_aimactl(engine, Path(tmp), args.services, args.idle, args.kills)
        peer = run_docker_restart(engine, args.services, args.kills)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, Docker engine {version}, "
          f"aimactl {commit}, load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    verdict = "PASS" if idle_percent < TARGET_IDLE_PERCENT else "MISS"
    print(f"idle CPU of `aimactl reconcile` with {args.services} Services over {args.idle:g} s: "
          f"{idle_percent:.2f} % of one core (target < {TARGET_IDLE_PERCENT:g} %: {verdict})")
    print(f"heal latency, SIGKILL of the main process to health answering, {args.kills} kills, "
          "min / median / max (s):")
    print(f"  aimactl reconcile (restart: no)     {stats(healed)}   ({len(healed)} healed)")
    print(f"  dockerd restart policy (always)     {stats(peer)}   ({len(peer)} healed)")


if __name__ == "__main__":
    main()
