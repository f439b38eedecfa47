"""docker-compose vs aimactl: cold apply, no-op apply and teardown of N busybox httpd containers, medians.

Run (as root): `.venv/bin/python bench/compose.py [--sizes 1,10,30] [--repeat 3]`. It starts its own private
dockerd (tests/fixtures/dockerd.py) and builds the same stack twice: a docker-compose.yml (project `benchcompose`)
and aimactl Apps (stack `benchaima`). Each container runs busybox httpd behind a shell that exits on SIGTERM,
publishes one port on 127.0.0.1 and restarts unless stopped. Needs the Debian `docker-compose` (1.29.2).
Targets (the issue): no-op apply <= 1.0x compose at N=1 and <= 0.75x at N=30; cold apply <= 0.8x at N=30.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures.dockerd import BUSYBOX_IMAGE, private_docker_engine  # noqa: E402

PROJECT, STACK = "benchcompose", "benchaima"
COMPOSE_PORT, AIMA_PORT, FLOOR_PORT = 18100, 19100, 20100  # host port bases: no two stacks share a port
PARALLELISM = 4  # aimactl's default --parallelism, for the engine-floor row
# busybox httpd as PID 1 ignores SIGTERM (stops would take the 10 s timeout): a shell that exits on TERM.
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /etc & wait"]
# (operation, N, most aimactl/compose allowed)
TARGETS = [("no-op apply", 1, 1.0), ("no-op apply", 30, 0.75), ("cold apply", 30, 0.8)]
OPERATIONS = ["cold apply", "no-op apply", "teardown"]


def compose_yaml(n: int) -> str:
    """A docker-compose.yml with `n` services (JSON strings are valid YAML scalars)."""
    lines = ['version: "2.4"', "services:"]
    for i in range(n):
        lines += [f"  web{i}:", f"    image: {BUSYBOX_IMAGE}", f"    command: {json.dumps(COMMAND)}",
                  f'    ports: ["127.0.0.1:{COMPOSE_PORT + i}:80"]', "    restart: unless-stopped"]
    return "\n".join(lines) + "\n"


def aimactl_yaml(n: int) -> str:
    """`n` aimactl App documents, one per container, without a health path."""
    docs = [f"apiVersion: aima.dev/v1\nkind: App\nmetadata: {{name: web{i}}}\nspec:\n"
            f"  image: {BUSYBOX_IMAGE}\n  command: {json.dumps(COMMAND)}\n"
            f'  ports: ["127.0.0.1:{AIMA_PORT + i}:80"]\n  restart: unless-stopped\n' for i in range(n)]
    return "---\n".join(docs)


def timed(cmd: list[str], env: dict[str, str]) -> float | None:
    """Wall seconds of one run; on failure print the command's stderr (tail) and return None."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n    ".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        print(f"  ! {' '.join(cmd[:3])} ... exited {done.returncode} after {seconds:.2f}s:\n    {tail}", flush=True)
        return None
    return seconds


def port_free(port: int) -> bool:
    """Tell whether 127.0.0.1:`port` can be bound (no one else listens there)."""
    with contextlib.closing(socket.socket()) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def running(client, label: str) -> int:
    """How many running containers carry `label` (key=value)."""
    return len(client.containers.list(filters={"label": label, "status": "running"}))


def force_clean(client) -> None:
    """Remove whatever a failed run left behind: containers and compose's project network."""
    for container in client.containers.list(all=True):
        with contextlib.suppress(Exception):
            container.remove(force=True)
    for network in client.networks.list(names=[f"{PROJECT}_default"]):
        with contextlib.suppress(Exception):
            network.remove()


def check_sigterm(client) -> float:
    """Seconds `docker stop` (10 s timeout) takes on one container running COMMAND."""
    container = client.containers.run(BUSYBOX_IMAGE, COMMAND, detach=True)
    try:
        time.sleep(0.5)
        start = time.perf_counter()
        container.stop(timeout=10)
        return time.perf_counter() - start
    finally:
        container.remove(force=True)


def machine(client, compose: str, aimactl: str) -> str:
    """CPUs, Python, Docker engine and docker-compose versions; aimactl version and git commit."""
    def out(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()

    repo = Path(__file__).resolve().parent.parent
    commit = out(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]) or "?"
    dirty = " + uncommitted changes" if out(["git", "-C", str(repo), "status", "--porcelain", "aimactl"]) else ""
    return (f"nproc {os.cpu_count()}, Python {platform.python_version()}, Docker engine "
            f"{client.version().get('Version', '?')}, docker-compose {out([compose, 'version', '--short'])}, "
            f"{platform.platform()}\naimactl: {out([aimactl, 'version'])} at {commit}{dirty}")


def tool_env(env: dict[str, str], tmp: str) -> dict[str, str]:
    """aimactl's environment. Where PYTHONDONTWRITEBYTECODE is set (as in some sandboxes) an editable install
    recompiles aimactl's modules on every run, while Debian's docker-compose ships its bytecode; a private
    bytecode cache (PYTHONPYCACHEPREFIX) gives aimactl what an ordinary install has."""
    if not env.get("PYTHONDONTWRITEBYTECODE"):
        return env
    print("note: PYTHONDONTWRITEBYTECODE is set; aimactl runs with a bytecode cache in the temporary directory")
    return {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPYCACHEPREFIX": f"{tmp}/pyc"}


def engine_floor(client, n: int) -> float:
    """Seconds the engine alone takes to create and start the same `n` containers, `PARALLELISM` requests at a
    time from this process (no tool: no start-up, no observation, no readiness); they are removed afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    def up(i: int) -> str:
        host_config = client.api.create_host_config(port_bindings={"80/tcp": [("127.0.0.1", FLOOR_PORT + i)]},
                                                    restart_policy={"Name": "unless-stopped"})
        created = client.api.create_container(BUSYBOX_IMAGE, command=COMMAND, name=f"benchfloor{i}",
                                              ports=[(80, "tcp")], host_config=host_config)
        client.api.start(created["Id"])
        return str(created["Id"])

    start = time.perf_counter()
    with ThreadPoolExecutor(PARALLELISM) as pool:
        ids = list(pool.map(up, range(n)))
    seconds = time.perf_counter() - start
    with ThreadPoolExecutor(PARALLELISM) as pool:
        list(pool.map(lambda cid: client.api.remove_container(cid, force=True), ids))
    return seconds


def bench_size(n: int, repeat: int, tools: dict[str, dict[str, list[str]]], envs: dict[str, dict[str, str]],
               client, warm_up: bool = False) -> dict[tuple[str, str], list[float]]:
    """Run cold apply, no-op apply and teardown `repeat` times for each tool; returns the times that succeeded.

    With `warm_up`, one unmeasured cycle per tool goes first (engine, page cache and bytecode caches)."""
    if warm_up:
        for tool, cmds in tools.items():
            for op in OPERATIONS:
                subprocess.run(cmds[op], env=envs[tool], capture_output=True, stdin=subprocess.DEVNULL)
        force_clean(client)
    times: dict[tuple[str, str], list[float]] = {(t, op): [] for t in tools for op in OPERATIONS}
    labels = {"compose": f"com.docker.compose.project={PROJECT}", "aimactl": f"dev.aima.stack={STACK}"}
    for r in range(repeat):
        for tool, cmds in tools.items():
            force_clean(client)
            shown: dict[str, float | None] = {}
            for op in OPERATIONS:
                shown[op] = seconds = timed(cmds[op], envs[tool])
                if seconds is not None:
                    times[(tool, op)].append(seconds)
                if op == "cold apply" and (up := running(client, labels[tool])) != n:
                    print(f"  ! {tool}: {up} of {n} containers running after cold apply", flush=True)
            left = len(client.containers.list(all=True))
            print(f"  N={n} run {r + 1}/{repeat} {tool:<8}" + "".join(
                f"  {op} {'fail' if s is None else f'{s:.2f}s'}" for op, s in shown.items())
                + (f"  ({left} containers left!)" if left else ""), flush=True)
        force_clean(client)
        floor = engine_floor(client, n)
        times.setdefault(("engine", "cold apply"), []).append(floor)
        print(f"  N={n} run {r + 1}/{repeat} engine    create+start {floor:.2f}s", flush=True)
    force_clean(client)
    return times


def table(results: dict[int, dict[tuple[str, str], list[float]]]) -> None:
    """Print N, operation, compose and aimactl medians, the ratio, and the target verdicts."""
    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    print(f"\n{'N':>3}  {'operation':<12}{'compose (s)':>12}{'aimactl (s)':>12}{'ratio':>8}  target"
          f"{'':>14}engine alone (s)")
    for n, times in results.items():
        for op in OPERATIONS:
            c, a = med(times[("compose", op)]), med(times[("aimactl", op)])
            floor = med(times.get(("engine", op), []))
            ratio = a / c if a is not None and c else None
            target = next((limit for top, tn, limit in TARGETS if top == op and tn == n), None)
            verdict = ""
            if target is not None:
                verdict = f"<= {target:.2f}x  " + ("n/a" if ratio is None else "PASS" if ratio <= target else "MISS")
            cells = [f"{v:>12.3f}" if v is not None else f"{'fail':>12}" for v in (c, a)]
            print(f"{n:>3}  {op:<12}{cells[0]}{cells[1]}{'' if ratio is None else f'{ratio:.2f}x':>8}  {verdict:<20}"
                  + ("" if floor is None else f"{floor:>10.3f}"))


def main() -> int:
    """Check the tools, start a private dockerd, measure every size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,10,30", help="comma-separated stack sizes (containers)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per operation (the median is shown)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    compose = shutil.which("docker-compose")
    if not compose:
        print("docker-compose not found. Install it (as root): apt-get install -y docker-compose", file=sys.stderr)
        return 2
    aimactl = shutil.which("aimactl", path=str(Path(sys.executable).parent)) or shutil.which("aimactl")
    if not aimactl:
        print("aimactl not found beside this Python: run it with .venv/bin/python", file=sys.stderr)
        return 2
    busy = [p for base in (COMPOSE_PORT, AIMA_PORT, FLOOR_PORT) for p in range(base, base + max(sizes))
            if not port_free(p)]
    if busy:
        print(f"host ports in use: {busy[:10]}; free {COMPOSE_PORT}+ and {AIMA_PORT}+ first", file=sys.stderr)
        return 2
    results: dict[int, dict[tuple[str, str], list[float]]] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-compose-") as tmp, private_docker_engine() as engine:
        env = dict(os.environ, DOCKER_HOST=engine.host, AIMACTL_STATE_DIR=f"{tmp}/state",
                   COMPOSE_PROJECT_NAME=PROJECT)
        env.pop("AIMACTL_STACK", None)
        envs = {"compose": env, "aimactl": tool_env(env, tmp)}
        with contextlib.closing(engine.client()) as client:
            print("machine:", machine(client, compose, aimactl))
            print(f"docker stop of one container running {COMMAND[-1]!r}: {check_sigterm(client):.2f}s "
                  "(both tools stop with a 10 s timeout; this shell exits on SIGTERM at once)", flush=True)
            for n in sizes:
                cdir, adir = Path(tmp, f"compose-{n}"), Path(tmp, f"aimactl-{n}")
                cdir.mkdir()
                adir.mkdir()
                (cdir / "docker-compose.yml").write_text(compose_yaml(n))
                (adir / "apps.yaml").write_text(aimactl_yaml(n))
                up = [compose, "-f", str(cdir / "docker-compose.yml"), "-p", PROJECT]
                apply = [aimactl, "apply", "-f", str(adir), "--stack", STACK, "--auto-approve"]
                tools = {
                    "compose": {"cold apply": up + ["up", "-d"], "no-op apply": up + ["up", "-d"],
                                "teardown": up + ["down"]},
                    "aimactl": {"cold apply": apply, "no-op apply": apply,
                                "teardown": [aimactl, "destroy", "-f", str(adir), "--stack", STACK, "--auto-approve"]},
                }
                results[n] = bench_size(n, args.repeat, tools, envs, client, warm_up=n == sizes[0])
    table(results)
    print(f"\nload average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs (other work on the machine makes the medians noisy)")
    print("\nteardown: `docker-compose down` vs `aimactl destroy --auto-approve`; compose also creates and removes its "
          "project network.\nNote: the Apps have no health path, so aimactl's cold apply waits until each container "
          "has been running 0.5 s (its readiness settle, in parallel); docker-compose waits for nothing.\n"
          f"engine alone: the same containers created and started from this process with the Docker SDK, "
          f"{PARALLELISM} at a time (aimactl's default --parallelism), no tool around it: the floor of a cold apply.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
