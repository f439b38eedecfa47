"""Hardware facts of a host (CPU, RAM, disk, GPUs) as plain data: what placement and feasibility reason about.

Filled by aimactl/hosts/facts.py from NVML (pynvml) on the local host or from the helper's `probe` on other
hosts (pynvml there, else nvidia-smi), through pure parsers. Sizes are bytes; None means "not reported" (for
example NOT_SUPPORTED from NVML, `[N/A]` from nvidia-smi), never zero.

Unified memory (DGX Spark / GB10, Jetson-like): the GPU has no memory of its own, NVML answers NOT_SUPPORTED to
memory queries, and the GPU allocates from system RAM. Then the GPU's usable memory is the system RAM minus an
OS reserve (16 GiB when RAM >= 64 GiB, else 8 GiB), and what is free is bounded by what the OS has available.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

GIB = 1024**3
HOT_CELSIUS = 85
"""Above this a GPU gets a warning in the plan (it throttles, and may be failing its cooling)."""


def os_reserve(ram_total: int) -> int:
    """RAM kept for the OS on a unified-memory machine: 16 GiB with 64 GiB or more of RAM, else 8 GiB."""
    return 16 * GIB if ram_total >= 64 * GIB else 8 * GIB


@dataclass(frozen=True)
class GpuFacts:
    """One GPU as NVML or nvidia-smi reports it. Memory in bytes, power in watts, temperature in Celsius."""

    index: int
    uuid: str
    name: str
    memory_total: int | None = None
    memory_used: int | None = None
    memory_free: int | None = None
    utilization: int | None = None
    """GPU utilisation in percent over the driver's last sample period."""
    temperature: int | None = None
    power_draw: float | None = None
    power_limit: float | None = None
    mig_mode: str | None = None
    """`Enabled` / `Disabled` when the GPU supports MIG, else None."""
    unified: bool = False
    """The GPU shares system RAM (memory queries NOT_SUPPORTED): see usable/free below."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (`aimactl hosts -o json`, the fake NVML files)."""
        return asdict(self)


@dataclass(frozen=True)
class HostFacts:
    """Everything aimactl knows about a host's hardware at one observation."""

    cpu_count: int | None = None
    load_1m: float | None = None
    """1-minute load average: with `cpu_count`, how busy the CPUs are (a load of 2.0 on 2 CPUs is full)."""
    mem_total: int | None = None
    mem_available: int | None = None
    disk_path: str | None = None
    """The host's dataDir: the disk figures are of the filesystem that holds (or will hold) it."""
    disk_total: int | None = None
    disk_free: int | None = None
    gpus: tuple[GpuFacts, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    source: str = "none"
    """Where the GPU facts came from: `nvml`, `nvidia-smi`, `none` (no driver: no GPUs) or `fake:<file>`."""
    gpu_note: str | None = None
    """Why no GPU facts could be read (no driver, nvidia-smi missing ...); informational, never an error."""

    @property
    def unified(self) -> bool:
        """Any GPU of the host shares system memory."""
        return any(g.unified for g in self.gpus)

    def gpu(self, ident: str | int) -> GpuFacts | None:
        """A GPU by index (`0`, 0) or UUID (`GPU-...`)."""
        text = str(ident)
        return next((g for g in self.gpus if str(g.index) == text or g.uuid == text), None)

    def usable_memory(self, gpu: GpuFacts) -> int | None:
        """Memory a workload can have on this GPU: its own total, or RAM minus the OS reserve when unified."""
        if gpu.memory_total is not None:
            return gpu.memory_total
        if gpu.unified and self.mem_total is not None:
            return max(0, self.mem_total - os_reserve(self.mem_total))
        return None

    def free_memory(self, gpu: GpuFacts) -> int | None:
        """Memory free on this GPU now: NVML's free, or for unified memory the usable memory bounded by what
        the OS has available (the reserve is headroom; what is in use beyond it is taken)."""
        if gpu.memory_free is not None:
            return gpu.memory_free
        usable = self.usable_memory(gpu)
        if gpu.unified and usable is not None and self.mem_available is not None:
            return min(usable, self.mem_available)
        return usable

    def used_memory(self, gpu: GpuFacts) -> int | None:
        """Memory in use on this GPU now (by anyone): usable minus free."""
        if gpu.memory_used is not None:
            return gpu.memory_used
        usable, free = self.usable_memory(gpu), self.free_memory(gpu)
        return None if usable is None or free is None else max(0, usable - free)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with each GPU's usable and free memory worked out (unified memory included)."""
        data = asdict(self)
        data["gpus"] = [{**g.to_dict(), "usable_memory": self.usable_memory(g), "free_memory": self.free_memory(g)}
                        for g in self.gpus]
        return data


def gpu_from_dict(data: dict[str, Any]) -> GpuFacts:
    """A GpuFacts from its JSON form (extra keys such as usable_memory are ignored)."""
    known = {k: data[k] for k in GpuFacts.__dataclass_fields__ if k in data}
    return GpuFacts(**known)


def facts_from_dict(data: dict[str, Any]) -> HostFacts:
    """A HostFacts from its JSON form (plan files, captured observations)."""
    known = {k: data[k] for k in HostFacts.__dataclass_fields__ if k in data and k != "gpus"}
    return HostFacts(**known, gpus=tuple(gpu_from_dict(g) for g in data.get("gpus") or ()))


def with_gpus(facts: HostFacts, gpus: tuple[GpuFacts, ...], **changes: Any) -> HostFacts:
    """The same host facts with other GPUs (and other fields changed)."""
    return replace(facts, gpus=gpus, **changes)

