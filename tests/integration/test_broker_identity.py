"""N4 at the real Mosquitto (2.0.11): a client is known by its certificate's whole
subject, never by a CN it shares; a reload withdraws a grant from a live session at once
without disconnecting it; the ACL witness tells which ACL the broker enforces.

Nothing here is decided by waiting for silence: each check ends with an *echo* that the
service publishes on the revocation-list topic (every client may read it) after the
messages under test. Mosquitto delivers to each subscriber in the order it routed, so a
message that would have been delivered arrives before the echo.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from overair.core.errors import UnavailableError
from overair.core.revocation import REVOCATIONS_TOPIC
from overair.server import pki
from overair.server.files import write_atomic
from overair.server.gateway.broker import Broker, render_acl, render_config
from overair.server.gateway.ephemeral import client_context
from overair.server.gateway.reload import ConfirmedReload
from overair.server.gateway.tls import client_ssl_context
from overair.server.gateway.witness import AclWitness
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate
from overair.server.storage.schema import DeviceCertificate
from tests.mqtt_peer import MqttPeer
from tests.ports import free_port

NOW = dt.datetime.now(dt.UTC)


class Peer(MqttPeer):
    def __init__(self, issued: pki.Issued, ca_file: Path, port: int, client_id: str) -> None:
        super().__init__(client_context(issued, ca_file), port, client_id)

    def wait_for(self, topic: str, payload: bytes) -> None:
        self.wait_until(lambda received: (topic, payload) in received, (topic, payload))


@dataclass
class Env:
    root: Path
    ca: pki.Issued
    port: int
    broker: Broker
    service: Peer
    witness: AclWitness
    apply: Callable[[Mapping[str, list[str]]], str]  # grants -> the generation now in force

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    def peer(self, issued: pki.Issued, client_id: str) -> Peer:
        peer = Peer(issued, self.ca_file, self.port, client_id)
        peer.subscribe("$aws/things/#", REVOCATIONS_TOPIC)
        return peer

    def echo(self, *peers: Peer) -> None:
        """After this, every peer has received whatever the broker was going to give it."""
        nonce = secrets.token_hex(8).encode()
        self.service.publish(REVOCATIONS_TOPIC, nonce)
        for peer in (*peers, self.service):
            peer.wait_for(REVOCATIONS_TOPIC, nonce)


def _identity(issued: pki.Issued) -> str:
    name = pki.broker_username(issued.cert.subject)
    assert name is not None
    return name


def _run_broker(root: Path, *, with_acl: bool) -> Iterator[Env]:
    ca = pki.make_root_ca("identity test CA", NOW)
    write_atomic(root / "ca.pem", ca.cert_pem)
    server = pki.issue_server_cert(ca, ("localhost", "127.0.0.1"), NOW)
    write_atomic(root / "server.pem", server.cert_pem)
    write_atomic(root / "server.key", server.key_pem, mode=0o600)
    write_atomic(root / "crl.pem", pki.make_crl(ca, [], NOW))
    service = pki.issue_client_cert(ca, pki.SERVICE_IDENTITY, NOW)
    write_atomic(root / "service.pem", service.cert_pem)
    write_atomic(root / "service.key", service.key_pem, mode=0o600)
    port = free_port()
    broker = Broker(root / "broker", "/usr/sbin/mosquitto", "127.0.0.1", port)
    witness = AclWitness(ca, root / "ca.pem", "127.0.0.1", port)

    def write(grants: Mapping[str, list[str]]) -> str:
        generation = secrets.token_hex(8)
        acl = render_acl(service=_identity(service), devices=grants,
                         control={witness.identity: witness.rules(generation)})
        write_atomic(broker.acl_path, acl.encode())
        return generation

    write({})
    config = render_config(host="127.0.0.1", port=port, ca=root / "ca.pem", cert=root / "server.pem",
                           key=root / "server.key", crl=root / "crl.pem", acl=broker.acl_path,
                           run_as_root=os.geteuid() == 0, workdir=broker.workdir)
    if not with_acl:
        config = "\n".join(line for line in config.splitlines() if not line.startswith("acl_file")) + "\n"
    broker.write_config(config)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(broker.start(client_ssl_context(str(root / "ca.pem"), str(root / "service.pem"),
                                                            str(root / "service.key"))))
    reload = ConfirmedReload(broker.signal_reload, witness)

    def apply(grants: Mapping[str, list[str]]) -> str:
        generation = write(grants)
        reload(generation)
        return generation

    witness.start()
    service_peer = Peer(service, root / "ca.pem", port, "service")
    service_peer.subscribe("$aws/things/#", REVOCATIONS_TOPIC)
    try:
        yield Env(root, ca, port, broker, service_peer, witness, apply)
    finally:
        service_peer.close()
        witness.stop()
        loop.run_until_complete(broker.stop())
        loop.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from _run_broker(tmp_path, with_acl=True)


def _legacy_cert(ca: pki.Issued, cn: str) -> pki.Issued:
    """A device certificate as overair issued them before unique subjects (CN and O only)."""
    return pki.issue_leaf(ca, cn, NOW, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])


def test_n4_broker_knows_a_client_by_its_whole_subject_never_by_a_shared_cn(env: Env) -> None:
    device = pki.issue_client_cert(env.ca, "thing-a", NOW)
    twin = pki.issue_client_cert(env.ca, "thing-a", NOW)  # same CN: what a minted certificate tries
    legacy = _legacy_cert(env.ca, "thing-l")
    assert pki.broker_username(legacy.cert.subject) == "CN=thing-l,O=overair"
    env.apply({_identity(device): ["thing-a"], _identity(legacy): ["thing-l"]})
    a, t, old = env.peer(device, "thing-a"), env.peer(twin, "thing-a"), env.peer(legacy, "thing-l")
    try:
        t.publish("$aws/things/thing-a/jobs/job-1/update", b"forged by the twin")
        a.publish("$aws/things/thing-a/jobs/job-1/update", b"from the device")
        old.publish("$aws/things/thing-l/jobs/$next/get", b"from the legacy device")
        env.service.publish("$aws/things/thing-a/jobs/notify-next", b"for the device")
        env.echo(a, t, old)
        assert a.things_messages() == [("$aws/things/thing-a/jobs/job-1/update", b"from the device"),
                                       ("$aws/things/thing-a/jobs/notify-next", b"for the device")]
        assert t.things_messages() == []
        assert old.things_messages() == [("$aws/things/thing-l/jobs/$next/get", b"from the legacy device")]
        assert env.service.things_messages() == [
            ("$aws/things/thing-a/jobs/job-1/update", b"from the device"),
            ("$aws/things/thing-l/jobs/$next/get", b"from the legacy device"),
            ("$aws/things/thing-a/jobs/notify-next", b"for the device")]
        assert not a.gone.is_set()  # the twin's client id "thing-a" took nothing over
    finally:
        for peer in (a, t, old):
            peer.close()


def test_n4_reload_withdraws_a_grant_from_a_live_session_at_once_without_a_disconnect(env: Env) -> None:
    device = pki.issue_client_cert(env.ca, "thing-a", NOW)
    env.apply({_identity(device): ["thing-a", "thing-x"]})
    peer = env.peer(device, "dev")
    try:
        env.service.publish("$aws/things/thing-x/jobs/notify-next", b"before")
        env.echo(peer)
        assert peer.things_messages() == [("$aws/things/thing-x/jobs/notify-next", b"before")]
        peer.received.clear()
        env.service.received.clear()

        env.apply({_identity(device): ["thing-a"]})  # detached from thing-x only

        env.service.publish("$aws/things/thing-x/jobs/notify-next", b"after")
        env.service.publish("$aws/things/thing-a/jobs/notify-next", b"still mine")
        peer.publish("$aws/things/thing-x/jobs/job-1/update", b"into thing-x")
        peer.publish("$aws/things/thing-a/jobs/job-1/update", b"into thing-a")
        env.echo(peer)
        assert peer.things_messages() == [("$aws/things/thing-a/jobs/notify-next", b"still mine"),
                                          ("$aws/things/thing-a/jobs/job-1/update", b"into thing-a")]
        assert ("$aws/things/thing-x/jobs/job-1/update", b"into thing-x") not in env.service.received
        assert ("$aws/things/thing-a/jobs/job-1/update", b"into thing-a") in env.service.received
        assert not peer.gone.is_set()
    finally:
        peer.close()


def test_witness_tells_which_generation_the_broker_enforces(env: Env) -> None:
    first = env.apply({})
    assert env.witness.in_force(first)
    second = env.apply({})
    assert env.witness.in_force(second)
    assert not env.witness.in_force(first)


def test_n4_witness_refuses_a_broker_that_enforces_no_acl(tmp_path: Path) -> None:
    for env in _run_broker(tmp_path, with_acl=False):
        with pytest.raises(UnavailableError, match="does not enforce"):
            env.witness.in_force("any")


def test_n4_certificates_from_before_unique_subjects_that_share_one_get_only_what_all_are_attached_to(
        tmp_path: Path) -> None:
    """A data directory from before unique subjects may hold two ACTIVE certificates with
    one subject (a thing provisioned twice). The broker cannot tell them apart, so their
    identity is granted only the things both are attached to: the stale twin never gets
    the other's thing because the names match."""
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(db.engine)
    settings = Settings(data_dir=tmp_path, account_id="123456789012")
    ca = pki.make_root_ca("legacy fleet CA", NOW)
    registry = Registry(db, settings, ca, time.time)
    registry.create_thing("dev-1")
    registry.create_thing("dev-2")
    arns = []
    for _ in range(2):  # stored as the registry stored certificates before (CN and O only)
        issued = _legacy_cert(ca, "dev-1")
        cert_id = pki.certificate_id(issued.cert)
        with db.session() as s:
            s.add(DeviceCertificate(certificate_id=cert_id, arn=registry.cert_arn(cert_id),
                                    pem=issued.cert_pem.decode(),
                                    serial=format(issued.cert.serial_number, "x"),
                                    status="ACTIVE", created_at=0.0, last_modified_at=0.0))
        arns.append(registry.cert_arn(cert_id))
    shared = "CN=dev-1,O=overair"
    registry.attach_principal("dev-1", arns[0])
    access = registry.broker_access()
    assert access.grants == {}  # the unattached twin could be the one connecting
    assert access.shared == frozenset({shared})
    registry.attach_principal("dev-1", arns[1])
    registry.attach_principal("dev-2", arns[1])
    assert registry.broker_access().grants == {shared: frozenset({"dev-1"})}  # not dev-2
    registry.update_certificate(arns[1].rpartition("/")[2], "REVOKED")  # its CRL entry keeps it out
    access = registry.broker_access()
    assert access.grants == {shared: frozenset({"dev-1"})}
    assert access.shared == frozenset()
    assert shared in access.withdrawn  # its session is closed: it may be the revoked one
    db.close()
