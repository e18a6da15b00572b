"""Fuzz targets of the fleet download policy (issue 18):

- the parsers of its configuration: CreateOTAUpdate's additionalParameters (operator
  input through the API), the `[download_policy]` table of overair.toml, the limits kept
  in a job's config: only DownloadLimits, None or PeerInputError come out, and what is
  accepted is within bounds;
- the policy itself under any sequence of devices, sizes and clock moves (back included):
  it never raises, never holds more downloads than its cap, never waits negatively;
- the agent's handling of the service's rejections of its stream requests (CBOR maps of
  any shape on `.../rejected/cbor`): it never raises, a throttled request spends no retry
  budget and any other rejection spends exactly one.
"""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import assume, given
from hypothesis import strategies as st

from overair.agent.machine.events import MessageReceived
from overair.agent.machine.transitions import handle
from overair.agent.transport.http import MAX_RETRY_AFTER_DIGITS, parse_retry_after_ms
from overair.core.errors import PeerInputError
from overair.server.delivery.policy import (
    MAX_VALUE,
    PARAMETERS,
    DownloadLimits,
    DownloadPolicy,
    parse_job_config,
    parse_parameters,
    parse_settings,
)
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES
from tests.unit.test_agent_machine import REJECTED, downloading

KEYS = st.sampled_from([*PARAMETERS, *PARAMETERS.values(), "lease_seconds", "serve_after_refusals",
                        "serve_after_seconds", "overair:endTime"]) | HOSTILE_TEXT
VALUES = JSON_VALUES | st.integers(-(10**15), 10**15).map(str) | st.floats().map(str)


def _bounded(limits: DownloadLimits) -> None:
    for name in PARAMETERS.values():
        value = getattr(limits, name)
        assert isinstance(value, int)
        assert 0 <= value <= MAX_VALUE


@given(st.none() | st.dictionaries(KEYS, VALUES, max_size=8))
def test_fuzz_additional_parameters(params: dict[str, Any] | None) -> None:
    try:
        limits = parse_parameters(params)
    except PeerInputError:
        return
    if limits is not None:
        _bounded(limits)


@given(st.dictionaries(KEYS, VALUES | st.integers() | st.floats() | st.booleans(), max_size=8))
def test_fuzz_settings_table(table: dict[str, Any]) -> None:
    try:
        limits = parse_settings(table)
    except PeerInputError:
        return
    _bounded(limits)
    assert 1.0 <= limits.lease_seconds <= 3600.0
    assert 1 <= limits.serve_after_refusals <= 16


@given(JSON_VALUES | st.dictionaries(KEYS, st.integers() | VALUES, max_size=6))
def test_fuzz_job_config(value: Any) -> None:
    limits = parse_job_config(value)
    if limits is not None:
        _bounded(limits)


REQUESTS = st.lists(st.tuples(st.integers(0, 12).map(lambda i: f"d{i}"), st.integers(0, 1 << 20),
                              st.floats(-5.0, 30.0, allow_nan=False), st.booleans()), max_size=80)


@given(st.integers(0, 4), st.integers(0, 1 << 20), st.integers(0, 1 << 18), REQUESTS)
def test_fuzz_policy_never_exceeds_its_cap(cap: int, fleet: int, device: int,
                                           requests: list[tuple[str, int, float, bool]]) -> None:
    limits = DownloadLimits(max_concurrent_downloads=cap, bytes_per_second=fleet,
                            device_bytes_per_second=device, lease_seconds=2.0, serve_after_refusals=3,
                            serve_after_seconds=1.0)
    policy = DownloadPolicy(limits, max_devices=8)
    rollout = DownloadLimits(max_concurrent_downloads=max(0, cap - 1), bytes_per_second=fleet // 2)
    now = 1000.0
    for name, size, step, in_rollout in requests:
        now += step
        decision = policy.admit(name, size, now, rollout="job" if in_rollout else None,
                                rollout_limits=rollout if in_rollout else None)
        assert decision.admitted or (decision.code and decision.retry_after_seconds >= 1)
        if cap:
            assert policy.downloading() <= cap


CODES = st.sampled_from(["RequestThrottled", "ResourceNotFound", "InternalError", ""]) | HOSTILE_TEXT
REJECTIONS = st.fixed_dictionaries({}, optional={"o": CODES | JSON_VALUES, "m": HOSTILE_TEXT | JSON_VALUES,
                                                 "c": HOSTILE_TEXT | JSON_VALUES})


@given(REJECTIONS | JSON_VALUES, st.floats(0.0, 1e6, allow_nan=False))
def test_fuzz_agent_stream_rejections(rejection: Any, now: float) -> None:
    try:
        payload = cbor2.dumps(rejection)
    except UnicodeEncodeError:
        assume(False)  # a lone surrogate is no CBOR text; raw bytes are fuzzed in test_fuzz_agent_machine
    state = downloading()
    assert state.download is not None
    new, _ = handle(state, MessageReceived(REJECTED, payload), now)
    if new.download is None:
        return  # the budget was spent (not with the default budget and one rejection)
    code = rejection.get("o") if isinstance(rejection, dict) else None
    if code == "RequestThrottled":
        assert new.download.retries == 0
    elif isinstance(rejection, dict):
        assert new.download.retries in (0, 1)  # 0: not a rejection the agent could read


HEADERS = HOSTILE_TEXT | st.integers(-10**30, 10**30).map(str) | st.floats().map(str) \
    | st.sampled_from(["", " 1500 ", "1e9", "0x10", "٣", "1.5"])


@given(st.none() | HEADERS)
def test_fuzz_retry_after_ms_header(header: str | None) -> None:
    """`x-overair-retry-after-ms` as the agent reads it: a bounded, finite wait or None."""
    wait = parse_retry_after_ms(header)
    if wait is not None:
        assert header is not None
        assert header.strip().isdigit()
        assert 0.0 <= wait < 10 ** MAX_RETRY_AFTER_DIGITS


@given(HOSTILE_TEXT | st.floats(0, 10**7).map(lambda f: f"retry after {f} s") | st.integers(0, 10**9).map(
    lambda n: f"DownloadSlotsFull: x; retry after {n} s"))
def test_fuzz_throttled_rejection_hint(message: str) -> None:
    """The "retry after N s" hint of a throttled stream rejection: any text is safe, and
    the wait it sets is capped."""
    state = downloading()
    try:
        payload = cbor2.dumps({"o": "RequestThrottled", "m": message})
    except UnicodeEncodeError:
        assume(False)
    new, _ = handle(state, MessageReceived(REJECTED, payload), 100.0)
    assert new.download is not None
    assert new.download.retry_at is not None
    settings = state.settings
    assert 100.0 <= new.download.retry_at <= 100.0 + max(settings.max_next_job_retry + settings.retry_base,
                                                          settings.retry_cap)
    assert new.download.retries == 0
