"""`aimactl hosts`: what each host has: CPU, RAM, disk under dataDir, and every GPU with its memory, utilisation,
temperature, power, driver and CUDA versions and MIG mode. Unified memory (GB10) is said so."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import typer
from rich.markup import escape

from aimactl.cli.output import console, error, print_json
from aimactl.cli.stack import Common, load_or_exit


def gather(common: Common) -> list[tuple[str, Any, str | None]]:
    """(host, HostFacts or None, why not) for every host of the manifests (the implicit local host without -f)."""
    from aimactl.converge.connections import Connections, resolve_hosts
    from aimactl.converge.observe import observe_facts
    from aimactl.core.desired import host_infos
    from aimactl.manifest import Manifests

    manifests = load_or_exit(common) if common.files else Manifests()
    connections = Connections(resolve_hosts(host_infos(manifests.resources), engine_facts=False), os.environ)
    try:
        names = sorted(connections.hosts)
        with ThreadPoolExecutor(max_workers=max(1, min(common.parallelism, len(names)))) as pool:
            found = list(pool.map(lambda h: observe_facts(connections, h), names))
    finally:
        connections.close()
    return [(name, facts, why) for name, (facts, why) in zip(names, found)]


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


def _gpu_row(host: str, facts: Any, gpu: Any) -> list[str]:
    """One GPU: memory as used/usable (unified: out of RAM minus the OS reserve), and the live readings."""
    usable, used = facts.usable_memory(gpu), facts.used_memory(gpu)
    memory = f"{_size(used)} / {_size(usable)}" + (" unified" if gpu.unified else "")
    power = "-" if gpu.power_draw is None else f"{gpu.power_draw:.0f} W" + (
        f" / {gpu.power_limit:.0f} W" if gpu.power_limit is not None else "")
    return [host, str(gpu.index), gpu.name, memory, "-" if gpu.utilization is None else f"{gpu.utilization}%",
            "-" if gpu.temperature is None else f"{gpu.temperature} C", power, gpu.mig_mode or "-", gpu.uuid or "-"]


def hosts_command(common: Common, output: str) -> None:
    """A table of hosts, then one of GPUs; `-o json` gives the facts as data. Exit 1 when a host cannot answer."""
    rows = gather(common)
    failed = [why for _, facts, why in rows if facts is None]
    if output == "json":
        print_json([{"host": name, "facts": facts.to_dict() if facts else None, "error": why}
                    for name, facts, why in rows])
        if failed:
            raise typer.Exit(1)
        return
    from rich.table import Table

    hosts = Table(box=None, pad_edge=False)
    for column in ("HOST", "CPUS", "RAM AVAILABLE / TOTAL", "DISK FREE", "GPUS", "DRIVER", "CUDA", "SOURCE"):
        hosts.add_column(column)
    gpus = Table(box=None, pad_edge=False)
    for column in ("HOST", "GPU", "NAME", "MEMORY USED / USABLE", "UTIL", "TEMP", "POWER", "MIG", "UUID"):
        gpus.add_column(column)
    for name, facts, why in rows:
        if facts is None:
            error(escape(str(why)))
            continue
        ram = f"{_size(facts.mem_available)} / {_size(facts.mem_total)}"
        count = str(len(facts.gpus)) + (" (unified memory)" if facts.unified else "")
        cpus = f"{facts.cpu_count or '-'}" + (f" (load {facts.load_1m:.1f})" if facts.load_1m is not None else "")
        hosts.add_row(*(escape(str(x)) for x in (name, cpus, ram, _size(facts.disk_free), count,
                                                 facts.driver_version or "-", facts.cuda_version or "-",
                                                 facts.source)))
        for gpu in facts.gpus:
            gpus.add_row(*(escape(x) for x in _gpu_row(name, facts, gpu)))
    out = console()
    out.print(hosts)
    out.print()
    out.print(gpus if gpus.row_count else "No GPUs." + "".join(
        f"\n  {escape(name)}: {escape(facts.gpu_note)}" for name, facts, _ in rows if facts and facts.gpu_note))
    if failed:
        raise typer.Exit(1)
