"""Table-driven plan cases: manifests + a recorded observation -> the expected plan.

Every directory under `tests/cases/plan/` is one case (the file formats are described in
`tests/cases/plan/README.md`):

- `manifests.yaml`: what the operator declares now (absent: an empty manifest set);
- `observed.json`: what the hosts run; `from_manifests` builds this stack's containers from an earlier apply of
  other manifests, so a case can say "applied X, now the manifests say Y";
- `options.json` (optional): plan options, `--var` values and secret digests;
- `expected.json`: the changes in plan order (address, action, reason, optional diff, ports, env), the checks
  and the summary. A case that shows a known bug carries `xfail: {test: reason}` and states the right behaviour.

Besides its own expectations, every case must survive a plan-file round trip, must converge (simulate the apply
the way Docker would, plan again: nothing left to do), must never ask for one host port twice on one host and
must list its changes in Terraform's order.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pytest

from aimactl.core.desired import Desired, DesiredContainer, build_desired, secret_source
from aimactl.core.estimate import ModelWeights
from aimactl.core.facts import HostFacts
from aimactl.core.observed import Listener, Observed, ObservedContainer, ObservedHost, PublishedPort
from aimactl.core.plan import CREATE, DELETE, NOOP, REPLACE, UPDATE, Change, Plan, PlanOptions, plan
from aimactl.core.planfile import from_dict, to_dict
from aimactl.core.spec import IN_PLACE_FIELDS, flatten, port_text
from aimactl.hosts.facts import facts_from_probe
from aimactl.manifest import load_manifests, units
from aimactl.manifest.kinds import SecretValue
from aimactl.manifest.load import Resource

CASES = Path(__file__).parent / "cases" / "plan"
GPU_DATA = Path(__file__).parent / "data" / "gpus"
UNKNOWN_IMAGE_ID = "sha256:unknown"
TESTS = ("expected", "round-trip", "converges", "unique-ports", "ordered")
"""The tests every case goes through; `xfail` in expected.json names some of them."""


# --- cases ---------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One directory of tests/cases/plan: inputs and expectations as plain JSON data."""

    name: str
    path: Path
    observed: dict[str, Any]
    expected: dict[str, Any]
    options: dict[str, Any]

    @property
    def stack(self) -> str:
        """The stack being planned (`default` unless options.json says otherwise)."""
        return str(self.options.get("stack", "default"))

    def xfail(self, test: str) -> str | None:
        """The known bug that makes `test` fail for this case, if any."""
        return self.expected.get("xfail", {}).get(test)


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.exists():
        assert default is not None, f"{path} is missing"
        return default
    return json.loads(path.read_text())


def load_case(path: Path) -> Case:
    """Read one case directory."""
    return Case(path.name, path, _read_json(path / "observed.json"), _read_json(path / "expected.json"),
                _read_json(path / "options.json", {}))


def all_cases() -> list[Case]:
    """Every case, by name."""
    return [load_case(p) for p in sorted(CASES.iterdir()) if p.is_dir()]


def params(test: str) -> list[Any]:
    """pytest parameters for one test over every case, with strict xfail marks where a case names a bug."""
    assert test in TESTS
    out = []
    for case in all_cases():
        # An unreachable host only takes itself out of the run: the other hosts must still converge.
        refused = any(c.get("severity", "error") == "error" and c["code"] != "host-unreachable"
                      for c in case.expected.get("checks", []))
        if test == "converges" and refused:
            continue  # apply refuses a plan with errors: there is nothing to converge
        reason = case.xfail(test)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


# --- manifests and secrets -----------------------------------------------------------------------------------


def load_resources(path: Path, var_args: Iterable[str] = ()) -> list[Resource]:
    """Valid manifests from a file; a missing file is an empty manifest set."""
    if not path.exists():
        return []
    manifests = load_manifests([str(path)], var_args=list(var_args))
    assert manifests.valid, [str(e) for e in manifests.errors]
    return manifests.resources


def secret_digests(resources: Iterable[Resource], unreadable: Iterable[str] = (),
                   overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """A digest `d-<source>` for every secret source the manifests use, except the unreadable ones."""
    sources = {secret_source(value, res.base_dir) for res in resources if res.kind in ("Service", "App")
               for value in res.spec.env.values() if isinstance(value, SecretValue)}
    digests = {source: f"d-{source}" for source in sorted(sources) if source not in set(unreadable)}
    digests.update(overrides or {})
    return digests


# --- observations ----------------------------------------------------------------------------------------------


def parse_port(text: str | int) -> PublishedPort:
    """A published port in Compose notation; all addresses read back as "" (as the Docker observer reports)."""
    mapping = units.parse_port(text)
    host_ip = "" if mapping.host_ip == "0.0.0.0" else mapping.host_ip
    return PublishedPort(host_ip, mapping.host_port, mapping.container_port, mapping.protocol)


def parse_listener(text: str | int) -> Listener:
    """`9000`, `127.0.0.1:9000` or `0.0.0.0:9000/udp`."""
    text, _, protocol = str(text).partition("/")
    ip, _, port = text.rpartition(":")
    return Listener(ip or "0.0.0.0", int(port), protocol or "tcp")


def parse_container(data: Mapping[str, Any]) -> ObservedContainer:
    """A container written out by hand: only `name` is required."""
    return ObservedContainer(
        id=data.get("id", f"id-{data['name']}"),
        name=data["name"],
        image=data.get("image", "busybox:latest"),
        image_id=data.get("image_id", UNKNOWN_IMAGE_ID),
        state=data.get("state", "running"),
        exit_code=data.get("exit_code"),
        restart_count=data.get("restart_count", 0),
        labels=dict(data.get("labels", {})),
        ports=tuple(parse_port(p) for p in data.get("ports", [])),
        live=data.get("live"),
    )


def hardware(data: Mapping[str, Any] | None) -> HostFacts | None:
    """Host facts: `nvml` names NVML values captured from a real GPU (tests/data/gpus/*.json), the other keys
    are the helper probe's (`cpu_count`, `mem_total`, `mem_available`, `disk: {path, total, free}`)."""
    if data is None:
        return None
    gpus = json.loads((GPU_DATA / data["nvml"]).read_text()) if "nvml" in data else {"source": "none"}
    probe = {"cpu_count": 8, "mem_total": 64 * 2**30, "mem_available": 60 * 2**30, **data}
    for key in ("mem_total", "mem_available"):
        probe[key] = data.get(key, gpus.get(key, probe[key]))
    return facts_from_probe(probe, gpus)


def parse_host(name: str, data: Mapping[str, Any]) -> ObservedHost:
    """One host of observed.json."""
    return ObservedHost(
        name=name,
        reachable=data.get("reachable", True),
        error=data.get("error"),
        containers=[parse_container(c) for c in data.get("containers", [])],
        others=[parse_container(c) for c in data.get("others", [])],
        listeners=[parse_listener(x) for x in data.get("listeners", [])],
        image_ids=dict(data.get("image_ids", {})),
        address=data.get("address", "127.0.0.1"),
        facts=hardware(data.get("facts")),
    )


def live_values(want: DesiredContainer) -> dict[str, Any]:
    """The in-place fields as `docker inspect` reports them (HostConfig) for a container made from `want`."""
    return {path: flatten(want.spec)[path] for path in sorted(IN_PLACE_FIELDS)}


def as_running(want: DesiredContainer, container_id: str | None = None) -> ObservedContainer:
    """What `docker inspect` shows once apply has created and started this replica."""
    spec = want.container
    return ObservedContainer(id=container_id or f"id-{spec.name}", name=spec.name, image=spec.image,
                             image_id=want.spec["imageId"] or UNKNOWN_IMAGE_ID, state="running",
                             labels=dict(spec.labels), ports=spec.ports, live=live_values(want))


def patched(seen: ObservedContainer, patch: Mapping[str, Any] | None) -> ObservedContainer | None:
    """A container with some fields changed since it was applied; `{"removed": true}` drops it.

    `labels` and `live` are merged (a null label is removed); `ports` use the Compose notation.
    """
    if patch is None:
        return seen
    if patch.get("removed"):
        return None
    fields = dict(patch)
    if "labels" in fields:
        merged = {**seen.labels, **fields["labels"]}
        fields["labels"] = {k: v for k, v in merged.items() if v is not None}
    if "live" in fields:
        fields["live"] = {**(seen.live or {}), **fields["live"]}
    if "ports" in fields:
        fields["ports"] = tuple(parse_port(p) for p in fields["ports"])
    return dataclasses.replace(seen, **fields)


def observation_then(observed: Observed, extras: Mapping[str, Any]) -> Observed:
    """The observation an earlier apply saw: today's, plus what the hosts held then and hold no more."""
    then = copy.deepcopy(observed)
    for name, data in extras.items():
        host = then.host(name)
        host.others.extend(parse_container(c) for c in data.get("others", []))
        host.listeners.extend(parse_listener(x) for x in data.get("listeners", []))
    return then


def add_applied(observed: Observed, entry: str | Mapping[str, Any], case: Case) -> None:
    """Add the containers an earlier `apply` of other manifests left running (see README: from_manifests)."""
    entry = {"file": entry} if isinstance(entry, str) else entry
    stack = entry.get("stack", case.stack)
    resources = load_resources(case.path / entry["file"], entry.get("vars", []))
    image_ids = {name: dict(host.image_ids) for name, host in observed.hosts.items()}
    image_ids.update(entry.get("image_ids", {}))
    digests = secret_digests(resources, (), entry.get("secret_digests"))
    then = observation_then(observed, entry.get("at_apply", {}))
    previous = build_desired(stack, resources, then, digests, image_ids)
    assert previous.checks == [], f"{entry['file']} cannot be applied: {previous.checks}"
    patches = dict(entry.get("patch", {}))
    for want in previous.containers:
        seen = patched(as_running(want), patches.pop(want.container.name, None))
        if seen is None:
            continue
        host = observed.host(want.host)
        (host.containers if stack == case.stack else host.others).append(seen)
        if entry.get("userland_proxy"):
            host.listeners.extend(Listener(p.host_ip or "0.0.0.0", p.host_port, p.protocol) for p in seen.ports)
    assert not patches, f"patch names containers {entry['file']} does not create: {sorted(patches)}"


def load_observed(case: Case) -> Observed:
    """observed.json as an Observed, with the containers of earlier applies added."""
    data = case.observed
    observed = Observed({name: parse_host(name, host) for name, host in data.get("hosts", {}).items()})
    observed.model_weights = {n: ModelWeights(**w) for n, w in data.get("model_weights", {}).items()}
    entries = data.get("from_manifests", [])
    for entry in entries if isinstance(entries, list) else [entries]:
        add_applied(observed, entry, case)
    return observed


# --- running a case --------------------------------------------------------------------------------------------


def plan_options(case: Case, **overrides: Any) -> PlanOptions:
    """options.json as PlanOptions."""
    opts = {**case.options, **overrides}
    return PlanOptions(stack=case.stack, replace=frozenset(opts.get("replace", [])),
                       targets=frozenset(opts.get("targets", [])), excludes=frozenset(opts.get("excludes", [])),
                       allow_empty=opts.get("allow_empty", False), destroy=opts.get("destroy", False))


@dataclass
class Run:
    """Everything one case produced."""

    resources: list[Resource]
    digests: dict[str, str]
    observed: Observed
    desired: Desired
    plan: Plan


def plan_against(case: Case, resources: list[Resource], digests: Mapping[str, str], observed: Observed,
                 options: PlanOptions) -> tuple[Desired, Plan]:
    """build_desired, then plan, as `aimactl plan` does with a fresh observation."""
    image_ids = {name: host.image_ids for name, host in observed.hosts.items()}
    desired = build_desired(case.stack, resources, observed, digests, image_ids)
    return desired, plan(desired, observed, options)


def run_case(case: Case) -> Run:
    """Load the case's inputs and plan."""
    resources = load_resources(case.path / "manifests.yaml", case.options.get("vars", []))
    digests = secret_digests(resources, case.options.get("unreadable_secrets", []),
                             case.options.get("secret_digests"))
    observed = load_observed(case)
    desired, result = plan_against(case, resources, digests, copy.deepcopy(observed), plan_options(case))
    return Run(resources, digests, observed, desired, result)


# --- comparing with expected.json ----------------------------------------------------------------------------


def describe_change(change: Change | None, wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """The change in expected.json's form, with only the keys the expectation names."""
    if change is None:
        return None
    got: dict[str, Any] = {"address": change.address, "action": change.action}
    if "reason" in wanted:
        got["reason"] = change.reason
    if "reason_contains" in wanted:
        got["reason_contains"] = wanted["reason_contains"] if wanted["reason_contains"] in change.reason \
            else change.reason
    if "diff_paths" in wanted:
        got["diff_paths"] = [d.path for d in change.diff]
    if "forces_replacement" in wanted:
        got["forces_replacement"] = [d.path for d in change.diff if d.forces_replacement]
    if "diff" in wanted:
        got["diff"] = [{"path": d.path, "before": d.before, "after": d.after} for d in change.diff]
    if "ports" in wanted:
        got["ports"] = sorted(port_text(p) for p in change.desired.container.ports) if change.desired else None
    if "env" in wanted:
        env = change.desired.container.env if change.desired else {}
        got["env"] = {key: env.get(key) for key in wanted["env"]}
    if "command" in wanted:
        got["command"] = list(change.desired.container.command or ()) if change.desired else None
    if "gpus" in wanted:
        gpus = change.desired.container.gpus if change.desired else None
        got["gpus"] = list(gpus.device_ids) if gpus and gpus.device_ids else (gpus.count if gpus else None)
    return got


def describe_check(check: Any, wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """The check in expected.json's form, with only the keys the expectation names."""
    if check is None:
        return None
    got = {"code": check.code, "severity": check.severity}
    for key in ("address", "host"):
        if key in wanted:
            got[key] = getattr(check, key)
    if "message_contains" in wanted:
        text = wanted["message_contains"]
        got["message_contains"] = text if text in check.message else check.message
    return got


def _check_key(code: str, address: str | None) -> tuple[str, str]:
    return code, address or ""


@pytest.mark.parametrize("case", params("expected"))
def test_plan_matches_expected(case: Case) -> None:
    """The plan's changes (in order), its checks and its summary are what expected.json says."""
    run = run_case(case)
    wanted_changes = case.expected["changes"]
    assert all("reason" in w or "reason_contains" in w for w in wanted_changes), "every change states its reason"
    got_changes = [describe_change(c, w or {}) for c, w in zip_longest(run.plan.changes, wanted_changes)]
    assert got_changes == wanted_changes

    wanted_checks = sorted(case.expected.get("checks", []), key=lambda w: _check_key(w["code"], w.get("address")))
    actual_checks = sorted(run.plan.checks, key=lambda c: _check_key(c.code, c.address))
    assert [describe_check(c, w or {}) for c, w in zip_longest(actual_checks, wanted_checks)] == wanted_checks

    assert run.plan.summary() == case.expected["summary"]


# --- invariants every case must keep ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", params("round-trip"))
def test_plan_survives_the_plan_file(case: Case) -> None:
    """`plan --out` then `apply FILE` sees the same plan: from_dict(to_dict(plan)) serialises identically."""
    text = json.dumps(to_dict(run_case(case).plan), sort_keys=True)
    assert json.dumps(to_dict(from_dict(json.loads(text))), sort_keys=True) == text


def applied(observed: Observed, result: Plan) -> Observed:
    """The hosts after `apply` carried the plan out, as Docker would leave them.

    Create and replace leave a new running container with the desired labels (a Model: an entry in the host's
    cache index); delete removes it; an in-place
    update (`docker update`) changes the live restart policy and limits but cannot touch labels, so the
    container keeps the labels (and the spec hash) it was created with.
    """
    after = copy.deepcopy(observed)
    for n, change in enumerate(result.changes):
        host = after.host(change.host)
        if change.model is not None and change.action in (CREATE, REPLACE):
            # The helper's fetch leaves the model in the host's cache index.
            want = change.model
            host.models[want.name] = {"source": want.source, "sha256": want.sha256, "path": want.path}
            continue
        if change.action in (DELETE, REPLACE):
            host.containers = [c for c in host.containers if c.id != change.container_id]
            host.others = [c for c in host.others if c.id != change.container_id]
        if change.action in (CREATE, REPLACE):
            assert change.desired is not None
            host.containers.append(as_running(change.desired, f"id-applied-{n}"))
        if change.action == UPDATE:
            assert change.desired is not None
            live = live_values(change.desired)
            host.containers = [dataclasses.replace(c, live=live) if c.id == change.container_id else c
                               for c in host.containers]
    return after


@pytest.mark.parametrize("case", params("converges"))
def test_apply_then_plan_is_empty(case: Case) -> None:
    """After the plan is applied, the same manifests plan to nothing (for what the plan selected)."""
    run = run_case(case)
    assert not run.plan.errors, "cases whose plans have errors are not collected for this test"
    after = applied(run.observed, run.plan)
    _, again = plan_against(case, run.resources, run.digests, after, plan_options(case, replace=[]))
    assert [(c.address, c.action, c.reason) for c in again.actionable] == []
    assert again.errors == []


@pytest.mark.parametrize("case", params("unique-ports"))
def test_no_host_port_is_wanted_twice(case: Case) -> None:
    """Two desired containers never publish the same host port on one host, unless the plan says it cannot work."""
    run = run_case(case)
    owners: dict[tuple[str, int, str], list[str]] = {}
    for want in run.desired.containers:
        for port in want.container.ports:
            owners.setdefault((want.host, port.host_port, port.protocol), []).append(want.address)
    shared = {f"{h}:{p}/{proto}": who for (h, p, proto), who in owners.items() if len(who) > 1}
    assert shared == {} or run.plan.errors, f"host ports wanted twice without an error check: {shared}"


def test_every_case_directory_is_complete() -> None:
    """Each case has its observation and expectations, and declares only known expectation keys."""
    known = {"description", "changes", "checks", "summary", "xfail"}
    for case in all_cases():
        assert set(case.expected) <= known, f"{case.name}: unknown keys {set(case.expected) - known}"
        assert case.expected.get("description"), f"{case.name}: say what the case shows"
        assert set(case.expected.get("xfail", {})) <= set(TESTS), f"{case.name}: xfail names unknown tests"
    assert len(all_cases()) >= 30


@pytest.mark.parametrize("case", params("ordered"))
def test_changes_come_deletes_replaces_updates_creates_then_no_ops(case: Case) -> None:
    """Terraform's habit: destroys and replaces first; no-ops (hidden by the renderer) last; by address within."""
    changes = run_case(case).plan.changes
    rank = [DELETE, REPLACE, UPDATE, CREATE, NOOP]
    keys = [(rank.index(c.action), c.address) for c in changes]
    assert keys == sorted(keys)
