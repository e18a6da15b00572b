"""The dashboard with a large fleet: every page answers from a bounded slice of the
database (SQL paging and aggregates), so it shows the right totals and the first page
of rows for 1,000 things (default run) and 10,000 (slow). Times are printed for the
record (`-s`), not asserted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.dashboard.conftest import WebClient, admin_key, web
from tests.dashboard.fleet_factory import FAILURE_REASON, populate
from tests.server_harness import running_server


def _timed(browser: WebClient, path: str) -> tuple[str, float]:
    started = time.perf_counter()
    reply = browser.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    assert reply.status == 200, (path, reply.status, reply.body[:300])
    return reply.body, elapsed


def _scenario(tmp_path: Path, count: int) -> None:
    with running_server(tmp_path / "server") as srv:
        started = time.perf_counter()
        names = populate(srv.server, count)
        print(f"\n{count} things and 3 rollouts made in {time.perf_counter() - started:.1f} s")
        browser = web(srv)
        browser.sign_in(admin_key(srv))
        pages = {
            "fleet": "/dashboard/fleet",
            "fleet, page 2": f"/dashboard/fleet?after={names[49]}",
            "fleet, name filter": f"/dashboard/fleet?prefix={names[-1][:-2]}",
            "device": f"/dashboard/things/{names[count // 2]}",
            "rollouts": "/dashboard/rollouts",
            "rollout": "/dashboard/rollouts/scale-v120",
            "rollout, FAILED only": "/dashboard/rollouts/scale-v120?status=FAILED",
            "rollout progress (auto-refresh)": "/dashboard/rollouts/scale-v120/progress",
            "certificates": "/dashboard/certificates",
            "audit log": "/dashboard/audit",
        }
        bodies: dict[str, str] = {}
        for label, path in pages.items():
            _timed(browser, path)  # warm (templates compiled, caches filled)
            times = []
            for _ in range(3):
                bodies[label], elapsed = _timed(browser, path)
                times.append(elapsed)
            print(f"  {label:34s} median {sorted(times)[1]:7.1f} ms")
        fleet = bodies["fleet"]
        assert f'<span class="n" id="thing-count">{count}</span>' in fleet
        # Each thing counts once, for the newest version it installed (fleet_factory.populate).
        on_120 = sum(1 for i in range(count) if i % 5 == 2)
        on_110 = sum(1 for i in range(count // 2) if i % 5 != 2)
        for version, things in (("1.2.0", on_120), ("1.1.0", on_110), ("1.0.0", count - on_120 - on_110)):
            assert f"<tr><td>{version}</td><td>{things}</td></tr>" in fleet
        assert fleet.count('href="/dashboard/things/') == 50  # one page of rows, not the fleet
        presence = {"online": range(7), "offline": (7, 8), "never-seen": (9,)}
        for label, digits in presence.items():
            expected = sum(1 for i in range(count) if i % 10 in digits)
            assert f'<span class="n" id="{label}">{expected}</span>' in fleet
        assert names[50] in bodies["fleet, page 2"]
        assert names[49] not in bodies["fleet, page 2"]
        rollout = bodies["rollout"]
        assert f'<span data-state="FAILED">{(count + 9) // 10}</span>' in rollout
        assert FAILURE_REASON in bodies["rollout, FAILED only"]
        assert bodies["rollout, FAILED only"].count('<td class="state s-FAILED">FAILED') == 50


def test_pages_show_totals_and_one_page_of_rows_for_1000_things(tmp_path: Path) -> None:
    _scenario(tmp_path, 1000)


@pytest.mark.slow
def test_pages_show_totals_and_one_page_of_rows_for_10000_things(tmp_path: Path) -> None:
    _scenario(tmp_path, 10_000)
