"""One command's work against a stack: load -> observe -> plan, and apply under the stack lock with history.

The CLI calls these; they hold the sequence, the CLI only parses flags and renders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from aimactl.converge import secrets
from aimactl.converge.apply import DONE, FAILED, SKIPPED, UNCHANGED, Executor, Reporter, StepResult
from aimactl.converge.connections import Connections, resolve_hosts
from aimactl.converge.observe import observe
from aimactl.core import fleet
from aimactl.core.desired import HostInfo, build_desired, host_infos, images_of
from aimactl.core.observed import Observed
from aimactl.core.plan import Plan, PlanOptions, plan
from aimactl.core.planfile import to_dict
from aimactl.manifest import Manifests
from aimactl.models.weights import model_weights
from aimactl.runtimes import ContainerNotFound, RuntimeFailure

EVENT_OF = {("create", DONE): "created", ("replace", DONE): "replaced", ("update", DONE): "updated",
            ("delete", DONE): "deleted"}


@dataclass
class Session:
    """A plan together with the observation and the connections it came from."""

    stack: str
    plan: Plan
    observed: Observed
    connections: Connections
    sources: list[dict[str, str]] = field(default_factory=list)

    def close(self) -> None:
        """Close the host connections."""
        self.connections.close()


def plan_stack(manifests: Manifests, options: PlanOptions, environ: Mapping[str, str],
               parallelism: int = 4, accept_new_host_keys: bool = False) -> Session:
    """Observe the hosts the manifests name and plan against them (`accept_new_host_keys`: record unknown SSH
    host keys, as OpenSSH accept-new)."""
    resources = manifests.resources
    native = any(r.kind == "Service" and r.spec.runtime == "process" and r.spec.engine != "custom" for r in resources)
    hosts = resolve_hosts(host_infos(resources), engine_facts=native)
    connections = Connections(hosts, environ, accept_new_host_keys, ssh_persist(environ, hosts))
    observed = observe(connections, options.stack, images_of(resources), parallelism)
    observed.model_weights = model_weights(resources, hosts)
    digests = secrets.digests(options.stack, secrets.secret_sources_in(resources), environ)
    image_ids = {name: host.image_ids for name, host in observed.hosts.items()}
    # connections.hosts: SSH hosts' `~` in dataDir now resolved against their remote home.
    desired = build_desired(options.stack, resources, observed, digests, image_ids, connections.hosts,
                            environ.get("HF_ENDPOINT"))
    if options.verify:
        from aimactl.converge.models import verify_cached

        verify_cached(connections, desired.models, observed)
    if any(m.service for m in desired.models):
        from aimactl.converge.models import observe_pulled

        observe_pulled(connections, desired.models, observed)
    return Session(options.stack, plan(desired, observed, options), observed, connections, manifests.sources)


def ssh_persist(environ: Mapping[str, str], hosts: Mapping[str, HostInfo]) -> float:
    """How long SSH connections are kept after this command (AIMACTL_SSH_PERSIST, hosts/keeper.py); 0 for a
    stack without SSH hosts. A malformed value is a RuntimeFailure naming the variable."""
    if all(info.address == "local" for info in hosts.values()):
        return 0.0
    from aimactl.hosts.keeper import persist_seconds

    try:
        return persist_seconds(environ)
    except ValueError as exc:
        raise RuntimeFailure(str(exc)) from None


def stale_targets(session: Session) -> list[str]:
    """Re-check a saved plan: every target must still look as it did when planned. Returns what changed."""
    problems = []
    for change in session.plan.actionable:
        if change.model is not None:
            continue  # a fetch or pull is idempotent and re-checks its own target; there is no container to inspect
        try:
            runtime = session.connections.runtime(change.host, change.runtime)
            name = change.desired.container.name if change.desired else change.container_id or ""
            current = runtime.inspect(name)
            now = f"{current.id}:{current.spec_hash}"
        except ContainerNotFound:
            now = "absent"
        except RuntimeFailure as exc:
            problems.append(f"{change.address}: cannot re-check ({exc})")
            continue
        if now != change.fingerprint:
            was = "absent" if change.fingerprint == "absent" else f"container {change.fingerprint[:12]}"
            is_ = "absent" if now == "absent" else f"container {now[:12]}"
            problems.append(f"{change.address}: planned against {was}, now {is_}")
    return problems + stale_gpus(session)


def stale_gpus(session: Session) -> list[str]:
    """The GPUs a saved plan starts replicas on, read again: another board, or less free memory than the room
    the plan had there, makes it stale (specs/hal.md)."""
    from aimactl.converge.observe import observe_facts
    from aimactl.core import feasibility

    prints = session.plan.gpu_fingerprints
    hosts = sorted({fp["host"] for fp in prints if fp["host"] in session.connections.hosts})
    return feasibility.stale_gpus(prints, {h: observe_facts(session.connections, h)[0] for h in hosts})


@dataclass
class Outcome:
    """What an apply did, for rendering and exit codes."""

    results: list[StepResult]
    revision: int | None
    status: str
    hosts: list[fleet.HostSummary] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when any step failed or was skipped, or a host could not be reached."""
        return any(r.status in (FAILED, SKIPPED) for r in self.results) or any(not h.reachable for h in self.hosts)


def host_summary(plan: Plan, results: Sequence[StepResult] = ()) -> list[fleet.HostSummary]:
    """Per host of the plan: reachable or not, and its steps counted by result."""
    return fleet.host_summary(set(plan.hosts) | {c.host for c in plan.changes}, plan.checks,
                              [(r.host, r.status) for r in results])


def _status(results: Sequence[StepResult]) -> str:
    bad = sum(r.status in (FAILED, SKIPPED) for r in results)
    good = sum(r.status in (DONE, UNCHANGED) for r in results)
    return "succeeded" if not bad else "failed" if not good else "partial"


def record(store: Any, stack: str, revision: int, results: Sequence[StepResult]) -> None:
    """One event per step: created, replaced, updated, deleted, failed or skipped."""
    for r in results:
        kind = EVENT_OF.get((r.action, r.status), r.status if r.status in (FAILED, SKIPPED) else None)
        if kind:
            store.add_event(stack, r.address, kind, r.message, revision)


def apply_session(session: Session, store: Any, reporter: Reporter, *, kind: str = "apply", parallelism: int = 4,
                  environ: Mapping[str, str] | None = None, source: str | None = None,
                  max_fail_percent: int | None = None, host_lock_wait: float = 0.0) -> Outcome:
    """Apply the session's plan; the revision records manifests, plan and results.

    The caller holds the stack lock (see `stack_lock`) from before it observed and planned until this returns,
    so that no other apply can move the hosts between the plan and its execution. Each SSH host that changes is
    also locked on the host itself (`<dataDir>/lock`), against controllers on other machines; a held lock
    raises HostLockHeld naming its holder (after `host_lock_wait` seconds), before anything changed.
    """
    from aimactl.hosts.hostlock import holder_name, host_locks

    with host_locks(session.connections, _hosts_to_lock(session), holder_name(kind, session.stack), host_lock_wait):
        return _apply_locked(session, store, reporter, kind, parallelism, environ, source, max_fail_percent)


def _hosts_to_lock(session: Session) -> set[str]:
    """The reachable SSH hosts this plan changes (the local host is covered by the stack lock)."""
    hosts = session.connections.hosts
    changed = {c.host for c in session.plan.actionable if c.host in hosts and hosts[c.host].address != "local"}
    return {h for h in changed if session.observed.hosts.get(h) is None or session.observed.hosts[h].reachable}


def _apply_locked(session: Session, store: Any, reporter: Reporter, kind: str, parallelism: int,
                  environ: Mapping[str, str] | None, source: str | None, max_fail_percent: int | None) -> Outcome:
    store.mark_interrupted(session.stack)
    revision = store.begin_revision(session.stack, kind, session.sources, to_dict(session.plan), source=source)
    executor = Executor(session.connections, session.stack, reporter, parallelism, environ,
                        max_fail_percent=max_fail_percent)
    try:
        results = executor.run(session.plan)
    except BaseException:
        store.finish_revision(revision, "interrupted", None, "interrupted")
        raise
    hosts = host_summary(session.plan, results)
    status = _status(results)
    if status == "succeeded" and any(not h.reachable for h in hosts):
        status = "partial"  # the reachable hosts converged, the others were left as they were
    record(store, session.stack, revision, results)
    summary = ", ".join(f"{sum(r.status == s for r in results)} {s}" for s in (DONE, UNCHANGED, FAILED, SKIPPED))
    store.finish_revision(revision, status, [asdict(r) for r in results], summary)
    return Outcome(results, revision, status, hosts)


@contextmanager
def stack_lock(stack: str, operation: str, wait: float, environ: Mapping[str, str]) -> Iterator[Any]:
    """Open the state store and hold the stack lock for the whole command; yields the store."""
    from aimactl.store import open_store
    from aimactl.store.locks import acquire

    store = open_store(environ=environ)
    try:
        with acquire(store, stack, operation, wait=wait):
            yield store
    finally:
        store.close()



class RevisionNotFound(Exception):
    """No revision with that id was recorded for the stack."""


def _stored_revision(environ: Mapping[str, str], pick: Callable[[Any], dict[str, Any] | None]) -> dict[str, Any] | None:
    """One revision from the state DB, chosen by `pick(store)`; the store is closed again at once."""
    from aimactl.store import open_store

    store = open_store(environ=environ)
    try:
        return pick(store)
    finally:
        store.close()


def revision_manifests(stack: str, revision: int, environ: Mapping[str, str], var_args: Sequence[str] = (),
                       var_files: Sequence[str] = (), template_env: Mapping[str, str] | None = None) -> Manifests:
    """The manifests that revision `revision` of `stack` applied, loaded again (for `rollback`); errors are in the
    result as for files. Raises RevisionNotFound when the stack has no such revision."""
    from aimactl.manifest import load_manifest_texts

    found = _stored_revision(environ, lambda store: store.revision(revision))
    if not found or found["stack"] != stack:
        raise RevisionNotFound(f"revision {revision} not found for stack {stack}; see `aimactl history`")
    return load_manifest_texts(found["manifests"] or [], var_args, var_files, template_env)


def recorded_hosts(stack: str, environ: Mapping[str, str], var_args: Sequence[str] = (),
                   var_files: Sequence[str] = (), template_env: Mapping[str, str] | None = None,
                   ) -> tuple[Manifests, str]:
    """The Hosts of the stack's newest revision that recorded manifests, for `destroy` without `-f`.

    As Terraform destroys from its state, this lets a bare `aimactl destroy` reach every host the stack was
    applied to (SSH hosts included), not only the local one. Returns the Hosts (empty: the local host) and a line
    saying where they came from.
    """
    from aimactl.manifest import load_manifest_texts

    found = _stored_revision(environ, lambda store: next(
        (r for r in store.revisions(stack, limit=50) if r.get("manifests")), None))
    if found is None:
        return Manifests(), f"no revision of stack {stack} recorded manifests: the local host only"
    loaded = load_manifest_texts(found["manifests"], var_args, var_files, template_env)
    if not loaded.valid:
        return Manifests(), (f"the manifests of revision {found['id']} do not load ({loaded.errors[0]}): the local "
                             "host only; pass -f to name the hosts")
    hosts = [r for r in loaded.resources if r.kind == "Host"]
    names = ", ".join(r.name for r in hosts) or "local"
    return Manifests(resources=hosts), f"hosts from revision {found['id']}: {names}"
