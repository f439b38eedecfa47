"""Pure parsers from what a host reports about its GPUs to GpuFacts: NVML values (pynvml, on the controller or
in the helper) and nvidia-smi output (`--query-gpu=... --format=csv`, with or without header and units, and the
banner's `CUDA Version`).

NOT_SUPPORTED from NVML (the helper writes "N/A") and nvidia-smi's `[N/A]` / `[Not Supported]` become None.
A GPU whose memory total cannot be read (DGX Spark GB10, Jetson) is marked `unified`: it allocates from system
RAM (see aimactl/core/facts.py for what is usable then).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aimactl.core.facts import GpuFacts

MIB = 1024**2
NOT_SUPPORTED = "N/A"
_MISSING = re.compile(r"^\[?(n/?a|not supported|unknown error|insufficient permissions|gpu is lost)\]?$", re.I)
_UNITS = re.compile(r"\s*(mib|w|%|c|mhz)$", re.I)
_CUDA = re.compile(r"CUDA Version\s*:\s*([0-9]+(?:\.[0-9]+)*)")
_HEADER_FIELD = re.compile(r"^([a-z_.]+)(?:\s*\[[^\]]*\])?$")


class GpuParseError(ValueError):
    """Output that is not what nvidia-smi or NVML writes."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and (value.strip() == "" or bool(_MISSING.match(value.strip()))))


def _unsupported(value: Any) -> bool:
    """NOT_SUPPORTED by design (NVML) / `[N/A]`, `[Not Supported]` (nvidia-smi): what a GB10 answers for memory.
    A transient failure (`[Unknown Error]`, an NVML error) is not a reason to call a GPU unified."""
    return isinstance(value, str) and value.strip().strip("[]").lower() in ("n/a", "not supported")


def _number(value: Any) -> float | None:
    """A number from NVML or nvidia-smi text (`81559`, `81559 MiB`, `69.88 W`, `[N/A]`); None when missing."""
    if _missing(value):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = _UNITS.sub("", str(value).strip())
    try:
        return float(text)
    except ValueError:
        raise GpuParseError(f"not a number: {value!r}") from None


def _int(value: Any, scale: float = 1.0) -> int | None:
    number = _number(value)
    return None if number is None else int(round(number * scale))


def _watts(value: Any, scale: float) -> float | None:
    number = _number(value)
    return None if number is None else round(number * scale, 2)


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value).strip()


def _gpu(values: Mapping[str, Any], *, memory_scale: float, power_scale: float) -> GpuFacts:
    """One GPU from named raw values; memory is unified when its total cannot be read."""
    total = _int(values.get("memory_total"), memory_scale)
    return GpuFacts(
        index=_int(values.get("index")) or 0,
        uuid=_text(values.get("uuid")) or "",
        name=_text(values.get("name")) or "",
        memory_total=total,
        memory_used=_int(values.get("memory_used"), memory_scale),
        memory_free=_int(values.get("memory_free"), memory_scale),
        utilization=_int(values.get("utilization")),
        temperature=_int(values.get("temperature")),
        power_draw=_watts(values.get("power_draw"), power_scale),
        power_limit=_watts(values.get("power_limit"), power_scale),
        mig_mode=_text(values.get("mig_mode")),
        unified=total is None and _unsupported(values.get("memory_total")),
    )


def gpus_from_nvml(raw: Sequence[Mapping[str, Any]]) -> tuple[GpuFacts, ...]:
    """GPUs from NVML values as the helper reads them: memory in bytes, power in milliwatts."""
    out = []
    for item in raw:
        values = {**item, "power_draw": item.get("power_draw_mw"), "power_limit": item.get("power_limit_mw")}
        out.append(_gpu(values, memory_scale=1.0, power_scale=0.001))
    return tuple(out)


def cuda_from_nvml(value: Any) -> str | None:
    """NVML's CUDA driver version (12040) as `12.4`."""
    number = _int(value)
    return None if number is None else f"{number // 1000}.{number % 1000 // 10}"


# nvidia-smi --query-gpu field -> GpuFacts raw key; any other field is ignored.
SMI_FIELDS = {"index": "index", "uuid": "uuid", "gpu_uuid": "uuid", "name": "name", "gpu_name": "name",
              "memory.total": "memory_total", "memory.used": "memory_used", "memory.free": "memory_free",
              "utilization.gpu": "utilization", "temperature.gpu": "temperature", "power.draw": "power_draw",
              "power.limit": "power_limit", "enforced.power.limit": "power_limit", "mig.mode.current": "mig_mode",
              "driver_version": "driver_version"}


def _header(row: Sequence[str]) -> list[str] | None:
    """Field names of a `--format=csv` header row (`memory.total [MiB]`), or None when the row is data."""
    names = []
    for cell in row:
        match = _HEADER_FIELD.match(cell.strip())
        if not match:
            return None
        names.append(match.group(1))
    return names if any(n in SMI_FIELDS for n in names) else None


def parse_smi_csv(text: str, fields: Sequence[str] | None = None) -> tuple[tuple[GpuFacts, ...], str | None]:
    """GPUs and driver version from `nvidia-smi --query-gpu=FIELDS --format=csv[,noheader][,nounits]`.

    `fields` names the queried fields when the output has no header; a header, when present, wins. Values may
    carry units (`MiB`, `W`, `%`); `[N/A]` and `[Not Supported]` are missing values.
    """
    rows = [r for r in csv.reader(io.StringIO(text.strip()), skipinitialspace=True) if any(c.strip() for c in r)]
    if rows and (header := _header(rows[0])) is not None:
        names, rows = header, rows[1:]
    elif fields is not None:
        names = list(fields)
    else:
        raise GpuParseError("nvidia-smi CSV without a header needs the queried field names")
    gpus, drivers = [], set()
    for position, row in enumerate(rows):
        if len(row) != len(names):
            raise GpuParseError(f"row {position + 1} has {len(row)} values for {len(names)} fields: {row}")
        values = {SMI_FIELDS[n]: v for n, v in zip(names, row) if n in SMI_FIELDS}
        values.setdefault("index", position)
        if (driver := _text(values.get("driver_version"))) is not None:
            drivers.add(driver)
        gpus.append(_gpu(values, memory_scale=MIB, power_scale=1.0))
    return tuple(gpus), (sorted(drivers)[0] if drivers else None)


def parse_cuda_version(text: str) -> str | None:
    """`CUDA Version: 12.4` from the nvidia-smi banner (or `CUDA Version : 12.4` from `nvidia-smi -q`)."""
    match = _CUDA.search(text)
    return match.group(1) if match else None


def parse_probe_gpus(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The helper's `probe` GPU answer -> {gpus, driver_version, cuda_version, source, gpu_note} for HostFacts."""
    source = str(raw.get("source", "none"))
    if source == "nvml":
        return {"gpus": gpus_from_nvml(raw.get("gpus") or []), "driver_version": _text(raw.get("driver_version")),
                "cuda_version": cuda_from_nvml(raw.get("cuda_driver_version")), "source": source, "gpu_note": None}
    if source == "nvidia-smi":
        gpus, driver = parse_smi_csv(str(raw.get("csv", "")), raw.get("fields"))
        return {"gpus": gpus, "driver_version": driver, "cuda_version": _text(raw.get("cuda_version")),
                "source": source, "gpu_note": None}
    return {"gpus": (), "driver_version": None, "cuda_version": None, "source": "none",
            "gpu_note": _text(raw.get("note"))}
