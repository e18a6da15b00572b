"""Fuzz target: core/jobdoc.py, the OTA job document as the agent parses it (issue 12,
finding 9: a non-ASCII signature escaped as ValueError and crashed the agent).

`parse_job_document` takes the decoded JSON value of a `jobDocument`; whatever its
shape or content, only `DecodeError` may escape. Inputs: arbitrary JSON values, and
valid documents with one field replaced by something hostile.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core.errors import DecodeError
from overair.core.jobdoc import OtaFile, OtaJobDocument, parse_job_document
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES

FILE_KEYS = ["filepath", "filesize", "fileid", "certfile", "fileType", "update_data_url", "auth_scheme",
             "sig-sha256-ecdsa", "sig-sha256-rsa", "sig-", "sig-sha1-dsa"]


def _valid() -> dict[str, Any]:
    doc = OtaJobDocument(protocols=("MQTT", "HTTP"), stream_name="s-1",
                         files=(OtaFile(filepath="/fw", filesize=1000, fileid=0, certfile="c.pem",
                                        signature=b"\x30\x44" + bytes(68),
                                        update_data_url="https://h/x?sig=1"),),
                         signer_chain=(b"\x30\x82\x01\x00",))
    parsed: dict[str, Any] = json.loads(json.dumps(doc.to_json_obj()))
    return parsed


def _parse(doc: Any) -> None:
    with contextlib.suppress(DecodeError):
        parse_job_document(doc)


@given(JSON_VALUES)
def test_fuzz_jobdoc_any_json_value_raises_only_decode_error(doc: Any) -> None:
    _parse(doc)
    _parse({"afr_ota": doc})
    _parse({"afr_ota": {"protocols": ["MQTT"], "streamname": "s", "files": [doc]}})


@given(st.sampled_from(FILE_KEYS), JSON_VALUES)
def test_fuzz_jobdoc_one_hostile_file_field_raises_only_decode_error(key: str, value: Any) -> None:
    doc = _valid()
    doc["afr_ota"]["files"][0][key] = value
    _parse(doc)


@given(st.sampled_from(["protocols", "streamname", "files"]), JSON_VALUES)
def test_fuzz_jobdoc_one_hostile_ota_field_raises_only_decode_error(key: str, value: Any) -> None:
    doc = _valid()
    doc["afr_ota"][key] = value
    _parse(doc)


@given(HOSTILE_TEXT, st.lists(HOSTILE_TEXT, min_size=1, max_size=3))
def test_fuzz_jobdoc_hostile_base64_text_raises_only_decode_error(signature: str, chain: list[str]) -> None:
    doc = _valid()
    doc["afr_ota"]["files"][0]["sig-sha256-ecdsa"] = signature
    _parse(doc)
    doc = _valid()
    doc["overair"]["signer_chain"] = chain
    _parse(doc)


@given(JSON_VALUES, st.lists(JSON_VALUES | HOSTILE_TEXT, max_size=10))
def test_fuzz_jobdoc_hostile_signer_chain_raises_only_decode_error(extension: Any, chain: list[Any]) -> None:
    doc = _valid()
    doc["overair"] = extension
    _parse(doc)
    doc["overair"] = {"signer_chain": chain}
    _parse(doc)
