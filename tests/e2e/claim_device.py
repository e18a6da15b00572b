"""A device built on the AWS IoT Device SDK v2 for Python that holds only a claim
certificate and provisions itself with the SDK's identity client (`awsiot.iotidentity`
`IotIdentityClient`), as the SDK's fleet provisioning sample does: subscribe to the
accepted and rejected topics, publish the request, wait for one answer.

Everything the device receives on any topic goes to its `Inbox` (tests/e2e/sdk_device.py),
so a test can say what it never received.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import awscrt.mqtt
from awsiot import iotidentity, mqtt_connection_builder

from tests.e2e.sdk_device import HOST, WAIT, Inbox
from tests.server_harness import RunningServer

QOS1 = awscrt.mqtt.QoS.AT_LEAST_ONCE


class ClaimRejected(Exception):
    def __init__(self, error: Any) -> None:
        super().__init__(f"{error.status_code} {error.error_code}: {error.error_message}")
        self.error = error


class ClaimDevice:
    def __init__(self, srv: RunningServer, bundle: Path, client_id: str) -> None:
        self.client_id = client_id
        self.inbox = Inbox()
        self.connection = mqtt_connection_builder.mtls_from_path(
            endpoint=HOST, port=srv.settings.mqtt_port, client_id=client_id,
            cert_filepath=str(bundle / "device.crt"), pri_key_filepath=str(bundle / "device.key"),
            ca_filepath=str(bundle / "root-ca.pem"), clean_session=True, keep_alive_secs=30)
        # Whatever arrives on a topic without a callback of its own (nothing should).
        self.connection.on_message(lambda topic, payload, **_kw: self.inbox.put("any", (topic, payload)))
        self.connection.connect().result(WAIT)
        self.identity = iotidentity.IotIdentityClient(self.connection)

    def close(self) -> None:
        self.connection.disconnect().result(WAIT)

    def _subscribe(self, subscribe: Any, request: Any, operation: str, outcome: str) -> None:
        future, _topic = subscribe(request, QOS1,
                                   lambda answer: self.inbox.put("answer", (operation, outcome, answer)))
        future.result(WAIT)

    def answers(self, operation: str) -> list[tuple[str, Any]]:
        """(outcome, answer) of every answer to `operation` the device received."""
        return [(outcome, body) for op, outcome, body in self.inbox.of("answer") if op == operation]

    def watch(self, template: str | None = None) -> None:
        """Subscribe to every answer topic, as the sample does before it publishes."""
        i, c = iotidentity, self.identity
        self._subscribe(c.subscribe_to_create_keys_and_certificate_accepted,
                        i.CreateKeysAndCertificateSubscriptionRequest(), "keys", "accepted")
        self._subscribe(c.subscribe_to_create_keys_and_certificate_rejected,
                        i.CreateKeysAndCertificateSubscriptionRequest(), "keys", "rejected")
        self._subscribe(c.subscribe_to_create_certificate_from_csr_accepted,
                        i.CreateCertificateFromCsrSubscriptionRequest(), "csr", "accepted")
        self._subscribe(c.subscribe_to_create_certificate_from_csr_rejected,
                        i.CreateCertificateFromCsrSubscriptionRequest(), "csr", "rejected")
        if template is not None:
            registering = i.RegisterThingSubscriptionRequest(template_name=template)
            self._subscribe(c.subscribe_to_register_thing_accepted, registering, "register", "accepted")
            self._subscribe(c.subscribe_to_register_thing_rejected, registering, "register", "rejected")

    def _call(self, operation: str, publish: Future[Any]) -> Any:
        """Publish, wait for the next answer to `operation`: its body, or ClaimRejected."""
        before = len(self.answers(operation))
        publish.result(WAIT)
        self.inbox.wait_for("answer", lambda _a: len(self.answers(operation)) > before,
                            f"no answer to {operation}")
        outcome, body = self.answers(operation)[before]
        if outcome == "rejected":
            raise ClaimRejected(body)
        return body

    def create_keys(self) -> Any:
        return self._call("keys", self.identity.publish_create_keys_and_certificate(
            iotidentity.CreateKeysAndCertificateRequest(), QOS1))

    def create_from_csr(self, csr_pem: str) -> Any:
        return self._call("csr", self.identity.publish_create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr_pem), QOS1))

    def register(self, template: str, token: str, parameters: dict[str, str]) -> Any:
        return self._call("register", self.identity.publish_register_thing(iotidentity.RegisterThingRequest(
            template_name=template, certificate_ownership_token=token, parameters=parameters), QOS1))


def write_bundle(directory: Path, cert_pem: str, key_pem: str, ca_pem: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "device.crt").write_text(cert_pem)
    (directory / "device.key").write_text(key_pem)
    (directory / "device.key").chmod(0o600)
    (directory / "root-ca.pem").write_bytes(ca_pem)
    return directory
