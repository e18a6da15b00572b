"""Fuzz target: the Device Shadow service's requests (core/shadow.py), the payload of
every `$aws/things/<thing>/shadow/...` request and of iot-data's UpdateThingShadow
(issue 15), and the shadow request topics (server/shadow/mqtt.py).

`parse_request`, `client_token`, `parse_update` and `apply_update` raise only
`ShadowError` with one of AWS's codes; an accepted update keeps the stored state within
the documented size and depth, and the answer documents always encode.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core import shadow as doc
from overair.core.limits import DEFAULT_LIMITS
from overair.core.shadow import Shadow, ShadowError
from overair.server.shadow.mqtt import parse_topic
from tests.fuzz.device_strategies import HOSTILE_TEXT, JSON_VALUES

LIMITS = DEFAULT_LIMITS
KEYS = HOSTILE_TEXT | st.sampled_from(["a", "b", "c"])
SECTION = st.none() | st.dictionaries(KEYS, JSON_VALUES, max_size=5)
REQUESTS = st.fixed_dictionaries({}, optional={
    "state": st.fixed_dictionaries({}, optional={"desired": SECTION, "reported": SECTION,
                                                 "delta": JSON_VALUES}) | JSON_VALUES,
    "version": st.integers(-2, 5) | JSON_VALUES,
    "clientToken": HOSTILE_TEXT | JSON_VALUES,
})


def _bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


@given(st.binary(max_size=300) | REQUESTS.map(_bytes))
def test_fuzz_request_bytes_raise_only_shadow_errors(payload: bytes) -> None:
    status = 0
    try:
        request = doc.parse_request(payload, LIMITS)
        doc.token_if_any(request, LIMITS)
        doc.parse_update(request, LIMITS)
    except ShadowError as exc:
        status = exc.status
    assert status in (0, 400, 413, 415)


@given(st.lists(REQUESTS, min_size=1, max_size=6))
def test_fuzz_updates_keep_the_shadow_within_its_limits(requests: list[dict[str, Any]]) -> None:
    current: Shadow | None = None
    version = 0
    for request in requests:
        try:
            update = doc.parse_update(doc.parse_request(_bytes(request), LIMITS), LIMITS)
            applied = doc.apply_update(current, version + 1, update, 1_700_000_000, LIMITS)
        except ShadowError as exc:
            refused = exc.status
        else:
            refused = 0
        assert refused in (0, 400, 409, 413, 415)
        if refused:
            continue
        current, version = applied.current, applied.current.version
        assert doc.state_size(current.desired, current.reported) <= LIMITS.max_shadow_state_bytes
        for message in (doc.get_document(current, 1, None), doc.documents_message(applied, 1, "t"),
                        doc.delta_message(applied, 1, None)):
            json.loads(doc.encode(message))
        assert doc.delta(current.desired, current.reported) == applied.delta


@given(st.lists(st.sampled_from(["$aws", "things", "t-1", "shadow", "name", "n", "get", "update", "delete",
                                 "accepted", "", "+", "#", "$package", "x" * 65]), max_size=8))
def test_fuzz_shadow_topics_parse_only_requests(parts: list[str]) -> None:
    parsed = parse_topic("/".join(parts))
    if parsed is not None:
        assert parts[:2] == ["$aws", "things"]
        assert parts[-1] == parsed.verb.value
        assert doc.is_shadow_name(parsed.name) or parsed.name == ""
