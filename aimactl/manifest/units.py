"""Pure parsers for the quantities manifests use: byte sizes, durations, ports, volumes.

They live apart from the kinds so the planner can reuse them without pydantic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40,
    "p": 10**15, "pb": 10**15, "pi": 2**50, "pib": 2**50,
}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bytes(value: str | int) -> int:
    """Turn ``24GiB``, ``512Mi``, ``8G`` or a plain integer into bytes (binary and decimal units)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number or a string like '24GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size: use e.g. 24GiB, 512MiB, 8G or a number of bytes")
    number, unit = match.groups()
    return int(float(number) * _SIZE_FACTORS[(unit or "").lower()])


def parse_duration(value: str | int | float) -> float:
    """Turn ``20m``, ``1h30m``, ``500ms`` or a number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '20m'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration: use e.g. 30s, 20m, 1h30m or a number of seconds")
    return sum(float(n) * _DURATION_FACTORS[u] for n, u in parts)


@dataclass(frozen=True)
class PortMapping:
    """One published port: host address, host port, container port and protocol."""

    host_port: int
    container_port: int
    host_ip: str = ""
    protocol: str = "tcp"

    def __str__(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.container_port}/{self.protocol}"


def _port_number(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{what} {text!r} is not a port number (1-65535)")
    return int(text)


def parse_port(value: str | int) -> PortMapping:
    """Parse Compose-style port notations: ``8080``, ``"8080:80"``, ``127.0.0.1:8080:80/tcp``.

    A bare port publishes the same number on the host, as Compose users expect for a fixed port.
    """
    text = str(value).strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol {protocol!r} must be tcp or udp")
    parts = text.rsplit(":", 2) if text.count(":") <= 2 else None
    if text.startswith("[") or parts is None:
        raise ValueError(f"{value!r}: IPv6 host addresses are not supported; use HOST_IP:HOST:CONTAINER")
    if len(parts) == 1:
        port = _port_number(parts[0], "port")
        return PortMapping(port, port, "", protocol)
    if len(parts) == 2:
        return PortMapping(_port_number(parts[0], "host port"), _port_number(parts[1], "container port"),
                           "", protocol)
    ip = parts[0]
    if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", ip):
        raise ValueError(f"host address {ip!r} is not an IPv4 address")
    return PortMapping(_port_number(parts[1], "host port"), _port_number(parts[2], "container port"),
                       ip, protocol)


@dataclass(frozen=True)
class VolumeMount:
    """One volume: a named volume or host path, the path inside, and whether it is read-only."""

    source: str
    target: str
    read_only: bool = False


def parse_volume(value: str) -> VolumeMount:
    """Parse ``SOURCE:TARGET[:ro|rw]`` where SOURCE is a host path or a named volume."""
    parts = str(value).split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"{value!r} is not a volume: use SOURCE:/path/in/container[:ro]")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ValueError(f"volume mode {mode!r} must be ro or rw")
    if not parts[1].startswith("/"):
        raise ValueError(f"volume target {parts[1]!r} must be an absolute path inside the container")
    return VolumeMount(parts[0], parts[1], mode == "ro")


def parse_port_range(value: str) -> tuple[int, int]:
    """Parse ``9000-9100`` into an inclusive range of host ports."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a port range: use START-END, e.g. 9000-9100")
    start, end = _port_number(match[1], "port"), _port_number(match[2], "port")
    if start > end:
        raise ValueError(f"port range {value!r} starts after it ends")
    return start, end
