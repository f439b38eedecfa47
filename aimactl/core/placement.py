"""Placement: which host runs each Service and App, and which GPUs each replica gets. Pure.

Host: `host` pins. `hostSelector` chooses among the hosts carrying the labels, by the workload's
`placementPolicy`:

- `binpack` (default): fill hosts one at a time: the matching host with the least free GPU memory that still
  fits (for GPU workloads), else the one already holding the most of this plan's workloads; ties by name.
- `spread`: the matching host holding the fewest of this plan's workloads; ties by the most free GPU memory,
  then by name.

Placement is stable: a workload that already runs on a matching host stays there, and a replica keeps the GPUs
it runs on while they still exist, so re-planning an unchanged stack never moves anything.

GPUs: `resources.gpus: [ids]` are used as given; `resources.gpus: N` picks N whole GPUs (never a MIG-enabled
one) by the same policy, per GPU: binpack the fullest GPU that fits, spread the emptiest. Without GPU facts
for a host the count is passed on as it is (Docker picks). Memory bookkeeping is per GPU: what others use
(NVML's used memory minus this stack's running replicas there), plus what this plan puts there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aimactl.core.checks import Check, error
from aimactl.core.estimate import Estimate, gib
from aimactl.core.facts import GpuFacts, HostFacts
from aimactl.manifest.validate import default_host

BINPACK, SPREAD = "binpack", "spread"


@dataclass(frozen=True)
class Request:
    """What placement needs to know about one Service or App."""

    key: str
    where: str
    """`service.chat`: how checks name it."""
    replicas: int
    host: str | None = None
    selector: Mapping[str, str] | None = None
    policy: str = BINPACK
    gpus: int | tuple[str, ...] | None = None
    estimate: Estimate | None = None
    current_host: str | None = None
    """A host it runs on now (stability)."""
    current_gpus: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    """Replica -> the GPU ids it runs with now."""

    @property
    def need(self) -> int | None:
        """GPU memory per replica in bytes (None: unknown)."""
        return self.estimate.bytes if self.estimate else None

    @property
    def count(self) -> int:
        """How many GPUs each replica asks for."""
        return len(self.gpus) if isinstance(self.gpus, tuple) else int(self.gpus or 0)


@dataclass(frozen=True)
class Placement:
    """Where one workload goes and why; `gpus[r]` are replica r's device ids (empty: none, or not assigned)."""

    key: str
    host: str | None
    reason: str
    gpus: tuple[tuple[str, ...], ...] = ()
    estimate: Estimate | None = None
    gpu_count: int = 0
    """GPUs asked per replica (what Docker gets when no ids could be assigned)."""

    def replica_gpus(self, replica: int) -> tuple[str, ...]:
        """Device ids of one replica."""
        return self.gpus[replica] if replica < len(self.gpus) else ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (plan -o json, saved plans)."""
        return {"key": self.key, "host": self.host, "reason": self.reason, "gpus": [list(g) for g in self.gpus],
                "estimate": self.estimate.to_dict() if self.estimate else None, "gpu_count": self.gpu_count}


def placement_from_dict(data: Mapping[str, Any]) -> Placement:
    """A Placement from its JSON form."""
    est = data.get("estimate")
    return Placement(data["key"], data.get("host"), data.get("reason", ""),
                     tuple(tuple(g) for g in data.get("gpus", [])),
                     Estimate(est["bytes"], est["source"], est.get("detail", "")) if est else None,
                     data.get("gpu_count", 0))


class Ledger:
    """GPU memory per (host, GPU index): capacity, used by others, and what this plan has put there."""

    def __init__(self, facts: Mapping[str, HostFacts | None], own_usage: Mapping[tuple[str, int], int]):
        self.facts = dict(facts)
        self.own_usage = own_usage
        self.planned: dict[tuple[str, int], int] = {}
        self.workloads: dict[str, int] = {}

    def others(self, host: str, gpu: GpuFacts) -> int:
        """Memory used on the GPU by anything but this stack's replicas running there now."""
        facts = self.facts[host]
        used = facts.used_memory(gpu) if facts else None
        return max(0, (used or 0) - self.own_usage.get((host, gpu.index), 0))

    def free(self, host: str, gpu: GpuFacts) -> int | None:
        """Memory still free on the GPU for this plan (None when its capacity is unknown)."""
        facts = self.facts[host]
        usable = facts.usable_memory(gpu) if facts else None
        if usable is None:
            return None
        return usable - self.others(host, gpu) - self.planned.get((host, gpu.index), 0)

    def host_free(self, host: str) -> int:
        """Free GPU memory over the whole host (0 without facts)."""
        facts = self.facts.get(host)
        return sum(max(0, self.free(host, g) or 0) for g in (facts.gpus if facts else ()))

    def add(self, host: str, gpu: GpuFacts, need: int | None) -> None:
        """Record that a replica uses `need` bytes of this GPU."""
        self.planned[(host, gpu.index)] = self.planned.get((host, gpu.index), 0) + (need or 0)


def _share(need: int | None, count: int) -> int | None:
    """Per-GPU share of a replica's need when it spans several GPUs (tensor parallel)."""
    return None if need is None or count <= 0 else -(-need // count)


def _assignable(facts: HostFacts) -> list[GpuFacts]:
    """GPUs that can be given whole: not split into MIG instances."""
    return [g for g in facts.gpus if (g.mig_mode or "").lower() != "enabled"]


def _pick_gpus(req: Request, host: str, replica: int, ledger: Ledger) -> tuple[GpuFacts, ...]:
    """N GPUs for one replica: the ones it has when still there, else by policy (fitting ones first)."""
    facts = ledger.facts[host]
    assert facts is not None
    share = _share(req.need, req.count)
    current = [facts.gpu(i) for i in req.current_gpus.get(replica, ())]
    if len(current) == req.count and all(g is not None and g in _assignable(facts) for g in current):
        return tuple(g for g in current if g is not None)
    pool = _assignable(facts)

    def fits(g: GpuFacts) -> bool:
        free = ledger.free(host, g)
        return share is None or free is None or free >= share

    def room(g: GpuFacts) -> int:
        return ledger.free(host, g) or 0

    if req.policy == SPREAD:
        order = sorted(pool, key=lambda g: (not fits(g), -room(g), g.index))
    else:
        order = sorted(pool, key=lambda g: (not fits(g), room(g) if share is not None else 0, g.index))
    return tuple(sorted(order[:req.count], key=lambda g: g.index))


def _or_unbounded(value: int | None) -> int:
    """Unknown capacity never refuses (the memory check says what it can)."""
    return 1 << 62 if value is None else value


def _fits_on(req: Request, host: str, ledger: Ledger) -> bool:
    """Whether every replica could get its GPUs with room on this host (True without GPUs or facts)."""
    facts = ledger.facts.get(host)
    if not req.count or facts is None:
        return True
    gpus = _assignable(facts)
    if len(gpus) < req.count:
        return False
    share = _share(req.need, req.count)
    room = sorted((_or_unbounded(ledger.free(host, g)) for g in gpus), reverse=True)
    return share is None or all(r >= share for r in room[:req.count])


def choose_host(req: Request, hosts: Mapping[str, Mapping[str, str]], ledger: Ledger) -> tuple[str | None, str]:
    """The host for a workload and the reason in words."""
    if req.host:
        return req.host, f"pinned to host {req.host}"
    if req.selector is None:
        default = default_host(hosts)
        return default, f"on {default}, the default host (no host or hostSelector)"
    selector = req.selector or {}
    matching = sorted(n for n, labels in hosts.items() if all(labels.get(k) == v for k, v in selector.items()))
    if not matching:
        return None, f"no Host matches hostSelector {dict(selector)}"
    label = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
    if req.current_host in matching:
        return req.current_host, f"stays on {req.current_host}, where it runs (hostSelector {label})"
    if len(matching) == 1:
        return matching[0], f"the only host matching hostSelector {label}"
    fitting = [n for n in matching if _fits_on(req, n, ledger)]
    if not fitting:
        return matching[0], (f"no host matching {label} has room for it ({req.count} GPU(s), {gib(req.need)} "
                             f"each); planned on {matching[0]}, the first by name")
    gpu_wise = bool(req.count) and any(ledger.facts.get(n) for n in fitting)
    if req.policy == SPREAD:
        best = min(fitting, key=lambda n: (ledger.workloads.get(n, 0), -ledger.host_free(n), n))
        why = (f"spread: fewest workloads ({ledger.workloads.get(best, 0)}) among the {len(fitting)} hosts "
               f"matching {label} with room")
    elif gpu_wise:
        # hosts whose GPUs are unknown come last: "fits" there is only a guess
        best = min(fitting, key=lambda n: (ledger.facts.get(n) is None, ledger.host_free(n), n))
        why = (f"binpack: least free GPU memory ({gib(ledger.host_free(best))}) among the {len(fitting)} hosts "
               f"matching {label} with room")
    else:
        best = min(fitting, key=lambda n: (-ledger.workloads.get(n, 0), n))
        why = f"binpack: fills {best} first among the {len(fitting)} hosts matching {label}"
    return best, why


def _assign(req: Request, host: str, ledger: Ledger, checks: list[Check]) -> tuple[tuple[tuple[str, ...], ...], str]:
    """Device ids per replica on the chosen host, and a few words on them."""
    facts = ledger.facts.get(host)
    if not req.count:
        return (), ""
    if isinstance(req.gpus, tuple):
        if facts is not None:
            for ident in req.gpus:
                gpu = facts.gpu(ident)
                if gpu is None:
                    checks.append(error("gpu-not-found", f"GPU {ident} does not exist on {host} (it has "
                                        f"{len(facts.gpus)} GPU(s))", req.where, host))
                    continue
                for _ in range(req.replicas):
                    ledger.add(host, gpu, _share(req.need, req.count))
        return tuple(req.gpus for _ in range(req.replicas)), f"GPUs {','.join(req.gpus)} as declared"
    if facts is None:
        return (), f"{req.count} GPU(s) per replica (no GPU facts for {host}: the runtime picks them)"
    usable = _assignable(facts)
    if req.count > len(usable):
        mig = len(facts.gpus) - len(usable)
        has = f"{len(facts.gpus)} GPU(s)" + (f", {mig} of them split by MIG" if mig else "")
        has = has if facts.gpus else f"no GPU ({facts.gpu_note or 'none found'})"
        checks.append(error("gpu-count", f"asks for {req.count} GPU(s) per replica; host {host} has {has}",
                            req.where, host))
        return (), ""
    out = []
    for replica in range(req.replicas):
        chosen = _pick_gpus(req, host, replica, ledger)
        for gpu in chosen:
            ledger.add(host, gpu, _share(req.need, req.count))
        out.append(tuple(str(g.index) for g in chosen))
    kept = all(req.current_gpus.get(r) == ids for r, ids in enumerate(out)) and req.current_gpus
    words = "; ".join(f"[{r}] GPU {','.join(ids)}" for r, ids in enumerate(out))
    return tuple(out), words + (" (where it runs)" if kept else f" ({req.policy})")


def place_all(requests: Sequence[Request], hosts: Mapping[str, Mapping[str, str]],
              facts: Mapping[str, HostFacts | None], own_usage: Mapping[tuple[str, int], int],
              checks: list[Check]) -> dict[str, Placement]:
    """Place every workload; those already running first (they keep their GPUs), then the rest by key."""
    ledger = Ledger({h: facts.get(h) for h in hosts}, own_usage)
    out = {}
    for req in sorted(requests, key=lambda r: (r.current_host is None, r.key)):
        host, reason = choose_host(req, hosts, ledger)
        if host is None:
            out[req.key] = Placement(req.key, None, reason, estimate=req.estimate, gpu_count=req.count)
            continue
        ledger.facts.setdefault(host, facts.get(host))  # a pinned host missing from the Host list
        ledger.workloads[host] = ledger.workloads.get(host, 0) + max(1, req.replicas)
        gpus, words = _assign(req, host, ledger, checks)
        out[req.key] = Placement(req.key, host, reason + (f"; {words}" if words else ""), gpus, req.estimate,
                                 req.count)
    return out


def tenants(placements: Mapping[str, Placement], facts: Mapping[str, HostFacts | None]
            ) -> dict[tuple[str, int], list[tuple[str, int, int]]]:
    """(host, GPU index) -> [(workload key, replica, bytes of its share)] for every assigned GPU."""
    out: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
    for p in placements.values():
        host_facts = facts.get(p.host or "")
        if host_facts is None or p.host is None:
            continue
        for replica, ids in enumerate(p.gpus):
            share = _share(p.estimate.bytes if p.estimate else None, len(ids)) or 0
            for ident in ids:
                gpu = host_facts.gpu(ident)
                if gpu is not None:
                    out.setdefault((p.host, gpu.index), []).append((p.key, replica, share))
    return out
