"""Fuzz target: core/delta.py, the patch an agent applies (hostile input: it comes from the
network like a block), and core/delta_offer.py, the `overair:delta` object of a job
document. Only `DeltaError` may escape the patch path, the output goes to the sink in
order and never past the declared size, and an offer either parses into bounded fields or
is None."""

from __future__ import annotations

import lzma
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core import delta
from overair.core.delta_offer import OFFER_KEY, parse_offer

SOURCE = bytes(range(256)) * 24  # 6 KiB
TARGET = SOURCE[:3000] + b"changed in the middle" + SOURCE[3021:] + b"and grown at the end"
GOOD = delta.create_patch(SOURCE, TARGET)


def _apply(patch: bytes, size: int = len(TARGET)) -> bytes | None:
    out = bytearray()

    def sink(offset: int, data: bytes) -> None:
        assert offset == len(out)  # in order, never a rewrite
        out.extend(data)
        assert len(out) <= size

    try:
        written = delta.apply_patch(SOURCE, patch, size, sink)
    except delta.DeltaError:
        return None
    assert written == size == len(out)
    return bytes(out)


def _lzma(body: bytes) -> bytes:
    return lzma.compress(body, format=lzma.FORMAT_ALONE)


def _varint(value: int) -> bytes:
    """detools' signed size encoding (common.pack_size)."""
    sign = 0x40 if value < 0 else 0
    value = abs(value)
    out = bytearray([sign | (value & 0x3F)])
    value >>= 6
    while value:
        out[-1] |= 0x80
        out.append(value & 0x7F)
        value >>= 7
    return bytes(out)


def test_the_good_patch_applies() -> None:
    assert _apply(GOOD) == TARGET


@given(st.binary(max_size=512))
def test_fuzz_delta_any_bytes_raise_only_delta_error(patch: bytes) -> None:
    _apply(patch)


@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(GOOD)))
def test_fuzz_delta_mutated_patch_raises_only_delta_error(flips: list[tuple[int, int]], cut: int) -> None:
    patch = bytearray(GOOD)
    for at, value in flips:
        patch[at] = value
    _apply(bytes(patch[:cut] if cut else patch))


_steps = st.lists(st.tuples(st.integers(-300, 9000), st.binary(max_size=64), st.integers(-300, 9000),
                            st.binary(max_size=64), st.integers(-9000, 9000)), max_size=6)


@given(st.integers(0, 9000), _steps, st.binary(max_size=8))
def test_fuzz_delta_well_compressed_hostile_bodies_raise_only_delta_error(
        to_size: int, steps: list[tuple[int, bytes, int, bytes, int]], tail: bytes) -> None:
    """Past the lzma layer: bodies of any structure (sizes that lie, negative moves, data
    past the end), so that the structure check and detools itself see them."""
    body = bytearray(_varint(0))
    for diff, diff_data, extra, extra_data, adjust in steps:
        body += _varint(diff) + diff_data + _varint(extra) + extra_data + _varint(adjust)
    patch = bytes([0x01]) + _varint(to_size) + _lzma(bytes(body) + tail)
    _apply(patch, to_size)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=80),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=16), inner,
                                                                                  max_size=6), max_leaves=12)
_fields = st.fixed_dictionaries({}, optional={
    "fileid": st.integers(-5, 300) | _json, "filesize": st.integers(-5, 2**40) | _json,
    "sha256": st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 31]) | _json,
    "sourceVersion": st.sampled_from(["1.1.0", "1.1", "\uff11.1.0", "99999.0.0"]) | _json,
    "sourceSha256": st.sampled_from(["cd" * 32]) | _json, "update_data_url": _json})


@given(st.one_of(_json, _fields.map(lambda f: {OFFER_KEY: f})))
def test_fuzz_delta_offer_parses_or_is_none(entry: Any) -> None:
    offer = parse_offer(entry)
    if offer is not None:
        assert 0 <= offer.file_id <= 255
        assert offer.size >= 0
        assert len(offer.sha256) == len(offer.source_sha256) == 32
        assert parse_offer({OFFER_KEY: offer.to_json_obj()}) == offer
