#!/usr/bin/env python3
"""Fleet provisioning by claim, as with AWS IoT: the operator (boto3) makes a provisioning
template and a claim certificate; a device that holds only the claim certificate
provisions itself with the AWS IoT Device SDK v2's identity client (CreateKeysAndCertificate,
then RegisterThing) and writes the certificate and key it received, with which it then
connects as its thing.

overair difference: AWS marks a claim certificate with an IoT policy; overair has no IoT
policies, so the operator names the claim certificate's templates with overair's
SetClaimCertificateTemplates (the `overair` service model ships with overair).

With the administrator's keys (as boto3 finds them), the endpoint, the broker's port and
the fleet CA (DATA/pki/fleet-ca.pem of `overair init`):

    OVERAIR_ENDPOINT=http://127.0.0.1:8080 python examples/fleet_provisioning_sdk.py \\
        --ca DATA/pki/fleet-ca.pem --mqtt-port 8883 --serial 0001
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import awscrt.mqtt
import boto3
import botocore.session
from awsiot import iotidentity, mqtt_connection_builder
from botocore.exceptions import ClientError

from overair.apimodels import MODELS_DIR

TEMPLATE_NAME = "claim-example"
ROLE = "claim-example-provisioning"
# AWS's fleet provisioning template shape; no AWS::IoT::Policy resource (overair serves
# no IoT policies: a device may use its things' topics).
TEMPLATE = {
    "Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Fn::Join": ["", ["claim-example-", {"Ref": "SerialNumber"}]]},
            "AttributePayload": {"serialNumber": {"Ref": "SerialNumber"}}}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}}},
    "DeviceConfiguration": {"otaChannel": "stable"}}
QOS1 = awscrt.mqtt.QoS.AT_LEAST_ONCE
WAIT = 20.0


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint-url", default=env("OVERAIR_ENDPOINT") or env("AWS_ENDPOINT_URL"))
    p.add_argument("--region", default=env("AWS_DEFAULT_REGION") or env("AWS_REGION") or "us-east-1")
    p.add_argument("--ca", type=Path, required=True, help="the fleet CA certificate (DATA/pki/fleet-ca.pem)")
    p.add_argument("--mqtt-host", default="localhost", help="a name the broker's certificate carries")
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--serial", default="0001",
                   help="the device's serial number (its thing: claim-example-SERIAL)")
    p.add_argument("--out", type=Path, default=Path("claim-example"))
    return p.parse_args()


def provisioning_role(iam: Any) -> str:
    """A role iot.amazonaws.com may assume, allowed to create things."""
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    try:
        arn: str = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
        arn = iam.get_role(RoleName=ROLE)["Role"]["Arn"]
    iam.put_role_policy(RoleName=ROLE, PolicyName="register", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:CreateThing",
                                                "Resource": "*"}]}))
    return arn


def operator(args: argparse.Namespace, claim_dir: Path) -> None:
    """The template and a claim certificate for it, written to claim_dir."""
    core = botocore.session.get_session()
    core.get_component("data_loader").search_paths.append(str(MODELS_DIR))  # the `overair` service
    session = boto3.session.Session(region_name=args.region, botocore_session=core)
    iot, iam, overair = (session.client(name, endpoint_url=args.endpoint_url)
                         for name in ("iot", "iam", "overair"))
    with contextlib.suppress(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_provisioning_template(templateName=TEMPLATE_NAME, templateBody=json.dumps(TEMPLATE),
                                         provisioningRoleArn=provisioning_role(iam), enabled=True)
    claim = iot.create_keys_and_certificate(setAsActive=True)
    overair.set_claim_certificate_templates(CertificateId=claim["certificateId"],
                                            TemplateNames=[TEMPLATE_NAME])
    claim_dir.mkdir(parents=True, exist_ok=True)
    (claim_dir / "claim.crt").write_text(claim["certificatePem"])
    (claim_dir / "claim.key").write_text(claim["keyPair"]["PrivateKey"])
    print(f"claim certificate {claim['certificateId']} may provision with {TEMPLATE_NAME}")


class Answers:
    """The identity client's answers, one at a time (the SDK sample's pattern)."""

    def __init__(self) -> None:
        self.got: list[tuple[bool, Any]] = []
        self.ready = threading.Condition()

    def put(self, accepted: bool, answer: Any) -> None:
        with self.ready:
            self.got.append((accepted, answer))
            self.ready.notify_all()

    def next(self) -> Any:
        with self.ready:
            if not self.ready.wait_for(lambda: self.got, WAIT):
                raise TimeoutError("no answer from the provisioning service")
            accepted, answer = self.got.pop(0)
        if not accepted:
            raise RuntimeError(f"rejected: {answer.status_code} {answer.error_code}: {answer.error_message}")
        return answer


def device(args: argparse.Namespace, claim_dir: Path) -> Path:
    """What the device runs: connect with the claim certificate, get a certificate and
    key, register its thing; returns where it wrote its own certificate and key."""
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint=args.mqtt_host, port=args.mqtt_port, client_id=f"claim-{uuid.uuid4().hex[:12]}",
        cert_filepath=str(claim_dir / "claim.crt"), pri_key_filepath=str(claim_dir / "claim.key"),
        ca_filepath=str(args.ca), clean_session=True, keep_alive_secs=30)
    connection.connect().result(WAIT)
    identity = iotidentity.IotIdentityClient(connection)
    answers = Answers()
    subscriptions = [
        (identity.subscribe_to_create_keys_and_certificate_accepted,
         iotidentity.CreateKeysAndCertificateSubscriptionRequest(), True),
        (identity.subscribe_to_create_keys_and_certificate_rejected,
         iotidentity.CreateKeysAndCertificateSubscriptionRequest(), False),
        (identity.subscribe_to_register_thing_accepted,
         iotidentity.RegisterThingSubscriptionRequest(template_name=TEMPLATE_NAME), True),
        (identity.subscribe_to_register_thing_rejected,
         iotidentity.RegisterThingSubscriptionRequest(template_name=TEMPLATE_NAME), False)]
    for subscribe, request, accepted in subscriptions:
        future, _topic = subscribe(request, QOS1, lambda answer, ok=accepted: answers.put(ok, answer))
        future.result(WAIT)
    identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(),
                                                 QOS1).result(WAIT)
    keys = answers.next()
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=TEMPLATE_NAME, certificate_ownership_token=keys.certificate_ownership_token,
        parameters={"SerialNumber": args.serial}), QOS1).result(WAIT)
    registered = answers.next()
    connection.disconnect().result(WAIT)
    out = args.out / registered.thing_name
    out.mkdir(parents=True, exist_ok=True)
    (out / "device.crt").write_text(keys.certificate_pem)
    (out / "device.key").write_text(keys.private_key)
    (out / "device.key").chmod(0o600)
    print(f"provisioned {registered.thing_name} (device configuration {registered.device_configuration}); "
          f"certificate and key in {out}")
    # From now on the device is its thing: it connects with its own certificate, with the
    # thing name as client id, and runs jobs and OTA updates as any device.
    mine = mqtt_connection_builder.mtls_from_path(
        endpoint=args.mqtt_host, port=args.mqtt_port, client_id=registered.thing_name,
        cert_filepath=str(out / "device.crt"), pri_key_filepath=str(out / "device.key"),
        ca_filepath=str(args.ca), clean_session=True, keep_alive_secs=30)
    mine.connect().result(WAIT)
    mine.disconnect().result(WAIT)
    print(f"{registered.thing_name} connected with its own certificate")
    return out


def main() -> int:
    args = parse_args()
    claim_dir = args.out / "claim"
    operator(args, claim_dir)
    device(args, claim_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
