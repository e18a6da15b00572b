"""This deployment's ARNs: built for name members, parsed strictly for ARN members.

One object, shared by the authorizer (server/iam/actions.py) and the handlers that take
ARNs (registry, jobs, OTA, STS), so that both read a request member the same way: the
ARN parser accepts only canonical text (core/arn.py), so the ARN IAM checked is the
resource the handler acts on (threat O1). A refused ARN is the request service's
error for a bad ARN, as AWS answers it: the modelled `InvalidArnException` (acm) and
`InvalidInput` (iam), else the service's validation error (`InvalidRequestException`
for iot, `ValidationError` for sts, `ValidationException` for signer), naming the member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overair.core.arn import Arn, ArnError, ArnScope
from overair.server.api.contract import ApiError
from overair.server.api.models import VALIDATION_CODES
from overair.server.settings import Settings

# Services whose ARNs carry no region.
GLOBAL_SERVICES = frozenset({"iam", "sts", "s3"})
# Services with their own error for a bad ARN (else the validation error is used).
_INVALID_ARN_CODES = {"acm": "InvalidArnException", "iam": "InvalidInput"}


def validation_error(service: str, message: str) -> ApiError:
    """The error a request to `service` gets for input that does not fit."""
    return ApiError(VALIDATION_CODES.get(service, "ValidationException"), message, 400)


def invalid_arn(service: str, message: str) -> ApiError:
    """The error a request to `service` gets for an ARN it does not accept."""
    code = _INVALID_ARN_CODES.get(service)
    return ApiError(code, message, 400) if code else validation_error(service, message)


class Arns:
    def __init__(self, scope: ArnScope) -> None:
        self.scope = scope

    @classmethod
    def of(cls, settings: Settings) -> Arns:
        return cls(ArnScope(settings.partition, settings.region, settings.account_id))

    def arn(self, service: str, resource: str) -> str:
        """The ARN of `resource` (e.g. `thing/sensor-1`) of `service` in this deployment.
        Used for resources a request names by their name; the name is not re-checked
        here (the handler resolves exactly that name)."""
        region = "" if service in GLOBAL_SERVICES else self.scope.region
        return f"arn:{self.scope.partition}:{service}:{region}:{self.scope.account}:{resource}"

    def require(self, request_service: str, member: str, text: object, service: str,
                types: tuple[str, ...], *, allow_aws_account: bool = False) -> Arn:
        """`text` as an ARN of this deployment of one of `types`; else the request
        service's validation error naming `member`."""
        if not isinstance(text, str):
            raise invalid_arn(request_service, f"{member} must be an ARN")
        try:
            return self.scope.require(text, service, types, allow_aws_account=allow_aws_account)
        except ArnError as exc:
            raise invalid_arn(request_service, f"{member}: {exc.message}") from None

    def named(self, request_service: str, params: Mapping[str, Any], name_member: str,
              arn_member: str | None, service: str, resource_type: str) -> str | None:
        """The resource a request names by `name_member` or by `arn_member` (e.g.
        thingName / thingArn), as its name; None if it names none. Both given must
        agree: acting on one while IAM allowed the other is what this prevents."""
        name = params.get(name_member)
        given = params.get(arn_member) if arn_member else None
        if given is None or given == "":
            return name if isinstance(name, str) and name else None
        parsed = self.require(request_service, arn_member or "", given, service, (resource_type,))
        if name not in (None, "", parsed.resource_name):
            raise validation_error(request_service, f"{name_member} {name!r} and {arn_member} "
                                   f"{given!r} name different resources")
        return parsed.resource_name
