"""Hosts: what aimactl learns from and does on the machines it converges.

`procnet` reads the listening sockets of the local host (and parses the same text fetched from remote hosts).
"""
