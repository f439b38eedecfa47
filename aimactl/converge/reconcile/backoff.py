"""Which changes of a plan a reconcile pass acts on, and per-resource backoff after failures. Pure: the time is
passed in, the states come from the store.

Per replica address: a failure waits `base * 2**(n-1)` (capped) before the next attempt; after `budget` failures
the resource is Stalled with its last reason until its manifest changes or `aimactl reconcile --retry NAME`.
A resource with `selfHeal: false` is converged when its manifest changes, but drift made on the host (a container
that died, was removed, or was changed by hand) is only reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aimactl.core.plan import CREATE, DELETE, NOOP, REPLACE, Change, Plan
from aimactl.store.resources import ResourceState

IN_SYNC, DRIFTED, MISSING, STALLED, PENDING, FAILED = "in-sync", "drifted", "missing", "stalled", "pending", "failed"


@dataclass(frozen=True)
class Policy:
    """Backoff: first wait `base` seconds, doubling up to `cap`; Stalled after `budget` failures."""

    base: float = 5.0
    cap: float = 300.0
    budget: int = 5

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row."""
        return float(min(self.cap, self.base * 2 ** max(0, failures - 1)))


@dataclass
class Selection:
    """A pass's decision: the changes to apply now, and why the others wait."""

    work: list[Change] = field(default_factory=list)
    drift: dict[str, str] = field(default_factory=dict)
    """Address -> what drifted on the host (as opposed to a manifest change), for the events."""
    report_only: dict[str, str] = field(default_factory=dict)
    """Address -> drift left alone because the resource has `selfHeal: false`."""
    waiting: dict[str, str] = field(default_factory=dict)
    """Address -> why it is not acted on now (backoff, Stalled)."""
    states: dict[str, ResourceState] = field(default_factory=dict)


def desired_hash(change: Change) -> str | None:
    """What the manifest asks of this address, as one string: the spec hash, or the model's source."""
    if change.desired is not None:
        return change.desired.spec_hash
    if change.model is not None:
        m = change.model
        return f"model:{m.source}|{m.sha256}|{m.revision}"
    return None


def drift_text(change: Change) -> str:
    """What drifted, in words: the plan's reason and, for fields changed by hand, their live and wanted values."""
    details = [f"{d.path} is {d.before!r}, manifest says {d.after!r}" for d in change.diff]
    return change.reason + (f" ({'; '.join(details)})" if details else "")


def _is_drift(change: Change, state: ResourceState | None, wanted: str | None) -> bool:
    """Drift is a difference the manifests did not cause: the container carries the wanted spec (it died, was
    paused, or had a field changed by hand), or it was converged before and is now missing."""
    if change.action == DELETE or wanted is None:
        return False
    if change.observed_hash is not None and change.observed_hash == wanted:
        return True
    converged_before = state is not None and state.desired_hash == wanted and state.sync in (IN_SYNC, DRIFTED)
    return change.action == CREATE and converged_before


def _waiting(state: ResourceState, now: datetime) -> str | None:
    """Why a failing resource is not tried now (Stalled, or backing off), or None when it is due."""
    if state.stalled:
        state.sync = STALLED
        return f"Stalled after {state.failures} failures: {state.reason}"
    if state.next_retry_at and datetime.fromisoformat(state.next_retry_at) > now:
        return f"backing off until {state.next_retry_at} after: {state.reason}"
    return None


def select(plan: Plan, states: Mapping[str, ResourceState], self_heal: Mapping[str, bool], now: datetime,
           blocked: Mapping[str, str] | None = None, unhealthy: Mapping[str, str] | None = None,
           recent: Collection[str] = ()) -> Selection:
    """Split the plan's changes into work for this pass and changes that wait.

    `self_heal` maps resource keys (`service/chat`) to their `selfHeal`; `blocked` maps addresses to plan errors
    that stop them this pass (a host or engine that cannot be reached: retried next pass, no backoff);
    `unhealthy` maps the addresses of in-sync replicas whose last attempt failed (not ready) and that still do
    not answer: they are replaced again when their backoff ends. `recent` are addresses healed a short while
    ago: being in sync does not yet clear their failures (a replica that keeps dying must reach Stalled).
    """
    out = Selection(states={k: dataclasses.replace(v) for k, v in states.items()})
    blocked, unhealthy = blocked or {}, unhealthy or {}
    for change in plan.changes:
        wanted = desired_hash(change)
        state = out.states.get(change.address)
        if state is None:
            state = out.states[change.address] = ResourceState(change.address, change.key)
        if wanted is not None and state.desired_hash not in (None, wanted):
            # The manifest changed: a Stalled resource gets a fresh budget.
            state.failures, state.stalled, state.next_retry_at = 0, False, None
        drift = _is_drift(change, states.get(change.address), wanted)
        if change.action == NOOP and change.address in unhealthy:
            why = _waiting(state, now)
            if why:
                out.waiting[change.address] = why
            else:
                out.work.append(dataclasses.replace(change, action=REPLACE,
                                                    reason=f"not ready ({unhealthy[change.address]}): trying again"))
            continue
        if change.action == NOOP:
            state.sync, state.desired_hash = IN_SYNC, wanted
            if change.address not in recent:
                state.failures, state.stalled, state.next_retry_at, state.reason = 0, False, None, ""
            continue
        why = blocked.get(change.address) or _waiting(state, now)
        if why:
            out.waiting[change.address] = why
        elif drift and not self_heal.get(change.key, True):
            state.sync = DRIFTED
            out.report_only[change.address] = drift_text(change)
        else:
            out.work.append(change)
            if drift:
                out.drift[change.address] = drift_text(change)
        if change.address not in out.report_only and not state.stalled:
            state.sync = DRIFTED if drift else (MISSING if change.action == CREATE else PENDING)
    return out


def record_failure(state: ResourceState, wanted: str | None, reason: str, now: datetime, policy: Policy) -> bool:
    """Count a failure and schedule the next attempt; True when this failure used up the budget (Stalled)."""
    state.failures += 1
    state.desired_hash = wanted or state.desired_hash
    state.reason = reason
    state.sync = FAILED
    if state.failures >= policy.budget:
        state.stalled, state.sync, state.next_retry_at = True, STALLED, None
        return True
    state.next_retry_at = (now + timedelta(seconds=policy.delay(state.failures))).isoformat(timespec="microseconds")
    return False


def record_success(state: ResourceState, wanted: str | None, flapping: bool = False) -> None:
    """The change was applied: the resource is in sync and its backoff forgotten, except the failure count of
    one that keeps dying (`flapping`): that is cleared only once it stays up (see `select`'s `recent`)."""
    if not flapping:
        state.failures, state.reason = 0, ""
    state.stalled, state.next_retry_at = False, None
    state.sync, state.desired_hash = IN_SYNC, wanted


def flaps(work: Iterable[Change], drift: Mapping[str, str], states: Mapping[str, ResourceState],
          recent: Collection[str]) -> list[Change]:
    """The drift in `work` that is a replica dying again soon after it was healed, and not the attempt that ends
    a backoff: each counts as a failure (and waits) instead of being healed at once, like a crash loop."""
    return [c for c in work if c.address in drift and c.address in recent
            and states[c.address].next_retry_at is None]


def next_due(states: Iterable[ResourceState], now: datetime) -> float | None:
    """Seconds until the earliest backoff ends (None when nothing is backing off), to wake the loop then."""
    waits = [(datetime.fromisoformat(s.next_retry_at) - now).total_seconds() for s in states
             if s.next_retry_at and not s.stalled]
    # A backoff already over was due in the pass that just ran: waking for it again would spin.
    waits = [w for w in waits if w > 0]
    return min(waits) if waits else None


def without(plan: Plan, work: Iterable[Change]) -> Plan:
    """The plan reduced to `work` (plus its other no-ops, for the record)."""
    work = list(work)
    chosen = {c.address for c in work}
    return dataclasses.replace(plan, changes=work + [c for c in plan.changes
                                                     if c.action == NOOP and c.address not in chosen])
