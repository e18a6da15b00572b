"""The afr_ota job document as FreeRTOS agents parse it (device-protocol.md §2)."""

from __future__ import annotations

import pytest

from overair.core.errors import DecodeError
from overair.core.jobdoc import OtaFile, OtaJobDocument, dumps_compact, parse_job_document

# A signature whose base64 contains '/' and '+'.
SIGNATURE = bytes([0xFF, 0xEF, 0xFF, 0xFB, 0xF0]) * 8


def _doc(**kw: object) -> OtaJobDocument:
    f = OtaFile(filepath="/fw/app.bin", filesize=1234, fileid=0, certfile="/certs/cs.pem",
                signature=SIGNATURE)
    return OtaJobDocument(protocols=("MQTT",), files=(f,), stream_name="ota-abc",
                          signer_chain=(b"\x30\x01\x00",), **kw)  # type: ignore[arg-type]


def test_compact_json_keeps_protocols_short_and_slashes_unescaped() -> None:
    text = dumps_compact(_doc().to_json_obj())
    assert '"protocols":["MQTT"]' in text
    assert "\\/" not in text
    assert "/" in text.split('"sig-sha256-ecdsa":"')[1]
    both = OtaJobDocument(protocols=("MQTT", "HTTP"), files=_doc().files, stream_name="s")
    raw = dumps_compact(both.to_json_obj()).split('"protocols":')[1].split("]")[0] + "]"
    assert raw == '["MQTT","HTTP"]'
    assert len(raw) <= 19


def test_round_trip() -> None:
    doc = _doc()
    parsed = parse_job_document(doc.to_json_obj())
    assert parsed.files[0] == doc.files[0]
    assert parsed.stream_name == "ota-abc"
    assert parsed.signer_chain == doc.signer_chain


@pytest.mark.parametrize("bad", [
    {}, {"afr_ota": "x"}, {"other": {}},
    {"afr_ota": {"protocols": ["MQTT"], "streamname": "s", "files": []}},
    {"afr_ota": {"protocols": ["FTP"], "files": [{}]}},
])
def test_non_ota_or_malformed_documents_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        parse_job_document(bad)


def test_file_without_signature_is_refused() -> None:
    obj = _doc().to_json_obj()
    del obj["afr_ota"]["files"][0]["sig-sha256-ecdsa"]
    with pytest.raises(DecodeError, match="sig-"):
        parse_job_document(obj)
