"""Every bound on input, in one place (principle 4: every input is bounded)."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    # File delivery (device-protocol.md §3).
    min_block_size: int = 256
    max_block_size: int = 128 * KIB
    max_bytes_per_stream_request: int = 128 * KIB
    max_stream_request_bytes: int = 1 * KIB  # a GetStream request is tiny
    max_stream_id_length: int = 44
    # Jobs (device-protocol.md §1).
    max_client_token_length: int = 64
    max_job_message_bytes: int = 32 * KIB
    max_status_details_entries: int = 10
    max_status_detail_length: int = 1024
    max_job_document_bytes: int = 32 * KIB
    # FreeRTOS default bitmap: 1024 blocks of 4 KiB (device-protocol.md §2).
    device_max_blocks: int = 1024
    device_block_size: int = 4 * KIB
    # Objects and API.
    max_object_bytes: int = 512 * MIB
    max_api_body_bytes: int = 16 * MIB
    max_thing_name_length: int = 128
    max_list_results: int = 250

    @property
    def device_max_file_size(self) -> int:
        return self.device_max_blocks * self.device_block_size


DEFAULT_LIMITS = Limits()
