"""Creating signed OTA updates the way an operator does (boto3), for the e2e modules."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from overair.server.bootstrap import DEV_PROFILE
from tests.server_harness import RunningServer

BUCKET = "firmware"
FINISHED = ("CREATE_COMPLETE", "CREATE_FAILED")


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def create_ota(
    srv: RunningServer,
    ota_id: str,
    targets: list[str],
    image: bytes,
    *,
    protocols: tuple[str, ...] = ("MQTT",),
    **extra: Any,
) -> dict[str, Any]:
    """Upload `image`, create an OTA update signed with the development profile, wait
    until it is created (or failed) and return its otaUpdateInfo."""
    iot, s3 = srv.client("iot"), srv.client("s3")
    version = s3.put_object(Bucket=BUCKET, Key=f"{ota_id}.bin", Body=image)["VersionId"]
    iot.create_ota_update(
        otaUpdateId=ota_id,
        targets=targets,
        protocols=list(protocols),
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[
            {
                "fileName": "/fw.bin",
                "fileLocation": {
                    "s3Location": {"bucket": BUCKET, "key": f"{ota_id}.bin", "version": version}
                },
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}},
            }
        ],
        **extra,
    )
    return dict(
        wait_for(
            lambda: (
                (info := iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"])["otaUpdateStatus"]
                in FINISHED
                and info
            ),
            what=f"OTA update {ota_id}",
        )
    )
