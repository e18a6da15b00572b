"""Fuzz targets: UpdateEventConfigurations' input (core/events.py `parse_update`) raises
only InvalidEventConfiguration, and what it accepts round-trips through storage and
answers DescribeEventConfigurations; the broker log lines the presence events come
from (gateway/presence.py `parse_line`, now reading the peer address and username)
never raise, and a connection's fields come from its line."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core import events
from overair.core.events import InvalidEventConfiguration
from overair.server.gateway.presence import parse_line
from tests.fuzz.device_strategies import HOSTILE_TEXT

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | HOSTILE_TEXT
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(["Enabled", "enabled"]) | HOSTILE_TEXT, inner,
                                        max_size=3), max_leaves=12)
SPECS = st.dictionaries(st.sampled_from(events.EVENT_TYPES) | HOSTILE_TEXT,
                        st.fixed_dictionaries({"Enabled": st.booleans()}) | VALUES, max_size=12)


@given(SPECS | VALUES)
def test_fuzz_event_configurations_parse_or_refuse(spec: Any) -> None:
    try:
        config = events.parse_update(spec, events.DEFAULT)
    except InvalidEventConfiguration:
        return
    assert events.from_stored(events.to_stored(config)) == config
    answer = events.to_aws(config)
    assert set(answer) == set(events.EVENT_TYPES)
    assert {name for name, value in answer.items() if value["Enabled"]} == config.enabled


@given(HOSTILE_TEXT, HOSTILE_TEXT, HOSTILE_TEXT, HOSTILE_TEXT)
def test_fuzz_broker_log_lines_never_raise(address: str, client: str, user: str, tail: str) -> None:
    parse_line(tail)
    parse_line(f"1796506382: New client connected from {address} as {client} (p2, c1, k30, u'{user}').{tail}")
    clean = "".join(c for c in client if c.isalnum()) or "c"
    found = parse_line(f"New client connected from 10.0.0.1:1 as {clean} (p2, c1, k30, u'CN=x').")
    assert found is not None
    assert (found.client_id, found.address, found.username) == (clean, "10.0.0.1", "CN=x")
