"""The `overair:delta` object of a job document's file entry: a patch the server made
from the image a thing runs to the file's image (server/ota/delta.py renders it, only for
overair-agent profiles; the overair agent reads it; FreeRTOS devices never see it).

    "overair:delta": {"fileid": 101, "filesize": 648, "sha256": "<hex>",
                      "sourceVersion": "1.0.0", "sourceSha256": "<hex>",
                      "update_data_url": "https://..."}   # HTTP delivery only

`fileid` is the patch's file in the job's stream (MQTT); `update_data_url` its
pre-signed URL (HTTPS). The document comes from the network: `parse_offer` checks every
field and answers None for anything it does not understand (the agent then downloads the
full image, as if no delta were offered).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.core.versions import Version

OFFER_KEY = "overair:delta"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_FILE_ID = 255  # AWS: a stream's file ids are 0..255


@dataclass(frozen=True, slots=True)
class DeltaOffer:
    file_id: int
    size: int
    sha256: bytes
    source_version: Version
    source_sha256: bytes
    url: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"fileid": self.file_id, "filesize": self.size, "sha256": self.sha256.hex(),
                               "sourceVersion": str(self.source_version),
                               "sourceSha256": self.source_sha256.hex()}
        if self.url is not None:
            obj["update_data_url"] = self.url
        return obj


def _count(value: Any, top: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        return None
    return value


def _digest(value: Any) -> bytes | None:
    return bytes.fromhex(value) if isinstance(value, str) and _HEX64.fullmatch(value) else None


def parse_offer(entry: Any, limits: Limits = DEFAULT_LIMITS) -> DeltaOffer | None:
    """The offer on a file entry, or None (absent or not understood)."""
    obj = entry.get(OFFER_KEY) if isinstance(entry, dict) else None
    if not isinstance(obj, dict):
        return None
    file_id = _count(obj.get("fileid"), _MAX_FILE_ID)
    size = _count(obj.get("filesize"), limits.device_max_file_size)
    sha, source_sha = _digest(obj.get("sha256")), _digest(obj.get("sourceSha256"))
    text = obj.get("sourceVersion")
    url = obj.get("update_data_url")
    # An empty patch does not exist (every patch has a header): 0 would make the agent
    # "finish" a download it never made (found by tests/fuzz/test_fuzz_agent_machine.py).
    if file_id is None or not size or sha is None or source_sha is None or not isinstance(text, str) \
            or len(text) > 64 or (url is not None and (not isinstance(url, str)
                                                      or len(url) > limits.agent_max_job_text_length)):
        return None
    try:
        version = Version.parse(text)
    except (DecodeError, ValueError):
        return None
    return DeltaOffer(file_id, size, sha, version, source_sha, url)
