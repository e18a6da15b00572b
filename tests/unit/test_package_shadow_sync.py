"""packages/shadow_sync.py: installs reported in the `$package` shadow off the device's
path, the ones waiting for the worker written together, each refusal logged alone."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from overair.core.errors import UnavailableError
from overair.core.shadow import ShadowError
from overair.server.packages.inventory import Installed
from overair.server.packages.shadow_sync import PackageShadowSync
from overair.server.shadow.service import Published, ShadowService


class RecordingShadows:
    """Stands in for ShadowService.update_many: records each call, refuses thing "ghost"."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str, dict[str, Any]]]] = []
        self.fail_with: Exception | None = None

    def update_many(self, updates: list[tuple[str, str, dict[str, Any]]]
                    ) -> list[list[Published] | ShadowError]:
        self.calls.append(updates)
        if self.fail_with is not None:
            raise self.fail_with
        return [ShadowError(404, "Thing not found") if thing == "ghost" else
                [Published("update/accepted", {"version": 1})] for thing, _name, _request in updates]


def _installed(thing: str, catalog: bool = False) -> Installed:
    return Installed(thing, "fw", "1.1.0", 1.0, "job-1", catalog)


def test_installs_waiting_for_the_worker_are_written_in_one_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="overair.packages")  # whatever other tests set on "overair"
    shadows = RecordingShadows()
    published: list[list[tuple[str, bytes]]] = []
    worker = ThreadPoolExecutor(1)
    sync = PackageShadowSync(cast(ShadowService, shadows), published.append, lambda: False, worker, 500)
    gate = threading.Event()
    worker.submit(gate.wait)  # the worker busy: the installs below wait together
    for thing in ("a", "ghost", "b"):
        sync.installed(_installed(thing))
    sync.installed(_installed("c", catalog=True))  # catalog reporting off: not reported
    gate.set()
    worker.shutdown(wait=True)
    assert [[thing for thing, _name, _request in call] for call in shadows.calls] == [["a", "ghost", "b"]]
    assert shadows.calls[0][0][2] == {"state": {"reported": {"fw": {
        "version": "1.1.0", "attributes": {"installedByJob": "job-1"}}}}}
    assert [messages[0][0].split("/")[2] for messages in published] == ["a", "b"]
    assert "could not report fw 1.1.0 on ghost" in caplog.text


def test_a_database_failure_is_logged_for_each_install_and_the_worker_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="overair.packages")
    shadows = RecordingShadows()
    shadows.fail_with = UnavailableError("the database is locked")
    published: list[list[tuple[str, bytes]]] = []
    worker = ThreadPoolExecutor(1)
    sync = PackageShadowSync(cast(ShadowService, shadows), published.append, lambda: True, worker, 500)
    sync.installed(_installed("a"))
    worker.submit(lambda: None).result()
    shadows.fail_with = None
    sync.installed(_installed("b"))
    worker.shutdown(wait=True)
    assert [m[0][0].split("/")[2] for m in published] == ["b"]
    assert "could not report fw 1.1.0 on a in its $package shadow: the database is locked" in caplog.text
