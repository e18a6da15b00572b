"""The contract between the HTTP edge and the services behind it.

The edge (SigV4, botocore-model routing, (de)serialisation) turns every AWS-shaped
request into an `ApiRequest` whose `params` are the members of the operation's input
shape as Python values (blobs as bytes, timestamps as aware datetimes, structures as
dicts). A handler returns the members of the output shape as a dict (timestamps as
aware datetimes or epoch floats) or raises `ApiError`, which the edge renders in the
service's protocol so that botocore raises a `ClientError` with that code.

Handlers are plain synchronous functions: the edge runs them in a worker thread, so
they may use the database directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from overair.core.errors import OverairError


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made an authenticated request: an IAM user, or a role through an STS session
    (`principal_arn` is then the assumed-role session ARN, `principal_name` the role)."""

    access_key_id: str
    principal_arn: str
    principal_name: str
    source_ip: str  # aws:SourceIp: from the connection, or a trusted proxy (request_context.py)
    principal_kind: str = "user"  # "user" or "role"
    secure_transport: bool = False
    proxy: str = ""  # the trusted proxy that forwarded the request, "" when direct

    @property
    def audit_source(self) -> str:
        """The request's source as the audit log records it: the client, and the proxy
        when one forwarded the request."""
        return f"{self.source_ip or 'unknown'} via {self.proxy}" if self.proxy else self.source_ip


@dataclass(frozen=True, slots=True)
class ApiRequest:
    service: str  # the SigV4 signing name: iot, signer, acm, iam, sts, s3, iot-jobs-data
    operation: str  # the botocore operation name, e.g. CreateThing
    params: dict[str, Any]
    caller: Caller
    # Lower-cased request headers, for the few overair extensions carried in headers.
    headers: Mapping[str, str] = field(default_factory=dict)


class ApiError(OverairError):
    """An error a client should see; `code` is the AWS error code botocore will raise.
    `fields` are extra members of the error (e.g. S3's `Region`), in protocols that have
    them (XML)."""

    def __init__(self, code: str, message: str, status: int = 400, *,
                 fields: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.fields = fields


def not_found(what: str) -> ApiError:
    return ApiError("ResourceNotFoundException", f"{what} does not exist", 404)


def already_exists(what: str) -> ApiError:
    return ApiError("ResourceAlreadyExistsException", f"{what} already exists", 409)


def invalid(message: str) -> ApiError:
    return ApiError("InvalidRequestException", message, 400)


Handler = Callable[[ApiRequest], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Credential:
    """What the edge needs to check a signature and name the caller. Temporary (STS)
    credentials also carry the hash of their session token and their expiry."""

    access_key_id: str
    secret_access_key: str
    principal_name: str  # the user, or for temporary credentials the role
    principal_arn: str
    active: bool
    principal_kind: str = "user"
    session_token_sha256: str | None = None
    expires_at: float | None = None


CredentialLookup = Callable[[str], Credential | None]


class OperationTable:
    """(service, operation) -> handler. Unregistered operations answer a clear
    NotImplemented error that names them, never a wrong answer."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}

    def register(self, service: str, operation: str, handler: Handler) -> None:
        key = (service, operation)
        if key in self._handlers:
            raise ValueError(f"{service}:{operation} registered twice")
        self._handlers[key] = handler

    def get(self, service: str, operation: str) -> Handler | None:
        return self._handlers.get((service, operation))

    def operations(self) -> list[tuple[str, str]]:
        return sorted(self._handlers)
