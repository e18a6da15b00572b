"""The end-to-end modules share this: one real server per module (API, device service,
its own Mosquitto), with a versioned bucket `firmware` ready for images."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server_harness import RunningServer, running_server

BUCKET = "firmware"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server")) as running:
        s3 = running.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield running
