"""Listening sockets from /proc/net: the pure parser on tables recorded from a real machine, then live."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from aimactl.core.observed import Listener
from aimactl.hosts.procnet import local_listeners, parse_proc_net

DATA = Path(__file__).parent / "data" / "procnet"


def _table(name: str) -> str:
    return (DATA / name).read_text()


def test_tcp_keeps_only_listen_rows() -> None:
    assert parse_proc_net(_table("tcp"), "tcp", ipv6=False) == [
        Listener("0.0.0.0", 2024, "tcp"),
        Listener("127.0.0.1", 18765, "tcp"),
    ]


def test_tcp6_converts_addresses_to_colon_form() -> None:
    assert parse_proc_net(_table("tcp6"), "tcp", ipv6=True) == [Listener("::", 18766, "tcp")]


def test_udp_keeps_bound_unconnected_sockets() -> None:
    assert parse_proc_net(_table("udp"), "udp", ipv6=False) == [Listener("127.0.0.1", 18767, "udp")]
    assert parse_proc_net(_table("udp6"), "udp", ipv6=True) == [Listener("::1", 18768, "udp")]


def test_ipv4_mapped_and_full_ipv6_addresses() -> None:
    header = "  sl  local_address remote_address st\n"
    mapped = "   0: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A\n"
    full = "   1: B80D0120000000000000000001000000:0050 00000000000000000000000000000000:0000 0A\n"
    assert parse_proc_net(header + mapped + full, "tcp", ipv6=True) == [
        Listener("2001:db8::1", 80, "tcp"),
        Listener("::ffff:127.0.0.1", 8080, "tcp"),
    ]


def test_big_endian_hosts_and_malformed_lines() -> None:
    text = "header\n 0: 7F000001:1F90 00000000:0000 0A\n 1: garbage\n 2: 7F0001:1F90 00000000:0000 0A\n\n"
    assert parse_proc_net(text, "tcp", ipv6=False, byteorder="big") == [Listener("127.0.0.1", 8080, "tcp")]


def test_duplicate_sockets_are_reported_once() -> None:
    row = " 0: 0100007F:1F90 00000000:0000 0A\n"
    assert parse_proc_net("header\n" + row + row, "tcp", ipv6=False) == [Listener("127.0.0.1", 8080, "tcp")]


def test_missing_files_are_fine(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(_table("tcp"))
    assert local_listeners(str(tmp_path)) == parse_proc_net(_table("tcp"), "tcp", ipv6=False)
    assert local_listeners(str(tmp_path / "absent")) == []


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
def test_local_listeners_sees_a_live_tcp_and_udp_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        found = local_listeners()
        assert Listener("127.0.0.1", tcp.getsockname()[1], "tcp") in found
        assert Listener("127.0.0.1", udp.getsockname()[1], "udp") in found
