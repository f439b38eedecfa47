"""Collect a host's hardware facts: CPU count, RAM, disk under dataDir and GPUs.

The local host runs the helper's `probe` code in-process (NVML through pynvml, else nvidia-smi; /proc/meminfo,
os.cpu_count, shutil.disk_usage); other hosts run the helper's `probe` verb over their connector. Either answer
goes through the same pure parsers (aimactl/hosts/gpus.py), so every host's facts are read one way.

The NVML boundary is the one place a fake is allowed, for machines without a GPU: `AIMACTL_FAKE_NVML` names a
JSON file of NVML values captured from a real GPU (tests/data/gpus/*.json), for every host (`FILE`) or per host
(`edge-1=FILE,edge-2=FILE`). It replaces only the GPU part of the answer; CPU, RAM and disk stay real.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aimactl.core.facts import HostFacts
from aimactl.hosts.gpus import parse_probe_gpus

FAKE_ENV = "AIMACTL_FAKE_NVML"


class GpuSource(Protocol):
    """Where a host's raw GPU answer comes from (the helper's `probe_gpus()` form)."""

    def gpus(self) -> dict[str, Any]:
        """Raw GPU values: `{"source": "nvml" | "nvidia-smi" | "none", ...}`."""
        ...


class FakeNvml:
    """NVML values captured from a real GPU, read from a JSON file (see tests/data/gpus/README.md)."""

    def __init__(self, path: str):
        self.path = path

    def gpus(self) -> dict[str, Any]:
        """The captured answer, as NVML on that machine gave it; a bad file is a clear error."""
        try:
            data = json.loads(Path(self.path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{FAKE_ENV}={self.path}: cannot read the captured NVML values: {exc}") from None
        if not isinstance(data, dict) or data.get("source") not in ("nvml", "nvidia-smi"):
            raise ValueError(f"{FAKE_ENV}={self.path}: expected an object with source nvml or nvidia-smi")
        return data


def fake_source(environ: Mapping[str, str], host: str) -> FakeNvml | None:
    """The fake NVML file selected for `host` by AIMACTL_FAKE_NVML, if any."""
    value = environ.get(FAKE_ENV, "").strip()
    if not value:
        return None
    if "=" not in value:
        return FakeNvml(value)
    for part in value.split(","):
        name, _, path = part.partition("=")
        if name.strip() == host and path.strip():
            return FakeNvml(path.strip())
    return None


def facts_from_probe(result: Mapping[str, Any], gpus: Mapping[str, Any] | None = None,
                     source_label: str | None = None) -> HostFacts:
    """HostFacts from the helper's `probe` result; `gpus` replaces its GPU part (the fake NVML seam)."""
    gpu = parse_probe_gpus(gpus if gpus is not None else result.get("gpus") or {})
    disk = result.get("disk") or {}
    if source_label and gpu["source"] != "none":
        gpu["source"] = source_label
    return HostFacts(cpu_count=result.get("cpu_count"), load_1m=result.get("load_1m"),
                     mem_total=result.get("mem_total"), mem_available=result.get("mem_available"),
                     disk_path=disk.get("path"), disk_total=disk.get("total"), disk_free=disk.get("free"), **gpu)


def local_probe(data_dir: str) -> dict[str, Any]:
    """The helper's probe run in this process: the same code the helper runs on other hosts."""
    from aimactl.helper import aimahelper

    return dict(aimahelper.verb_probe({"data_dir": data_dir}))


def collect_facts(host: str, data_dir: str, environ: Mapping[str, str],
                  remote_probe: Callable[[], Mapping[str, Any]] | None = None) -> HostFacts:
    """One host's facts: `remote_probe` (the helper over the connector) for other hosts, in-process for local."""
    result = remote_probe() if remote_probe is not None else local_probe(data_dir)
    fake = fake_source(environ, host)
    if fake is None:
        return facts_from_probe(result)
    gpus = fake.gpus()
    # A unified-memory capture (GB10) carries its machine's RAM: there the GPU's memory is system memory.
    result = {**result, **{k: gpus[k] for k in ("mem_total", "mem_available") if k in gpus}}
    return facts_from_probe(result, gpus, f"fake:{Path(fake.path).name}")
