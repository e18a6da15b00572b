"""Fuzz target: the broker identity of a certificate subject (server/pki.py
`broker_username`) and the ACL file written from it and from thing names
(gateway/broker.py `render_acl`). Whatever a subject or a stored thing name holds, the
ACL keeps one meaning: every line is a comment, blank, or a `user`/`topic`/`pattern`
line overair means (plus `thing`/`clientid` in the access plugin's form, which the plugin
splits at single spaces), and no device line grants a wildcard or a client id outside its
own thing."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from overair.core.errors import MisuseError
from overair.server import pki
from overair.server.gateway.broker import render_acl

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
_NASTY = st.sampled_from(["\n", "\r", " ", ",", "+", "=", "#", "/", "\\", '"', ";", "\x00", "é",
                         "topic", "#/"])
_VALUE = st.lists(st.one_of(_TEXT, _NASTY), min_size=1, max_size=6).map("".join)
_OIDS = st.sampled_from([NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.SERIAL_NUMBER,
                         NameOID.ORGANIZATIONAL_UNIT_NAME])


@given(st.lists(st.tuples(_OIDS, _VALUE), min_size=0, max_size=4))
def test_fuzz_broker_username_is_none_or_one_safe_line(
        attributes: list[tuple[x509.ObjectIdentifier, str]]) -> None:
    try:
        name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    except ValueError:
        return  # cryptography refuses it: no certificate can carry it
    username = pki.broker_username(name)
    if username is not None:
        assert all(c.isascii() and (c.isalnum() or c in ":_.-=,") for c in username)


@given(st.dictionaries(_VALUE, st.lists(_VALUE, max_size=4), max_size=5), st.booleans())
def test_fuzz_acl_lines_keep_their_meaning(devices: dict[str, list[str]], for_plugin: bool) -> None:
    try:
        acl = render_acl(service="CN=overair.service,O=overair", devices=devices, for_plugin=for_plugin,
                         client_ids={"CN=overair.service,O=overair": ["overair.service"]})
    except MisuseError:
        raise AssertionError("device entries are left out, never fatal") from None
    user = None
    for line in acl.split("\n"):
        if not line or line.startswith("#"):
            continue
        kind, _, rest = line.partition(" ")
        assert kind in ("user", "topic", "pattern", *(("thing", "clientid") if for_plugin else ())), line
        assert "" not in line.split(" "), line  # one space between words
        assert "\r" not in line, line
        if kind == "user":
            user = rest
        elif kind == "thing":
            assert rest in devices.get(user or "", [])
            assert not set(rest) & set("#+/ \n\r")
        elif kind == "clientid":
            assert user == "CN=overair.service,O=overair"
        elif kind == "topic" and user != "CN=overair.service,O=overair":
            access, _, topic = rest.partition(" ")
            assert access == "readwrite"
            assert topic.startswith("$aws/things/")
            assert topic.endswith("/#")
            thing = topic.removeprefix("$aws/things/").removesuffix("/#")
            assert thing in devices.get(user or "", [])
            assert not set(thing) & set("#+/ \n\r")
