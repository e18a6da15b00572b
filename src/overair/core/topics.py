r"""MQTT topics of the AWS IoT Jobs and file-delivery APIs (device-protocol.md §1, §3).

Parsing returns a typed value or None; a topic we do not serve is not an error here,
the caller decides whether it is worth a reply.

Names are checked whole: the patterns are anchored with `\A` and `\Z` (not `^` and
`$`, which let a trailing newline through with `re.match`), and the `is_*` functions use
`re.fullmatch`, so any way of applying them refuses a name followed by a newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# AWS thing names: 1-128 of [a-zA-Z0-9:_-]. '.' is not allowed, which is why the
# service's own MQTT identity contains one: no thing can ever be named like it.
THING_NAME_RE = re.compile(r"\A[a-zA-Z0-9:_-]{1,128}\Z")
JOB_ID_RE = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")
STREAM_ID_RE = re.compile(r"\A[a-zA-Z0-9_-]{1,128}\Z")
NEXT = "$next"


def is_thing_name(text: str) -> bool:
    return THING_NAME_RE.fullmatch(text) is not None


def is_job_id(text: str) -> bool:
    return JOB_ID_RE.fullmatch(text) is not None


def is_stream_id(text: str) -> bool:
    return STREAM_ID_RE.fullmatch(text) is not None


class JobsRequest(Enum):
    GET_PENDING = "get"
    START_NEXT = "start-next"
    DESCRIBE = "describe"  # $aws/things/T/jobs/J/get (J may be $next)
    UPDATE = "update"


class StreamsRequest(Enum):
    GET = "get"
    DESCRIBE = "describe"


@dataclass(frozen=True, slots=True)
class JobsTopic:
    thing_name: str
    request: JobsRequest
    job_id: str | None  # for DESCRIBE and UPDATE


@dataclass(frozen=True, slots=True)
class StreamsTopic:
    thing_name: str
    stream_id: str
    request: StreamsRequest
    fmt: str  # "cbor" or "json"


def jobs_prefix(thing: str) -> str:
    return f"$aws/things/{thing}/jobs"


def notify_next_topic(thing: str) -> str:
    return f"{jobs_prefix(thing)}/notify-next"


def notify_topic(thing: str) -> str:
    return f"{jobs_prefix(thing)}/notify"


def jobs_reply_topic(request_topic: str, accepted: bool) -> str:
    return f"{request_topic}/{'accepted' if accepted else 'rejected'}"


def stream_data_topic(thing: str, stream_id: str, fmt: str) -> str:
    return f"$aws/things/{thing}/streams/{stream_id}/data/{fmt}"


def stream_description_topic(thing: str, stream_id: str, fmt: str) -> str:
    return f"$aws/things/{thing}/streams/{stream_id}/description/{fmt}"


def stream_rejected_topic(thing: str, stream_id: str, fmt: str) -> str:
    return f"$aws/things/{thing}/streams/{stream_id}/rejected/{fmt}"


def stream_get_topic(thing: str, stream_id: str, fmt: str) -> str:
    return f"$aws/things/{thing}/streams/{stream_id}/get/{fmt}"


# The subscriptions the service needs. A generic broker never matches `$` topics with
# a leading wildcard, so each is spelled out. Every topic under a thing's `jobs/` is
# taken, because AWS answers a request on one that maps to no API with InvalidTopic
# (Jobs device API, ErrorResponse); our own replies under `jobs/` (accepted, rejected,
# notify, notify-next) would loop back with it: the access plugin keeps those from the
# service (`SERVICE_REPLY_FILTERS`); without the plugin they do, and are dropped
# unanswered (`jobs_request_thing`).
# Filters must not overlap: Mosquitto delivers a message once per matching subscription.
# The streams filters match none of our replies (data, description, rejected), the bulk
# of the traffic, which so never loops back.
SERVICE_SUBSCRIPTIONS = (
    "$aws/things/+/jobs/#",
    "$aws/things/+/streams/+/get/cbor",
    "$aws/things/+/streams/+/get/json",
    "$aws/things/+/streams/+/describe/cbor",
    "$aws/things/+/streams/+/describe/json",
)


# What the service publishes under a thing's `jobs/` (notifications, and the accepted
# and rejected replies to each request topic): with overair's access plugin the broker
# does not deliver these back to the service (`topic noread`, plugin/overair_access.c).
# They looped back through `jobs/#`, one for each job request of a device and two per
# notified thing (a 10,000-device rollout: the replies to 140,000 status updates alone),
# each sent by the broker and decrypted, parsed and dropped by the service. A reply to a
# request topic of another depth (an InvalidTopic answer) still loops back and is
# dropped by `jobs_request_thing`.
SERVICE_REPLY_FILTERS = (
    "$aws/things/+/jobs/notify",
    "$aws/things/+/jobs/notify-next",
    "$aws/things/+/jobs/+/accepted",
    "$aws/things/+/jobs/+/rejected",
    "$aws/things/+/jobs/+/+/accepted",
    "$aws/things/+/jobs/+/+/rejected",
)


def parse_request_topic(topic: str) -> JobsTopic | StreamsTopic | None:
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "$aws" or parts[1] != "things":
        return None
    thing = parts[2]
    if not is_thing_name(thing):
        return None
    rest = parts[3:]
    if rest[0] == "jobs":
        return _parse_jobs(thing, rest[1:])
    if rest[0] == "streams" and len(rest) == 4:
        stream_id, verb, fmt = rest[1], rest[2], rest[3]
        if fmt not in ("cbor", "json") or not is_stream_id(stream_id):
            return None
        if verb == "get":
            return StreamsTopic(thing, stream_id, StreamsRequest.GET, fmt)
        if verb == "describe":
            return StreamsTopic(thing, stream_id, StreamsRequest.DESCRIBE, fmt)
    return None


def _parse_jobs(thing: str, rest: list[str]) -> JobsTopic | None:
    if rest == ["get"]:
        return JobsTopic(thing, JobsRequest.GET_PENDING, None)
    if rest == ["start-next"]:
        return JobsTopic(thing, JobsRequest.START_NEXT, None)
    if len(rest) == 2:
        job_id, verb = rest
        if job_id != NEXT and not is_job_id(job_id):
            return None
        if verb == "get":
            return JobsTopic(thing, JobsRequest.DESCRIBE, job_id)
        if verb == "update" and job_id != NEXT:
            return JobsTopic(thing, JobsRequest.UPDATE, job_id)
    return None


def thing_of(topic: str) -> str:
    """The thing a `$aws/things/<thing>/...` topic belongs to ("" for any other topic)."""
    parts = topic.split("/", 3)
    return parts[2] if len(parts) > 3 and parts[0] == "$aws" and parts[1] == "things" else ""


# Last segments of the topics the service itself publishes under `jobs/`: a message
# there is a reply (ours, looped back by the `jobs/#` subscription), never a request.
_JOBS_REPLY_SEGMENTS = frozenset({"accepted", "rejected", "notify", "notify-next"})


def jobs_request_thing(topic: str) -> str | None:
    """The thing of a message under `$aws/things/<thing>/jobs` that is not a request we
    serve (e.g. `jobs/<not a job id>/get`, `jobs/J/describe`, `jobs/foo`): AWS answers it
    InvalidTopic on `<topic>/rejected` ("The request was sent to a topic in the AWS IoT
    Jobs namespace that doesn't map to any API operation"). None for anything else,
    including every reply topic, so an answer never answers itself."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[:2] != ["$aws", "things"] or parts[3] != "jobs" or not is_thing_name(parts[2]):
        return None
    if parts[-1] in _JOBS_REPLY_SEGMENTS:
        return None
    return parts[2]
