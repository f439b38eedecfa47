"""Notations people write in manifests: sizes, durations, ports, volumes, port ranges."""

from __future__ import annotations

import pytest

from aimactl.manifest.units import (
    PortMapping,
    parse_bytes,
    parse_duration,
    parse_port,
    parse_port_range,
    parse_volume,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("24GiB", 24 * 2**30), ("24Gi", 24 * 2**30), ("8G", 8 * 10**9), ("512MiB", 512 * 2**20),
    ("1.5GiB", int(1.5 * 2**30)), (1024, 1024), ("100", 100), ("491MB", 491 * 10**6),
])
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1", "12 parsecs", True])
def test_bad_sizes_say_how_to_write_one(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("30s", 30), ("20m", 1200), ("1h30m", 5400), ("500ms", 0.5), (15, 15), ("90", 90),
])
def test_durations(text: str | int, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "10 minutes", "1h 30m", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "expected"), [
    (8080, PortMapping(8080, 8080)),
    ("8080:80", PortMapping(8080, 80)),
    ("127.0.0.1:8080:80/tcp", PortMapping(8080, 80, "127.0.0.1", "tcp")),
    ("5353:53/udp", PortMapping(5353, 53, "", "udp")),
])
def test_port_notations_mean_the_same_mapping(text: str | int, expected: PortMapping) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("80:http", "not a port number"), ("70000", "not a port number"), ("8080:80/sctp", "tcp or udp"),
    ("localhost:8080:80", "IPv4"), ("[::1]:80:80", "IPv6"),
])
def test_bad_ports(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_port(text)


def test_volumes() -> None:
    assert parse_volume("data:/data").read_only is False
    assert parse_volume("/srv/x:/x:ro").read_only is True
    for bad in ["/only", "a:relative", "a:/b:rx"]:
        with pytest.raises(ValueError):
            parse_volume(bad)


def test_port_ranges() -> None:
    assert parse_port_range("9000-9100") == (9000, 9100)
    for bad in ["9100-9000", "9000", "a-b"]:
        with pytest.raises(ValueError):
            parse_port_range(bad)
