"""Fleet semantics, pure (core/fleet.py): which errors refuse a plan, the per-host summary, the fail limit and
which changes wait for an unreachable host. The plans themselves are table-driven in tests/cases/plan/fleet-*."""

from __future__ import annotations

import pytest

from aimactl.core import fleet
from aimactl.core.checks import error, warning
from aimactl.core.observed import Observed, ObservedHost

DOWN = error(fleet.UNREACHABLE, "host edge-1 is unreachable: connection refused", host="edge-1")
PORT = error("port-taken", "host port 8080/tcp on local is held by ...", "app.web[0]@local", "local")
WARN = warning("restarting", "x keeps restarting", host="local")


@pytest.mark.parametrize(("checks", "blocking", "down"), [
    ([], [], {}),
    ([DOWN], [], {"edge-1": DOWN.message}),
    ([DOWN, PORT, WARN], [PORT], {"edge-1": DOWN.message}),
    ([WARN], [], {}),
], ids=["none", "unreachable-only", "unreachable-and-port", "warning"])
def test_only_host_scoped_errors_let_the_plan_go_on(checks: list, blocking: list, down: dict) -> None:
    assert fleet.blocking(checks) == blocking
    assert fleet.unreachable_hosts(checks) == down


def test_unreachable_checks_name_each_host_and_its_reason() -> None:
    observed = Observed({"edge-2": ObservedHost("edge-2", reachable=False, error="auth failed"),
                         "local": ObservedHost("local"),
                         "edge-1": ObservedHost("edge-1", reachable=False, error="no route to host")})
    checks = fleet.unreachable_checks(observed)
    assert [(c.host, c.severity, c.code) for c in checks] == [("edge-1", "error", "host-unreachable"),
                                                              ("edge-2", "error", "host-unreachable")]
    assert "host edge-1 is unreachable: no route to host" in checks[0].message
    assert "left untouched" in checks[0].message
    # The summary keeps the reason, without the consequence.
    assert fleet.unreachable_hosts(checks)["edge-1"] == "host edge-1 is unreachable: no route to host"


def test_a_reason_that_names_the_host_is_not_prefixed_again() -> None:
    reason = "host edge-3 (root@127.0.0.4:22) is unreachable: connection refused"
    [check] = fleet.unreachable_checks(Observed({"edge-3": ObservedHost("edge-3", reachable=False, error=reason)}))
    assert check.message.startswith(reason + "; its resources are left untouched")


@pytest.mark.parametrize(("hosts", "checks", "results", "rows"), [
    (["local"], [], [], [("local", True, 0, 0, 0, "")]),
    (["local", "edge-1"], [DOWN], [("local", "done"), ("local", "done"), ("local", "unchanged")],
     [("edge-1", False, 0, 0, 0, DOWN.message), ("local", True, 2, 0, 0, "")]),
    (["a", "b"], [], [("a", "failed"), ("a", "skipped"), ("b", "done"), ("b", "skipped")],
     [("a", True, 0, 1, 1, ""), ("b", True, 1, 0, 1, "")]),
    # A host known only from the check (a saved plan whose hosts map lost it) still gets its row.
    ([], [DOWN], [], [("edge-1", False, 0, 0, 0, DOWN.message)]),
], ids=["one-host-nothing-done", "one-down", "failed-and-skipped", "host-from-check"])
def test_host_summary_counts_results_per_host(hosts: list, checks: list, results: list, rows: list) -> None:
    summary = fleet.host_summary(hosts, checks, results)
    assert [(s.host, s.reachable, s.done, s.failed, s.skipped, s.reason) for s in summary] == rows


def test_host_summary_ok_and_failed_hosts() -> None:
    summary = fleet.host_summary(["a", "b", "c", "edge-1"], [DOWN], [("a", "failed"), ("b", "done"),
                                                                    ("c", "skipped")])
    assert [s.ok for s in summary] == [False, True, False, False]
    assert fleet.failed_hosts(summary) == ["a", "edge-1"]
    assert summary[0].to_dict()["ok"] is False


@pytest.mark.parametrize(("failed", "total", "percent", "stop"), [
    (0, 4, 0, False),   # nothing failed yet: even 0 lets the run start
    (1, 4, 0, True),    # 0: the first failure stops the run
    (1, 4, 25, False),  # exactly 25% is not more than 25%
    (2, 4, 25, True),
    (1, 2, 50, False),
    (1, 2, 49, True),
    (8, 8, 100, False),  # 100: never stop
    (3, 4, None, False),  # no limit given
    (1, 0, 0, False),
])
def test_fail_limit_is_more_than_the_percentage(failed: int, total: int, percent: int | None, stop: bool) -> None:
    assert fleet.over_fail_limit(failed, total, percent) is stop


def test_stop_message_names_the_failed_hosts_and_the_limit() -> None:
    text = fleet.stop_message({"edge-2", "edge-1"}, 4, 25)
    assert text == "not started: 2 of 4 hosts failed (edge-1, edge-2), more than --max-fail-percent 25"


EDGES = {"app/web": {"service/api", "model/tiny"}, "app/cli": {"app/web"}, "service/api": set()}
PLACED = {"service/api": {"edge-1"}, "app/web": {"local"}, "app/cli": {"local"}, "model/tiny": {"edge-1"}}


@pytest.mark.parametrize(("wanted", "down", "held"), [
    ([("app.web[0]@local", "app/web", "local")], {"edge-1"}, {"app.web[0]@local"}),
    ([("app.web[0]@local", "app/web", "local")], set(), set()),
    # Only direct dependencies: cli's reference to web (on reachable local) renders a known URL.
    ([("app.cli[0]@local", "app/cli", "local")], {"edge-1"}, set()),
    # Changes on the unreachable host itself are already out of the plan; nothing to hold.
    ([("service.api[0]@edge-1", "service/api", "edge-1")], {"edge-1"}, set()),
], ids=["dependency-down", "all-up", "indirect", "own-host-down"])
def test_changes_wait_for_what_they_depend_on(wanted: list, down: set, held: set) -> None:
    placements = {k: v for k, v in PLACED.items() if not k.startswith("model/")}
    got, checks = fleet.held_back(wanted, EDGES, placements, down)
    assert got == held
    assert [(c.severity, c.code, c.address) for c in checks] == [("warning", "held-back", a) for a in sorted(held)]
