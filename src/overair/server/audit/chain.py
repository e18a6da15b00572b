"""The hash chain of the audit log: canonical encoding, sealing, verification. Pure.

Each entry is sealed with `entry_hash = SHA-256(canonical(entry fields + prev_hash))`,
where `prev_hash` is the previous entry's `entry_hash` (`GENESIS` for the first). Editing
any field breaks that entry's hash; deleting, inserting or reordering entries breaks the
sequence numbers or the links. Only the end of the chain is unprotected by the chain
itself, so the writer also keeps a head anchor (the last seq and hash) that the verifier
compares with, and operators can save that anchor elsewhere (`overair audit head`)
because whoever can write the whole database can also rewrite chain and anchor together.

The canonical form is JSON with sorted keys, no whitespace and ASCII escapes: one byte
string per entry, unambiguous because every field is a JSON value under its own key
(no concatenation that "ab"+"c" and "a"+"bc" could share). `FORMAT` is part of it so
that a later change of the encoding cannot be confused with this one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from overair.core.asciinum import parse_uint

FORMAT = 1
GENESIS = hashlib.sha256(b"overair audit log genesis v1").hexdigest()
_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class EntryFields:
    """What an entry says, before it gets its place in the chain."""

    time: float
    principal: str
    action: str
    resource: str
    decision: str
    statement: str = ""
    source: str = ""
    # Hashed exactly as stored: the writer always stores an object, so a detail changed
    # to null or [] is a change, not an equivalent "empty".
    detail: Any = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """An entry as stored: its fields, its place (seq) and its two hashes."""

    seq: int
    fields: EntryFields
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True, slots=True)
class Head:
    """The end of the chain: the last seq (0 when empty) and its hash (GENESIS when empty)."""

    seq: int
    entry_hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.entry_hash}"


EMPTY_HEAD = Head(0, GENESIS)


def parse_head(text: str) -> Head:
    """`SEQ:HASH` as printed by `overair audit head`; ValueError with the reason otherwise."""
    seq_text, sep, digest = text.strip().partition(":")
    seq = parse_uint(seq_text, max_digits=19)  # ASCII digits only: isdigit() passes "²"
    if not sep or seq is None or not _HASH.fullmatch(digest):
        raise ValueError(f"{text!r} is not a head: expected SEQ:HASH, e.g. 42:{GENESIS}")
    return Head(seq, digest)


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, ASCII only, no NaN/Infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical_bytes(seq: int, fields: EntryFields, prev_hash: str) -> bytes:
    if not math.isfinite(fields.time):
        raise ValueError("an audit entry's time must be a finite number")
    return canonical_json({
        "v": FORMAT, "seq": seq, "time": float(fields.time), "principal": fields.principal,
        "action": fields.action, "resource": fields.resource, "decision": fields.decision,
        "statement": fields.statement, "source": fields.source, "detail": fields.detail,
        "prev": prev_hash,
    }).encode("ascii")


def entry_hash(seq: int, fields: EntryFields, prev_hash: str) -> str:
    return hashlib.sha256(canonical_bytes(seq, fields, prev_hash)).hexdigest()


def seal(head: Head, fields: EntryFields) -> ChainEntry:
    """The entry that follows `head`."""
    seq = head.seq + 1
    return ChainEntry(seq, fields, head.entry_hash, entry_hash(seq, fields, head.entry_hash))


def seal_all(head: Head, batch: Iterable[EntryFields]) -> list[ChainEntry]:
    sealed: list[ChainEntry] = []
    for fields in batch:
        entry = seal(head, fields)
        sealed.append(entry)
        head = Head(entry.seq, entry.entry_hash)
    return sealed


# Verification ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Problem:
    """The first place where the log is not what was written. `code` is stable."""

    seq: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Report:
    count: int  # entries checked
    head: Head  # the chain's end as walked
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


class ChainVerifier:
    """Walks entries in the order the store returns them (by seq), one at a time, so a
    log of any length is checked in constant memory; stops at the first problem."""

    def __init__(self, expected: Head | None = None) -> None:
        self._expected = expected  # a head saved elsewhere earlier
        self._head = EMPTY_HEAD
        self._count = 0
        self.problem: Problem | None = None

    def add(self, entry: ChainEntry) -> bool:
        """False once a problem was found (later entries are then not looked at)."""
        if self.problem is not None:
            return False
        self.problem = self._check(entry)
        if self.problem is not None:
            return False
        self._head = Head(entry.seq, entry.entry_hash)
        self._count += 1
        return True

    def _check(self, entry: ChainEntry) -> Problem | None:
        want = self._head.seq + 1
        if entry.seq > want:
            missing = f"{want}" if entry.seq == want + 1 else f"{want}..{entry.seq - 1}"
            return Problem(want, "EntryMissing",
                           f"seq {missing} missing (the log jumps from {self._head.seq} to {entry.seq}): "
                           "entries were deleted")
        if entry.seq < want:
            return Problem(entry.seq, "EntryOutOfOrder",
                           f"seq {entry.seq} appears after seq {self._head.seq}: entries were reordered "
                           "or duplicated")
        if entry.prev_hash != self._head.entry_hash:
            return Problem(entry.seq, "ChainBroken",
                           f"seq {entry.seq} does not link to seq {self._head.seq} (prev_hash differs): "
                           "an entry before it was deleted, inserted or replaced")
        try:
            recomputed = entry_hash(entry.seq, entry.fields, entry.prev_hash)
        except (TypeError, ValueError) as exc:  # a field altered to something unencodable
            return Problem(entry.seq, "EntryModified", f"seq {entry.seq} cannot be encoded ({exc})")
        if recomputed != entry.entry_hash:
            return Problem(entry.seq, "EntryModified",
                           f"seq {entry.seq} does not match its hash: the entry was edited after it was "
                           "written")
        expected = self._expected
        if expected is not None and entry.seq == expected.seq and entry.entry_hash != expected.entry_hash:
            return Problem(entry.seq, "SavedHeadMismatch",
                           f"seq {entry.seq} differs from the saved head {expected}: the log was rewritten "
                           "up to there")
        return None

    def finish(self, anchor: Head | None) -> Report:
        """Compare the walked chain with the writer's head anchor (None: the anchor is
        gone) and with the saved head."""
        if self.problem is None:
            self.problem = self._check_end(anchor)
        return Report(self._count, self._head, self.problem)

    def _check_end(self, anchor: Head | None) -> Problem | None:
        last = self._head
        if anchor is None:
            return Problem(last.seq, "HeadMissing", "the head anchor was deleted: the end of the log "
                                                    "cannot be checked")
        if last.seq < anchor.seq:
            return Problem(last.seq + 1, "TailTruncated",
                           f"the log ends at seq {last.seq} but the head anchor records seq {anchor.seq}: "
                           f"entries {last.seq + 1}..{anchor.seq} were removed from the end")
        if last.seq > anchor.seq:
            return Problem(anchor.seq + 1, "EntriesBeyondHead",
                           f"the log goes on to seq {last.seq} past the head anchor at seq {anchor.seq}: "
                           "entries were added without the audit writer")
        if last.entry_hash != anchor.entry_hash:
            return Problem(last.seq, "HeadMismatch",
                           f"seq {last.seq} does not match the head anchor's hash: the end of the log "
                           "was replaced")
        expected = self._expected
        if expected is not None and expected.seq == 0 and expected.entry_hash != GENESIS:
            return Problem(0, "SavedHeadMismatch", f"the saved head {expected} is not a head of any log")
        if expected is not None and last.seq < expected.seq:
            return Problem(last.seq + 1, "SavedHeadMissing",
                           f"the log ends at seq {last.seq} but the saved head is at seq {expected.seq}: "
                           "entries were removed and the head anchor rewritten")
        return None


def verify(entries: Iterable[ChainEntry], anchor: Head | None, expected: Head | None = None) -> Report:
    verifier = ChainVerifier(expected)
    for entry in entries:
        if not verifier.add(entry):
            break
    return verifier.finish(anchor)
