"""Start-up benchmark: median wall time of `aimactl --help` and of validating 500 manifests.

Run: `.venv/bin/python bench/startup.py [--runs N]`. Targets (issue 2): help under 0.3 s, 500 manifests under
1.5 s on the project's 2-core machine. `kubectl` is printed beside it as the peer when it is installed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"aimactl --help": 0.3, "aimactl validate (500 manifests)": 1.5}


def make_manifests(directory: Path, count: int = 500) -> None:
    """Write `count` documents (Models, Services, Apps, Pipelines, with templates) in 10 files."""
    docs = []
    for i in range(count // 5):
        docs += [
            f"apiVersion: aima.dev/v1\nkind: Model\nmetadata: {{name: m{i}}}\n"
            f"spec: {{source: 'hf://org/repo{i}/model.gguf@main', format: gguf}}\n",
            f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: s{i}, labels: {{tier: llm}}}}\n"
            f"spec:\n  engine: llamacpp\n  model: m{i}\n  resources: {{gpus: 1, gpuMemory: 8GiB}}\n"
            f"  env: {{A: '{{{{ vars.x }}}}', B: plain}}\n  health: {{path: /health, startupTimeout: 10m}}\n",
            f"apiVersion: aima.dev/v1\nkind: App\nmetadata: {{name: a{i}}}\nspec:\n  image: busybox\n"
            f"  ports: ['{10000 + i}:80']\n  dependsOn: [s{i}]\n  env: {{URL: '{{{{ services.s{i}.url }}}}/v1'}}\n",
            f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: c{i}}}\n"
            f"spec: {{engine: custom, image: busybox, command: [httpd, -f]}}\n",
            f"apiVersion: aima.dev/v1\nkind: Pipeline\nmetadata: {{name: p{i}}}\nspec:\n"
            f"  inputs: {{q: {{type: string}}}}\n  steps:\n"
            f"  - {{id: a, service: s{i}, op: chat, with: {{prompt: '{{{{ inputs.q }}}}'}}}}\n",
        ]
    per_file = len(docs) // 10
    for j in range(10):
        (directory / f"stack{j:02d}.yaml").write_text("---\n".join(docs[j * per_file:(j + 1) * per_file]))


def median_time(cmd: list[str], runs: int) -> float:
    """Median wall time of a command over `runs` runs (after one warm-up run); fails loudly on error."""
    subprocess.run(cmd, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Measure and print a table: what, aimactl median, target, peer."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    aimactl = shutil.which("aimactl", path=str(Path(sys.executable).parent)) or "aimactl"
    kubectl = shutil.which("kubectl")
    with tempfile.TemporaryDirectory() as tmp:
        make_manifests(Path(tmp))
        rows = [
            ("aimactl --help", [aimactl, "--help"], [kubectl, "--help"] if kubectl else None),
            ("aimactl validate (500 manifests)", [aimactl, "validate", "-f", tmp, "--var", "x=1"], None),
        ]
        print(f"{'benchmark':<36}{'aimactl (s)':>12}{'target (s)':>12}{'peer (s)':>14}  verdict")
        for name, cmd, peer in rows:
            value = median_time(cmd, args.runs)
            peer_text = f"{median_time(peer, args.runs):.3f} kubectl" if peer else "n/a"
            verdict = "ok" if value <= TARGETS[name] else "SLOW"
            print(f"{name:<36}{value:>12.3f}{TARGETS[name]:>12.2f}{peer_text:>14}  {verdict}")


if __name__ == "__main__":
    main()
