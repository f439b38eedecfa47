"""aimactl plan of a converged stack on 1, 2, 4 and 8 SSH hosts vs gathering the same facts with pyinfra.

Run (as root): `.venv/bin/python bench/ssh.py [--sizes 1,2,4,8] [--repeat 3]`. It starts one real sshd per host
on 127.0.0.2 ... 127.0.0.9 (tests/fixtures/sshd.py: own host key each, strict known_hosts, key login as root),
converges a stack with one process Service per host (`sleep`, supervised by aimactl's helper), then times
`aimactl plan --detailed-exitcode` (must exit 0: nothing to do) against `pyinfra INVENTORY fact server.Command`
running one shell script per host that reads what aimactl's observation reads there (CPUs, memory, disk of the
data dir, GPUs, the pid files of the stack's processes and whether they live, the model cache index).
Needs pyinfra in this Python's environment: `.venv/bin/pip install pyinfra`.
Targets (the issue): 8 hosts at most 2 x the time of 1 host; at most 0.5 x the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures.sshd import SshHosts, running_ssh_hosts  # noqa: E402

# The hosts' interpreter for aimactl's helper: a real one. A pyenv shim (`python3` on some machines) is a bash
# script that costs each helper run ~0.4 s before Python starts; the peer's script runs no Python at all.
PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
              os.path.realpath(sys.executable))
SCALING_LIMIT = 2.0  # time(8 hosts) / time(1 host)
PEER_LIMIT = 0.5  # aimactl / pyinfra
# What aimactl's observation reads on each host, as one shell script (the peer's cheapest way to read it all).
FACTS = ("nproc; cat /proc/meminfo; df -Pk {d}; nvidia-smi --query-gpu=uuid,memory.total,memory.used "
         "--format=csv,noheader 2>/dev/null; for f in {d}/proc/*.pid; do [ -e \"$f\" ] || continue; cat \"$f\"; "
         "pid=$(sed 's/[^0-9].*//;s/.*\"pid\": *//' \"$f\"); kill -0 \"$pid\" 2>/dev/null && echo alive; done; "
         "cat {d}/models/index.json 2>/dev/null; true")


def manifest(fleet: SshHosts, n: int, data: Path) -> str:
    """n SSH Hosts (strict host keys, the fixture's client key) and one process Service pinned to each."""
    docs = []
    for host in fleet.hosts[:n]:
        docs.append(f"apiVersion: aima.dev/v1\nkind: Host\nmetadata: {{name: {host.name}}}\nspec:\n"
                    f"  address: ssh://{host.user}@{host.address}:{host.port}\n"
                    f"  identityFile: {fleet.client_key_path}\n  knownHosts: {fleet.known_hosts_path}\n"
                    f"  docker: {data}/no-docker.sock\n  dataDir: {data / host.address}\n  python: {PYTHON}\n")
        docs.append(f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: svc-{host.name}}}\nspec:\n"
                    f"  host: {host.name}\n  engine: custom\n  runtime: process\n"
                    f"  command: {json.dumps(['sleep', '86400'])}\n")
    return "---\n".join(docs)


def inventory(fleet: SshHosts, n: int) -> str:
    """A pyinfra inventory of the same n hosts with the same key and strict known_hosts."""
    rows = [(h.address, {"ssh_port": h.port, "ssh_user": h.user, "ssh_key": str(fleet.client_key_path),
                         "ssh_known_hosts_file": str(fleet.known_hosts_path),
                         "ssh_strict_host_key_checking": "yes"}) for h in fleet.hosts[:n]]
    return f"hosts = {rows!r}\n"


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds and the result of one command."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start, done


def check(done: subprocess.CompletedProcess[str], what: str) -> None:
    """Stop the benchmark with the command's output when it failed."""
    if done.returncode != 0:
        tail = "\n    ".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise SystemExit(f"{what} exited {done.returncode}:\n    {tail}")


def machine(aimactl: str, pyinfra: str) -> str:
    """CPUs, Python, OpenSSH, pyinfra; aimactl's commit."""
    def out(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or "?"

    repo = Path(__file__).resolve().parent.parent
    commit = out(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = " + uncommitted changes" if out(["git", "-C", str(repo), "status", "--porcelain", "aimactl"]) != "?" else ""
    sshd = subprocess.run(["sshd", "-V"], capture_output=True, text=True).stderr.strip() or "?"
    return (f"nproc {os.cpu_count()}, Python {platform.python_version()}, {sshd}, pyinfra "
            f"{out([pyinfra, '--version']).split()[-1]}, {platform.platform()}\naimactl at {commit}{dirty}")


def bench_size(fleet: SshHosts, n: int, repeat: int, tmp: Path, aimactl: str, pyinfra: str,
               env: dict[str, str], parallelism: int | None) -> dict[str, list[float]]:
    """Converge the stack on n hosts, then time plan and the peer `repeat` times each, interleaved."""
    data = tmp / f"n{n}"
    data.mkdir()
    (data / "stack.yaml").write_text(manifest(fleet, n, data))
    (data / "inventory.py").write_text(inventory(fleet, n))
    stack_env = dict(env, AIMACTL_STACK=f"benchssh{n}")
    flags = ["--parallelism", str(parallelism)] if parallelism else []
    plan = [aimactl, "plan", "-f", str(data / "stack.yaml"), "--detailed-exitcode", *flags]
    # Every host is this machine: each has its data dir named after the address its sshd listens on, which
    # the peer's script reads from SSH_CONNECTION (client ip, port, server ip, port).
    script = "D=" + str(data) + "/$(echo $SSH_CONNECTION | cut -d' ' -f3); " + FACTS.format(d="$D")
    peer = [pyinfra, "-y", str(data / "inventory.py"), "fact", "server.Command", f"command={script}"]
    _, applied = run([aimactl, "apply", "-f", str(data / "stack.yaml"), "--auto-approve", *flags], stack_env)
    check(applied, f"aimactl apply on {n} hosts")
    for cmd, what in ((plan, "aimactl plan"), (peer, "pyinfra fact")):  # warm-up, unmeasured
        check(run(cmd, stack_env)[1], what)
    times: dict[str, list[float]] = {"aimactl": [], "pyinfra": []}
    for r in range(repeat):
        shown = []
        for tool, cmd in (("aimactl", plan), ("pyinfra", peer)):
            seconds, done = run(cmd, stack_env)
            check(done, f"{tool} on {n} hosts")
            times[tool].append(seconds)
            shown.append(f"{tool} {seconds:.2f}s")
        print(f"  N={n} run {r + 1}/{repeat}: " + ", ".join(shown), flush=True)
    check(run([aimactl, "destroy", "-f", str(data / "stack.yaml"), "--auto-approve"], stack_env)[1], "destroy")
    return times


def table(results: dict[int, dict[str, list[float]]]) -> list[str]:
    """Print medians side by side, the ratios, and the verdicts; returns the verdict lines."""
    med = {n: {tool: statistics.median(v) for tool, v in times.items()} for n, times in results.items()}
    first = min(med)
    print(f"\n{'hosts':>5}{'aimactl plan (s)':>18}{'pyinfra facts (s)':>19}{'aimactl/pyinfra':>17}"
          f"{f'aimactl vs {first} host':>20}")
    for n, m in med.items():
        print(f"{n:>5}{m['aimactl']:>18.3f}{m['pyinfra']:>19.3f}{m['aimactl'] / m['pyinfra']:>16.2f}x"
              f"{m['aimactl'] / med[first]['aimactl']:>19.2f}x")
    verdicts = []
    last = max(med)
    if first == 1 and last > 1:
        ratio = med[last]["aimactl"] / med[1]["aimactl"]
        verdicts.append(f"{last} hosts vs 1 host: {ratio:.2f}x (target <= {SCALING_LIMIT:.1f}x): "
                        + ("PASS" if ratio <= SCALING_LIMIT else "MISS"))
    for n, m in med.items():
        ratio = m["aimactl"] / m["pyinfra"]
        verdicts.append(f"{n} host{'s' if n > 1 else ''}: aimactl/pyinfra {ratio:.2f}x (target <= {PEER_LIMIT:.1f}x): "
                        + ("PASS" if ratio <= PEER_LIMIT else "MISS"))
    print("\n" + "\n".join(verdicts))
    return verdicts


def main() -> int:
    """Check the tools, start the sshd hosts, measure every size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,2,4,8", help="comma-separated host counts (at most 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool and size (the median is shown)")
    parser.add_argument("--parallelism", type=int, default=None,
                        help="aimactl --parallelism (default: aimactl's own default)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    if not sizes or sizes[-1] > 8 or sizes[0] < 1:
        print("--sizes: host counts from 1 to 8", file=sys.stderr)
        return 2
    bindir = Path(sys.executable).parent
    aimactl, pyinfra = shutil.which("aimactl", path=str(bindir)), shutil.which("pyinfra", path=str(bindir))
    if not aimactl or not pyinfra:
        print("aimactl and pyinfra must be installed beside this Python: run it with .venv/bin/python after "
              "`.venv/bin/pip install pyinfra`", file=sys.stderr)
        return 2
    if os.geteuid() != 0 or not shutil.which("sshd", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        print("needs root and sshd (apt-get install -y openssh-server)", file=sys.stderr)
        return 2
    addresses = {f"edge-{i}": f"127.0.0.{i + 1}" for i in range(1, sizes[-1] + 1)}
    results: dict[int, dict[str, list[float]]] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp, running_ssh_hosts(addresses) as fleet:
        env = dict(os.environ, AIMACTL_STATE_DIR=f"{tmp}/state", NO_COLOR="1",
                   DOCKER_HOST=f"unix://{tmp}/controller-has-no-docker.sock")
        if env.pop("PYTHONDONTWRITEBYTECODE", None):
            env["PYTHONPYCACHEPREFIX"] = f"{tmp}/pyc"  # both tools get a bytecode cache, as installs have
        print("machine:", machine(aimactl, pyinfra))
        print(f"hosts: {', '.join(f'{h.name}={h.address}:{h.port}' for h in fleet.hosts)}", flush=True)
        for n in sizes:
            results[n] = bench_size(fleet, n, args.repeat, Path(tmp), aimactl, pyinfra, env, args.parallelism)
    table(results)
    print(f"\nload average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs (other work on the machine makes the medians noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
