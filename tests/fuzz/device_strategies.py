"""Hypothesis strategies for what a device can send the server: hostile text, JSON and
CBOR values shaped like the protocol's messages, and their encodings (valid, truncated,
with bytes flipped)."""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
from hypothesis import strategies as st

# Text that broke parsers before: Unicode digits (int() and isdigit() disagree), lone
# surrogates, NUL and escapes, newlines (re.match with $), very long runs.
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789\u0661\u0662\u00b2\u2460\uff11 +-_.eE\n\t\x00\x1b", max_size=30),
    st.sampled_from(
        [
            "",
            "\n",
            "rdy\n",
            "\ud800",
            "\x00",
            "$next",
            "9" * 5000,
            "1e400",
            "NaN",
            "-1",
            "+1",
            "1_000",
            "\u0661\u0662\u0663",
            "\u00e9" * 64,
        ]
    ),
)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 255, 256, 4096, 2**31, 2**32, 2**63, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_TEXT, st.binary(max_size=40))
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(HOSTILE_TEXT | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=20,
)
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), HOSTILE_TEXT
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(HOSTILE_TEXT, children, max_size=4),
    max_leaves=20,
)

STREAM_KEYS = ["c", "f", "l", "o", "b", "n", "s", "p", "i", "d", "r"]
JOB_KEYS = [
    "status",
    "statusDetails",
    "expectedVersion",
    "executionNumber",
    "includeJobExecutionState",
    "includeJobDocument",
    "stepTimeoutInMinutes",
    "clientToken",
]


def _json_default(value: Any) -> Any:
    return base64.b64encode(value).decode() if isinstance(value, bytes) else repr(value)


def json_bytes(value: Any) -> bytes:
    """`value` as JSON (bytes as base64, as the protocol writes them), lone surrogates kept."""
    try:
        text = json.dumps(value, default=_json_default)
    except (TypeError, ValueError):  # keys JSON cannot have: send the repr
        text = json.dumps(repr(value))
    return text.encode("utf-8", "surrogatepass")


def cbor_bytes(value: Any) -> bytes:
    try:
        return cbor2.dumps(value)
    except Exception:  # what cbor2 refuses to encode (lone surrogates, odd keys): its repr
        return cbor2.dumps(repr(value).encode("utf-8", "surrogatepass"))


@st.composite
def _mutated_draw(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> bytes:
    raw = draw(data)
    how = draw(st.sampled_from(["as is", "as is", "truncate", "flip"]))
    if raw and how == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if raw and how == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    return raw


def _mutated(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """The encoding itself, truncated, or with one byte replaced."""
    return _mutated_draw(data)


def stream_messages() -> st.SearchStrategy[dict[Any, Any]]:
    """Maps with the GetStream/DescribeStream keys, each value valid or hostile."""
    valid = st.fixed_dictionaries(
        {
            "c": st.just("rdy"),
            "f": st.just(0),
            "l": st.sampled_from([256, 1024, 4096]),
            "o": st.integers(0, 4),
            "b": st.binary(min_size=1, max_size=8),
            "n": st.integers(1, 8),
        }
    )
    return st.one_of(
        valid,
        valid.flatmap(
            lambda base: st.dictionaries(st.sampled_from(STREAM_KEYS), VALUES, max_size=4).map(
                lambda p: {**base, **p}
            )
        ),
        st.dictionaries(st.sampled_from(STREAM_KEYS) | HOSTILE_TEXT, VALUES, max_size=7),
    )


def job_messages() -> st.SearchStrategy[dict[str, Any]]:
    base = st.fixed_dictionaries(
        {
            "status": st.sampled_from(
                ["IN_PROGRESS", "QUEUED", "SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "bogus"]
            ),
            "clientToken": st.just("t"),
        }
    )
    return st.one_of(
        base.flatmap(
            lambda b: st.dictionaries(st.sampled_from(JOB_KEYS), JSON_VALUES, max_size=4).map(
                lambda p: {**b, **p}
            )
        ),
        st.dictionaries(st.sampled_from(JOB_KEYS) | HOSTILE_TEXT, JSON_VALUES, max_size=6),
    )


def cbor_payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200), _mutated(stream_messages().map(cbor_bytes)), _mutated(VALUES.map(cbor_bytes))
    )


def json_payloads(messages: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    jsonish = st.text(alphabet='[]{}",:0123456789.eE-+ \\ntrufalsNIiy\u00e9AQ=', max_size=200)
    return st.one_of(
        st.binary(max_size=200),
        jsonish.map(lambda t: t.encode("utf-8", "surrogatepass")),
        _mutated(messages.map(json_bytes)),
        st.integers(1, 3000).map(lambda d: b'{"status":' + b"[" * d + b"]" * d + b"}"),
    )
