"""The Python download endpoint with files above `Limits.http_whole_file_bytes`: served
by range from the object store (delivery/ranged_files.py), never held whole in memory,
and their SHA-256 checked (by a streamed read) before any byte is served."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ShiftableClock, _with_bucket
from tests.e2e.test_http_delivery import IMAGE, HttpJob, _get, _url, http_job
from tests.server_harness import RunningServer, running_server

__all__ = ["http_job"]  # the fixture, shared with tests/e2e/test_http_delivery.py
WHOLE = 20_000  # IMAGE (50,000 bytes) is larger: served by range


@pytest.fixture(scope="module")
def clocked_srv(tmp_path_factory: pytest.TempPathFactory, clock: ShiftableClock) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("large"), clock=clock,
                        limits={"http_whole_file_bytes": WHOLE}) as running:
        yield _with_bucket(running)


def test_a_large_file_is_served_by_range_and_never_held_whole(clocked_srv: RunningServer,
                                                              http_job: HttpJob) -> None:
    url = _url(http_job)
    data = b""
    for first in range(0, len(IMAGE), 4096):
        status, headers, body = _get(clocked_srv, url, {"Range": f"bytes={first}-{first + 4095}"})
        assert status == 206
        assert headers["content-range"] == f"bytes {first}-{first + len(body) - 1}/{len(IMAGE)}"
        data += body
    assert hashlib.sha256(data).digest() == hashlib.sha256(IMAGE).digest()
    assert _get(clocked_srv, url)[:3:2] == (200, IMAGE)
    status, headers, body = _get(clocked_srv, url, method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", str(len(IMAGE)))
    status, headers, body = _get(clocked_srv, url, {"Range": f"bytes={len(IMAGE)}-"})
    assert (status, body.split(b":")[0]) == (416, b"InvalidRange")
    assert clocked_srv.server.delivery.cached_bytes == 0


def test_a_corrupted_large_file_is_not_served(clocked_srv: RunningServer, http_job: HttpJob) -> None:
    """Served by range, the file is still checked whole (once, streamed) first."""
    url = _url(http_job)
    version = url.split("version=")[1].split("&")[0]
    [blob] = list((clocked_srv.settings.paths.objects).rglob(f"{version}.*"))
    stored = bytearray(blob.read_bytes())
    stored[-1] ^= 0xFF  # the last byte: a ranged read of the first block would not see it
    blob.write_bytes(bytes(stored))
    status, _, body = _get(clocked_srv, url, {"Range": "bytes=0-4095"})
    assert (status, body.split(b":")[0]) == (503, b"ServiceUnavailable")
