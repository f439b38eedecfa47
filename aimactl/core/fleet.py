"""Fleet semantics, pure: which hosts sit out a run, the per-host summary, and when a run stops early.

A host that cannot be reached is not a reason to refuse the whole plan: its resources are left out (nothing is
created or deleted there), the other hosts converge, and the command still exits 1 so that nobody mistakes a
partial run for a complete one. `--max-fail-percent` stops a run from spreading a failure across a fleet: once
more than that share of the hosts failed, no new step starts anywhere (Ansible's `max_fail_percentage`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from aimactl.core.checks import ERROR, Check, error, warning
from aimactl.core.observed import Observed

UNREACHABLE = "host-unreachable"
HOST_SCOPED = frozenset({UNREACHABLE})
"""Error codes that take one host out of the run instead of refusing the whole plan."""

DONE, FAILED, SKIPPED, UNCHANGED = "done", "failed", "skipped", "unchanged"
LEFT_ALONE = "; its resources are left untouched (nothing is created or deleted there) while the other hosts converge"


def unreachable_checks(observed: Observed) -> list[Check]:
    """One `host-unreachable` error per host that could not be observed, naming the host and why."""
    checks = []
    for name, host in sorted(observed.hosts.items()):
        if host.reachable:
            continue
        reason = str(host.error or "no reason given")
        # Connectors already name the host in their errors; say it once.
        text = reason if reason.startswith(f"host {name} ") else f"host {name} is unreachable: {reason}"
        checks.append(error(UNREACHABLE, text + LEFT_ALONE, host=name))
    return checks


def blocking(checks: Iterable[Check]) -> list[Check]:
    """The errors that refuse the whole plan: every error except those that only take a host out."""
    return [c for c in checks if c.severity == ERROR and c.code not in HOST_SCOPED]


def unreachable_hosts(checks: Iterable[Check]) -> dict[str, str]:
    """Host name -> why it could not be reached (its `host-unreachable` check, without the consequence)."""
    return {c.host: c.message.removesuffix(LEFT_ALONE) for c in checks if c.code == UNREACHABLE and c.host}


@dataclass(frozen=True)
class HostSummary:
    """One row of the per-host summary: could the host be reached, and what happened to its changes."""

    host: str
    reachable: bool
    done: int = 0
    failed: int = 0
    skipped: int = 0
    unchanged: int = 0
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the host was reached and none of its changes failed or was skipped."""
        return self.reachable and not self.failed and not self.skipped

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**asdict(self), "ok": self.ok}


def host_summary(hosts: Iterable[str], checks: Iterable[Check],
                 results: Iterable[tuple[str, str]] = ()) -> list[HostSummary]:
    """Per host (by name): reachable or not (with the reason), and its step results counted by status.

    `results` are `(host, status)` pairs, status one of done, failed, skipped, unchanged.
    """
    down = unreachable_hosts(checks)
    counts: dict[str, dict[str, int]] = {}
    for host, status in results:
        counts.setdefault(host, {}).setdefault(status, 0)
        counts[host][status] += 1
    rows = []
    for name in sorted(set(hosts) | set(down) | set(counts)):
        seen = counts.get(name, {})
        rows.append(HostSummary(name, name not in down, seen.get(DONE, 0), seen.get(FAILED, 0),
                                seen.get(SKIPPED, 0), seen.get(UNCHANGED, 0), down.get(name, "")))
    return rows


def over_fail_limit(failed: int, total: int, percent: int | None) -> bool:
    """True when more than `percent`% of `total` hosts failed (None: no limit). 0 stops at the first failure."""
    if percent is None or total <= 0:
        return False
    return failed * 100 > percent * total


def stop_message(failed: Iterable[str], total: int, percent: int) -> str:
    """Why a step was not started: which hosts failed, against the limit."""
    names = sorted(failed)
    return (f"not started: {len(names)} of {total} hosts failed ({', '.join(names)}), more than "
            f"--max-fail-percent {percent}")


def failed_hosts(summary: Iterable[HostSummary]) -> list[str]:
    """Hosts that were unreachable or had a failed step."""
    return [s.host for s in summary if not s.reachable or s.failed]


def held_back(wanted: Iterable[tuple[str, str, str]], edges: Mapping[str, set[str]],
              placements: Mapping[str, set[str]], down: Iterable[str]) -> tuple[set[str], list[Check]]:
    """The addresses to leave alone because a resource they depend on runs on an unreachable host.

    What such a resource publishes (its port, hence the URL a dependent renders) cannot be observed, so a
    dependent planned now could be rewired to a wrong address. `wanted` holds `(address, key, host)` of the
    actionable changes; `placements` maps a key to the hosts it runs on (models excluded: a model serves only
    its own host). Returns the addresses and one warning each.
    """
    down = set(down)
    held: set[str] = set()
    checks = []
    for addr, key, host in wanted:
        blockers = sorted((dep, h) for dep in edges.get(key, ()) for h in placements.get(dep, ()) if h in down)
        if host in down or not blockers:
            continue
        dep, where = blockers[0]
        held.add(addr)
        checks.append(warning("held-back", f"{addr} is left as it is: it depends on {dep}, which runs on "
                              f"unreachable host {where}", addr, host))
    return held, checks
