"""Protocol conformance with unmodified boto3, driven by botocore's models and the
compatibility matrix (docs/compatibility.md).

- The matrix names exactly the routed operations as supported, and (outside iot) every
  other operation of each model as not supported.
- Every supported operation is called (admin credentials) with inputs that make it
  succeed, and its response parses; operations without such inputs get minimal ones
  (tests/model_params.py) and must answer a modelled error.
- Every other operation answers NotImplemented naming it.
- List operations page; members overair does not implement are refused by name.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore import UNSIGNED, xform_name
from botocore.exceptions import ClientError, ParamValidationError

from overair.core import deployment, trustlist
from overair.core.codesign import load_pem_certificates
from overair.core.versions import Version
from overair.server.api.s3 import S3Api
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware
from tests.compat_matrix import SERVICES, read_matrix
from tests.e2e.ota_helpers import BUCKET, create_ota
from tests.model_params import minimal_input
from tests.pki_helpers import Issued, make_ca, make_signer
from tests.server_harness import RunningServer

# iot-jobs-data is served to devices (mutual TLS), not on the SigV4 endpoint.
DEVICE_OPERATIONS = {"GetPendingJobExecutions", "StartNextPendingJobExecution", "DescribeJobExecution",
                     "UpdateJobExecution"}
DESTRUCTIVE = ("Delete", "Cancel", "Revoke", "Detach", "Remove", "Abort")
NEVER_FOR_SUPPORTED = {"InternalFailure", "InternalError", "NotImplementedException", "NotImplemented",
                       "UnknownOperationException"}
# Codes AWS really answers that botocore's models do not list: S3's models list almost no
# errors (its error-code table is in the S3 docs), and acm's ImportCertificate answers
# ValidationException for an unusable certificate.
S3_DOCUMENTED = {"NoSuchBucket", "NoSuchKey", "NoSuchUpload", "InvalidArgument", "MalformedXML",
                 "NoSuchBucketPolicy", "MalformedPolicy", "BucketNotEmpty", "InvalidPart"}
UNMODELLED_BUT_AWS = {("acm", "ImportCertificate"): {"ValidationException"},
                      # A role that does not exist: AWS answers AccessDenied too (no existence oracle);
                      # a RoleArn that is not a role ARN of this account: ValidationError, as AWS.
                      ("sts", "AssumeRole"): {"AccessDenied", "ValidationError"}}
# Refused before routing, still clearly: STS operations that are sent unsigned (the
# endpoint takes SigV4 only), and S3 operations signed for other endpoints.
REFUSED_BEFORE_ROUTING = {("sts", "AssumeRoleWithSAML"): "MissingAuthenticationToken",
                          ("sts", "AssumeRoleWithWebIdentity"): "MissingAuthenticationToken",
                          ("s3", "ListDirectoryBuckets"): "UnknownOperationException",
                          ("s3", "WriteGetObjectResponse"): "UnknownOperationException"}
TRUST_ANYONE_HERE = "arn:aws:iam::{account}:user/admin"


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


ALLOW_LIST = _policy({"Effect": "Allow", "Action": "iot:ListThings", "Resource": "*"})


def _routed(srv: RunningServer) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {s: set() for s in SERVICES}
    for service, operation in srv.server.table.operations():
        out[service].add(operation)
    out["s3"] |= set(S3Api(srv.server.objects, region=srv.settings.region).operations())
    return out


def _model_operations(srv: RunningServer, service: str) -> list[str]:
    return list(srv.client(service).meta.service_model.operation_names)


# --- the matrix is the routing table ---------------------------------------------------


def test_matrix_marks_exactly_the_routed_operations_as_supported(srv: RunningServer) -> None:
    matrix = read_matrix()
    routed = _routed(srv)
    assert matrix.duplicates == []
    for service in SERVICES:
        expected = DEVICE_OPERATIONS if service == "iot-jobs-data" else routed[service]
        assert matrix.supported.get(service, set()) == expected, service
    assert routed["iot-jobs-data"] == set()  # not on the operator endpoint


def test_matrix_lists_every_operation_of_each_model(srv: RunningServer) -> None:
    matrix = read_matrix()
    for service in SERVICES:
        model = set(_model_operations(srv, service))
        listed = matrix.supported.get(service, set()) | matrix.unsupported.get(service, set())
        assert listed <= model, (service, sorted(listed - model))
        if service != "iot":  # iot lists only the families operator-api.md serves
            assert listed == model, (service, sorted(model - listed))
        assert not matrix.supported.get(service, set()) & matrix.unsupported.get(service, set())


def test_matrix_reader_sees_rows_and_lists() -> None:
    text = ("## acm\n| Operation | Supported | Notes |\n|---|---|---|\n| `A` | yes | x |\n"
            "| `B`, `C` | no | |\nNot supported: `D`, `E`.\n## other\n| `F` | yes | |\n")
    matrix = read_matrix(text)
    assert matrix.supported == {"acm": {"A"}}
    assert matrix.unsupported == {"acm": {"B", "C", "D", "E"}}


# --- a world of fixtures for every supported operation -----------------------------------


@dataclass
class World:
    account: str
    things: list[str]
    thing_arns: list[str]
    group: str
    cert_id: str
    spare_cert_id: str
    spare_cert_arn: str
    detach_cert_arn: str
    key: str
    version: str
    stream: str
    job: str
    ota: str
    role_arn: str
    acm_arn: str
    doomed_acm_arn: str
    revoke_acm_arn: str
    trust_list: str  # PublishTrustList's next version, signed by the conformance root
    new_signer_pem: bytes
    new_signer_key: bytes
    signing_job: str
    revoke_signing_job: str
    revoke_profile_version: str
    policy_arn: str
    doomed_policy_arn: str
    access_key: str
    doomed_access_key: str
    upload_id: str
    complete_upload_id: str
    complete_etag: str
    abort_upload_id: str
    doomed_cert_id: str
    registration_task: str  # ended, with reports
    stoppable_task: str  # waiting behind a held worker
    claim_cert_id: str  # attached to nothing: SetClaimCertificateTemplates


CONF_BUCKET = "conf-bucket"
USER, IAM_GROUP, ROLE = "conf-user", "conf-iam-group", "conf-role"


@pytest.fixture(scope="module")
def world(srv: RunningServer, request: pytest.FixtureRequest) -> World:
    iot, s3, iam, signer, acm = (srv.client(s) for s in ("iot", "s3", "iam", "signer", "acm"))
    account = srv.settings.account_id
    names = ["conf-thing-1", "conf-thing-2", "conf-thing-3", "conf-doomed-thing"]
    arns = [iot.create_thing(thingName=n, attributePayload={"attributes": {"color": c}})["thingArn"]
            for n, c in zip(names, ["red", "blue", "reddish", "red"], strict=True)]
    iot.create_thing_group(thingGroupName="conf-group")
    iot.create_thing_group(thingGroupName="conf-doomed-group")
    for dynamic in ("conf-dynamic", "conf-doomed-dynamic"):
        iot.create_dynamic_thing_group(thingGroupName=dynamic, queryString="attributes.color:red")
    for name in names[:3]:
        iot.add_thing_to_thing_group(thingGroupName="conf-group", thingName=name)
    certs = [iot.create_keys_and_certificate(setAsActive=True) for _ in range(3)]
    iot.attach_thing_principal(thingName=names[0], principal=certs[0]["certificateArn"])
    iot.attach_thing_principal(thingName=names[2], principal=certs[2]["certificateArn"])

    key = "conf/fw.bin"
    version = s3.put_object(Bucket=BUCKET, Key=key, Body=make_firmware(Version(2, 0, 0), 8192))["VersionId"]
    files = [{"fileId": 0, "s3Location": {"bucket": BUCKET, "key": key, "version": version}}]
    role_arn = f"arn:aws:iam::{account}:role/overair-ota"
    for stream in ("conf-stream", "conf-doomed-stream"):
        iot.create_stream(streamId=stream, files=files, roleArn=role_arn)
    for job in ("conf-job", "conf-cancel-job", "conf-doomed-job", "conf-update-job"):
        iot.create_job(jobId=job, targets=[arns[0]], document='{"operation": "noop"}')
    iot.create_job(jobId="conf-continuous-job", targets=[arns[0]], document='{"operation": "noop"}',
                   targetSelection="CONTINUOUS")
    iot.create_job(jobId="conf-exec-job", targets=[arns[2]], document='{"operation": "noop"}')
    for template in ("conf-template", "conf-doomed-template"):
        iot.create_job_template(jobTemplateId=template, description="conformance",
                                document='{"operation": "noop"}')
    doomed_cert = iot.create_keys_and_certificate(setAsActive=False)["certificateId"]
    for package in ("conf-package", "conf-doomed-package"):
        iot.create_package(packageName=package)
    for version_name in ("1.0.0", "doomed"):
        iot.create_package_version(packageName="conf-package", versionName=version_name)
    data = srv.client("iot-data")
    for name in names[:2]:
        data.update_thing_shadow(thingName=name, payload=b'{"state": {"reported": {"on": true}}}')
    data.update_thing_shadow(thingName=names[0], shadowName="conf-named",
                             payload=b'{"state": {"desired": {"on": false}}}')
    info = create_ota(srv, "conf-ota", [arns[1]], make_firmware(Version(3, 0, 0), 8192, seed="conf"))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")

    root = make_ca("conformance code-signing root")
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + root.cert_pem)
    signers = [make_signer(root, f"conformance signer {i}") for i in range(4)]
    imported = [acm.import_certificate(Certificate=s.cert_pem, PrivateKey=s.key_pem)["CertificateArn"]
                for s in signers[:2]]
    for profile in ("conf_doomed_profile", "conf_revoked_profile"):
        signer.put_signing_profile(profileName=profile, platformId="AmazonFreeRTOS-Default",
                                   signingMaterial={"certificateArn": imported[0]},
                                   signingParameters={"certname": "/certs/conf.pem"})
    source = {"s3": {"bucketName": BUCKET, "key": key, "version": version}}
    destination = {"s3": {"bucketName": BUCKET, "prefix": "signed/"}}
    signing_jobs = [signer.start_signing_job(profileName=DEV_PROFILE, source=source,
                                             destination=destination)["jobId"] for _ in range(2)]

    iam.create_user(UserName=USER)
    iam.create_user(UserName="conf-member")
    iam.create_user(UserName="conf-doomed-user")
    iam.create_group(GroupName=IAM_GROUP)
    iam.create_group(GroupName="conf-doomed-group")
    iam.add_user_to_group(GroupName=IAM_GROUP, UserName="conf-member")
    trust = _policy({"Effect": "Allow", "Principal": {"AWS": TRUST_ANYONE_HERE.format(account=account)},
                     "Action": "sts:AssumeRole"})
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=trust)
    iam.create_role(RoleName="conf-doomed-role", AssumeRolePolicyDocument=trust)
    policy_arn = iam.create_policy(PolicyName="conf-policy", PolicyDocument=ALLOW_LIST)["Policy"]["Arn"]
    doomed_policy = iam.create_policy(PolicyName="conf-doomed-policy",
                                      PolicyDocument=ALLOW_LIST)["Policy"]["Arn"]
    for kind, name in (("User", USER), ("Group", IAM_GROUP), ("Role", ROLE)):
        getattr(iam, f"put_{kind.lower()}_policy")(**{f"{kind}Name": name}, PolicyName="conf-inline",
                                                    PolicyDocument=ALLOW_LIST)
    keys = [iam.create_access_key(UserName=USER)["AccessKey"]["AccessKeyId"] for _ in range(2)]
    iam.delete_access_key(UserName=USER, AccessKeyId=keys[0])  # room for CreateAccessKey
    keys[0] = iam.create_access_key(UserName="conf-member")["AccessKey"]["AccessKeyId"]

    s3.create_bucket(Bucket=CONF_BUCKET)
    s3.create_bucket(Bucket="conf-doomed-bucket")
    s3.put_bucket_versioning(Bucket=CONF_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_policy(Bucket=CONF_BUCKET, Policy=_policy(
        {"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{CONF_BUCKET}/*"}))
    for name in ("obj.bin", "doomed.bin"):
        s3.put_object(Bucket=CONF_BUCKET, Key=name, Body=b"conformance")
    uploads = [s3.create_multipart_upload(Bucket=CONF_BUCKET, Key=k)["UploadId"]
               for k in ("mp.bin", "mp-complete.bin", "mp-abort.bin")]
    etag = s3.upload_part(Bucket=CONF_BUCKET, Key="mp-complete.bin", UploadId=uploads[1], PartNumber=1,
                          Body=b"part")["ETag"]
    registration_task, stoppable_task = _registration_tasks(srv, role_arn, request)
    for prov in ("conf-prov", "conf-doomed-prov"):
        iot.create_provisioning_template(templateName=prov, templateBody=FLEET_TEMPLATE,
                                         provisioningRoleArn=role_arn, enabled=True)
    iot.create_provisioning_template_version(templateName="conf-prov", templateBody=FLEET_TEMPLATE)
    claim_cert = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    return World(
        account=account, things=names, thing_arns=arns, group="conf-group",
        cert_id=certs[0]["certificateId"], spare_cert_id=certs[1]["certificateId"],
        spare_cert_arn=certs[1]["certificateArn"], detach_cert_arn=certs[2]["certificateArn"],
        key=key, version=version, stream="conf-stream", job="conf-job", ota="conf-ota", role_arn=role_arn,
        acm_arn=imported[0], doomed_acm_arn=imported[1],
        revoke_acm_arn=acm.import_certificate(Certificate=signers[2].cert_pem,
                                              PrivateKey=signers[2].key_pem)["CertificateArn"],
        trust_list=_next_trust_list(srv, root),
        new_signer_pem=signers[3].cert_pem, new_signer_key=signers[3].key_pem,
        signing_job=signing_jobs[0], revoke_signing_job=signing_jobs[1],
        revoke_profile_version=signer.get_signing_profile(profileName="conf_revoked_profile")["profileVersion"],
        policy_arn=policy_arn, doomed_policy_arn=doomed_policy, access_key=keys[1], doomed_access_key=keys[0],
        upload_id=uploads[0], complete_upload_id=uploads[1], complete_etag=etag, abort_upload_id=uploads[2],
        doomed_cert_id=doomed_cert, registration_task=registration_task, stoppable_task=stoppable_task,
        claim_cert_id=claim_cert,
    )


# A template that registers a thing only (no certificate).
THING_TEMPLATE = json.dumps({"Parameters": {"ThingName": {"Type": "String"}}, "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}}}})


# A fleet provisioning template: the certificate is the ownership token's.
FLEET_TEMPLATE = json.dumps({
    "Parameters": {"Serial": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
    "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Serial"}}},
                  "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                      "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}}})


def _registration_tasks(srv: RunningServer, role_arn: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A bulk registration task that ended, and one held InProgress (its worker is held
    until the module ends) for StopThingRegistrationTask."""
    iot, s3 = srv.client("iot"), srv.client("s3")
    for name in ("registered", "next", "stoppable"):
        s3.put_object(Bucket=BUCKET, Key=f"conf/{name}.json", Body=json.dumps({"ThingName": f"conf-{name}"}))
    ended = iot.start_thing_registration_task(templateBody=THING_TEMPLATE, inputFileBucket=BUCKET,
                                              inputFileKey="conf/registered.json", roleArn=role_arn)["taskId"]
    while iot.describe_thing_registration_task(taskId=ended)["status"] == "InProgress":
        time.sleep(0.05)
    gate = threading.Event()
    srv.server.registration_tasks._worker.submit(gate.wait, 600)
    request.addfinalizer(gate.set)
    held = iot.start_thing_registration_task(templateBody=THING_TEMPLATE, inputFileBucket=BUCKET,
                                             inputFileKey="conf/stoppable.json", roleArn=role_arn)["taskId"]
    return str(ended), str(held)


def _success_params(w: World) -> dict[tuple[str, str], dict[str, Any]]:
    """Inputs that make each supported operation succeed against the world."""
    thing1, thing2, thing3, doomed_thing = w.things
    files = [{"fileId": 0, "s3Location": {"bucket": BUCKET, "key": w.key, "version": w.version}}]
    group_arn = w.thing_arns[0].rpartition(":")[0] + f":thinggroup/{w.group}"
    trust = _policy({"Effect": "Allow", "Principal": {"AWS": TRUST_ANYONE_HERE.format(account=w.account)},
                     "Action": "sts:AssumeRole"})
    iot: dict[str, dict[str, Any]] = {
        "CreateThing": {"thingName": "conf-new-thing"},
        "DescribeThing": {"thingName": thing1},
        "ListThings": {},
        "UpdateThing": {"thingName": thing2,
                        "attributePayload": {"attributes": {"size": "L"}, "merge": True}},
        "DeleteThing": {"thingName": doomed_thing},
        "CreateThingGroup": {"thingGroupName": "conf-new-group"},
        "DescribeThingGroup": {"thingGroupName": w.group},
        "ListThingGroups": {},
        "DeleteThingGroup": {"thingGroupName": "conf-doomed-group"},
        "AddThingToThingGroup": {"thingGroupName": w.group, "thingName": thing1},
        "RemoveThingFromThingGroup": {"thingGroupName": w.group, "thingName": thing3},
        "ListThingsInThingGroup": {"thingGroupName": w.group},
        "CreateKeysAndCertificate": {"setAsActive": False},
        "DescribeCertificate": {"certificateId": w.cert_id},
        "ListCertificates": {},
        "UpdateCertificate": {"certificateId": w.spare_cert_id, "newStatus": "INACTIVE"},
        "AttachThingPrincipal": {"thingName": thing2, "principal": w.spare_cert_arn},
        "DetachThingPrincipal": {"thingName": thing3, "principal": w.detach_cert_arn},
        "ListThingPrincipals": {"thingName": thing1},
        "DescribeEndpoint": {"endpointType": "iot:Data-ATS"},
        "CreateStream": {"streamId": "conf-new-stream", "files": files, "roleArn": w.role_arn},
        "DescribeStream": {"streamId": w.stream},
        "ListStreams": {},
        "UpdateStream": {"streamId": w.stream, "description": "updated"},
        "DeleteStream": {"streamId": "conf-doomed-stream"},
        "CreateJob": {"jobId": "conf-new-job", "targets": [w.thing_arns[1]],
                      "document": '{"operation": "x"}'},
        "DescribeJob": {"jobId": w.job},
        "ListJobs": {},
        "GetJobDocument": {"jobId": w.job},
        "CancelJob": {"jobId": "conf-cancel-job", "comment": "conformance"},
        "DeleteJob": {"jobId": "conf-doomed-job", "force": True},
        "ListJobExecutionsForJob": {"jobId": w.job},
        "ListJobExecutionsForThing": {"thingName": thing1},
        "DescribeJobExecution": {"jobId": w.job, "thingName": thing1},
        "CancelJobExecution": {"jobId": w.job, "thingName": thing1},
        "UpdateJob": {"jobId": "conf-update-job", "description": "updated",
                      "timeoutConfig": {"inProgressTimeoutInMinutes": 10}},
        "AssociateTargetsWithJob": {"jobId": "conf-continuous-job", "targets": [w.thing_arns[1]]},
        "DeleteJobExecution": {"jobId": "conf-exec-job", "thingName": thing3, "executionNumber": 1,
                               "force": True},
        "CreateJobTemplate": {"jobTemplateId": "conf-new-template", "description": "new",
                              "document": '{"operation": "x"}'},
        "DescribeJobTemplate": {"jobTemplateId": "conf-template"},
        "ListJobTemplates": {},
        "DeleteJobTemplate": {"jobTemplateId": "conf-doomed-template"},
        "ListThingGroupsForThing": {"thingName": thing1},
        "GetThingConnectivityData": {"thingName": thing1},
        "SearchIndex": {"queryString": "thingName:conf-* AND attributes.color:red"},
        "GetIndexingConfiguration": {},
        "DescribeEventConfigurations": {},
        "UpdateEventConfigurations": {"eventConfigurations": {"JOB": {"Enabled": False}}},
        "ListIndices": {},
        "DescribeIndex": {"indexName": "AWS_Things"},
        "UpdateIndexingConfiguration": {"thingIndexingConfiguration": {
            "thingIndexingMode": "REGISTRY_AND_SHADOW", "thingConnectivityIndexingMode": "STATUS",
            "namedShadowIndexingMode": "ON", "filter": {"namedShadowNames": ["conf-named"]},
            "customFields": [{"name": "attributes.color", "type": "String"}]}},
        "GetStatistics": {"queryString": "thingName:conf-*", "aggregationField": "registry.version"},
        "GetPercentiles": {"queryString": "thingName:conf-*", "aggregationField": "registry.version"},
        "GetCardinality": {"queryString": "thingName:conf-*", "aggregationField": "thingName"},
        "GetBucketsAggregation": {"queryString": "thingName:conf-*", "aggregationField": "thingGroupNames",
                                  "bucketsAggregationType": {"termsAggregation": {"maxBuckets": 5}}},
        "CreateDynamicThingGroup": {"thingGroupName": "conf-new-dynamic",
                                    "queryString": "attributes.color:blue"},
        "UpdateDynamicThingGroup": {"thingGroupName": "conf-dynamic", "queryString": "attributes.color:blue",
                                    "thingGroupProperties": {"thingGroupDescription": "updated"}},
        "DeleteDynamicThingGroup": {"thingGroupName": "conf-doomed-dynamic"},
        "TagResource": {"resourceArn": group_arn, "tags": [{"Key": "conf", "Value": "yes"}]},
        "UntagResource": {"resourceArn": group_arn, "tagKeys": ["conf-absent"]},
        "ListTagsForResource": {"resourceArn": group_arn},
        "CreatePackage": {"packageName": "conf-new-package"},
        "GetPackage": {"packageName": "conf-package"},
        "ListPackages": {},
        "UpdatePackage": {"packageName": "conf-package", "description": "updated"},
        "DeletePackage": {"packageName": "conf-doomed-package"},
        "CreatePackageVersion": {"packageName": "conf-package", "versionName": "2.0.0"},
        "GetPackageVersion": {"packageName": "conf-package", "versionName": "1.0.0"},
        "ListPackageVersions": {"packageName": "conf-package"},
        "UpdatePackageVersion": {"packageName": "conf-package", "versionName": "1.0.0", "action": "PUBLISH"},
        "DeletePackageVersion": {"packageName": "conf-package", "versionName": "doomed"},
        "GetPackageConfiguration": {},
        "UpdatePackageConfiguration": {"versionUpdateByJobsConfig": {"enabled": False}},
        "DeleteCertificate": {"certificateId": w.doomed_cert_id},
        "RegisterThing": {"templateBody": THING_TEMPLATE, "parameters": {"ThingName": "conf-registered-one"}},
        "StartThingRegistrationTask": {"templateBody": THING_TEMPLATE, "inputFileBucket": BUCKET,
                                       "inputFileKey": "conf/next.json", "roleArn": w.role_arn},
        "DescribeThingRegistrationTask": {"taskId": w.registration_task},
        "ListThingRegistrationTasks": {},
        "ListThingRegistrationTaskReports": {"taskId": w.registration_task, "reportType": "RESULTS"},
        "StopThingRegistrationTask": {"taskId": w.stoppable_task},
        "CreateProvisioningTemplate": {"templateName": "conf-new-prov", "templateBody": FLEET_TEMPLATE,
                                       "provisioningRoleArn": w.role_arn},
        "DescribeProvisioningTemplate": {"templateName": "conf-prov"},
        "ListProvisioningTemplates": {},
        "UpdateProvisioningTemplate": {"templateName": "conf-prov", "description": "updated"},
        "DeleteProvisioningTemplate": {"templateName": "conf-doomed-prov"},
        "CreateProvisioningTemplateVersion": {"templateName": "conf-prov", "templateBody": FLEET_TEMPLATE},
        "DescribeProvisioningTemplateVersion": {"templateName": "conf-prov", "versionId": 1},
        "ListProvisioningTemplateVersions": {"templateName": "conf-prov"},
        "DeleteProvisioningTemplateVersion": {"templateName": "conf-prov", "versionId": 2},
        "CreateOTAUpdate": {
            "otaUpdateId": "conf-new-ota", "targets": [w.thing_arns[1]], "protocols": ["MQTT"],
            "roleArn": w.role_arn,
            "files": [{"fileName": "/fw.bin", "fileLocation": {"s3Location": {
                "bucket": BUCKET, "key": w.key, "version": w.version}},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}]},
        "GetOTAUpdate": {"otaUpdateId": w.ota},
        "ListOTAUpdates": {},
        "DeleteOTAUpdate": {"otaUpdateId": w.ota, "deleteStream": True, "forceDeleteAWSJob": True},
    }
    signer: dict[str, dict[str, Any]] = {
        "ListSigningPlatforms": {},
        "GetSigningPlatform": {"platformId": "AmazonFreeRTOS-Default"},
        "PutSigningProfile": {"profileName": "conf_new_profile", "platformId": "AmazonFreeRTOS-Default",
                              "signingMaterial": {"certificateArn": w.acm_arn},
                              "signingParameters": {"certname": "/certs/new.pem"}},
        "GetSigningProfile": {"profileName": DEV_PROFILE},
        "ListSigningProfiles": {},
        "CancelSigningProfile": {"profileName": "conf_doomed_profile"},
        "RevokeSigningProfile": {"profileName": "conf_revoked_profile",
                                 "profileVersion": w.revoke_profile_version,
                                 "reason": "conformance", "effectiveTime": dt.datetime.now(dt.UTC)},
        "StartSigningJob": {"profileName": DEV_PROFILE,
                            "source": {"s3": {"bucketName": BUCKET, "key": w.key, "version": w.version}},
                            "destination": {"s3": {"bucketName": BUCKET, "prefix": "signed/"}}},
        "DescribeSigningJob": {"jobId": w.signing_job},
        "ListSigningJobs": {},
        "RevokeSignature": {"jobId": w.revoke_signing_job, "reason": "conformance"},
    }
    acm: dict[str, dict[str, Any]] = {
        "ImportCertificate": {"Certificate": w.new_signer_pem, "PrivateKey": w.new_signer_key},
        "DescribeCertificate": {"CertificateArn": w.acm_arn},
        "GetCertificate": {"CertificateArn": w.acm_arn},
        "ListCertificates": {},
        "DeleteCertificate": {"CertificateArn": w.doomed_acm_arn},
        "ListTagsForCertificate": {"CertificateArn": w.acm_arn},
    }
    iam: dict[str, dict[str, Any]] = {
        "CreateUser": {"UserName": "conf-new-user"}, "GetUser": {"UserName": USER}, "ListUsers": {},
        "DeleteUser": {"UserName": "conf-doomed-user"},
        "CreateAccessKey": {"UserName": USER}, "ListAccessKeys": {"UserName": USER},
        "UpdateAccessKey": {"UserName": USER, "AccessKeyId": w.access_key, "Status": "Inactive"},
        "DeleteAccessKey": {"UserName": "conf-member", "AccessKeyId": w.doomed_access_key},
        "CreateGroup": {"GroupName": "conf-new-group"}, "GetGroup": {"GroupName": IAM_GROUP},
        "ListGroups": {}, "ListGroupsForUser": {"UserName": USER},
        "DeleteGroup": {"GroupName": "conf-doomed-group"},
        "AddUserToGroup": {"GroupName": IAM_GROUP, "UserName": USER},
        "RemoveUserFromGroup": {"GroupName": IAM_GROUP, "UserName": "conf-member"},
        "CreateRole": {"RoleName": "conf-new-role", "AssumeRolePolicyDocument": trust},
        "GetRole": {"RoleName": ROLE}, "ListRoles": {},
        "UpdateAssumeRolePolicy": {"RoleName": ROLE, "PolicyDocument": trust},
        "DeleteRole": {"RoleName": "conf-doomed-role"},
        "CreatePolicy": {"PolicyName": "conf-new-policy", "PolicyDocument": ALLOW_LIST},
        "GetPolicy": {"PolicyArn": w.policy_arn}, "ListPolicies": {"Scope": "Local"},
        "DeletePolicy": {"PolicyArn": w.doomed_policy_arn},
        "CreatePolicyVersion": {"PolicyArn": w.policy_arn, "PolicyDocument": ALLOW_LIST},
        "GetPolicyVersion": {"PolicyArn": w.policy_arn, "VersionId": "v1"},
        "ListPolicyVersions": {"PolicyArn": w.policy_arn},
        "SetDefaultPolicyVersion": {"PolicyArn": w.policy_arn, "VersionId": "v1"},
        "DeletePolicyVersion": {"PolicyArn": w.policy_arn, "VersionId": "v2"},
        "ListEntitiesForPolicy": {"PolicyArn": w.policy_arn},
    }
    for kind, name in (("User", USER), ("Group", IAM_GROUP), ("Role", ROLE)):
        who = {f"{kind}Name": name}
        iam |= {f"Attach{kind}Policy": {**who, "PolicyArn": w.policy_arn},
                f"Detach{kind}Policy": {**who, "PolicyArn": w.policy_arn},
                f"ListAttached{kind}Policies": who,
                f"Put{kind}Policy": {**who, "PolicyName": "conf-inline", "PolicyDocument": ALLOW_LIST},
                f"Get{kind}Policy": {**who, "PolicyName": "conf-inline"},
                f"Delete{kind}Policy": {**who, "PolicyName": "conf-inline"},
                f"List{kind}Policies": who}
    sts: dict[str, dict[str, Any]] = {
        "GetCallerIdentity": {},
        "AssumeRole": {"RoleArn": f"arn:aws:iam::{w.account}:role/{ROLE}", "RoleSessionName": "conf"},
    }
    b = {"Bucket": CONF_BUCKET}
    s3: dict[str, dict[str, Any]] = {
        "ListBuckets": {}, "CreateBucket": {"Bucket": "conf-new-bucket"},
        "DeleteBucket": {"Bucket": "conf-doomed-bucket"}, "HeadBucket": b, "GetBucketLocation": b,
        "PutBucketVersioning": {**b, "VersioningConfiguration": {"Status": "Enabled"}},
        "GetBucketVersioning": b, "GetBucketPolicy": b, "DeleteBucketPolicy": b,
        "PutBucketPolicy": {**b, "Policy": _policy({
            "Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{CONF_BUCKET}/*"})},
        "PutObject": {**b, "Key": "new.bin", "Body": b"new"}, "GetObject": {**b, "Key": "obj.bin"},
        "HeadObject": {**b, "Key": "obj.bin"}, "DeleteObject": {**b, "Key": "doomed.bin"},
        "ListObjects": b, "ListObjectsV2": b, "ListObjectVersions": b,
        "CreateMultipartUpload": {**b, "Key": "mp-new.bin"},
        "UploadPart": {**b, "Key": "mp.bin", "UploadId": w.upload_id, "PartNumber": 1, "Body": b"part"},
        "CompleteMultipartUpload": {**b, "Key": "mp-complete.bin", "UploadId": w.complete_upload_id,
                                    "MultipartUpload": {"Parts": [{"ETag": w.complete_etag,
                                                                   "PartNumber": 1}]}},
        "AbortMultipartUpload": {**b, "Key": "mp-abort.bin", "UploadId": w.abort_upload_id},
        "ListParts": {**b, "Key": "mp.bin", "UploadId": w.upload_id},
        "ListMultipartUploads": b,
    }
    overair: dict[str, dict[str, Any]] = {
               "RevokeCodeSigningCertificate": {"CertificateArn": w.revoke_acm_arn, "Reason": "conformance"},
               "CreateOfflineBundle": {"OtaUpdateId": w.ota, "ThingName": w.things[1]},
               "PublishTrustList": {"TrustList": w.trust_list}, "GetTrustList": {},
               # Revoke runs after Create (_order: destructive operations last).
               "CreateEventReader": {"Name": "conf-reader"}, "RevokeEventReader": {"Name": "conf-reader"},
               "ListEventReaders": {},
               "SetClaimCertificateTemplates": {"CertificateId": w.claim_cert_id,
                                                "TemplateNames": ["conf-prov"]},
               "GetClaimCertificateTemplates": {"CertificateId": w.claim_cert_id},
               "DescribeRolloutHealth": {"JobId": w.job}, "ResumeRollout": {"JobId": w.job}}
    iot_data: dict[str, dict[str, Any]] = {
        "GetThingShadow": {"thingName": thing1},
        "UpdateThingShadow": {"thingName": thing1, "payload": b'{"state": {"reported": {"on": false}}}'},
        "DeleteThingShadow": {"thingName": thing2},
        "ListNamedShadowsForThing": {"thingName": thing1},
    }
    tables = {"iot": iot, "iot-data": iot_data, "signer": signer, "acm": acm, "iam": iam, "sts": sts,
              "s3": s3, "overair": overair}
    return {(service, op): params for service, table in tables.items() for op, params in table.items()}


def _next_trust_list(srv: RunningServer, root: Issued) -> str:
    """Trust list 1: the server's roots (the conformance root among them) and its
    deployment key, unchanged, signed by the conformance root (core/trustlist.py)."""
    paths = srv.settings.paths
    trust = trustlist.TrustList(1, 1, tuple(load_pem_certificates(paths.code_signing_root.read_bytes())),
                                tuple(deployment.load_public_keys(paths.deployment_keys.read_bytes())))
    return json.dumps(trustlist.add_signature(trustlist.unsigned_envelope(trust), root.key))


def _modelled_codes(operation: Any) -> set[str]:
    codes: set[str] = set()
    for shape in operation.error_shapes:
        codes.add(shape.name)
        codes.add(str(shape.metadata.get("error", {}).get("code", shape.name)))
    return codes


def _order(operations: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Operations that use up their fixture (deletes, cancels...) after the others."""
    return sorted(operations, key=lambda so: (so[1].startswith(DESTRUCTIVE), so))


def test_every_supported_operation_succeeds_and_its_response_parses(
        srv: RunningServer, world: World, caplog: pytest.LogCaptureFixture) -> None:
    success = _success_params(world)
    matrix = read_matrix()
    supported = {(s, op) for s, ops in matrix.supported.items() if s != "iot-jobs-data" for op in ops}
    assert set(success) == supported  # an input for every supported operation
    failed: list[tuple[str, str, str]] = []
    caplog.set_level(logging.WARNING, logger="overair.api")
    for service, op in _order(supported):
        client = srv.client(service)
        try:
            response = getattr(client, xform_name(op))(**success[(service, op)])
        except ClientError as exc:
            error = exc.response["Error"]
            failed.append((service, op, f"{error['Code']}: {error['Message']}"))
            continue
        assert response["ResponseMetadata"]["HTTPStatusCode"] < 300
    assert failed == []
    dropped = [r.getMessage() for r in caplog.records if "are not in shape" in r.getMessage()]
    assert sorted(set(dropped)) == []  # handlers answer only members of the output shape


def test_errors_of_supported_operations_are_modelled(srv: RunningServer, world: World) -> None:
    """Inputs naming nothing that exists: each operation succeeds or answers one of its
    modelled error codes (HEAD requests carry only the status), never a generic one."""
    matrix = read_matrix()
    wrong: list[tuple[str, str, str]] = []
    for service in sorted(matrix.supported):
        if service == "iot-jobs-data":
            continue
        client = srv.client(service)
        for op in sorted(matrix.supported[service], key=lambda o: (o.startswith(DESTRUCTIVE), o)):
            model = client.meta.service_model.operation_model(op)
            overrides = {"Bucket": "conf-missing-bucket"} if service == "s3" else {}
            members = model.input_shape.members if model.input_shape is not None else {}
            params = minimal_input(model, {k: v for k, v in overrides.items() if k in members})
            try:
                getattr(client, xform_name(op))(**params)
            except ClientError as exc:
                code = str(exc.response["Error"]["Code"])
                allowed = (_modelled_codes(model) | ({"404"} if op.startswith("Head") else set())
                           | (S3_DOCUMENTED if service == "s3" else set())
                           | UNMODELLED_BUT_AWS.get((service, op), set()))
                if code in NEVER_FOR_SUPPORTED or code not in allowed:
                    wrong.append((service, op, code))
    assert wrong == [], "\n".join(map(str, wrong))


def test_every_other_operation_is_refused_by_name(srv: RunningServer) -> None:
    routed = _routed(srv)
    config = botocore.config.Config(inject_host_prefix=False, retries={"max_attempts": 1})
    wrong: list[tuple[str, str, str]] = []
    unbuildable: list[str] = []
    for service in SERVICES:
        client = srv.clients._session.client(service, endpoint_url=srv.endpoint, config=config.merge(
            botocore.config.Config(s3={"addressing_style": "path"})))
        for op in _model_operations(srv, service):
            if op in routed[service]:
                continue
            model = client.meta.service_model.operation_model(op)
            try:
                getattr(client, xform_name(op))(**minimal_input(model))
            except ParamValidationError:  # minimal_input cannot fill tagged unions
                unbuildable.append(op)
                continue
            except ClientError as exc:
                error = exc.response["Error"]
                expected = "NotImplemented" if service == "s3" else "NotImplementedException"
                # A deprecated operation shares its route with its successor, which is named.
                signing_name = client.meta.service_model.signing_name
                named = f"{signing_name}:{'' if model.deprecated else op}" in str(error.get("Message"))
                if REFUSED_BEFORE_ROUTING.get((service, op)) == error["Code"]:
                    continue
                if error["Code"] != expected or not named:
                    wrong.append((service, op, f"{error['Code']}: {error.get('Message')}"))
            else:
                wrong.append((service, op, "answered"))
    assert wrong == [], "\n".join(map(str, wrong))
    assert len(unbuildable) <= 3, unbuildable


# --- iot-jobs-data, on the device endpoint --------------------------------------------------


def _device_jobs_client(srv: RunningServer, bundle: Path) -> Any:
    config = botocore.config.Config(signature_version=UNSIGNED, retries={"max_attempts": 1},
                                    client_cert=(str(bundle / "device.crt"), str(bundle / "device.key")))
    return boto3.session.Session(region_name=srv.clients.region).client(
        "iot-jobs-data", endpoint_url=f"https://localhost:{srv.settings.download_port}",
        verify=str(srv.settings.paths.fleet_ca_cert), config=config)


def test_device_jobs_operations_parse(srv: RunningServer, tmp_path: Path) -> None:
    bundle = srv.provision("conf-poller", tmp_path / "conf-poller")
    iot = srv.client("iot")
    iot.create_job(jobId="conf-poll-job", targets=[iot.describe_thing(thingName="conf-poller")["thingArn"]],
                   document='{"operation": "poll"}')
    jobs = _device_jobs_client(srv, bundle)
    assert [j["jobId"] for j in jobs.get_pending_job_executions(thingName="conf-poller")["queuedJobs"]] == [
        "conf-poll-job"]
    started = jobs.start_next_pending_job_execution(thingName="conf-poller")["execution"]
    assert isinstance(started["queuedAt"], int)  # iot-jobs-data models it as epoch seconds (long)
    described = jobs.describe_job_execution(thingName="conf-poller", jobId="conf-poll-job")["execution"]
    assert described["status"] == "IN_PROGRESS"
    done = jobs.update_job_execution(thingName="conf-poller", jobId="conf-poll-job", status="SUCCEEDED",
                                     expectedVersion=described["versionNumber"],
                                     includeJobExecutionState=True)
    assert done["executionState"]["status"] == "SUCCEEDED"


def test_device_endpoint_refuses_commands_by_name(srv: RunningServer, tmp_path: Path) -> None:
    bundle = srv.provision("conf-commands", tmp_path / "conf-commands")
    jobs = _device_jobs_client(srv, bundle)
    with pytest.raises(ClientError) as caught:
        jobs.start_command_execution(targetArn=srv.client("iot").describe_thing(
            thingName="conf-commands")["thingArn"], commandArn="arn:aws:iot:us-east-1:123456789012:command/x")
    assert caught.value.response["Error"]["Code"] == "NotImplementedException"


# --- pagination ----------------------------------------------------------------------------


def _page_size_one(client: Any, op: str, params: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """(everything in one call, everything through the paginator one item per page)."""
    paginator = client.get_paginator(xform_name(op))
    keys = paginator.result_keys
    assert keys, op
    whole = getattr(client, xform_name(op))(**params)
    paged: list[Any] = []
    first_page_sizes: list[int] = []
    for page in paginator.paginate(**params, PaginationConfig={"PageSize": 1}):
        items = [item for key in keys for item in key.search(page) or []]
        first_page_sizes.append(len(items))
        paged += items
    everything = [item for key in keys for item in key.search(whole) or []]
    # Several result keys (S3 Versions and DeleteMarkers) come page by page, interleaved.
    everything, paged = (sorted(items, key=lambda i: json.dumps(i, sort_keys=True, default=str))
                         for items in (everything, paged))
    assert all(size <= 1 for size in first_page_sizes), (op, first_page_sizes)
    return everything, paged


# Paginated by botocore without a page size member (ListTagsForResource: at most 50 tags).
NO_PAGE_SIZE = frozenset({("iot", "ListTagsForResource")})


def test_every_routed_list_operation_pages(srv: RunningServer, world: World) -> None:
    """PageSize 1 through botocore's paginators gives the same items as one call, one
    per page, for every routed operation that botocore can paginate."""
    success = _success_params(world)
    routed = _routed(srv)
    checked = []
    for service in sorted(routed):
        if service == "iot-jobs-data":
            continue
        client = srv.client(service)
        for op in sorted(routed[service]):
            if not client.can_paginate(xform_name(op)) or (service, op) in NO_PAGE_SIZE:
                continue
            everything, paged = _page_size_one(client, op, success.get((service, op), {}))
            assert paged == everything, op
            checked.append((service, op, len(everything)))
    multi = [c for c in checked if c[2] >= 2]
    assert len(multi) >= 20, checked  # most listings had several items to page through


# --- members overair does not implement, and filters -------------------------------------


@pytest.mark.parametrize(("op", "params"), [
    ("create_thing", {"thingName": "conf-billed", "billingGroupName": "b"}),
    ("update_thing", {"thingName": "conf-thing-1", "thingTypeName": "t"}),
    ("create_thing_group", {"thingGroupName": "conf-child", "parentGroupName": "conf-group"}),
    ("list_thing_groups", {"parentGroup": "conf-group"}),
    ("list_jobs", {"thingGroupId": "x"}),
    ("create_job", {"jobId": "conf-namespaced", "targets": ["arn:aws:iot:r:1:thing/x"],
                    "document": "{}", "namespaceId": "n"}),
    ("update_job", {"jobId": "conf-job", "namespaceId": "n"}),
    ("list_job_executions_for_thing", {"thingName": "conf-thing-1", "namespaceId": "n"}),
])
def test_unsupported_members_are_refused_by_name(
        srv: RunningServer, world: World, op: str, params: dict[str, Any]) -> None:
    iot = srv.client("iot")
    # Targets are parsed strictly before the handler refuses members: use this deployment's.
    here = f"arn:aws:iot:{srv.settings.region}:{srv.settings.account_id}:"
    params = json.loads(json.dumps(params).replace("arn:aws:iot:r:1:", here))
    with pytest.raises(ClientError) as caught:
        getattr(iot, op)(**params)
    error = caught.value.response["Error"]
    assert error["Code"] == "InvalidRequestException"
    member = next(k for k in params if k in ("billingGroupName", "thingTypeName", "parentGroupName",
                                             "parentGroup", "thingGroupId", "namespaceId"))
    assert member in error["Message"]
    assert iot.list_things(attributeName="color", attributeValue="x")["things"] == []  # nothing created
    with pytest.raises(ClientError):
        iot.describe_thing_group(thingGroupName="conf-child")


def test_list_things_filters_by_attribute(srv: RunningServer, world: World) -> None:
    iot = srv.client("iot")

    def names(**filters: Any) -> set[str]:
        things = iot.list_things(**filters)["things"]
        return {t["thingName"] for t in things if t["thingName"].startswith("conf-")}

    assert names(attributeName="color", attributeValue="red") >= {"conf-thing-1"}
    assert "conf-thing-3" not in names(attributeName="color", attributeValue="red")
    assert {"conf-thing-1", "conf-thing-3"} <= names(attributeName="color", attributeValue="red",
                                                     usePrefixAttributeValue=True)
    assert "conf-thing-2" not in names(attributeName="color", attributeValue="red",
                                       usePrefixAttributeValue=True)
    assert {"conf-thing-1", "conf-thing-2"} <= names(attributeName="color")
    assert names(attributeName="shape") == set()


def test_list_jobs_filters_by_target_selection_and_group(srv: RunningServer, world: World) -> None:
    iot = srv.client("iot")
    group_arn = iot.describe_thing_group(thingGroupName=world.group)["thingGroupArn"]
    iot.create_job(jobId="conf-group-job", targets=[group_arn], document="{}", targetSelection="CONTINUOUS")
    by_group = {j["jobId"] for j in iot.list_jobs(thingGroupName=world.group)["jobs"]}
    assert by_group == {"conf-group-job"}
    continuous = {j["jobId"] for j in iot.list_jobs(targetSelection="CONTINUOUS")["jobs"]}
    assert "conf-group-job" in continuous
    assert world.job not in continuous
    for_thing = iot.list_job_executions_for_thing(thingName="conf-thing-1", jobId=world.job)
    assert [e["jobId"] for e in for_thing["executionSummaries"]] == [world.job]


def test_list_certificates_is_newest_first_unless_ascending(srv: RunningServer, world: World) -> None:
    iot = srv.client("iot")
    newest = iot.create_keys_and_certificate(setAsActive=False)["certificateId"]
    default = [c["certificateId"] for c in iot.list_certificates()["certificates"]]
    ascending = [c["certificateId"] for c in iot.list_certificates(ascendingOrder=True)["certificates"]]
    assert default[0] == newest
    assert ascending[-1] == newest
    assert ascending == default[::-1]


def test_timestamps_and_numbers_parse_as_botocore_types(srv: RunningServer, world: World) -> None:
    iot, iam, s3 = srv.client("iot"), srv.client("iam"), srv.client("s3")
    job = iot.describe_job(jobId=world.job)["job"]
    assert isinstance(job["createdAt"], dt.datetime)
    assert job["createdAt"].tzinfo is not None
    assert isinstance(job["jobProcessDetails"]["numberOfQueuedThings"], int)
    assert isinstance(iam.get_user(UserName=USER)["User"]["CreateDate"], dt.datetime)
    head = s3.head_object(Bucket=CONF_BUCKET, Key="obj.bin")
    assert isinstance(head["LastModified"], dt.datetime)
    assert isinstance(head["ContentLength"], int)
    now = dt.datetime.now(dt.UTC)
    assert abs((job["createdAt"] - now).total_seconds()) < 3600  # seconds, not milliseconds


