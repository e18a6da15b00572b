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
    # JSON from any side (core/wirejson.py): whole-document size, nesting, number size.
    max_json_bytes: int = 16 * MIB
    max_json_depth: int = 32
    max_json_integer_digits: int = 40
    # Operator API edge (server/api/models.py): XML bodies (S3) and form bodies (IAM, STS).
    # CompleteMultipartUpload's 10,000 parts are ~40,000 elements; no model nests past 10.
    max_xml_depth: int = 32
    max_xml_elements: int = 100_000
    max_query_fields: int = 1000
    max_query_name_parts: int = 16
    max_bucket_policy_bytes: int = 20 * KIB  # S3's limit on a bucket policy
    # What a device can make the server do and write (issue 12: device boundary;
    # docs/security.md "Limits a device is held to"). Token buckets per thing (MQTT,
    # downloads) or per certificate (HTTPS Jobs API), one per kind of request: `burst`
    # requests at once, refilled at `per_second`. Over budget: RequestThrottled (MQTT),
    # ThrottlingException/429 (HTTPS), audited as one count per device and interval.
    device_job_updates_burst: int = 30
    device_job_updates_per_second: float = 10.0
    # Of the job-update burst, what progress reports (IN_PROGRESS without a self_test
    # step) can never spend: a device reporting progress fast still has tokens for its
    # self-test and final reports, which change what the device does next.
    device_job_updates_reserved: int = 10
    device_job_reads_burst: int = 30
    device_job_reads_per_second: float = 10.0
    device_stream_requests_burst: int = 200
    device_stream_requests_per_second: float = 100.0
    device_https_calls_burst: int = 30
    device_https_calls_per_second: float = 10.0
    device_downloads_burst: int = 100
    device_downloads_per_second: float = 50.0
    device_messages_in_flight: int = 64  # one thing's MQTT messages waiting for a worker
    # Bytes the service may have written to the broker and not yet sent, block requests
    # in its workers counted at max_bytes_per_stream_request each (their answers to come);
    # above it, block requests wait (as requests, ~100 bytes each) until the backlog
    # halves (gateway/mqtt_driver.py). Bounds the server's memory when a fleet downloads
    # at once.
    service_write_backlog_bytes: int = 8 * 1024 * 1024
    device_budgets_tracked: int = 100_000  # devices whose buckets are kept in memory
    device_audit_interval_seconds: float = 60.0  # repeated device refusals: one row per interval
    device_audit_keys: int = 10_000  # (device, action, outcome) counters kept per interval
    device_log_lines: int = 100  # refusal log lines per kind and interval (the rest counted)
    # How long a device's stream or download access may be cached (N4); the job service
    # also drops it at once when an execution ends: this is the backstop, for changes made
    # by another server process. At 2 s, a fleet downloading for half a minute re-decided
    # every device's access 15 times: a third of the server's time (bench/fleet.py).
    device_access_cache_seconds: float = 10.0
    # Files up to this size are held whole in the HTTPS download cache; larger ones are
    # served by range from the object store, their SHA-256 checked once by a streamed read
    # (delivery/http_download.py), so a large image never sits whole in memory.
    http_whole_file_bytes: int = 16 * 1024 * 1024
    device_access_cache_entries: int = 100_000
    # Disk the nginx download front may fill with checked copies of the object versions
    # it serves (delivery/front_files.py); past it, the least recently granted go.
    download_front_files_bytes: int = 2 * 1024 * MIB
    # Jobs whose deliveries (stream, HTTP objects: fixed at creation) are kept in memory
    # for those decisions (jobs/deliveries.py); past this they are read again.
    delivery_jobs_kept: int = 10_000
    # CBOR from devices (core/wirecbor.py) and the Jobs API's stepTimeoutInMinutes (AWS: 1-10080).
    max_cbor_depth: int = 8
    max_cbor_items: int = 256
    max_step_timeout_minutes: int = 10_080
    # The device agent under hostile input (agent/machine, core/jobdoc, core/codesign,
    # core/revocation): what it takes from a server or broker before it refuses.
    agent_max_job_message_bytes: int = 64 * KIB  # a notify-next / $next/get reply
    agent_max_block_overhead: int = 256  # CBOR framing around one block's bytes
    agent_max_job_text_length: int = 8 * KIB  # any text of a job document (paths, URL)
    agent_max_signer_chain: int = 8  # certificates in overair.signer_chain
    agent_max_certificate_bytes: int = 16 * KIB  # one DER certificate
    agent_max_signature_bytes: int = 1 * KIB  # DER ECDSA or RSA-4096 PKCS#1
    # Delta updates (core/delta.py): a patch is hostile input to the agent. Its lzma
    # dictionary (allocated up front by liblzma) and its decompressed body (at most this
    # many times the image, plus the slack) are bounded before anything is applied; the
    # server offers a patch only while it is at most `delta_max_patch_percent` of the image.
    delta_max_lzma_dictionary: int = 16 * MIB
    delta_max_expansion: int = 2
    delta_body_slack: int = 64 * KIB
    delta_max_patch_percent: int = 80
    # Making a patch costs the server about 11x the image in memory (detools' suffix array;
    # 8 MiB: +88 MiB peak, 0.8 s): larger images are always sent whole.
    delta_max_image_bytes: int = 16 * MIB
    max_revocation_list_bytes: int = 256 * KIB  # the signed envelope (core/revocation)
    max_trust_chain_bytes: int = 256 * KIB  # the published trust lists, all versions (core/trustlist)
    # IAM policy documents (server/iam/policy.py, threat O1): AWS's largest kind (a bucket
    # policy, 20 KB) with room, and a depth no valid policy reaches (conditions: 5).
    max_policy_bytes: int = 64 * KIB
    max_policy_depth: int = 16
    # Device Shadow service (core/shadow.py), AWS's documented limits: "The device's shadow
    # supports 8 KB of data only ... Only the data for desired and reported state ...
    # counts" (Diagnosing problems with shadows); "JSON contains too many levels of
    # nesting; maximum is 6" and "A client token that is longer than 64 bytes" (Device
    # Shadow error messages). A request message itself is bounded more loosely (metadata,
    # clientToken and nulls do not count toward the state size).
    max_shadow_state_bytes: int = 8 * KIB
    max_shadow_depth: int = 6
    max_shadow_request_bytes: int = 64 * KIB
    max_named_shadows_per_thing: int = 100
    # SearchIndex (server/fleet/search.py) reads the whole fleet per query: served up to
    # this many things (overair's bound; AWS's index has none).
    max_search_things: int = 100_000
    # Dynamic thing groups (server/fleet/dynamic.py): AWS's quota of dynamic groups per
    # account, and how many changed things the membership worker evaluates per batch.
    max_dynamic_thing_groups: int = 100
    dynamic_group_batch: int = 500
    # GetBucketsAggregation's termsAggregation.maxBuckets (AWS's model: 1 to 10,000).
    max_aggregation_buckets: int = 10_000
    # Bulk registration and RegisterThing (core/provtemplate.py, server/registry/bulk.py):
    # AWS's templateBody is at most 10,240 characters (iot API reference); a template
    # nests no deeper than Fn::Join inside a property of a resource. The input file is
    # newline-delimited JSON, one device's parameters per line (a CSR is ~0.5 KiB).
    max_provisioning_template_bytes: int = 10_240
    max_provisioning_template_depth: int = 12
    max_registration_file_bytes: int = 128 * MIB
    max_registration_lines: int = 100_000
    max_registration_line_bytes: int = 16 * KIB
    # Lines per transaction and per broker access change: 500 identities with 128-character
    # thing names render to 242 KiB, well inside the access plugin's 1 MiB control message.
    registration_batch: int = 500
    # Items per transaction of the serial batch workers (server/serial_batches.py: device
    # connection events, $package shadow reports): a burst waiting for its worker is
    # written in transactions of at most this many.
    serial_batch: int = 500
    # Event messages (server/events/publisher.py) waiting to be published; past this they
    # are dropped and counted, never making a device's request or an API call wait.
    max_queued_events: int = 10_000
    # Fleet provisioning by claim (server/provisioning/): AWS's quotas (AWS IoT Core
    # endpoints and quotas, "Fleet provisioning"): 256 templates per account, 5 versions
    # per template; the certificate ownership token is valid for one hour (developer
    # guide, "Device provisioning MQTT API"). A device request is a CSR (~0.5-2 KiB) and
    # the template's parameters; device requests that mint keys are budgeted fleet-wide
    # (one claim certificate is shared by many devices, so a per-device budget means
    # nothing) at AWS's default of 10 CreateKeysAndCertificate/RegisterThing per second.
    max_provisioning_templates: int = 256
    max_provisioning_template_versions: int = 5
    claim_ownership_token_seconds: int = 3600
    max_claim_request_bytes: int = 16 * KIB
    max_claim_parameters: int = 50
    claim_requests_per_second: float = 10.0
    claim_request_burst: int = 50
    # Device health reports (core/health.py, issue 18): the custom metrics one report
    # carries, any count's ceiling, and the health gates of one rollout.
    max_health_metrics: int = 16
    max_health_count: int = 1_000_000
    max_health_metric_gates: int = 16

    @property
    def device_max_file_size(self) -> int:
        return self.device_max_blocks * self.device_block_size


DEFAULT_LIMITS = Limits()
