"""Listening sockets from /proc/net/{tcp,tcp6,udp,udp6}: who holds which port on a host.

`parse_proc_net` is pure, so the same parser serves the local host and the text a helper reads on a remote one.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from aimactl.core.observed import Listener

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
"""An unconnected UDP socket (TCP_CLOSE in the kernel's table): it is bound and receives on its port."""
ByteOrder = Literal["little", "big"]
PROC_NET_FILES = (("tcp", "tcp", False), ("tcp6", "tcp", True), ("udp", "udp", False), ("udp6", "udp", True))


def parse_proc_net(text: str, protocol: str, ipv6: bool, byteorder: ByteOrder = "little") -> list[Listener]:
    """The listening sockets in the text of one /proc/net file, unique and sorted.

    `protocol` is `tcp` (keeps state 0A, LISTEN) or `udp` (keeps state 07, unconnected bound sockets);
    `ipv6` tells tcp6/udp6 from tcp/udp. The kernel prints addresses as 32-bit words in the host's byte order
    (`byteorder`, little on x86 and arm64) and the port in hex. Lines that do not parse are skipped.
    """
    wanted = TCP_LISTEN if protocol == "tcp" else UDP_UNCONNECTED
    found = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3].upper() != wanted:
            continue
        address, _, port = fields[1].partition(":")
        try:
            found.add(Listener(_address(address, ipv6, byteorder), int(port, 16), protocol))
        except ValueError:
            continue
    return sorted(found, key=_listener_order)


def _address(hex_text: str, ipv6: bool, byteorder: ByteOrder) -> str:
    """Dotted (IPv4) or compressed colon (IPv6) form of a /proc/net address."""
    size = 16 if ipv6 else 4
    if len(hex_text) != 2 * size:
        raise ValueError(f"address {hex_text!r} is not {size} bytes")
    words = [int(hex_text[i : i + 8], 16).to_bytes(4, byteorder) for i in range(0, len(hex_text), 8)]
    packed = b"".join(words)
    if not ipv6:
        return str(ipaddress.IPv4Address(packed))
    address = ipaddress.IPv6Address(packed)
    # IPv4-mapped addresses print as ::ffff:a.b.c.d on every Python (3.13 changed str() to do so)
    return f"::ffff:{address.ipv4_mapped}" if address.ipv4_mapped else str(address)


def _listener_order(listener: Listener) -> tuple[str, int, str]:
    return (listener.protocol, listener.port, listener.ip)


def local_listeners(proc_net: str = "/proc/net") -> list[Listener]:
    """Every listening TCP socket and bound UDP socket of this host's network namespace; missing files are skipped."""
    found: set[Listener] = set()
    for file_name, protocol, ipv6 in PROC_NET_FILES:
        try:
            text = (Path(proc_net) / file_name).read_text()
        except OSError:
            continue
        found.update(parse_proc_net(text, protocol, ipv6))
    return sorted(found, key=_listener_order)
