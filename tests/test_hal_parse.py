"""The HAL's parsers on outputs captured from real GPUs (tests/data/gpus/README.md says where each came from):
nvidia-smi CSV with and without header and units, `[N/A]` on a DGX Spark (GB10), MIG modes, the banner's CUDA
version, and the NVML values that feed the fake seam."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aimactl.core.facts import GIB, HostFacts, os_reserve
from aimactl.hosts.facts import FAKE_ENV, collect_facts, facts_from_probe, fake_source
from aimactl.hosts.gpus import GpuParseError, cuda_from_nvml, parse_cuda_version, parse_smi_csv

DATA = Path(__file__).parent / "data" / "gpus"
MIB = 1024**2


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_gb10_memory_is_not_available_and_the_gpu_is_unified() -> None:
    gpus, driver = parse_smi_csv(read("smi-gb10-query.csv"))
    assert [(g.index, g.name, g.memory_total, g.memory_free, g.unified) for g in gpus] == [
        (0, "NVIDIA GB10", None, None, True)]
    assert driver is None


def test_gb10_without_header_uses_the_queried_fields() -> None:
    gpus, _ = parse_smi_csv(read("smi-gb10-memory-noheader.txt"), ["memory.used", "memory.total",
                                                                     "utilization.memory"])
    assert len(gpus) == 1 and gpus[0].memory_used is None and gpus[0].unified


def test_csv_without_header_or_fields_is_refused() -> None:
    with pytest.raises(GpuParseError, match="field names"):
        parse_smi_csv(read("smi-gb10-memory-noheader.txt"))


def test_mig_modes_per_gpu_with_an_unknown_column_ignored() -> None:
    gpus, _ = parse_smi_csv(read("smi-mig-query.csv"))
    assert [(g.index, g.uuid[:12], g.mig_mode) for g in gpus] == [
        (0, "GPU-ec845691", "Enabled"), (1, "GPU-91672fbd", "Disabled"), (2, "GPU-b4199570", "Disabled"),
        (3, "GPU-1a4dff29", "Disabled")]
    assert not any(g.unified for g in gpus), "memory was not queried: not a reason to call it unified"


def test_mig_not_supported_on_geforce_reads_as_none() -> None:
    gpus, _ = parse_smi_csv(read("smi-mig-current-rtx.csv"))
    assert [g.mig_mode for g in gpus] == [None]


def test_noheader_nounits_row_with_many_fields() -> None:
    fields = ["power.limit", "power.min_limit", "power.max_limit", "memory.total", "vbios_version",
              "driver_version", "name", "gpu_uuid", "power.draw", "temperature.gpu", "temperature.memory",
              "clocks.current.graphics", "clocks.sm", "clocks.mem", "utilization.gpu", "utilization.memory",
              "fan.speed", "pcie.link.width.current", "pstate"]
    gpus, driver = parse_smi_csv(read("smi-rtx2080-noheader-nounits.txt"), fields)
    gpu = gpus[0]
    assert (gpu.name, gpu.uuid, gpu.memory_total, gpu.power_draw, gpu.power_limit, gpu.temperature,
            gpu.utilization) == ("GeForce RTX 2080", "GPU-22b2c6ac-2d49-4863-197c-9c469071178a", 7979 * MIB,
                                 176.98, 200.0, 45, 86)
    assert driver == "440.64"


def test_header_with_units_and_an_unknown_error_value() -> None:
    gpus, _ = parse_smi_csv(read("smi-rtx2080ti-units.csv"))
    gpu = gpus[0]
    assert (gpu.name, gpu.utilization, gpu.temperature, gpu.power_draw, gpu.power_limit) == (
        "GeForce RTX 2080 Ti", 100, 56, 228.82, 210.0)


def test_a_memory_read_error_is_not_unified_memory() -> None:
    fields = ["index", "name", "memory.total"]
    gpus, _ = parse_smi_csv("0, NVIDIA GeForce RTX 4090, [Unknown Error]\n1, NVIDIA GB10, [N/A]\n", fields)
    assert [(g.memory_total, g.unified) for g in gpus] == [(None, False), (None, True)]


def test_a_row_with_missing_values_is_an_error_not_a_guess() -> None:
    with pytest.raises(GpuParseError, match="row 1 has 2 values for 3 fields"):
        parse_smi_csv("0, NVIDIA GB10\n", ["index", "name", "memory.total"])


@pytest.mark.parametrize("banner, cuda", [("banner-h100.txt", "12.4"), ("banner-rtx4090.txt", "12.4"),
                                          ("banner-gb10.txt", "13.0"), ("banner-a100-mig.txt", "11.6")])
def test_cuda_version_from_the_banner(banner: str, cuda: str) -> None:
    assert parse_cuda_version(read(banner)) == cuda


def test_cuda_version_from_nvml_encoding() -> None:
    assert [cuda_from_nvml(v) for v in (12040, 13000, 11060, "N/A")] == ["12.4", "13.0", "11.6", None]


def _fake_facts(name: str, mem_total: int = 64 * GIB, mem_available: int = 60 * GIB) -> HostFacts:
    source = fake_source({FAKE_ENV: str(DATA / name)}, "local")
    assert source is not None
    raw = source.gpus()
    probe = {"cpu_count": 8, "mem_total": raw.get("mem_total", mem_total),
             "mem_available": raw.get("mem_available", mem_available), "disk": None}
    return facts_from_probe(probe, raw, f"fake:{name}")


def test_h100_nvml_values() -> None:
    facts = _fake_facts("h100.json")
    gpu = facts.gpus[0]
    assert (facts.driver_version, facts.cuda_version, facts.source) == ("550.90.07", "12.4", "fake:h100.json")
    assert (gpu.memory_total, facts.free_memory(gpu), gpu.power_draw, gpu.power_limit, gpu.mig_mode) == (
        81559 * MIB, (81559 - 72790) * MIB, 145.0, 700.0, "Disabled")
    assert not facts.unified


def test_gb10_usable_memory_is_ram_minus_the_os_reserve() -> None:
    facts = _fake_facts("gb10.json")
    gpu = facts.gpus[0]
    assert gpu.unified and facts.unified and gpu.memory_total is None and gpu.power_limit is None
    ram = 128501256192
    assert facts.usable_memory(gpu) == ram - 16 * GIB
    assert facts.free_memory(gpu) == min(ram - 16 * GIB, ram - 6910320640)
    assert facts.to_dict()["gpus"][0]["usable_memory"] == ram - 16 * GIB


def test_os_reserve_is_smaller_on_small_machines() -> None:
    assert (os_reserve(32 * GIB), os_reserve(64 * GIB), os_reserve(128 * GIB)) == (8 * GIB, 16 * GIB, 16 * GIB)


def test_mig_enabled_a100_has_no_utilisation() -> None:
    facts = _fake_facts("a100-mig.json")
    assert [(g.mig_mode, g.utilization) for g in facts.gpus] == [("Disabled", 58), ("Enabled", None)]


def test_fake_selected_per_host() -> None:
    environ = {FAKE_ENV: f"edge-1={DATA / 'h100.json'},edge-2={DATA / 'gb10.json'}"}
    assert [getattr(fake_source(environ, h), "path", None) for h in ("edge-1", "edge-2", "edge-3")] == [
        str(DATA / "h100.json"), str(DATA / "gb10.json"), None]


def test_local_facts_are_real_and_the_fake_replaces_only_the_gpus(tmp_path: Path) -> None:
    real = collect_facts("local", str(tmp_path), {})
    assert real.cpu_count == os.cpu_count() and real.mem_total and real.disk_free and real.disk_path == str(tmp_path)
    assert real.load_1m is not None and real.load_1m >= 0
    faked = collect_facts("local", str(tmp_path), {FAKE_ENV: str(DATA / "rtx4090.json")})
    assert [g.name for g in faked.gpus] == ["NVIDIA GeForce RTX 4090"] * 2 and faked.cpu_count == os.cpu_count()
    assert faked.source == "fake:rtx4090.json"


def test_a_broken_fake_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="cannot read the captured NVML values"):
        collect_facts("local", str(tmp_path), {FAKE_ENV: str(bad)})
