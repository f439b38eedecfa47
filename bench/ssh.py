"""aimactl plan of a converged stack on 1, 2, 4 and 8 SSH hosts vs gathering the same facts with pyinfra and Ansible.

Run (as root): `.venv/bin/python bench/ssh.py [--sizes 1,2,4,8] [--repeat 3]`. It starts one real sshd per host
on 127.0.0.2 ... 127.0.0.9 (tests/fixtures/sshd.py: own host key each, strict known_hosts, key login as root),
converges a stack with one process Service per host (`sleep`, supervised by aimactl's helper), then times
`aimactl plan --detailed-exitcode` (must exit 0: nothing to do) against two peers running one shell script per
host that reads what aimactl's observation reads there (CPUs, memory, disk of the data dir, GPUs, the pid files of
the stack's processes and whether they live, the model cache index): `pyinfra INVENTORY fact server.Command` and
`ansible all -i INVENTORY -m raw -a SCRIPT -f N` (ad hoc, no fact gathering, strict host keys, N forks).
The peers are benchmark-only, installed by hand in this Python's environment: `.venv/bin/pip install pyinfra`,
`.venv/bin/pip install ansible-core`; a peer that is missing is skipped (with a line saying so).
Targets (the issue): 8 hosts at most 2 x the time of 1 host; at most 0.5 x the peer.

aimactl runs as shipped: its keeper (hosts/keeper.py) keeps each host's connection and a serving helper for 60 s
after a command, as Ansible's ControlPersist keeps its connections, so the timed plans (after an unmeasured one)
reuse them. The "first plan" column times a plan that finds no keeper (its socket removed before), which pays for
starting one; it is printed, not judged. `--no-keep` (AIMACTL_SSH_PERSIST=0) makes every aimactl plan connect and
start the helper afresh, and `--no-control-persist` does the same for Ansible.
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
from aimactl.hosts.keeper import socket_path  # noqa: E402
from tests.fixtures.sshd import SshHosts, running_ssh_hosts  # noqa: E402

# The hosts' interpreter for aimactl's helper: a real one. A pyenv shim (`python3` on some machines) is a bash
# script that costs each helper run ~0.4 s before Python starts; the peer's script runs no Python at all.
PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
              os.path.realpath(sys.executable))
SCALING_LIMIT = 2.0  # time(8 hosts) / time(1 host)
PEER_LIMIT = 0.5  # aimactl / pyinfra
FIRST = "aimactl first"  # a plan that finds no keeper (the first within AIMACTL_SSH_PERSIST): not a target
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


def ansible_inventory(fleet: SshHosts, n: int) -> str:
    """An Ansible INI inventory of the same n hosts: same key, the fixture's known_hosts, strict checking."""
    options = (f"-o UserKnownHostsFile={fleet.known_hosts_path} -o StrictHostKeyChecking=yes "
               "-o GlobalKnownHostsFile=/dev/null")
    rows = [f"{h.name} ansible_host={h.address} ansible_port={h.port} ansible_user={h.user} "
            f"ansible_ssh_private_key_file={fleet.client_key_path} ansible_ssh_common_args='{options}'"
            for h in fleet.hosts[:n]]
    return "[edge]\n" + "\n".join(rows) + "\n"


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


def machine(peers: dict[str, str]) -> str:
    """CPUs, Python, OpenSSH, the peers' versions; aimactl's commit."""
    def out(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or "?"

    repo = Path(__file__).resolve().parent.parent
    commit = out(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = " + uncommitted changes" if out(["git", "-C", str(repo), "status", "--porcelain", "aimactl"]) != "?" else ""
    sshd = subprocess.run(["sshd", "-V"], capture_output=True, text=True).stderr.strip() or "?"
    versions = {"pyinfra": lambda p: out([p, "--version"]).split()[-1],
                "ansible": lambda p: out([p, "--version"]).splitlines()[0].split()[-1].rstrip("]")}
    shown = ", ".join(f"{tool} {versions[tool](path)}" for tool, path in peers.items())
    return (f"nproc {os.cpu_count()}, Python {platform.python_version()}, {sshd}, {shown}, {platform.platform()}"
            f"\naimactl at {commit}{dirty}")


def peer_commands(fleet: SshHosts, n: int, data: Path, peers: dict[str, str]) -> dict[str, list[str]]:
    """Each installed peer's command that runs the FACTS script once on each of the n hosts."""
    (data / "inventory.py").write_text(inventory(fleet, n))
    (data / "inventory.ini").write_text(ansible_inventory(fleet, n))
    # Every host is this machine: each has its data dir named after the address its sshd listens on, which
    # the peer's script reads from SSH_CONNECTION (client ip, port, server ip, port).
    script = "D=" + str(data) + "/$(echo $SSH_CONNECTION | cut -d' ' -f3); " + FACTS.format(d="$D")
    commands = {"pyinfra": [peers.get("pyinfra", ""), "-y", str(data / "inventory.py"), "fact", "server.Command",
                            f"command={script}"],
                "ansible": [peers.get("ansible", ""), "all", "-i", str(data / "inventory.ini"), "-m", "raw",
                            "-a", script, "-f", str(max(n, 5))]}
    return {tool: cmd for tool, cmd in commands.items() if tool in peers}


def stop_keeper(env: dict[str, str]) -> None:
    """Make the next plan find no keeper: remove its socket and give it the second it takes to notice and leave."""
    path = socket_path(env)
    if path and os.path.exists(path):
        os.unlink(path)
        time.sleep(1.5)


def bench_size(fleet: SshHosts, n: int, repeat: int, tmp: Path, aimactl: str, peers: dict[str, str],
               env: dict[str, str], parallelism: int | None, keeps: bool) -> dict[str, list[float]]:
    """Converge the stack on n hosts, then time plan and each peer `repeat` times each, interleaved."""
    data = tmp / f"n{n}"
    data.mkdir()
    (data / "stack.yaml").write_text(manifest(fleet, n, data))
    stack_env = dict(env, AIMACTL_STACK=f"benchssh{n}")
    flags = ["--parallelism", str(parallelism)] if parallelism else []
    plan = [aimactl, "plan", "-f", str(data / "stack.yaml"), "--detailed-exitcode", *flags]
    tools = {"aimactl": plan, **peer_commands(fleet, n, data, peers)}
    _, applied = run([aimactl, "apply", "-f", str(data / "stack.yaml"), "--auto-approve", *flags], stack_env)
    check(applied, f"aimactl apply on {n} hosts")
    for tool, cmd in tools.items():  # warm-up, unmeasured
        check(run(cmd, stack_env)[1], f"{tool} (warm-up)")
    if keeps:  # also time the plan that finds no keeper yet: it starts one and connects (once per 60 s)
        tools = {"aimactl": plan, FIRST: plan, **{t: c for t, c in tools.items() if t != "aimactl"}}
    times: dict[str, list[float]] = {tool: [] for tool in tools}
    for r in range(repeat):
        shown = []
        for tool, cmd in tools.items():
            if tool == FIRST:
                stop_keeper(stack_env)
            seconds, done = run(cmd, stack_env)
            check(done, f"{tool} on {n} hosts")
            times[tool].append(seconds)
            shown.append(f"{tool} {seconds:.2f}s")
        print(f"  N={n} run {r + 1}/{repeat}: " + ", ".join(shown), flush=True)
    check(run([aimactl, "destroy", "-f", str(data / "stack.yaml"), "--auto-approve"], stack_env)[1], "destroy")
    return times


def table(results: dict[int, dict[str, list[float]]]) -> list[str]:
    """Print medians side by side, aimactl's ratio to each peer, and the verdicts; returns the verdict lines."""
    med = {n: {tool: statistics.median(v) for tool, v in times.items()} for n, times in results.items()}
    first = min(med)
    peers = [tool for tool in next(iter(med.values())) if tool not in ("aimactl", FIRST)]
    first_plan = FIRST in next(iter(med.values()))
    header = f"{'hosts':>5}{'aimactl plan (s)':>18}" + (f"{'first plan (s)':>16}" if first_plan else "")
    for peer in peers:
        header += f"{f'{peer} (s)':>14}{f'aimactl/{peer}':>17}"
    print("\n" + header + f"{f'aimactl vs {first} host':>20}")
    for n, m in med.items():
        row = f"{n:>5}{m['aimactl']:>18.3f}" + (f"{m[FIRST]:>16.3f}" if first_plan else "")
        for peer in peers:
            row += f"{m[peer]:>14.3f}{m['aimactl'] / m[peer]:>16.2f}x"
        print(row + f"{m['aimactl'] / med[first]['aimactl']:>19.2f}x")
    verdicts = []
    last = max(med)
    if first == 1 and last > 1:
        ratio = med[last]["aimactl"] / med[1]["aimactl"]
        verdicts.append(f"{last} hosts vs 1 host: {ratio:.2f}x (target <= {SCALING_LIMIT:.1f}x): "
                        + ("PASS" if ratio <= SCALING_LIMIT else "MISS"))
    for peer in peers:
        for n, m in med.items():
            ratio = m["aimactl"] / m[peer]
            verdicts.append(f"{n} host{'s' if n > 1 else ''}: aimactl/{peer} {ratio:.2f}x "
                            f"(target <= {PEER_LIMIT:.1f}x): " + ("PASS" if ratio <= PEER_LIMIT else "MISS"))
    print("\n" + "\n".join(verdicts))
    return verdicts


def main() -> int:
    """Check the tools, start the sshd hosts, measure every size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,2,4,8", help="comma-separated host counts (at most 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool and size (the median is shown)")
    parser.add_argument("--parallelism", type=int, default=None,
                        help="aimactl --parallelism (default: aimactl's own default)")
    parser.add_argument("--no-keep", action="store_true",
                        help="aimactl without its kept connections (AIMACTL_SSH_PERSIST=0): every plan connects "
                             "and starts the helper afresh, as every pyinfra run does")
    parser.add_argument("--no-control-persist", action="store_true",
                        help="Ansible without its OpenSSH ControlPersist (default: as shipped, which keeps each "
                             "host's connection open 60 s between runs)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    if not sizes or sizes[-1] > 8 or sizes[0] < 1:
        print("--sizes: host counts from 1 to 8", file=sys.stderr)
        return 2
    bindir = Path(sys.executable).parent
    aimactl = shutil.which("aimactl", path=str(bindir))
    peers = {}
    for tool, package in (("pyinfra", "pyinfra"), ("ansible", "ansible-core")):
        found = shutil.which(tool, path=str(bindir))
        if found:
            peers[tool] = found
        else:
            print(f"{tool} is not installed beside this Python: `{bindir}/pip install {package}` to compare with "
                  "it; skipping that peer", flush=True)
    if not aimactl or not peers:
        print("aimactl and at least one peer must be installed beside this Python: run it with .venv/bin/python "
              "after `.venv/bin/pip install pyinfra ansible-core`", file=sys.stderr)
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
            env["PYTHONPYCACHEPREFIX"] = f"{tmp}/pyc"  # every tool gets a bytecode cache, as installs have
        # Ansible as shipped (its OpenSSH ControlPersist included), its state in the run's own directory.
        env.update(ANSIBLE_HOME=f"{tmp}/ansible", ANSIBLE_HOST_KEY_CHECKING="True", LC_ALL="C.UTF-8")
        if args.no_control_persist:  # every Ansible run connects afresh, as every pyinfra run does
            env["ANSIBLE_SSH_ARGS"] = "-C -o ControlMaster=no"
        # aimactl's keeper (kept connections, hosts/keeper.py) in the run's own directory, gone with it.
        os.makedirs(f"{tmp}/run", mode=0o700)
        env["XDG_RUNTIME_DIR"] = f"{tmp}/run"
        if args.no_keep:
            env["AIMACTL_SSH_PERSIST"] = "0"
        print("machine:", machine(peers))
        print(f"hosts: {', '.join(f'{h.name}={h.address}:{h.port}' for h in fleet.hosts)}", flush=True)
        for n in sizes:
            results[n] = bench_size(fleet, n, args.repeat, Path(tmp), aimactl, peers, env, args.parallelism,
                                    not args.no_keep)
    table(results)
    print(f"\nload average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs (other work on the machine makes the medians noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
