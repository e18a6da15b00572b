"""The device side of fleet provisioning by claim, pure: topics, request parsing, answers
and the certificate ownership token.

The MQTT API (AWS IoT developer guide, "Device provisioning MQTT API"):

- `$aws/certificates/create/<fmt>` (CreateKeysAndCertificate): answered with
  certificateId, certificatePem, privateKey, certificateOwnershipToken;
- `$aws/certificates/create-from-csr/<fmt>` (CreateCertificateFromCsr), payload
  {"certificateSigningRequest"}: answered with certificateId, certificatePem,
  certificateOwnershipToken;
- `$aws/provisioning-templates/<name>/provision/<fmt>` (RegisterThing), payload
  {"certificateOwnershipToken", "parameters"}: answered with thingName and
  deviceConfiguration;

each answered on `<topic>/accepted`, or on `<topic>/rejected` with {"statusCode",
"errorCode", "errorMessage"}; `<fmt>` is `json` or `cbor`, and the answer uses the
request's. AWS documents the rejected shape but not a list of error codes: the codes
here are overair's, in AWS's style.

The access plugin (gateway/plugin/overair_access.c) hands the service each request under
`$overair/claim/v1/<connection>/<client id>/<topic>` and takes answers on
`$CONTROL/overair-claim/v1` as `<connection> <client id> <answer topic>\\n<payload>`.

The ownership token: AWS's "is valid for one hour" and binds RegisterThing to the
certificate the same device just received. Here it is
`v1.<certificate id>.<expiry, unix seconds>.<HMAC-SHA256>` under a server key, so it
cannot be forged, names one certificate, and ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import cbor2

from overair.core import wirecbor, wirejson
from overair.core.errors import PeerInputError
from overair.core.limits import DEFAULT_LIMITS, Limits

REQUEST_PREFIX = "$overair/claim/v1/"
REQUEST_SUBSCRIPTION = "$overair/claim/v1/#"
ANSWER_TOPIC = "$CONTROL/overair-claim/v1"
# AWS's provisioning template names (iot API reference: CreateProvisioningTemplate).
TEMPLATE_NAME_RE = re.compile(r"[0-9A-Za-z_-]{1,36}")
_CLIENT_ID_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_CERT_ID_RE = re.compile(r"[0-9a-f]{64}")
FORMATS = ("json", "cbor")
# The template parameter RegisterThing fills with the token's certificate (AWS's name).
CERTIFICATE_ID_PARAMETER = "AWS::IoT::Certificate::Id"


class Operation(Enum):
    CREATE_KEYS = "CreateKeysAndCertificate"
    CREATE_FROM_CSR = "CreateCertificateFromCsr"
    REGISTER_THING = "RegisterThing"


class ClaimError(PeerInputError):
    """A request answered on /rejected: `status` and `code` go in the answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def invalid_payload(message: str) -> ClaimError:
    return ClaimError(400, "InvalidPayload", message)


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    connection: int  # the plugin's number for the requesting connection
    client_id: str
    topic: str  # the topic the device published to
    operation: Operation
    fmt: str  # json | cbor
    template: str | None  # RegisterThing's template name


def claim_grants(templates: list[str]) -> list[tuple[str, str]]:
    """(access, filter) of a claim certificate for these templates: `write` its requests,
    `subscribe` (never delivered by routing) their answers."""
    requests = [f"$aws/certificates/{verb}/{fmt}"
                for verb in ("create", "create-from-csr") for fmt in FORMATS]
    requests += [f"$aws/provisioning-templates/{name}/provision/{fmt}"
                 for name in sorted(set(templates)) if TEMPLATE_NAME_RE.fullmatch(name) for fmt in FORMATS]
    return [rule for topic in requests for rule in (("write", topic), ("subscribe", f"{topic}/+"))]


def parse_request_topic(topic: str) -> ClaimRequest | None:
    """A request as the plugin moved it, or None if `topic` is not one."""
    if not topic.startswith(REQUEST_PREFIX):
        return None
    parts = topic[len(REQUEST_PREFIX):].split("/", 2)
    if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdigit() or len(parts[0]) > 20:
        return None
    connection, client_id, original = int(parts[0]), parts[1], parts[2]
    if not _CLIENT_ID_RE.fullmatch(client_id):
        return None
    levels = original.split("/")
    if levels[:2] == ["$aws", "certificates"] and len(levels) == 4 and levels[3] in FORMATS:
        operation = {"create": Operation.CREATE_KEYS,
                     "create-from-csr": Operation.CREATE_FROM_CSR}.get(levels[2])
        if operation is None:
            return None
        return ClaimRequest(connection, client_id, original, operation, levels[3], None)
    if (levels[:2] == ["$aws", "provisioning-templates"] and len(levels) == 5 and levels[3] == "provision"
            and levels[4] in FORMATS and TEMPLATE_NAME_RE.fullmatch(levels[2])):
        return ClaimRequest(connection, client_id, original, Operation.REGISTER_THING, levels[4], levels[2])
    return None


def decode_payload(request: ClaimRequest, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    if len(payload) > limits.max_claim_request_bytes:
        raise invalid_payload(f"the request is {len(payload)} bytes; at most "
                              f"{limits.max_claim_request_bytes} are allowed")
    try:
        if request.fmt == "cbor":
            doc = wirecbor.loads(payload, limits=limits)
        else:
            doc = wirejson.loads(payload or b"{}", limits=limits, what="the request")
    except PeerInputError as exc:
        raise invalid_payload(exc.message) from None
    if not isinstance(doc, dict):
        raise invalid_payload("the request must be an object")
    return doc


def csr_of(doc: dict[str, Any]) -> str:
    csr = doc.get("certificateSigningRequest")
    if not isinstance(csr, str) or not csr:
        raise invalid_payload("certificateSigningRequest must be a PEM string")
    return csr


def registration_of(doc: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> tuple[str, dict[str, str]]:
    """(ownership token, parameters) of a RegisterThing request."""
    token = doc.get("certificateOwnershipToken")
    if not isinstance(token, str) or not token:
        raise invalid_payload("certificateOwnershipToken is required")
    parameters = doc.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
        raise invalid_payload("parameters must be an object of names and string values")
    if len(parameters) > limits.max_claim_parameters:
        raise invalid_payload(f"at most {limits.max_claim_parameters} parameters are allowed")
    if CERTIFICATE_ID_PARAMETER in parameters:
        raise invalid_payload(f"{CERTIFICATE_ID_PARAMETER} comes from the ownership token, "
                              "not from parameters")
    return token, dict(parameters)


def encode(fmt: str, body: dict[str, Any]) -> bytes:
    if fmt == "cbor":
        return cbor2.dumps(body)
    return json.dumps(body, separators=(",", ":")).encode()


def answer(request: ClaimRequest, accepted: bool, body: dict[str, Any]) -> bytes:
    """The control message that hands `body` to the requesting connection alone."""
    topic = f"{request.topic}/{'accepted' if accepted else 'rejected'}"
    return f"{request.connection} {request.client_id} {topic}\n".encode() + encode(request.fmt, body)


def rejection(error: ClaimError) -> dict[str, Any]:
    return {"statusCode": error.status, "errorCode": error.code, "errorMessage": error.message}


# The certificate ownership token -------------------------------------------------------
def issue_token(key: bytes, certificate_id: str, expires_at: int) -> str:
    payload = f"v1.{certificate_id}.{expires_at}"
    return f"{payload}.{_mac(key, payload)}"


def verify_token(key: bytes, token: str, now: float) -> str:
    """The certificate id the token was issued for; ClaimError if it is forged, malformed
    or expired."""
    bad = ClaimError(400, "InvalidCertificateOwnershipToken", "the certificate ownership token is not valid")
    parts = token.split(".") if len(token) <= 256 else []
    if len(parts) != 4 or parts[0] != "v1" or not _CERT_ID_RE.fullmatch(parts[1]) \
            or not parts[2].isascii() or not parts[2].isdigit() or len(parts[2]) > 12:
        raise bad
    # As bytes: compare_digest refuses str with non-ASCII characters (found by the fuzzer).
    if not hmac.compare_digest(_mac(key, ".".join(parts[:3])).encode(), parts[3].encode("utf-8", "replace")):
        raise bad
    if int(parts[2]) <= now:
        raise ClaimError(400, "InvalidCertificateOwnershipToken",
                         "the certificate ownership token has expired")
    return parts[1]


def _mac(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
