"""The Software Package Catalog through unmodified boto3 against the real server (issue
15, item 2): packages and versions with AWS's lifecycle, and jobs that install package
versions (`destinationPackageVersions`) reporting them in each thing's `$package`
shadow once its execution SUCCEEDS, while the package configuration says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.ota_helpers import wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer


def _code(call: Any, **params: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return str(caught.value.response["Error"]["Code"])


def test_packages_and_versions_follow_aws_lifecycle(srv: RunningServer) -> None:
    iot = srv.client("iot")
    made = iot.create_package(packageName="app", description="the application")
    assert made["packageArn"].endswith(":package/app")
    assert iot.create_package(packageName="app", description="the application")["packageName"] == "app"
    assert _code(iot.create_package, packageName="app", description="other") == "ConflictException"
    version = iot.create_package_version(packageName="app", versionName="1.0.0",
                                         attributes={"board": "rev2"})
    assert version["status"] == "DRAFT"
    assert version["packageVersionArn"] == made["packageArn"] + "/version/1.0.0"
    assert _code(iot.create_package_version, packageName="app", versionName="1.0.0") == "ConflictException"
    assert _code(iot.create_package_version, packageName="nope", versionName="1") == "ValidationException"
    # DRAFT: not deployable, attributes may change; cannot be the default.
    iot.update_package_version(packageName="app", versionName="1.0.0", attributes={"board": "rev3"})
    assert _code(iot.update_package, packageName="app", defaultVersionName="1.0.0") == "ConflictException"
    iot.update_package_version(packageName="app", versionName="1.0.0", action="PUBLISH")
    assert _code(iot.update_package_version, packageName="app", versionName="1.0.0",
                 attributes={"board": "rev4"}) == "ConflictException"
    iot.update_package(packageName="app", defaultVersionName="1.0.0", description="renamed")
    package = iot.get_package(packageName="app")
    assert (package["defaultVersionName"], package["description"]) == ("1.0.0", "renamed")
    got = iot.get_package_version(packageName="app", versionName="1.0.0")
    assert (got["status"], got["attributes"]) == ("PUBLISHED", {"board": "rev3"})
    iot.create_package_version(packageName="app", versionName="1.1.0")
    listed = iot.list_package_versions(packageName="app", status="PUBLISHED")["packageVersionSummaries"]
    assert [v["versionName"] for v in listed] == ["1.0.0"]
    assert "app" in {p["packageName"] for p in iot.list_packages()["packageSummaries"]}
    iot.update_package_version(packageName="app", versionName="1.0.0", action="DEPRECATE")
    assert "defaultVersionName" not in iot.get_package(packageName="app")  # a default must be deployable
    assert _code(iot.delete_package, packageName="app") == "ValidationException"  # versions first
    for name in ("1.0.0", "1.1.0"):
        iot.delete_package_version(packageName="app", versionName=name)
    iot.delete_package(packageName="app")
    assert _code(iot.get_package, packageName="app") == "ResourceNotFoundException"


def test_a_job_installing_package_versions_reports_them_in_the_package_shadow(
        srv: RunningServer, tmp_path: Path) -> None:
    iot, data = srv.client("iot"), srv.client("iot-data")
    bundle = srv.provision("catalog-device", tmp_path / "catalog-device")
    thing_arn = iot.describe_thing(thingName="catalog-device")["thingArn"]
    iot.create_package(packageName="agent")
    arn = iot.create_package_version(packageName="agent", versionName="2.4.1")["packageVersionArn"]
    assert _code(iot.create_job, jobId="catalog-draft", targets=[thing_arn], document="{}",
                 destinationPackageVersions=[arn]) == "InvalidRequestException"  # DRAFT: not deployable
    iot.update_package_version(packageName="agent", versionName="2.4.1", action="PUBLISH")
    device = Device(srv, bundle, "catalog-device")
    try:
        assert device.connect()
        device.subscribe("$aws/things/catalog-device/jobs/+/update/accepted")

        def install(job_id: str) -> None:
            iot.create_job(jobId=job_id, targets=[thing_arn], document='{"operation": "install"}',
                           destinationPackageVersions=[arn])
            device.client.publish(f"$aws/things/catalog-device/jobs/{job_id}/update",
                                  json.dumps({"status": "SUCCEEDED"}), qos=1)

        # While the package configuration does not say so, jobs report nothing (AWS).
        assert iot.get_package_configuration()["versionUpdateByJobsConfig"] == {"enabled": False}
        install("catalog-quiet")
        assert device.wait_for("jobs/catalog-quiet/update/accepted")
        assert _code(data.get_thing_shadow, thingName="catalog-device",
                     shadowName="$package") == "ResourceNotFoundException"
        role = f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota"
        iot.update_package_configuration(versionUpdateByJobsConfig={"enabled": True, "roleArn": role})
        assert iot.get_package_configuration()["versionUpdateByJobsConfig"] == {"enabled": True,
                                                                                "roleArn": role}
        iot.create_package_version(packageName="agent", versionName="2.5.0")
        iot.update_package_version(packageName="agent", versionName="2.5.0", action="PUBLISH")
        arn = arn.replace("2.4.1", "2.5.0")
        install("catalog-job")
        assert iot.describe_job(jobId="catalog-job")["job"]["destinationPackageVersions"] == [arn]

        def reported() -> Any:
            try:
                payload = data.get_thing_shadow(thingName="catalog-device", shadowName="$package")["payload"]
            except ClientError:
                return None
            return json.loads(payload.read())["state"]["reported"]

        assert wait_for(reported, timeout=10, what="the $package shadow")["agent"]["version"] == "2.5.0"
    finally:
        device.close()
