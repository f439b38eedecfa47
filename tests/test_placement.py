"""Placement and fit, pure and table-driven: hosts by label and policy, GPUs per replica, stability, and the
memory bookkeeping, on facts built from NVML values captured from real GPUs (tests/data/gpus/README.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aimactl.core.checks import Check
from aimactl.core.estimate import DECLARED, FROM_FILES, FROM_GGUF, Estimate, ModelWeights, estimate, weights_of
from aimactl.core.facts import GIB, HostFacts
from aimactl.core.feasibility import host_checks
from aimactl.core.observed import Observed, ObservedHost
from aimactl.core.placement import SPREAD, Placement, Request, place_all, placement_from_dict
from aimactl.hosts.facts import facts_from_probe

DATA = Path(__file__).parent / "data" / "gpus"
MIB = 2**20


def captured(name: str | None) -> HostFacts | None:
    """Host facts with the GPUs of one capture (64 GiB RAM unless the capture says otherwise)."""
    if name is None:
        return None
    raw = json.loads((DATA / name).read_text())
    probe = {"cpu_count": 16, "mem_total": raw.get("mem_total", 64 * GIB),
             "mem_available": raw.get("mem_available", 60 * GIB), "disk": {"path": "/d", "total": 1, "free": 1}}
    return facts_from_probe(probe, raw)


FLEET = {"h100": {"gpu": "true"}, "rtx": {"gpu": "true"}, "cpu": {}}
FACTS = {"h100": "h100.json", "rtx": "rtx4090.json", "cpu": None, "spark": "gb10.json", "mig": "a100-mig.json"}


def req(key: str = "service/s", gpus: Any = 1, need: float | None = 4, **kw: Any) -> Request:
    est = Estimate(int(need * GIB), DECLARED) if need is not None else None
    return Request(key, key.replace("/", "."), kw.pop("replicas", 1), gpus=gpus, estimate=est,
                   selector=kw.pop("selector", {"gpu": "true"}), **kw)


def run(requests: list[Request], hosts: dict[str, dict[str, str]] | None = None,
        usage: dict[tuple[str, int], int] | None = None) -> tuple[dict[str, Placement], list[Check]]:
    hosts = hosts or FLEET
    checks: list[Check] = []
    facts = {h: captured(FACTS[h]) for h in hosts}
    return place_all(requests, hosts, facts, usage or {}, checks), checks


# (what is asked, expected host, expected GPUs per replica, expected check codes)
CASES = [
    ("binpack: 4 GiB fits the busy H100 node (8.6 GiB free per GPU)", [req()], "h100", (("0",),), []),
    ("binpack: 12 GiB does not fit the H100 node", [req(need=12)], "rtx", (("0",),), []),
    ("spread: the node with the most free memory, its emptiest GPU", [req(policy=SPREAD)], "rtx", (("1",),), []),
    ("spread: replicas on different GPUs", [req(policy=SPREAD, replicas=2)], "rtx", (("1",), ("0",)), []),
    ("binpack: replicas share a GPU while they fit", [req(replicas=2, need=3)], "h100", (("0",), ("0",)), []),
    ("tensor parallel: 10 GiB split 5 + 5 fits two H100 GPUs", [req(gpus=2, need=10)], "h100", (("0", "1"),), []),
    ("tensor parallel: 20 GiB split 10 + 10 does not", [req(gpus=2, need=20)], "rtx", (("0", "1"),), []),
    ("stable: stays where it runs, keeps its GPU", [req(current_host="rtx", current_gpus={0: ("1",)})],
     "rtx", (("1",),), []),
    ("stable: a GPU that vanished is replaced", [req(current_host="h100", current_gpus={0: ("7",)})],
     "h100", (("0",),), []),
    ("declared ids are used as given", [req(gpus=("1",), host="rtx", selector=None)], "rtx", (("1",),), []),
    ("a declared id that does not exist", [req(gpus=("5",), host="rtx", selector=None)], "rtx", (("5",),),
     ["gpu-not-found"]),
    ("more GPUs than the host has", [req(gpus=3, host="rtx", selector=None)], "rtx", (), ["gpu-count"]),
    ("no GPU on a host without facts: Docker gets the count", [req(host="cpu", selector=None)], "cpu", (), []),
    ("no memory figure: the first GPU by index (binpack)", [req(need=None, host="rtx", selector=None)], "rtx",
     (("0",),), []),
    ("a GPU workload nowhere fits: first matching host, memory error later", [req(need=100)], "h100",
     (("0",),), []),
    ("no GPUs asked: binpack fills one host", [req(gpus=None, need=None)], "h100", (), []),
]


@pytest.mark.parametrize("title, requests, host, gpus, codes", CASES, ids=[c[0] for c in CASES])
def test_placement(title: str, requests: list[Request], host: str, gpus: tuple[tuple[str, ...], ...],
                   codes: list[str]) -> None:
    placed, checks = run(requests)
    p = placed[requests[0].key]
    assert (p.host, p.gpus, [c.code for c in checks]) == (host, gpus, codes), p.reason


def test_no_matching_host_says_so() -> None:
    placed, _ = run([req(selector={"gpu": "h200"})])
    assert placed["service/s"].host is None and "no Host matches hostSelector" in placed["service/s"].reason


def test_the_plan_states_the_choice_and_why() -> None:
    placed, _ = run([req()])
    assert placed["service/s"].reason == ("binpack: least free GPU memory (17.1 GiB) among the 2 hosts matching "
                                          "gpu=true with room; [0] GPU 0 (binpack)")
    spread, _ = run([req(policy=SPREAD)])
    assert spread["service/s"].reason.startswith("spread: fewest workloads (0) among the 2 hosts matching gpu=true")


def test_placed_workloads_count_for_the_next_ones() -> None:
    """Three 5 GiB Services: binpack puts the first on the H100 node's GPU 0 (8.6 GiB free), the second on its
    GPU 1, the third no longer fits there and goes to the RTX node."""
    placed, _ = run([req(f"service/s{i}", need=5) for i in range(3)])
    assert [(placed[f"service/s{i}"].host, placed[f"service/s{i}"].gpus) for i in range(3)] == [
        ("h100", (("0",),)), ("h100", (("1",),)), ("rtx", (("0",),))]


def test_running_replicas_are_not_counted_twice() -> None:
    """NVML's used memory on the H100 node already holds this stack's 8 GiB replica on GPU 0: without it, a
    12 GiB need fits there (8.6 + 8 = 16.6 GiB free for it), so binpack keeps it on that node."""
    placed, _ = run([req(need=12, current_host=None)], usage={("h100", 0): 8 * GIB})
    assert placed["service/s"].host == "h100" and placed["service/s"].gpus == (("0",),)


def test_mig_gpus_are_not_given_whole() -> None:
    hosts = {"mig": {"gpu": "true"}}
    placed, checks = run([req(gpus=1)], hosts)
    assert placed["service/s"].gpus == (("0",),) and not checks
    _, checks = run([req(gpus=2)], hosts)
    assert [c.message for c in checks] == ["asks for 2 GPU(s) per replica; host mig has 2 GPU(s), 1 of them "
                                           "split by MIG"]


def test_unified_memory_capacity_is_ram_minus_reserve() -> None:
    spark = captured("gb10.json")
    assert spark is not None
    gpu = spark.gpus[0]
    assert spark.usable_memory(gpu) == 128501256192 - 16 * GIB
    placed, _ = run([req(need=100)], {"spark": {"gpu": "true"}})
    assert placed["service/s"].gpus == (("0",),)


def test_placement_round_trips_through_json() -> None:
    placed, _ = run([req(policy=SPREAD, replicas=2)])
    p = placed["service/s"]
    assert placement_from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_hot_gpu_warns() -> None:
    facts = captured("rtx4090.json")
    assert facts is not None
    hot = replace(facts, gpus=(replace(facts.gpus[0], temperature=91), facts.gpus[1]))
    observed = Observed({"rtx": ObservedHost("rtx", facts=hot)})
    checks = host_checks(observed, ["rtx"], [])
    assert [(c.code, c.severity) for c in checks] == [("gpu-hot", "warning")]
    assert "GPU 0 (NVIDIA GeForce RTX 4090) on rtx is at 91 C" in checks[0].message
    assert host_checks(Observed({"rtx": ObservedHost("rtx", facts=facts)}), ["rtx"], []) == []


ESTIMATES = [
    ("declared wins", 20 * GIB, ModelWeights(4 * GIB, FROM_GGUF), 256 * MIB, 20 * GIB, DECLARED),
    ("GGUF weights x 1.2 + footprint", None, ModelWeights(10 * GIB, FROM_GGUF), 256 * MIB, 12 * GIB + 256 * MIB,
     FROM_GGUF),
    ("file sizes", None, ModelWeights(5 * GIB, FROM_FILES), 1536 * MIB, 6 * GIB + 1536 * MIB, FROM_FILES),
    ("nothing known", None, None, 0, None, "unknown"),
]


@pytest.mark.parametrize("title, declared, weights, footprint, need, source", ESTIMATES, ids=[e[0] for e in ESTIMATES])
def test_estimate(title: str, declared: int | None, weights: ModelWeights | None, footprint: int,
                  need: int | None, source: str) -> None:
    got = estimate(declared, weights, footprint)
    assert (got.bytes, got.source) == (need, source)


def test_weights_fall_back_from_read_to_cache_size_to_hint() -> None:
    read = {"m": ModelWeights(3, FROM_GGUF)}
    assert weights_of("m", read, 7, 9) == ModelWeights(3, FROM_GGUF)
    assert weights_of("m", {}, 7, 9) == ModelWeights(7, FROM_FILES)
    assert weights_of("m", {}, None, 9) == ModelWeights(9, FROM_FILES)
    assert weights_of("m", {}, None, None) is None and weights_of(None, read, 1, 1) is None


def test_a_host_without_gpu_facts_comes_after_known_ones() -> None:
    """A host whose facts could not be read "fits" only as a guess: binpack prefers a host known to fit."""
    placed, _ = run([req()], {"cpu": {"gpu": "true"}, "h100": {"gpu": "true"}})
    assert placed["service/s"].host == "h100"


def test_saved_plan_gpu_fingerprints() -> None:
    from aimactl.core.feasibility import stale_gpus

    rtx = captured("rtx4090.json")
    assert rtx is not None
    fp = {"host": "rtx", "index": 0, "uuid": "GPU-aaaa", "free": rtx.free_memory(rtx.gpus[0]), "headroom": 2 * GIB}
    same = replace(rtx, gpus=(replace(rtx.gpus[0], uuid="GPU-aaaa"), rtx.gpus[1]))
    assert stale_gpus([fp], {"rtx": same}) == []
    other = replace(rtx, gpus=(replace(rtx.gpus[0], uuid="GPU-bbbb"), rtx.gpus[1]))
    assert stale_gpus([fp], {"rtx": other}) == ["GPU 0 on rtx: planned on GPU-aaaa, now GPU-bbbb"]
    busier = replace(same, gpus=(replace(same.gpus[0], memory_free=same.gpus[0].memory_free - 3 * GIB),
                                 same.gpus[1]))
    assert stale_gpus([fp], {"rtx": busier}) == ["GPU 0 on rtx: 3.0 GiB less free memory than when planned, which "
                                                 "left 2.0 GiB to spare: the plan no longer fits"]
    assert stale_gpus([fp], {"rtx": None}) == ["GPU 0 on rtx: the host's GPUs cannot be read again"]


def test_estimate_words_for_tiny_and_large_models() -> None:
    from aimactl.core.feasibility import estimate_line

    tiny = estimate(None, ModelWeights(465152, FROM_GGUF, 116288, ("F32",)), 256 * MIB)
    assert tiny.detail == "weights 454 KiB, 116.3K parameters (F32) x 1.2 + engine footprint 256 MiB"
    assert estimate_line(tiny, 0).startswith("no GPU asked: the model needs ~257 MiB of memory per replica")
    big = estimate(None, ModelWeights(8 * 10**9, FROM_GGUF, 8030261248, ("Q8_0",)), 1536 * MIB)
    assert big.detail == "weights 7.5 GiB, 8.03B parameters (Q8_0) x 1.2 + engine footprint 1.5 GiB"
    assert estimate_line(big, 1).startswith("needs ~10.4 GiB of GPU memory per replica (from GGUF header: ")
