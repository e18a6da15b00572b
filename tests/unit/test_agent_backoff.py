"""The agent's retry policy (issue 18): capped exponential backoff with full jitter, a
retry budget per job, and rejections of stream requests (the service's answers that a
FreeRTOS device never reads, on which the overair agent backs off)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from overair.agent.machine import backoff
from overair.agent.machine import commands as c
from overair.agent.machine.events import MessageReceived, Tick
from overair.agent.machine.state import Phase, State
from overair.core.streamcodec import encode_rejection
from tests.unit.test_agent_machine import GET, REJECTED, SETTINGS, booted, job, publishes, run, statuses


def test_full_jitter_stays_below_a_capped_doubling_ceiling() -> None:
    for attempt in range(40):
        ceiling = min(60.0, 1.0 * 2**attempt)
        assert backoff.ceiling(attempt, 1.0, 60.0) == ceiling
        for device in range(20):
            assert 0.0 <= backoff.full_jitter(attempt, 1.0, 60.0, f"dev-{device}") < ceiling


def test_full_jitter_spreads_a_fleet_over_the_whole_interval() -> None:
    # 1000 devices failing at once, at the cap: their waits cover [0, 60) evenly enough
    # that no second holds more than a few percent of them (no synchronized retry).
    waits = [backoff.full_jitter(10, 1.0, 60.0, f"dev-{i}/job") for i in range(1000)]
    per_second = [0] * 60
    for wait in waits:
        per_second[int(wait)] += 1
    assert max(per_second) <= 40
    assert min(per_second) >= 5
    # Reproducible for one device and attempt (the machine is pure).
    assert backoff.full_jitter(3, 1.0, 60.0, "dev-1/job") == backoff.full_jitter(3, 1.0, 60.0, "dev-1/job")


def _downloading(settings: object = SETTINGS) -> State:
    state, commands = run(booted(settings=settings), [job()])  # type: ignore[arg-type]
    assert publishes(commands, "/get/cbor")
    assert c.Subscribe(REJECTED, 0) in commands  # the overair agent listens for rejections
    return state


def _rejected(code: str, message: str = "") -> MessageReceived:
    return MessageReceived(REJECTED, encode_rejection(code, message, "rdy", "cbor"))


def test_throttled_stream_request_backs_off_without_spending_the_budget() -> None:
    state = _downloading()
    retry_ats = []
    now = 0.0
    for _ in range(6):
        state, commands = run(state, [_rejected("RequestThrottled", "DownloadSlotsFull: 2 of 2")], now=now)
        assert not publishes(commands, "/get/cbor")
        assert state.download is not None
        assert state.download.retry_at is not None
        assert state.download.retries == 0
        retry_ats.append(state.download.retry_at - now)
        _, early = run(state, [Tick()], now=state.download.retry_at - 0.01)
        assert not publishes(early, "/get/cbor")
        now = state.download.retry_at
        state, commands = run(state, [Tick()], now=now)
        (request,) = publishes(commands, "/get/cbor")
        assert request.topic == GET
    for attempt, wait in enumerate(retry_ats):
        assert 0.0 <= wait <= min(SETTINGS.retry_cap, SETTINGS.retry_base * 2**attempt)
    assert state.phase is Phase.DOWNLOADING


def test_stream_gone_spends_the_budget_then_fails_the_job_with_the_reason() -> None:
    settings = replace(SETTINGS, job_retry_budget=3)
    state = _downloading(settings)
    now, requests = 0.0, 1
    while True:
        state, commands = run(state, [_rejected("ResourceNotFound", "stream stream-1 not found")], now=now)
        if state.download is None:
            break
        assert state.download.retry_at is not None
        now = state.download.retry_at
        state, commands = run(state, [Tick()], now=now)
        assert len(publishes(commands, "/get/cbor")) == 1
        requests += 1
    assert requests == 4  # the first request and three retries
    (status,) = statuses(commands)
    assert status == ("FAILED", {"reason": "aborted: 0x0000000e", "check": "RetryBudgetExhausted",
                                 "detail": "4 requests failed (budget 3); last: stream request rejected: "
                                           "ResourceNotFound (stream stream-1 not found)"}, 1)
    assert c.Unsubscribe(REJECTED) in commands
    assert state.phase is Phase.IDLE


def test_an_undecodable_rejection_is_ignored() -> None:
    state = _downloading()
    after, commands = run(state, [MessageReceived(REJECTED, b"\xff\x00not cbor")], now=1.0)
    assert after == state
    assert not statuses(commands)


def test_throttled_stream_request_waits_for_the_time_the_service_names() -> None:
    state = _downloading()
    message = "DownloadSlotsFull: 2 of 2 rollout download slots are taken; retry after 5 s"
    state, _ = run(state, [_rejected("RequestThrottled", message)], now=10.0)
    assert state.download is not None
    assert state.download.retry_at is not None
    assert 15.0 <= state.download.retry_at < 15.0 + SETTINGS.retry_base
    assert state.download.retries == 0
    # A hostile hint is capped like a Retry-After header.
    state, _ = run(_downloading(), [_rejected("RequestThrottled", "retry after 999999 s")], now=0.0)
    assert state.download is not None
    assert state.download.retry_at is not None
    assert state.download.retry_at < SETTINGS.max_next_job_retry + SETTINGS.retry_base


def test_reconnect_delays_double_to_the_cap_with_full_jitter() -> None:
    draws = random.Random(7)
    for failures in range(12):
        ceiling = min(60, 2**failures)
        delays = [backoff.reconnect_delay(failures, 1, 60, draws.randint) for _ in range(500)]
        assert min(delays) >= 1
        assert max(delays) <= ceiling
        if ceiling >= 8:  # spread over the whole interval, not lock-step
            assert len(set(delays)) >= ceiling // 2
    # A fleet of 1000 losing its broker at the cap: no second gets more than a few percent.
    counts = Counter(backoff.reconnect_delay(10, 1, 60, draws.randint) for _ in range(1000))
    assert max(counts.values()) <= 40
