"""The end-to-end modules share this: one real server per module (API, device service,
its own Mosquitto), with a versioned bucket `firmware` ready for images. `clocked_srv`
is the same with a server clock that tests can move forward (`clock.offset`), for
expiries and timeouts; agents, TLS and the broker keep real time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.server_harness import RunningServer, running_server

BUCKET = "firmware"


@dataclass
class ShiftableClock:
    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _with_bucket(running: RunningServer) -> RunningServer:
    s3 = running.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return running


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield _with_bucket(running)


@pytest.fixture(scope="module")
def clock() -> ShiftableClock:
    return ShiftableClock()


@pytest.fixture(scope="module")
def clocked_srv(tmp_path_factory: pytest.TempPathFactory, clock: ShiftableClock) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server"), clock=clock) as running:
        yield _with_bucket(running)
