"""IAM's error codes (query protocol), so botocore raises what AWS users catch."""

from __future__ import annotations

import re

from overair.server.api.contract import ApiError

# AWS's name rules: users, roles and groups are [\w+=,.@-] in ASCII (Python's \w would
# admit any Unicode letter); paths start and end in "/". Matched in full (`re.match` with
# `$` would accept a trailing newline).
_NAME_RE = re.compile(r"[A-Za-z0-9_+=,.@-]+")
_PATH_RE = re.compile(r"/(?:[\x21-\x7e]*/)?")


def no_such_entity(what: str) -> ApiError:
    return ApiError("NoSuchEntity", f"The {what} cannot be found.", 404)


def already_exists(what: str) -> ApiError:
    return ApiError("EntityAlreadyExists", f"{what} already exists.", 409)


def delete_conflict(message: str) -> ApiError:
    return ApiError("DeleteConflict", message, 409)


def limit_exceeded(message: str) -> ApiError:
    return ApiError("LimitExceeded", message, 409)


def invalid_input(message: str) -> ApiError:
    return ApiError("InvalidInput", message, 400)


def malformed_policy(message: str) -> ApiError:
    return ApiError("MalformedPolicyDocument", message, 400)


def check_name(kind: str, name: str, max_length: int) -> None:
    if not 1 <= len(name) <= max_length or not _NAME_RE.fullmatch(name):
        raise ApiError("ValidationError",
                       f"The specified value for {kind} is invalid: it must be 1 to {max_length} "
                       "characters from letters, digits and +=,.@_-", 400)


def check_path(path: str) -> None:
    if len(path) > 512 or not _PATH_RE.fullmatch(path):
        raise ApiError("ValidationError", "The specified value for path is invalid: it must begin "
                       "and end with / and contain printable ASCII characters only", 400)
