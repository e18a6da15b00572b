"""The fleet download policy (server/delivery/policy.py): concurrency caps, bytes per
second fleet-wide and per device with fair sharing, rollout limits, the starvation guard
that keeps FreeRTOS devices alive, and the parsers of its configuration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overair.core.errors import MisuseError, PeerInputError
from overair.server.delivery.policy import (
    BANDWIDTH,
    DEVICE_RATE,
    SLOTS_FULL,
    DownloadLimits,
    DownloadPolicy,
    parse_job_config,
    parse_parameters,
    parse_settings,
)
from overair.server.settings import load_settings

KIB = 1024


def test_unlimited_admits_everything() -> None:
    policy = DownloadPolicy(DownloadLimits())
    assert all(policy.admit(f"d{i}", 10**9, 0.0).admitted for i in range(100))
    assert policy.counters.admitted == 100


def test_concurrency_cap_is_respected_and_slots_free_up_when_leases_run_out() -> None:
    policy = DownloadPolicy(DownloadLimits(max_concurrent_downloads=3, lease_seconds=30.0))
    assert all(policy.admit(f"d{i}", KIB, 0.0).admitted for i in range(3))
    refused = policy.admit("d3", KIB, 1.0)
    assert not refused.admitted
    assert refused.code == SLOTS_FULL
    assert not refused.own_rate  # the server's capacity: 503
    # When the oldest lease ends, or a quarter of a lease at most (slots free earlier too).
    assert refused.retry_after == pytest.approx(7.5)
    assert refused.retry_after_seconds == 8
    assert policy.admit("d1", KIB, 10.0).admitted  # a device holding a slot goes on
    assert policy.downloading() == 3
    # d0's lease (last request at 0 s) ends at 30 s; d3 takes its slot.
    assert policy.admit("d3", KIB, 30.0).admitted
    assert policy.downloading(now=30.0) == 2  # d1 and d3; d2's lease ended with d0's


def test_device_rate_is_enforced_with_debt_and_retry_after() -> None:
    policy = DownloadPolicy(DownloadLimits(device_bytes_per_second=10 * KIB))
    assert policy.admit("d", 64 * KIB, 0.0).admitted  # larger than a second: served, in debt
    refused = policy.admit("d", KIB, 1.0)
    assert not refused.admitted
    assert refused.code == DEVICE_RATE
    assert refused.own_rate  # its own rate: 429
    # 10 KiB of tokens, 64 KiB spent, 1 s refilled: 44 KiB of debt at 10 KiB/s.
    assert refused.retry_after == pytest.approx(4.4)
    assert policy.admit("d", KIB, 5.4).admitted
    assert policy.admit("other", KIB, 1.0).admitted  # one device's debt is its own


def _bytes_per_device(policy: DownloadPolicy, greedy: dict[str, int], seconds: int) -> dict[str, int]:
    """Devices asking every 10 ms for `greedy[device]` bytes; bytes each was admitted."""
    served = dict.fromkeys(greedy, 0)
    for tick in range(seconds * 100):
        now = tick / 100
        for device, size in greedy.items():
            if policy.admit(device, size, now).admitted:
                served[device] += size
    return served


def test_fleet_bandwidth_is_shared_fairly_between_greedy_and_modest_devices() -> None:
    cap = 100 * KIB
    policy = DownloadPolicy(DownloadLimits(bytes_per_second=cap))
    # One device asks for 64 KiB at a time, four for 4 KiB: each gets about a fifth.
    greedy = {"big": 64 * KIB, **{f"small{i}": 4 * KIB for i in range(4)}}
    served = _bytes_per_device(policy, greedy, seconds=60)
    total = sum(served.values())
    # Never above the cap: 60 s of it, plus the first second's burst, plus the one request
    # each device may take into debt.
    assert total <= cap * 61 + sum(greedy.values())
    assert total >= cap * 60 * 0.8  # and the bandwidth is used
    share = total / len(served)
    for device, got in served.items():
        assert abs(got - share) <= 0.25 * share, (device, served)


def test_fleet_bandwidth_alone_refuses_with_a_reason() -> None:
    policy = DownloadPolicy(DownloadLimits(bytes_per_second=10 * KIB))
    assert policy.admit("a", 40 * KIB, 0.0).admitted
    refused = policy.admit("a", KIB, 0.5)
    assert not refused.admitted
    assert refused.code == BANDWIDTH
    assert not refused.own_rate


def test_rollout_limits_apply_only_to_that_rollout() -> None:
    policy = DownloadPolicy(DownloadLimits(max_concurrent_downloads=100))
    rollout = DownloadLimits(max_concurrent_downloads=2)
    assert policy.admit("a", KIB, 0.0, rollout="job-1", rollout_limits=rollout).admitted
    assert policy.admit("b", KIB, 0.0, rollout="job-1", rollout_limits=rollout).admitted
    refused = policy.admit("c", KIB, 0.0, rollout="job-1", rollout_limits=rollout)
    assert not refused.admitted
    assert refused.code == SLOTS_FULL
    assert "rollout" in refused.message
    assert policy.admit("c", KIB, 0.0, rollout="job-2").admitted  # another rollout: server limits only
    assert policy.downloading("job-1") == 2


def test_a_device_refused_again_and_again_is_served_now_and_then() -> None:
    # FreeRTOS ignores the refusal, asks again after its timeout and gives up after 32
    # unanswered requests: the policy serves one in `serve_after_refusals`.
    policy = DownloadPolicy(DownloadLimits(max_concurrent_downloads=1, serve_after_refusals=8,
                                           serve_after_seconds=30.0, lease_seconds=3600.0))
    assert policy.admit("holder", KIB, 0.0).admitted
    # FreeRTOS: a request every 10 s.
    outcomes = [policy.admit("freertos", KIB, 1.0 + 10 * i).admitted for i in range(24)]
    assert outcomes == ([False] * 7 + [True]) * 3
    assert policy.counters.forced == 3
    assert policy.downloading() == 1  # served, but it took no slot
    # A device hammering the server gains one request per serve_after_seconds, no more.
    hammered = [policy.admit("hammer", KIB, 300.0 + i / 100).admitted for i in range(6100)]
    assert sum(hammered) == 2  # 6,100 requests in 61 s: served at 30 s and at 60 s


def test_memory_is_bounded() -> None:
    policy = DownloadPolicy(DownloadLimits(device_bytes_per_second=KIB, max_concurrent_downloads=1),
                            max_devices=50)
    for i in range(1000):
        policy.admit(f"d{i}", 2 * KIB, 0.0)
    assert len(policy._refusals) <= 50
    assert len(policy._server.devices) <= 50
    unlimited = DownloadPolicy(DownloadLimits(device_bytes_per_second=KIB), max_devices=50)
    for i in range(1000):
        unlimited.admit(f"d{i}", 2 * KIB, 0.0)
    assert unlimited.downloading() <= 50  # leases without a cap
    assert len(unlimited._server.asking) <= 50


def test_parameters_parse_and_refuse_what_is_not_a_count() -> None:
    assert parse_parameters(None) is None
    assert parse_parameters({"overair:endTime": "2030-01-01T00:00"}) is None
    assert parse_parameters({"overair:maxConcurrentDownloads": "50", "overair:maxBytesPerSecond": " 1048576 ",
                             "overair:maxDeviceBytesPerSecond": "65536"}) == \
        DownloadLimits(max_concurrent_downloads=50, bytes_per_second=1048576, device_bytes_per_second=65536)
    for bad in ("-1", "1.5", "ten", "", "١٢", "9" * 14, "0x10"):
        with pytest.raises(PeerInputError, match="overair:maxBytesPerSecond"):
            parse_parameters({"overair:maxBytesPerSecond": bad})


def test_job_config_round_trips_and_bad_values_mean_none() -> None:
    limits = DownloadLimits(max_concurrent_downloads=5, bytes_per_second=1000)
    assert parse_job_config(limits.to_config()) == limits
    assert parse_job_config({"bytes_per_second": "1000"}) is None
    assert parse_job_config("x") is None


def test_settings_table() -> None:
    assert parse_settings({}) == DownloadLimits()
    table = {"max_concurrent_downloads": 10, "lease_seconds": 5, "serve_after_refusals": 4}
    assert parse_settings(table) == DownloadLimits(max_concurrent_downloads=10, lease_seconds=5.0,
                                                   serve_after_refusals=4)
    for bad in ({"max_concurrent": 1}, {"bytes_per_second": -1}, {"bytes_per_second": True},
                {"lease_seconds": 0}, {"serve_after_refusals": 17}, {"serve_after_refusals": 0},
                {"serve_after_seconds": 301}):
        with pytest.raises(PeerInputError):
            parse_settings(bad)


def test_the_documented_example_is_what_overair_toml_takes(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    (example,) = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[download_policy]" in b]
    (tmp_path / "overair.toml").write_text('account_id = "123456789012"\n' + example)
    settings = load_settings(tmp_path)
    assert settings.download_policy == DownloadLimits(max_concurrent_downloads=200,
                                                      bytes_per_second=50_000_000,
                                                      device_bytes_per_second=1_000_000)
    bad = 'account_id = "123456789012"\n[download_policy]\nbytes_per_second = -5\n'
    (tmp_path / "overair.toml").write_text(bad)
    with pytest.raises(MisuseError, match=r"\[download_policy\]: bytes_per_second must be a whole number"):
        load_settings(tmp_path)


def test_a_slot_frees_at_the_end_of_the_file_or_when_the_execution_changes() -> None:
    policy = DownloadPolicy(DownloadLimits(max_concurrent_downloads=2, lease_seconds=600.0))
    assert policy.admit("a", KIB, 0.0).admitted
    assert policy.admit("b", KIB, 0.0).admitted
    assert not policy.admit("c", KIB, 1.0).admitted
    assert policy.admit("a", KIB, 2.0, final=True).admitted  # a's last blocks: its slot frees
    assert policy.downloading() == 1
    assert policy.admit("c", KIB, 2.0).admitted
    assert not policy.admit("d", KIB, 3.0).admitted
    policy.release(["b"])  # b's execution ended (the job service's watcher)
    assert policy.admit("d", KIB, 3.0).admitted


def test_devices_waiting_for_a_slot_do_not_thin_the_others_share() -> None:
    cap = 100 * KIB
    policy = DownloadPolicy(DownloadLimits(max_concurrent_downloads=2, bytes_per_second=cap,
                                           lease_seconds=600.0))
    asking = {"a": 8 * KIB, "b": 8 * KIB, **{f"waiting{i}": KIB for i in range(10)}}
    served = _bytes_per_device(policy, asking, seconds=60)
    # The two holding the slots share the whole bandwidth (the ten waiting would have
    # cut their shares to a twelfth each).
    assert served["a"] + served["b"] >= 0.8 * cap * 60
    assert abs(served["a"] - served["b"]) <= 0.1 * served["a"]
