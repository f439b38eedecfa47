"""Feasibility against the hardware: what cannot work is an error before anything changes. Pure.

Errors: the GPU memory the replicas placed on a GPU need, plus what others use there (NVML's used memory minus
this stack's own running replicas), exceeds what the GPU has (unified memory: RAM minus the OS reserve); more
GPUs asked than the host has (aimactl/core/placement.py); a model larger than the free disk under dataDir.
Warnings: a GPU above 85 C; `update: surge` that cannot hold two copies (it is recreated instead); a host whose
hardware facts could not be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from aimactl.core.checks import Check, error, warning
from aimactl.core.estimate import Estimate, ModelWeights, gib, service_estimate, size_text
from aimactl.core.facts import HOT_CELSIUS, GpuFacts, HostFacts
from aimactl.core.observed import Observed
from aimactl.core.placement import BINPACK, Placement, Request, place_all, tenants


def _where(key: str) -> str:
    return key.replace("/", ".")


def current(observed: Observed) -> dict[str, tuple[str, dict[int, tuple[str, ...]]]]:
    """Workload key -> (a host it runs on now, replica -> the GPU ids in its applied spec)."""
    out: dict[str, tuple[str, dict[int, tuple[str, ...]]]] = {}
    for host_name, host in sorted(observed.hosts.items()):
        for c in host.containers:
            key = f"{c.resource_kind}/{c.resource_name}"
            _, gpus = out.setdefault(key, (host_name, {}))
            if out[key][0] != host_name:
                continue
            spec = c.spec or {}
            ids = ((spec.get("resources") or {}).get("gpus") or {}).get("deviceIds") or []
            if ids:
                gpus[c.replica] = tuple(str(i) for i in ids)
    return out


def running_usage(observed: Observed, needs: Mapping[str, int | None]) -> dict[tuple[str, int], int]:
    """(host, GPU index) -> memory this stack's running replicas hold there (by their current estimate), so
    that re-planning does not count a replica twice (NVML's used memory already holds it)."""
    out: dict[tuple[str, int], int] = {}
    for key, (host, gpus) in current(observed).items():
        facts = observed.hosts[host].facts
        need = needs.get(key)
        if facts is None or not need:
            continue
        for ids in gpus.values():
            for ident in ids:
                gpu = facts.gpu(ident)
                if gpu is not None:
                    out[(host, gpu.index)] = out.get((host, gpu.index), 0) + -(-need // len(ids))
    return out


def _gpus(value: Any) -> int | tuple[str, ...] | None:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return value if isinstance(value, int) else None


def placements(resources: Sequence[Any], hosts: Mapping[str, Mapping[str, str]], observed: Observed,
               weights: Mapping[str, ModelWeights], checks: list[Check]) -> dict[str, Placement]:
    """Estimate and place every Service and App (see placement.py); GPU problems land in `checks`."""
    models = {r.name: r for r in resources if r.kind == "Model"}
    now = current(observed)
    requests = []
    for res in resources:
        if res.kind not in ("Service", "App"):
            continue
        spec = res.spec
        host_now = now.get(res.key, (None, {}))[0]
        cached = {n: int(e.get("size") or 0) for n, e in observed.hosts[host_now].models.items()} \
            if host_now in observed.hosts else {}
        estimate = service_estimate(res, weights, models, cached)
        requests.append(Request(res.key, _where(res.key), spec.replicas, spec.host, spec.host_selector,
                                getattr(spec, "placement_policy", BINPACK), _gpus(spec.resources.gpus), estimate,
                                host_now, now.get(res.key, (None, {}))[1]))
    facts = {name: observed.hosts[name].facts if name in observed.hosts else None for name in hosts}
    usage = running_usage(observed, {r.key: r.need for r in requests})
    return place_all(requests, hosts, facts, usage, checks)


def _source(placed: Placement) -> str:
    return placed.estimate.source if placed.estimate else "unknown"


def _gpu_line(facts: HostFacts, host: str, index: int) -> str:
    gpu = next(g for g in facts.gpus if g.index == index)
    kind = "unified memory: RAM minus the OS reserve" if gpu.unified else "usable"
    return f"GPU {index} ({gpu.name}) on {host}: {gib(facts.usable_memory(gpu))} {kind}"


def _loaded_gpus(placed: Mapping[str, Placement], observed: Observed, starting: set[tuple[str, int]]
                 ) -> Iterator[tuple[str, HostFacts, GpuFacts, int, int, list[tuple[str, int, int]]]]:
    """Every GPU where a replica starts: (host, its facts, the GPU, usable, used by others, tenants)."""
    facts = {name: host.facts for name, host in observed.hosts.items()}
    usage = running_usage(observed, {k: p.estimate.bytes if p.estimate else None for k, p in placed.items()})
    for (host, index), who in sorted(tenants(placed, facts).items()):
        host_facts = facts[host]
        assert host_facts is not None
        gpu = next(g for g in host_facts.gpus if g.index == index)
        usable = host_facts.usable_memory(gpu)
        if usable is None or not any((k, r) in starting for k, r, _ in who):
            continue
        others = max(0, (host_facts.used_memory(gpu) or 0) - usage.get((host, index), 0))
        yield host, host_facts, gpu, usable, others, who


def memory_checks(placed: Mapping[str, Placement], observed: Observed, surge: Iterable[str],
                  replaced: Iterable[tuple[str, int]], starting: Iterable[tuple[str, int]]) -> list[Check]:
    """GPU memory fit on each GPU where a replica starts, and whether `update: surge` replicas can have two
    copies at once there."""
    checks: list[Check] = []
    surge, replaced = set(surge), set(replaced)
    for host, host_facts, gpu, usable, others, who in _loaded_gpus(placed, observed, set(starting)):
        index = gpu.index
        total = others + sum(share for _, _, share in who)
        names = ", ".join(f"{_where(k)}[{r}] {gib(s)} ({_source(placed[k])})" for k, r, s in who)
        if total > usable:
            checks.append(error("gpu-memory", f"{_gpu_line(host_facts, host, index)} cannot hold {names} with "
                                f"{gib(others)} already used by others: {gib(total)} needed", _where(who[-1][0]),
                                host))
            continue
        for key, replica, share in who:
            if key in surge and (key, replica) in replaced and total + share > usable:
                checks.append(warning("surge-falls-back", f"update: surge needs room for two copies of "
                                      f"{_where(key)} ({2 * share / 2**30:.1f} GiB) on GPU {index} of {host}, which "
                                      f"has {gib(usable - total + share)} for it: it is recreated instead (stopped "
                                      "first)", _where(key), host))
    return checks


def disk_checks(fetches: Iterable[Any], observed: Observed, weights: Mapping[str, ModelWeights]) -> list[Check]:
    """Models to fetch that are larger than the free disk under their host's dataDir (summed per host)."""
    checks: list[Check] = []
    wanted: dict[str, int] = {}
    for model in fetches:
        size = model.size or (weights[model.name].bytes if model.name in weights else None)
        facts = observed.hosts[model.host].facts if model.host in observed.hosts else None
        if not size or facts is None or facts.disk_free is None:
            continue
        wanted[model.host] = wanted.get(model.host, 0) + size
        if wanted[model.host] > facts.disk_free:
            checks.append(error("disk-space", f"model {model.name} ({gib(size)}) does not fit on the disk under "
                                f"{facts.disk_path} on {model.host}: {gib(facts.disk_free)} free", model.address,
                                model.host))
    return checks


def host_checks(observed: Observed, hosts: Iterable[str], gpu_hosts: Iterable[str]) -> list[Check]:
    """Hot GPUs on the plan's hosts; facts that could not be read where GPUs are wanted."""
    checks, wanted = [], set(gpu_hosts)
    for name in sorted(set(hosts)):
        seen = observed.hosts.get(name)
        if seen is None or not seen.reachable:
            continue
        if seen.facts is None and seen.facts_error and name in wanted:
            checks.append(warning("facts-unavailable", f"{seen.facts_error}; GPU memory is not checked there",
                                  host=name))
        for gpu in seen.facts.gpus if seen.facts else ():
            if gpu.temperature is not None and gpu.temperature > HOT_CELSIUS:
                checks.append(warning("gpu-hot", f"GPU {gpu.index} ({gpu.name}) on {name} is at {gpu.temperature} C "
                                      f"(above {HOT_CELSIUS} C): it throttles; check its cooling", host=name))
    return checks


def estimate_line(estimate: Estimate | None, gpu_count: int | None = None) -> str:
    """`needs ~7.5 GiB of GPU memory per replica (from GGUF header: weights ...)` for plan and describe; without
    GPUs (`gpu_count` 0) the same figure is what the model needs, and nothing is checked against it."""
    if estimate is None or estimate.bytes is None:
        return "GPU memory need unknown (declare resources.gpuMemory)"
    if gpu_count == 0:
        return (f"no GPU asked: the model needs ~{size_text(estimate.bytes)} of memory per replica "
                f"({estimate.source}: {estimate.detail})")
    return f"needs ~{gib(estimate.bytes)} of GPU memory per replica ({estimate.source}: {estimate.detail})"


def _starting(changes: Sequence[Any]) -> set[tuple[str, int]]:
    """(key, replica) of every replica the plan creates or replaces."""
    return {(c.key, c.replica) for c in changes if c.action in ("create", "replace") and c.kind != "model"}


def hardware_checks(placed: Mapping[str, Placement], surge: Iterable[str], hosts: Iterable[str],
                    changes: Sequence[Any], observed: Observed) -> list[Check]:
    """Every hardware check of a plan: GPU memory where replicas are created or replaced (a plan that changes
    nothing is never refused for memory others took since), disk for models to fetch, hot GPUs, unread facts."""
    starting = _starting(changes)
    replaced = {(c.key, c.replica) for c in changes if c.action == "replace"}
    fetches = [c.model for c in changes if c.kind == "model" and c.action in ("create", "replace") and c.model]
    checks = memory_checks(placed, observed, surge, replaced, starting)
    checks += disk_checks(fetches, observed, dict(observed.model_weights))
    gpu_hosts = {p.host for p in placed.values() if p.host and p.gpu_count}
    return checks + host_checks(observed, hosts, gpu_hosts)


def gpu_fingerprints(placed: Mapping[str, Placement], changes: Sequence[Any], observed: Observed
                     ) -> list[dict[str, Any]]:
    """What each GPU the plan starts replicas on looked like: its UUID, free memory, and the room the plan left
    there (`headroom`). A saved plan is re-checked against these before it is applied (see stale_gpus)."""
    out = []
    for host, host_facts, gpu, usable, others, who in _loaded_gpus(placed, observed, _starting(changes)):
        out.append({"host": host, "index": gpu.index, "uuid": gpu.uuid or None, "free": host_facts.free_memory(gpu),
                    "headroom": usable - others - sum(share for _, _, share in who)})
    return out


def stale_gpus(fingerprints: Sequence[Mapping[str, Any]], now: Mapping[str, HostFacts | None]) -> list[str]:
    """What changed on the planned GPUs since the plan was made: another board at that index, or less free
    memory than the room the plan had there."""
    problems = []
    for fp in fingerprints:
        host, index = fp["host"], fp["index"]
        facts = now.get(host)
        gpu = facts.gpu(index) if facts is not None else None
        if facts is None:
            problems.append(f"GPU {index} on {host}: the host's GPUs cannot be read again")
        elif gpu is None or (fp.get("uuid") and gpu.uuid != fp["uuid"]):
            problems.append(f"GPU {index} on {host}: planned on {fp.get('uuid') or 'a GPU'}, now "
                            f"{(gpu.uuid or 'another GPU') if gpu else 'gone'}")
        elif fp.get("free") is not None and (free := facts.free_memory(gpu)) is not None \
                and fp["free"] - free > fp["headroom"]:
            problems.append(f"GPU {index} on {host}: {gib(fp['free'] - free)} less free memory than when planned, "
                            f"which left {gib(fp['headroom'])} to spare: the plan no longer fits")
    return problems
