"""N4: a broker identity is the certificate itself (server/pki.py), and the ACL file
overair writes means exactly what the registry says (gateway/broker.py). Pure logic;
tests/integration/test_broker_identity.py checks the same against the real Mosquitto."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from overair.core.errors import MisuseError
from overair.core.revocation import REVOCATIONS_TOPIC
from overair.core.topics import SERVICE_REPLY_FILTERS
from overair.core.trustlist import TRUST_TOPIC
from overair.server import pki
from overair.server.gateway.broker import AclRule, render_acl, render_config

NOW = dt.datetime.now(dt.UTC)
CA = pki.make_root_ca("unit fleet CA", NOW)
A = x509.NameAttribute


def test_n4_two_certificates_with_one_cn_never_share_a_broker_identity() -> None:
    first, second = (pki.issue_client_cert(CA, "dev-1", NOW) for _ in range(2))
    names = {pki.broker_username(cert.cert.subject) for cert in (first, second)}
    assert len(names) == 2
    for issued in (first, second):
        subject = issued.cert.subject
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"  # the agent's check
        assert (subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value
                == format(issued.cert.serial_number, "x"))
        assert pki.broker_username(subject) == (
            f"serialNumber={issued.cert.serial_number:x},CN=dev-1,O=overair")


def test_n4_session_closer_certificate_takes_the_exact_identity_it_copies() -> None:
    device = pki.issue_client_cert(CA, "dev-1", NOW)
    closer = pki.issue_session_closer_cert(CA, device.cert.subject, NOW, days=0.01)
    assert closer.cert.subject == device.cert.subject
    assert closer.cert.serial_number != device.cert.serial_number  # not on the device's CRL entry


def test_n4_subjects_from_before_unique_subjects_keep_their_rfc2253_name() -> None:
    legacy = x509.Name([A(NameOID.ORGANIZATION_NAME, "overair"), A(NameOID.COMMON_NAME, "dev-1")])
    assert pki.broker_username(legacy) == "CN=dev-1,O=overair"


@pytest.mark.parametrize("subject", [
    x509.Name([A(NameOID.COMMON_NAME, "dev-1,O=overair")]),  # would need RFC 2253 escaping
    x509.Name([A(NameOID.COMMON_NAME, "dev-1\ntopic readwrite #")]),  # an ACL line of its own
    x509.Name([A(NameOID.COMMON_NAME, "dev 1")]),
    x509.Name([A(NameOID.COMMON_NAME, "dév-1")]),
    x509.Name([A(NameOID.COMMON_NAME, "#dev")]),
    x509.Name([A(NameOID.ORGANIZATIONAL_UNIT_NAME, "fleet"), A(NameOID.COMMON_NAME, "dev-1")]),
    x509.Name([x509.RelativeDistinguishedName([A(NameOID.COMMON_NAME, "dev-1"),
                                              A(NameOID.ORGANIZATION_NAME, "overair")])]),
    x509.Name([]),
])
def test_n4_a_subject_that_cannot_be_named_exactly_has_no_broker_identity(subject: x509.Name) -> None:
    assert pki.broker_username(subject) is None


def _acl_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_n4_acl_grants_each_identity_only_its_things_and_devices_only_read_revocations() -> None:
    acl = render_acl(service="CN=overair.service,O=overair",
                     devices={"serialNumber=1,CN=a,O=overair": ["a", "b"],
                              "serialNumber=2,CN=a,O=overair": []},
                     control={"serialNumber=3,CN=overair.witness,O=overair": [
                         AclRule("readwrite", "overair/x")]})
    assert _acl_lines(acl) == [
        f"pattern read {REVOCATIONS_TOPIC}", f"pattern read {TRUST_TOPIC}",
        "user CN=overair.service,O=overair", "topic readwrite $aws/things/#", "topic write $aws/events/#",
        f"topic readwrite {REVOCATIONS_TOPIC}", f"topic readwrite {TRUST_TOPIC}",
        "user serialNumber=3,CN=overair.witness,O=overair", "topic readwrite overair/x",
        "user serialNumber=1,CN=a,O=overair",
        "topic readwrite $aws/things/a/#", "topic readwrite $aws/things/b/#",
    ]


def test_n4_acl_leaves_out_what_would_change_its_meaning() -> None:
    acl = render_acl(service="CN=overair.service,O=overair",
                     devices={"serialNumber=1,CN=a,O=overair": ["a", "x\n/#", "y/+", "z #"],
                              "CN=b\ntopic readwrite #": ["b"], "CN=c d": ["c"]})
    assert _acl_lines(acl)[7:] == ["user serialNumber=1,CN=a,O=overair", "topic readwrite $aws/things/a/#"]


def test_n4_acl_refuses_an_unsafe_service_or_control_identity() -> None:
    with pytest.raises(MisuseError):
        render_acl(service="CN=x\ntopic readwrite #", devices={})
    with pytest.raises(MisuseError):
        render_acl(service="CN=overair.service", devices={},
                   control={"CN=w": [AclRule("readwrite", "a\ntopic readwrite #")]})


def test_n4_access_plugin_file_names_each_devices_things_and_reserves_the_servers_client_ids() -> None:
    acl = render_acl(service="CN=overair.service,O=overair",
                     devices={"serialNumber=1,CN=a,O=overair": ["a", "b"]},
                     control={"serialNumber=3,CN=overair.witness,O=overair": [
                         AclRule("read", "overair/x/#")]},
                     client_ids={"CN=overair.service,O=overair": ["overair.service"],
                                 "serialNumber=3,CN=overair.witness,O=overair": ["w"]},
                     for_plugin=True)
    assert _acl_lines(acl) == [
        f"pattern read {REVOCATIONS_TOPIC}", f"pattern read {TRUST_TOPIC}",
        "user CN=overair.service,O=overair", "topic readwrite $aws/things/#",
        *(f"topic noread {topic}" for topic in SERVICE_REPLY_FILTERS), "topic write $aws/events/#",
        f"topic readwrite {REVOCATIONS_TOPIC}", f"topic readwrite {TRUST_TOPIC}",
        "topic read $overair/claim/v1/#", "topic write $CONTROL/overair-claim/v1", "clientid overair.service",
        "user serialNumber=3,CN=overair.witness,O=overair", "topic read overair/x/#", "clientid w",
        "user serialNumber=1,CN=a,O=overair",
        "topic readwrite $aws/things/a/#", "topic readwrite $aws/things/b/#", "thing a", "thing b",
    ]
    # Mosquitto's own ACL file (no plugin) has none of these lines: it would refuse them.
    plain = render_acl(service="CN=overair.service,O=overair",
                       devices={"serialNumber=1,CN=a,O=overair": ["a"]},
                       client_ids={"CN=overair.service,O=overair": ["overair.service"]})
    assert not [line for line in _acl_lines(plain)
                if line.split(" ")[0] in ("thing", "clientid") or line.startswith("topic noread ")]


def test_n4_access_plugin_file_refuses_a_client_id_that_would_change_its_meaning() -> None:
    for client_id in ("a b", "a\nuser x", "", "x" * 129):
        with pytest.raises(MisuseError):
            render_acl(service="CN=overair.service", devices={},
                       client_ids={"CN=overair.service": [client_id]}, for_plugin=True)


@pytest.mark.parametrize("plugin", [None, Path("/plugins/overair_access.so")], ids=["subject", "plugin"])
def test_broker_config_opens_one_listener_and_keeps_sessions_within_awss_limits(plugin: Path | None) -> None:
    config = render_config(host="127.0.0.1", port=8883, ca=Path("/d/ca.pem"), cert=Path("/d/b.pem"),
                           key=Path("/d/b.key"), crl=Path("/d/crl.pem"), acl=Path("/d/broker/acl"),
                           run_as_root=False, workdir=Path("/d/broker"), plugin=plugin,
                           session_expiry_hours=1, max_queued_messages=1000).splitlines()
    listener = config.index("listener 8883 127.0.0.1")
    # Mosquitto 2.0.11 applies a listener option written before `listener` to a plaintext
    # default listener on port 1883 that it then opens.
    for option in ("cafile", "certfile", "keyfile", "crlfile", "require_certificate",
                   "use_subject_as_username", "use_username_as_clientid", "tls_version"):
        assert all(i > listener for i, line in enumerate(config) if line.startswith(option + " ")), option
    assert sum(line.startswith("listener ") for line in config) == 1
    assert {"persistence true", "persistence_location /d/broker/", "persistent_client_expiration 1h",
            "max_queued_messages 1000"} <= set(config)
    if plugin is None:
        assert {"acl_file /d/broker/acl", "use_subject_as_username true",
                "use_username_as_clientid true"} <= set(config)
    else:
        assert {f"plugin {plugin}", "plugin_opt_access_file /d/broker/acl"} <= set(config)
        assert not [line for line in config if line.startswith(("acl_file", "use_"))]


def test_n4_a_claim_certificate_gets_its_provisioning_topics_only_and_only_with_the_plugin() -> None:
    """Write its requests, SUBSCRIBE (never delivery) to their answers, the `claim` mark;
    a claim identity also attached to things stays a claim identity only; without the
    plugin nobody could answer one device of many, so nothing is granted."""
    claims = {"serialNumber=9,CN=claim,O=overair": ["factory", "bad name"]}
    devices = {"serialNumber=9,CN=claim,O=overair": ["t"]}
    acl = render_acl(service="CN=overair.service,O=overair", devices=devices, claims=claims, for_plugin=True)
    block = _acl_lines(acl)[_acl_lines(acl).index("user serialNumber=9,CN=claim,O=overair"):]
    assert block[-1] == "claim"
    assert "topic write $aws/certificates/create/json" in block
    assert "topic subscribe $aws/certificates/create/json/+" in block
    assert "topic write $aws/provisioning-templates/factory/provision/cbor" in block
    assert not [line for line in block if "bad name" in line or line.startswith(("thing ", "topic read"))]
    plain = render_acl(service="CN=overair.service,O=overair", devices={}, claims=claims)
    assert "claim" not in plain
    assert "$aws/certificates" not in plain
