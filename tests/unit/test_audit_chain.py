"""The audit log's hash chain (server/audit/chain.py) and the recognition of refused
connections in Mosquitto's log (server/gateway/broker_log.py): pure logic."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from overair.server.audit import chain
from overair.server.audit.fields import clean_detail, clean_text
from overair.server.gateway.broker_log import BrokerLogParser, RefusedConnection


def _fields(i: int, **changes: object) -> chain.EntryFields:
    base = chain.EntryFields(time=1_700_000_000.0 + i, principal=f"arn:aws:iam::123456789012:user/u{i}",
                             action="iot:CreateJob", resource=f"arn:aws:iot:us-east-1:123456789012:job/j{i}",
                             decision="Allow" if i % 2 else "Deny", statement="OverairOTAOperator#Jobs",
                             source="127.0.0.1", detail={"n": i})
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _log(n: int) -> tuple[list[chain.ChainEntry], chain.Head]:
    entries = chain.seal_all(chain.EMPTY_HEAD, [_fields(i) for i in range(1, n + 1)])
    return entries, chain.Head(entries[-1].seq, entries[-1].entry_hash)


# Canonical encoding ----------------------------------------------------------------------
def test_canonical_encoding_is_sorted_compact_json_of_every_field() -> None:
    fields = _fields(1, detail={"b": 1, "a": [1, "x"]})
    encoded = chain.canonical_bytes(7, fields, chain.GENESIS)
    assert json.loads(encoded) == {
        "v": 1, "seq": 7, "time": 1_700_000_001.0, "principal": fields.principal, "action": "iot:CreateJob",
        "resource": fields.resource, "decision": "Allow", "statement": "OverairOTAOperator#Jobs",
        "source": "127.0.0.1", "detail": {"a": [1, "x"], "b": 1}, "prev": chain.GENESIS}
    assert encoded.startswith(b'{"action":"iot:CreateJob","decision":"Allow","detail":{"a":[1,"x"],"b":1},')
    assert b" " not in encoded.replace(b"OverairOTAOperator", b"")
    assert chain.entry_hash(7, fields, chain.GENESIS) == hashlib.sha256(encoded).hexdigest()


def test_canonical_encoding_is_unambiguous_between_fields() -> None:
    # The same characters split differently between two fields must hash differently.
    one = _fields(1, principal="ab", action="c")
    other = _fields(1, principal="a", action="bc")
    assert chain.entry_hash(1, one, chain.GENESIS) != chain.entry_hash(1, other, chain.GENESIS)


def test_canonical_encoding_is_ascii_and_key_order_independent() -> None:
    a = _fields(1, principal="thing/été", detail={"x": 1, "y": 2})
    b = _fields(1, principal="thing/été", detail={"y": 2, "x": 1})
    assert chain.canonical_bytes(1, a, chain.GENESIS) == chain.canonical_bytes(1, b, chain.GENESIS)
    assert chain.canonical_bytes(1, a, chain.GENESIS).isascii()


def test_integer_and_float_time_hash_alike() -> None:
    # The database gives a float back for a time recorded as an int.
    assert (chain.entry_hash(1, _fields(1, time=1000), chain.GENESIS)
            == chain.entry_hash(1, _fields(1, time=1000.0), chain.GENESIS))


def test_non_finite_time_is_refused() -> None:
    with pytest.raises(ValueError):
        chain.canonical_bytes(1, _fields(1, time=float("nan")), chain.GENESIS)


def test_first_entry_chains_to_genesis_and_each_to_its_predecessor() -> None:
    entries, head = _log(3)
    assert entries[0].seq == 1
    assert entries[0].prev_hash == chain.GENESIS
    assert [e.prev_hash for e in entries[1:]] == [e.entry_hash for e in entries[:-1]]
    assert head == chain.Head(3, entries[2].entry_hash)


def test_parse_head_round_trips_and_refuses_garbage() -> None:
    head = chain.Head(42, "a" * 64)
    assert chain.parse_head(str(head)) == head
    for bad in ("", "42", "x:" + "a" * 64, "42:" + "A" * 64, "42:abc", "-1:" + "a" * 64):
        with pytest.raises(ValueError):
            chain.parse_head(bad)


# Verification: each kind of tampering (threat O2) ----------------------------------------
def test_o2_untouched_log_verifies() -> None:
    entries, head = _log(5)
    report = chain.verify(entries, head)
    assert report.ok
    assert report.count == 5
    assert report.head == head


def test_o2_empty_log_verifies_against_the_genesis_head() -> None:
    assert chain.verify([], chain.EMPTY_HEAD).ok


@pytest.mark.parametrize(("field", "value"), [
    ("principal", "arn:aws:iam::123456789012:user/someone-else"), ("action", "iot:DeleteJob"),
    ("resource", "arn:aws:iot:us-east-1:123456789012:job/other"), ("decision", "Deny"),
    ("statement", "Other#Sid"), ("source", "10.0.0.9"), ("detail", {"n": 99}), ("detail", None),
    ("detail", []), ("time", 1.0),
])
def test_o2_edited_field_is_detected(field: str, value: object) -> None:
    entries, head = _log(5)
    changed = dataclasses.replace(entries[2].fields, **{field: value})  # type: ignore[arg-type]
    edited = dataclasses.replace(entries[2], fields=changed)
    assert getattr(entries[2].fields, field) != value
    report = chain.verify([*entries[:2], edited, *entries[3:]], head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (3, "EntryModified")


def test_o2_edited_entry_with_recomputed_hash_breaks_the_next_link() -> None:
    entries, head = _log(5)
    fields = dataclasses.replace(entries[2].fields, decision="Allow", principal="attacker")
    prev = entries[2].prev_hash
    forged = chain.ChainEntry(3, fields, prev, chain.entry_hash(3, fields, prev))
    report = chain.verify([*entries[:2], forged, *entries[3:]], head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (4, "ChainBroken")


def test_o2_deleted_middle_entry_is_detected() -> None:
    entries, head = _log(5)
    report = chain.verify([*entries[:2], *entries[3:]], head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (3, "EntryMissing")
    assert "seq 3 missing" in report.problem.message


def test_o2_deleted_entry_with_renumbered_successors_is_detected() -> None:
    entries, head = _log(5)
    renumbered = [dataclasses.replace(e, seq=e.seq - 1) for e in entries[3:]]
    report = chain.verify([*entries[:2], *renumbered], chain.Head(4, head.entry_hash))
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (3, "ChainBroken")


def test_o2_reordered_entries_are_detected() -> None:
    entries, head = _log(5)
    report = chain.verify([entries[0], entries[2], entries[1], *entries[3:]], head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (2, "EntryMissing")
    # Swapping the contents but keeping the seq numbers in order:
    swapped = [entries[0], dataclasses.replace(entries[2], seq=2), dataclasses.replace(entries[1], seq=3),
               *entries[3:]]
    report = chain.verify(swapped, head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (2, "ChainBroken")


def test_o2_duplicated_entry_is_detected() -> None:
    entries, head = _log(3)
    report = chain.verify([entries[0], entries[1], entries[1], entries[2]], head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (2, "EntryOutOfOrder")


def test_o2_inserted_entry_is_detected() -> None:
    entries, head = _log(4)
    # In the middle, numbered to fit: its link is right, the successor's is not.
    inserted = chain.seal(chain.Head(2, entries[1].entry_hash), _fields(99, principal="attacker"))
    shifted = [dataclasses.replace(e, seq=e.seq + 1) for e in entries[2:]]
    report = chain.verify([*entries[:2], inserted, *shifted], chain.Head(5, head.entry_hash))
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (4, "ChainBroken")
    # At the end, properly chained, but the head anchor was not moved:
    appended = chain.seal(head, _fields(99, principal="attacker"))
    report = chain.verify([*entries, appended], head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (5, "EntriesBeyondHead")


def test_o2_truncated_tail_is_detected_against_the_head_anchor() -> None:
    entries, head = _log(5)
    report = chain.verify(entries[:3], head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (4, "TailTruncated")
    assert "4..5" in report.problem.message


def test_o2_replaced_last_entry_is_detected_against_the_head_anchor() -> None:
    entries, head = _log(3)
    replacement = chain.seal(chain.Head(2, entries[1].entry_hash),
                             _fields(3, decision="Allow", principal="x"))
    report = chain.verify([*entries[:2], replacement], head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (3, "HeadMismatch")


def test_o2_missing_head_anchor_is_reported() -> None:
    entries, _ = _log(2)
    report = chain.verify(entries, None)
    assert report.problem is not None
    assert report.problem.code == "HeadMissing"


def test_o2_rewritten_chain_is_detected_against_a_saved_head() -> None:
    entries, head = _log(5)
    saved = chain.Head(3, entries[2].entry_hash)
    assert chain.verify(entries, head, saved).ok  # the log grew since: fine
    # Full database access: truncate to 2 entries and rewrite the anchor to match.
    report = chain.verify(entries[:2], chain.Head(2, entries[1].entry_hash), saved)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (3, "SavedHeadMissing")
    # Or rewrite every entry (consistently chained) from seq 3 on.
    rewritten = chain.seal_all(chain.Head(2, entries[1].entry_hash),
                               [_fields(i, principal="attacker") for i in (3, 4, 5)])
    report = chain.verify([*entries[:2], *rewritten], chain.Head(5, rewritten[-1].entry_hash), saved)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.code) == (3, "SavedHeadMismatch")


def test_verifier_stops_at_the_first_problem() -> None:
    entries, head = _log(5)
    verifier = chain.ChainVerifier()
    broken = dataclasses.replace(entries[1], entry_hash="0" * 64)
    assert verifier.add(entries[0])
    assert not verifier.add(broken)
    assert not verifier.add(entries[2])
    report = verifier.finish(head)
    assert report.count == 1
    assert report.problem is not None
    assert report.problem.seq == 2


# Field cleaning ----------------------------------------------------------------------------
def test_clean_text_makes_any_string_storable() -> None:
    assert clean_text("plain") == "plain"
    assert clean_text("a\x00b") == "a\ufffdb"
    assert clean_text("bad \udc80 surrogate") == "bad ? surrogate"
    assert clean_text("x" * 300, 256) == "x" * 256
    assert clean_text(42) == "42"


def test_clean_detail_is_what_a_json_column_gives_back() -> None:
    assert clean_detail(None) == {}
    odd: dict[Any, Any] = {"t": (1, 2), 3: "x", "o": object}
    assert clean_detail(odd) == {"t": [1, 2], "3": "x", "o": str(object)}
    assert clean_detail({"nan": float("nan")}) == {"unencodable": "{'nan': nan}"}


# Mosquitto's log ---------------------------------------------------------------------------
# Lines as Mosquitto 2.0.11 printed them (see broker_log.py for how they were obtained).
def _feed(lines: list[str]) -> list[RefusedConnection]:
    parser = BrokerLogParser()
    events = [event for line in lines for event in parser.feed(line)]
    return events + parser.close()


def test_refused_at_accept_names_the_host() -> None:
    assert _feed([
        "1795250123: Client connection from 127.0.0.1 failed: error:0A0000C7:SSL routines::peer did not "
        "return a certificate.",
    ]) == [RefusedConnection("unknown", "127.0.0.1",
                             "error:0A0000C7:SSL routines::peer did not return a certificate")]


def test_refused_during_handshake_takes_the_address_of_the_pending_connection() -> None:
    assert _feed([
        "1795250125: New connection from 127.0.0.1:36029 on port 39891.",
        "1795250125: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
        "1795250125: Client <unknown> disconnected: Protocol error.",
    ]) == [RefusedConnection("unknown", "127.0.0.1:36029",
                             "error:0A000086:SSL routines::certificate verify failed")]


def test_accepted_connections_are_not_refusals_and_leave_no_pending_address() -> None:
    assert _feed([
        "1: New connection from 10.0.0.5:1000 on port 8883.",
        "1: New client connected from 10.0.0.5:1000 as thing-b (p2, c1, k60, u'thing-b').",
        "2: Client thing-b disconnected.",
        "3: New connection from 10.0.0.6:2000 on port 8883.",
        "3: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
        "3: Client <unknown> disconnected: Protocol error.",
    ]) == [RefusedConnection("unknown", "10.0.0.6:2000",
                             "error:0A000086:SSL routines::certificate verify failed")]


def test_not_authorised_names_the_client() -> None:
    assert _feed([
        "1795250317: New connection from 127.0.0.1:50501 on port 49117.",
        "1795250317: Client x disconnected, not authorised.",
    ]) == [RefusedConnection("x", "127.0.0.1:50501", "not authorised")]


def test_concurrent_handshakes_from_one_host_keep_only_the_host() -> None:
    events = _feed([
        "1: New connection from 127.0.0.1:52531 on port 1.",
        "1: New connection from 127.0.0.1:39445 on port 1.",
        *["1: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
          "1: Client <unknown> disconnected: Protocol error."] * 2,
    ])
    assert [e.source for e in events] == ["127.0.0.1", "127.0.0.1"]


def test_concurrent_handshakes_from_several_hosts_name_no_source() -> None:
    events = _feed([
        "1: New connection from 10.0.0.1:5 on port 1.",
        "1: New connection from 10.0.0.2:6 on port 1.",
        "1: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
        "1: Client <unknown> disconnected: Protocol error.",
    ])
    assert [e.source for e in events] == [""]


def test_several_openssl_errors_make_one_refusal() -> None:
    events = _feed([
        "1: New connection from [::1]:44852 on port 1.",
        "1: OpenSSL Error[0]: first",
        "1: OpenSSL Error[1]: second",
        "1: Client <unknown> disconnected: Protocol error.",
    ])
    assert events == [RefusedConnection("unknown", "[::1]:44852", "first; second")]


def test_stale_pending_connections_expire() -> None:
    events = _feed([
        "100: New connection from 10.0.0.1:5 on port 1.",
        "100: Client <unknown> closed its connection.",  # clears the only pending one
        "100: New connection from 10.0.0.2:5 on port 1.",
        "100: New connection from 10.0.0.3:5 on port 1.",
        "100: Client <unknown> closed its connection.",  # which one? unknown: both stay
        "200: New connection from 10.0.0.4:7 on port 1.",
        "200: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed",
        "200: Client <unknown> disconnected: Protocol error.",
    ])
    assert [e.source for e in events] == ["10.0.0.4:7"]


def test_ordinary_lines_are_not_refusals() -> None:
    assert _feed([
        "1: mosquitto version 2.0.11 starting",
        "1: Reloading config.",
        "1: Client thing-a disconnected.",
        "1: Client thing-a closed its connection.",
        "not even a timestamp",
    ]) == []
