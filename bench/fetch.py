"""Model fetch benchmark: the aimactl host helper's `fetch` and `verify` against curl and sha256sum.

Run: `.venv/bin/python bench/fetch.py [--size-mib 1024] [--repeat 3]`. A file of random bytes is served from a
local threaded HTTP server on 127.0.0.1 (sendfile, so the server is not the bottleneck) and downloaded with
`curl -s -o DEST URL` and with `python3 aimactl/helper/aimahelper.py fetch` given the expected sha256 (it hashes
while streaming, fsyncs and renames, as aimactl does). The cached file is then checked with `sha256sum FILE` and
with the helper's `verify`. Target (issue): fetch throughput at least 0.9 x curl.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HELPER = Path(__file__).resolve().parent.parent / "aimactl" / "helper" / "aimahelper.py"
CHUNK = 1024 * 1024
TARGET = 0.9


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the one file of the server (`server.path`) for any GET, with sendfile after the headers."""

    wbufsize = 4 * CHUNK

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        """Send the file: headers through the buffered wfile, then the body with socket.sendfile."""
        size = os.path.getsize(self.server.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.flush()
        with open(self.server.path, "rb") as handle:
            self.connection.sendfile(handle)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's signature)
        """Quiet: no access log on stderr."""


def make_file(path: Path, size_mib: int) -> str:
    """Write size_mib MiB of os.urandom bytes to path in 1 MiB chunks; return their sha256."""
    hasher = hashlib.sha256()
    with open(path, "wb") as handle:
        for _ in range(size_mib):
            chunk = os.urandom(CHUNK)
            hasher.update(chunk)
            handle.write(chunk)
    return hasher.hexdigest()


def timed(cmd: list[str], stdin: str | None = None) -> tuple[float, str]:
    """Wall seconds of one command and its stdout; exits with its stderr when it fails."""
    os.sync()  # flush earlier writes (untimed) so one run's writeback does not land in the next one
    start = time.perf_counter()
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()} {done.stdout[-500:]}")
    return seconds, done.stdout


def helper_run(python: str, verb: str, params: dict) -> tuple[float, dict]:
    """Time one helper verb; its final line's result (checked ok)."""
    seconds, out = timed([python, str(HELPER), verb], json.dumps(params))
    final = json.loads(out.strip().splitlines()[-1])
    if not final.get("ok"):
        sys.exit(f"helper {verb} failed: {final}")
    return seconds, final["result"]


def version(cmd: list[str]) -> str:
    """First line of a version command's output."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    return (done.stdout or done.stderr).strip().splitlines()[0]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    """Build the file, serve it, time each tool --repeat times (interleaved) and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the served file in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the median is printed")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the helper (default: this one)")
    args = parser.parse_args()
    curl, sha256sum = shutil.which("curl"), shutil.which("sha256sum")
    if curl is None:
        print("curl is the peer and is not installed: apt-get install -y curl", file=sys.stderr)
        sys.exit(2)
    if sha256sum is None:
        print("sha256sum is missing: apt-get install -y coreutils", file=sys.stderr)
        sys.exit(2)
    python = args.python  # not a pyenv shim on PATH: its ~0.1 s bash start-up is no part of the helper
    print(f"nproc {os.cpu_count()}, {platform.system()} {platform.release()}")
    print(f"helper python: {version([python, '--version'])} ({python})")
    print(f"curl: {version([curl, '--version'])}")
    print(f"sha256sum: {version([sha256sum, '--version'])}")
    print(f"load average before: {loadavg()}")

    work = Path(tempfile.mkdtemp(prefix="aima-bench-fetch-"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FileHandler)
    try:
        source = work / "model.bin"
        expected = make_file(source, args.size_mib)
        server.path = str(source)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/model.bin"
        size = args.size_mib * CHUNK
        times: dict[str, list[float]] = {"curl": [], "fetch": [], "sha256sum": [], "verify": []}
        cached = work / "cache" / "model.bin"
        for run in range(args.repeat):
            dest = work / f"curl-{run}" / "model.bin"
            dest.parent.mkdir()
            seconds, _ = timed([curl, "-s", "-o", str(dest), url])
            if dest.stat().st_size != size:
                sys.exit(f"curl wrote {dest.stat().st_size} bytes, expected {size}")
            times["curl"].append(seconds)
            shutil.rmtree(dest.parent)
            shutil.rmtree(cached.parent, ignore_errors=True)
            seconds, result = helper_run(python, "fetch", {"url": url, "dest": str(cached), "sha256": expected})
            if result["size"] != size or result.get("existing"):
                sys.exit(f"helper fetch gave {result}")
            times["fetch"].append(seconds)
        for _ in range(args.repeat):
            seconds, out = timed([sha256sum, str(cached)])
            if out.split()[0] != expected:
                sys.exit(f"sha256sum gave {out.strip()}, expected {expected}")
            times["sha256sum"].append(seconds)
            seconds, result = helper_run(python, "verify", {"path": str(cached), "sha256": expected})
            times["verify"].append(seconds)
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(work, ignore_errors=True)

    mib = args.size_mib
    print(f"load average after: {loadavg()}")
    print(f"\n{mib} MiB, median of {args.repeat} (wall time of the whole command, process start included)\n")
    header = f"{'operation':<28} {'peer':<10} {'peer s':>8} {'MiB/s':>8} {'aimactl s':>10} {'MiB/s':>8}"
    print(f"{header} {'ratio':>6}  target")
    rows = [("fetch over HTTP", "curl", "curl", "fetch", True),
            ("verify cached file", "sha256sum", "sha256sum", "verify", False)]
    for label, peer, peer_key, aima_key, has_target in rows:
        peer_s, aima_s = statistics.median(times[peer_key]), statistics.median(times[aima_key])
        ratio = peer_s / aima_s  # aimactl throughput / peer throughput
        verdict = f">= {TARGET}x {'PASS' if ratio >= TARGET else 'MISS'}" if has_target else "-"
        print(f"{label:<28} {peer:<10} {peer_s:>8.2f} {mib / peer_s:>8.0f} {aima_s:>10.2f} {mib / aima_s:>8.0f}"
              f" {ratio:>6.2f}  {verdict}")
    print("\nratio = aimactl throughput / peer throughput. The helper fsyncs the file and its directory before")
    print("renaming; curl does not (each run starts after an untimed sync, so earlier writes are not counted).")
    for key, values in times.items():
        print(f"  {key}: " + ", ".join(f"{value:.2f}" for value in values))


if __name__ == "__main__":
    main()
