"""The reconcile loop's pure parts and its store rows, without hosts: backoff and Stalled, which changes a pass
acts on (drift vs manifest change, selfHeal: false), the Docker event lines (captured from a real engine),
metrics text, git argument checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from aimactl.converge.reconcile.backoff import (
    IN_SYNC,
    Policy,
    next_due,
    record_failure,
    record_success,
    select,
    without,
)
from aimactl.converge.reconcile.events import describe_event, event_filters, local_process_fingerprint
from aimactl.converge.reconcile.gitsource import applied_commit, check_git_args
from aimactl.converge.reconcile.metrics import Metrics, parse_addr
from aimactl.core.plan import CREATE, DELETE, NOOP, REPLACE, UPDATE, Change, FieldDiff, Plan
from aimactl.store import open_store
from aimactl.store.resources import (
    ResourceState,
    load_states,
    request_retry,
    retry_requests,
    save_states,
    stalled_resources,
    take_retry_requests,
)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
EVENTS = Path(__file__).parent / "data" / "docker" / "events-stack.jsonl"


class _Want:
    """The one DesiredContainer field the selection reads."""

    def __init__(self, spec_hash: str) -> None:
        self.spec_hash = spec_hash


def change(action: str, name: str = "web", observed: str | None = None, want: str = "h1",
           reason: str = "", diff: list[FieldDiff] | None = None) -> Change:
    return Change(f"service.{name}[0]@local", f"service/{name}", "service", name, 0, "local", action, reason,
                  diff or [], "cid" if observed else None, observed, _Want(want))  # type: ignore[arg-type]


def test_backoff_doubles_from_5s_to_5min() -> None:
    policy = Policy()
    assert [policy.delay(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_failures_schedule_the_next_attempt_then_stall_at_the_budget() -> None:
    policy, state = Policy(5, 300, 3), ResourceState("a", "service/web")
    assert not record_failure(state, "h1", "port taken", NOW, policy)
    assert state.next_retry_at == (NOW + timedelta(seconds=5)).isoformat(timespec="microseconds")
    assert not record_failure(state, "h1", "port taken", NOW, policy)
    assert record_failure(state, "h1", "still taken", NOW, policy)
    assert state.stalled and state.reason == "still taken" and state.sync == "stalled" and state.failures == 3
    record_success(state, "h2")
    assert (state.failures, state.stalled, state.sync, state.desired_hash) == (0, False, IN_SYNC, "h2")


def test_drift_vs_manifest_change_and_self_heal_false() -> None:
    died = change(REPLACE, "web", observed="h1", reason="container exited (137)")
    edited = change(REPLACE, "api", observed="h0", want="h1", reason="env (MODE) changed")
    by_hand = change(UPDATE, "db", observed="h1", reason="resources changed",
                     diff=[FieldDiff("resources.memory", 1, 2, False)])
    kept = change(REPLACE, "keep", observed="h1", reason="container exited (0)")
    plan = Plan("s", [died, edited, by_hand, kept, change(NOOP, "ok", observed="h1")])
    sel = select(plan, {}, {"service/keep": False}, NOW)
    assert [c.name for c in sel.work] == ["web", "api", "db"]
    assert sel.drift == {"service.web[0]@local": "container exited (137)",
                         "service.db[0]@local": "resources changed (resources.memory is 1, manifest says 2)"}
    assert sel.report_only == {"service.keep[0]@local": "container exited (0)"}
    assert sel.states["service.ok[0]@local"].sync == IN_SYNC


def test_missing_is_drift_only_after_it_was_converged() -> None:
    new = Plan("s", [change(CREATE, "web")])
    assert select(new, {}, {"service/web": False}, NOW).work  # a new resource is created even with selfHeal off
    seen = {"service.web[0]@local": ResourceState("service.web[0]@local", "service/web", "h1", IN_SYNC)}
    removed = select(new, seen, {"service/web": False}, NOW)
    assert removed.work == []
    assert list(removed.report_only) == ["service.web[0]@local"]
    assert select(new, seen, {}, NOW).drift  # with selfHeal on, it is drift and it is healed


def test_backoff_stalled_blocked_and_manifest_change() -> None:
    later = (NOW + timedelta(seconds=30)).isoformat()
    a, b, c = "service.a[0]@local", "service.b[0]@local", "service.c[0]@local"
    states = {
        a: ResourceState(a, "service/a", "h1", "failed", failures=1, next_retry_at=later, reason="x"),
        b: ResourceState(b, "service/b", "h1", "stalled", failures=5, stalled=True, reason="y"),
        c: ResourceState(c, "service/c", "h0", "stalled", failures=5, stalled=True, reason="z"),
    }
    plan = Plan("s", [change(CREATE, "a"), change(CREATE, "b"), change(CREATE, "c"), change(DELETE, "d")])
    sel = select(plan, states, {}, NOW, blocked={"service.d[0]@local": "host-unreachable: down"})
    assert [c.name for c in sel.work] == ["c"]  # its manifest changed: a fresh budget
    assert sel.waiting["service.a[0]@local"].startswith("backing off until")
    assert sel.waiting["service.b[0]@local"] == "Stalled after 5 failures: y"
    assert sel.waiting["service.d[0]@local"] == "host-unreachable: down"
    assert not sel.states["service.c[0]@local"].stalled
    assert next_due(sel.states.values(), NOW) == 30.0
    assert next_due(sel.states.values(), NOW + timedelta(minutes=1)) is None  # past backoffs do not spin


def test_in_sync_but_not_ready_after_a_failure_is_replaced_when_due() -> None:
    failed = {"service.web[0]@local": ResourceState("service.web[0]@local", "service/web", "h1", "failed",
                                                   failures=1)}
    plan = Plan("s", [change(NOOP, "web", observed="h1")])
    sel = select(plan, failed, {}, NOW, unhealthy={"service.web[0]@local": "HTTP 404"})
    [work] = sel.work
    assert work.action == REPLACE and work.reason == "not ready (HTTP 404): trying again"
    reduced = without(plan, sel.work)
    assert [c.action for c in reduced.changes] == [REPLACE]


def test_docker_event_lines_captured_from_a_real_engine() -> None:
    lines = EVENTS.read_bytes().splitlines()
    assert [describe_event(line) for line in lines] == [
        "docker: update aima-cap-web-0", "docker: die aima-cap-web-0 (exit 137)", "docker: destroy aima-cap-web-0"]
    assert describe_event(b"not json") is None
    assert describe_event(b'{"Action": "start", "Actor": {}}') is None
    assert event_filters("prod")["label"] == ["dev.aima.stack=prod", "dev.aima.managed=true"]


def test_process_fingerprint_changes_when_a_process_dies(tmp_path: Path) -> None:
    import os

    (tmp_path / "a.pid").write_text(f'{{"pid": {os.getpid()}}}')
    alive = local_process_fingerprint(str(tmp_path))
    assert alive == (("a.pid", True),)
    (tmp_path / "a.exit").write_text("{}")
    (tmp_path / "a.pid").write_text('{"pid": 999999999}')
    assert local_process_fingerprint(str(tmp_path)) != alive
    assert local_process_fingerprint(str(tmp_path / "missing")) == ()


def test_metrics_text_and_address() -> None:
    m = Metrics('we"ird')
    m.observe_pass("ok", 0.5)
    m.observe_pass("failed", 1.5)
    m.add("heals", 2)
    m.set_stalled(1)
    text = m.render()
    assert 'aimactl_reconcile_passes_total{stack="we\\"ird",result="ok"} 1' in text
    assert 'aimactl_reconcile_pass_duration_seconds_sum{stack="we\\"ird"} 2.000000' in text
    assert 'aimactl_reconcile_heals_total{stack="we\\"ird"} 2' in text
    assert 'aimactl_reconcile_stalled_resources{stack="we\\"ird"} 1' in text
    assert parse_addr("127.0.0.1:9464") == ("127.0.0.1", 9464) and parse_addr(":80") == ("127.0.0.1", 80)
    for bad in ("9464", "host:x", "h:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_addr(bad)


@pytest.mark.parametrize(("url", "branch", "path"), [
    ("--upload-pack=touch /tmp/x", "main", "."), ("ext::sh -c id", "main", "."), ("file:///r", "-x", "."),
    ("file:///r", "a..b", "."), ("file:///r", "main", "../etc"), ("file:///r", "main", "/etc")])
def test_git_arguments_that_could_be_options_or_escape_are_refused(url: str, branch: str, path: str) -> None:
    with pytest.raises(ValueError):
        check_git_args(url, branch, path)


def test_applied_commit_is_read_back_from_the_history_label() -> None:
    assert applied_commit("git:file:///r#main@abc", "file:///r", "main") == "abc"
    assert applied_commit("git:file:///r#dev@abc", "file:///r", "main") is None
    assert applied_commit(None, "file:///r", "main") is None


def test_resource_states_round_trip_retry_and_stalled(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        stalled = ResourceState("service.web[0]@local", "service/web", "h1", "stalled", failures=5, stalled=True,
                                reason="boom")
        fine = ResourceState("service.api[0]@local", "service/api", "h2", IN_SYNC)
        save_states(store, "s", [stalled, fine])
        assert load_states(store, "s")["service.web[0]@local"] == stalled
        assert stalled_resources(store, "s") == {"service.web[0]@local": "Stalled after 5 failures: boom",
                                                 "service/web": "Stalled after 5 failures: boom"}
        assert request_retry(store, "s", "nothing") == []
        assert request_retry(store, "s", "web") == ["service.web[0]@local"]
        assert retry_requests(store, "s") == ["service.web[0]@local"]
        save_states(store, "s", [stalled])  # a pass that read the row before the retry keeps the request
        assert retry_requests(store, "s") == ["service.web[0]@local"]
        assert take_retry_requests(store, "s") == ["service.web[0]@local"] and retry_requests(store, "s") == []
        save_states(store, "s", [fine], forget_others=True)
        assert list(load_states(store, "s")) == ["service.api[0]@local"]
    finally:
        store.close()


def test_a_replica_that_keeps_dying_keeps_its_failures_until_it_stays_up() -> None:
    from aimactl.converge.reconcile.backoff import flaps

    died = change(REPLACE, "web", observed="h1", reason="container exited (1)")
    address = died.address
    state = ResourceState(address, "service/web", "h1", IN_SYNC, failures=1)
    sel = select(Plan("s", [died]), {address: state}, {}, NOW, recent={address})
    assert flaps(sel.work, sel.drift, sel.states, {address}) == [died]  # died again soon after a heal
    waited = ResourceState(address, "service/web", "h1", "failed", failures=2, next_retry_at=NOW.isoformat())
    sel = select(Plan("s", [died]), {address: waited}, {}, NOW, recent={address})
    assert flaps(sel.work, sel.drift, sel.states, {address}) == []  # the attempt that ends its backoff
    record_success(state, "h1", flapping=True)
    assert state.failures == 1 and state.sync == IN_SYNC
    up = Plan("s", [change(NOOP, "web", observed="h1")])
    assert select(up, {address: state}, {}, NOW, recent={address}).states[address].failures == 1
    assert select(up, {address: state}, {}, NOW).states[address].failures == 0  # stayed up: forgiven
