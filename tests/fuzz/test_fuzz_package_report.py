"""Fuzz target of the agent's `$package` reporter (agent/package_report.py): any bytes on
any of its answer topics, in any order, never raise, and the reporter keeps its bounds
(at most one message per call, only to its own shadow's get/update topics)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.agent.package_report import PackageReporter, Running, parse_entry
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES

BASE = "$aws/things/dev-1/shadow/name/$package"
SUFFIXES = st.sampled_from(["get/accepted", "get/rejected", "update/accepted", "update/rejected"])
TOKENS = st.sampled_from([f"overair-package-{i}" for i in range(1, 5)]) | HOSTILE_TEXT
ATTRIBUTES = st.dictionaries(st.sampled_from(["slot", "securityCounter"]) | HOSTILE_TEXT,
                             JSON_VALUES | HOSTILE_TEXT)
ENTRIES = JSON_VALUES | st.fixed_dictionaries({"version": JSON_VALUES | HOSTILE_TEXT,
                                               "attributes": JSON_VALUES | ATTRIBUTES})


def _answer(token: str, code: Any, entry: Any) -> bytes:
    body = {"clientToken": token, "code": code, "state": {"reported": {"firmware": entry}}}
    return json.dumps(body).encode()


ANSWERS = st.builds(_answer, TOKENS, JSON_VALUES, ENTRIES) | st.binary(max_size=512)


@given(st.lists(st.tuples(SUFFIXES, ANSWERS, st.floats(0, 100)), max_size=12))
def test_fuzz_package_answers(answers: list[tuple[str, bytes, float]]) -> None:
    reporter = PackageReporter("dev-1", retry_seconds=10.0)
    running = Running("1.0.0", "a", 3)
    now = 0.0
    for suffix, payload, step in answers:
        now += step
        messages = reporter.due(running, now)
        assert len(messages) <= 1
        assert all(topic in (f"{BASE}/get", f"{BASE}/update") for topic, _ in messages)
        reporter.received(f"{BASE}/{suffix}", payload)


@given(ENTRIES)
def test_fuzz_package_entry(entry: Any) -> None:
    parsed = parse_entry(entry)
    if parsed is not None:
        assert parse_entry(parsed.to_reported()) == parsed
