"""The agent's `$package` reports (agent/package_report.py): read first, report only what
changed, retry a report left unanswered, ignore answers that are not ours."""

from __future__ import annotations

import json
from typing import Any

from overair.agent.package_report import PackageReporter, Running, parse_entry

BASE = "$aws/things/dev-1/shadow/name/$package"
V1 = Running("1.0.0", "a", 0)
V2 = Running("1.1.0", "b", 1)


def _body(messages: list[tuple[str, bytes]]) -> tuple[str, dict[str, Any]]:
    assert len(messages) == 1
    topic, payload = messages[0]
    return topic, json.loads(payload)


def _answer(reporter: PackageReporter, suffix: str, token: str, **body: Any) -> None:
    reporter.received(f"{BASE}/{suffix}", json.dumps({**body, "clientToken": token}).encode())


def _synced(reporter: PackageReporter, running: Running, held: Running | None, now: float = 0.0) -> None:
    topic, get = _body(reporter.due(running, now))
    assert topic == f"{BASE}/get"
    if held is None:
        _answer(reporter, "get/rejected", get["clientToken"], code=404, message="No shadow exists")
    else:
        state = {"reported": {"firmware": held.to_reported()}}
        _answer(reporter, "get/accepted", get["clientToken"], state=state)


def test_subscriptions_are_the_package_shadows_answers() -> None:
    reporter = PackageReporter("dev-1")
    assert reporter.subscriptions() == [f"{BASE}/get/accepted", f"{BASE}/get/rejected",
                                        f"{BASE}/update/accepted", f"{BASE}/update/rejected"]
    assert reporter.owns(f"{BASE}/update/accepted")
    assert not reporter.owns("$aws/things/dev-1/shadow/name/overair-health/update/accepted")


def test_first_boot_reports_once_in_aws_shape() -> None:
    reporter = PackageReporter("dev-1")
    assert reporter.due(None, 0.0) == []  # nothing booted yet
    _synced(reporter, V1, None)
    topic, update = _body(reporter.due(V1, 1.0))
    assert topic == f"{BASE}/update"
    assert update["state"] == {"reported": {"firmware": {
        "version": "1.0.0", "attributes": {"slot": "a", "securityCounter": "0"}}}}
    assert reporter.due(V1, 2.0) == []  # in flight: not again
    _answer(reporter, "update/accepted", update["clientToken"])
    assert reporter.due(V1, 100.0) == []  # accepted: nothing changed since
    assert reporter.reports_sent == 1


def test_a_shadow_already_holding_what_runs_gets_no_report() -> None:
    reporter = PackageReporter("dev-1")
    _synced(reporter, V1, V1)
    assert reporter.due(V1, 1.0) == []
    assert reporter.reports_sent == 0


def test_an_update_or_rollback_is_reported_and_a_reconnect_reads_again() -> None:
    reporter = PackageReporter("dev-1")
    _synced(reporter, V1, V1)
    _topic, update = _body(reporter.due(V2, 1.0))  # activation
    _answer(reporter, "update/accepted", update["clientToken"])
    reporter.connected()
    _synced(reporter, V1, V2, now=2.0)  # rolled back, on a new connection
    _topic, rollback = _body(reporter.due(V1, 3.0))
    assert rollback["state"]["reported"]["firmware"]["version"] == "1.0.0"


def test_unanswered_or_refused_reports_are_retried_after_the_interval_only() -> None:
    reporter = PackageReporter("dev-1", retry_seconds=30.0)
    _synced(reporter, V1, None)
    _topic, first = _body(reporter.due(V1, 0.0))
    _answer(reporter, "update/rejected", first["clientToken"], code=500, message="Internal service failure")
    assert reporter.due(V1, 29.0) == []
    _topic, second = _body(reporter.due(V1, 30.0))
    assert second["clientToken"] != first["clientToken"]
    _answer(reporter, "update/accepted", first["clientToken"])  # a stale answer: not ours now
    assert reporter.due(V1, 31.0) == []
    assert reporter.due(V1, 60.0) != []  # still unanswered: retried


def test_an_unanswered_get_is_asked_again_after_the_interval() -> None:
    reporter = PackageReporter("dev-1", retry_seconds=30.0)
    assert len(reporter.due(V1, 0.0)) == 1
    assert reporter.due(V1, 10.0) == []
    assert len(reporter.due(V1, 30.0)) == 1


def test_hostile_or_foreign_answers_change_nothing() -> None:
    reporter = PackageReporter("dev-1")
    _topic, get = _body(reporter.due(V1, 0.0))
    for payload in (b"", b"[1]", b"{" * 500, b'{"clientToken": "someone-else", "state": {}}', b"\xff\xfe"):
        reporter.received(f"{BASE}/get/accepted", payload)
    _answer(reporter, "get/rejected", get["clientToken"], code=500)  # not "no shadow": stays unknown
    assert reporter.due(V1, 1.0) == []  # still waiting for the get's answer
    _answer(reporter, "get/accepted", get["clientToken"], state="junk")
    _topic, update = _body(reporter.due(V1, 2.0))  # unreadable shadow: reported over
    assert update["state"]["reported"]["firmware"]["version"] == "1.0.0"


def test_parse_entry_takes_only_our_fields() -> None:
    assert parse_entry(V2.to_reported()) == V2
    assert parse_entry({"version": "1.0.0"}) is None  # written by the server alone
    assert parse_entry({"version": "1", "attributes": {"slot": "a", "securityCounter": "-1"}}) is None
    assert parse_entry({"version": "1", "attributes": {"slot": "a", "securityCounter": "9" * 21}}) is None
    assert parse_entry({"version": "1", "attributes": {"slot": "a", "securityCounter": "\u0663"}}) is None
    assert parse_entry([]) is None
