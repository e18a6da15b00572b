"""Fuzz target: the Device Shadow HTTPS API for devices (shadow/device_api.py) through the
device endpoint's real ASGI app (tests/fuzz/device_world.py): any method, shadow name,
query and body on the thing's own shadow and on another thing's (N4) is answered with
one of the iot-data model's statuses, never 500, and never a 2xx for the other thing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.device_strategies import HOSTILE_TEXT, JSON_VALUES, json_bytes
from tests.fuzz.device_world import OTHER_THING, THING, DeviceWorld, build, call_asgi

SHADOW_API_STATUSES = {200, 400, 404, 405, 409, 413, 415}
SHADOW_NAMES = st.sampled_from(["", "cfg", "$package", "a" * 65, "bad/name"]) | HOSTILE_TEXT


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceWorld]:
    world = build(tmp_path_factory.mktemp("fuzz-shadow-https"))
    yield world
    world.server.db.close()


def _document(state: object, version: object) -> bytes:
    return json.dumps({"state": state, "version": version}).encode()


STATES = st.dictionaries(st.sampled_from(["desired", "reported", "delta"]) | HOSTILE_TEXT, JSON_VALUES,
                         max_size=3)
BODIES = st.builds(_document, STATES, JSON_VALUES) | JSON_VALUES.map(json_bytes) | st.binary(max_size=256)


@given(
    st.sampled_from([THING, OTHER_THING]),
    st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    SHADOW_NAMES,
    st.dictionaries(st.sampled_from(["pageSize", "nextToken", "x"]), HOSTILE_TEXT, max_size=2),
    BODIES,
    st.booleans(),
)
def test_fuzz_device_shadow_api_answers_only_its_models_statuses(
    world: DeviceWorld, thing: str, method: str, name: str, query: dict[str, str], body: bytes, listing: bool
) -> None:
    path = f"/api/things/shadow/ListNamedShadowsForThing/{thing}" if listing else f"/things/{thing}/shadow"
    params = {**query, **({"name": name} if name else {})}
    target = quote(path) + "?" + urlencode(params, encoding="utf-8", errors="surrogatepass")
    status, reply = call_asgi(world.app, method, target, [("content-type", "application/json")], body,
                              world.cert_der)
    assert status in SHADOW_API_STATUSES, (method, target, body[:200], status, reply[:300])
    if thing == OTHER_THING:
        assert status >= 400, (method, target, status)
    if status >= 400 and status != 405:
        assert json.loads(reply)  # the model's error shape
