"""Tags of thing groups: CreateDynamicThingGroup's `tags`, and TagResource,
UntagResource and ListTagsForResource on a thing group's ARN (static or dynamic).

AWS's rules (AWS IoT API reference, "Tag": key 1-128 characters of
`[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]`, value 0-256; AWS's tagging guidance: at most 50 tags per
resource, one value per key, the `aws:` prefix reserved). Tags are stored per group id
(storage/schema.py ThingGroupTag), so they go when the group does. Other resources'
tags are not kept (docs/compatibility.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, select

from overair.server.api.contract import ApiError, invalid
from overair.server.storage.db import Database
from overair.server.storage.schema import ThingGroup, ThingGroupTag

MAX_TAGS = 50
_KEY = re.compile(r"[\w\s.:/=+\-@]{1,128}")  # \w: letters and digits (and "_"), \s: separators
MAX_VALUE = 256


def check_tags(tags: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    """A request's `tags` list as key -> value, checked; InvalidRequestException else."""
    out: dict[str, str] = {}
    for tag in tags or ():
        key, value = tag.get("Key"), tag.get("Value", "")
        if not isinstance(key, str) or _KEY.fullmatch(key) is None:
            raise invalid("a tag key is 1-128 letters, digits, spaces or _.:/=+-@")
        if key.lower().startswith("aws:"):
            raise invalid("the aws: prefix is reserved for AWS's tags")
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            raise invalid(f"a tag value is at most {MAX_VALUE} characters")
        out[key] = value
    if len(out) > MAX_TAGS:
        raise invalid(f"a resource has at most {MAX_TAGS} tags")
    return out


class GroupTags:
    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def _group_id(s: Any, name: str) -> str:
        group = s.get(ThingGroup, name)
        if group is None:
            raise ApiError("ResourceNotFoundException", f"thing group {name} does not exist", 404)
        return str(group.group_id)

    def tag(self, group: str, tags: Mapping[str, str]) -> None:
        """Add or overwrite `tags`; LimitExceededException past MAX_TAGS in all."""
        with self._db.session() as s:
            group_id = self._group_id(s, group)
            current = {row.key: row for row in s.scalars(
                select(ThingGroupTag).where(ThingGroupTag.group_id == group_id))}
            if len(current.keys() | tags.keys()) > MAX_TAGS:
                raise ApiError("LimitExceededException", f"a resource has at most {MAX_TAGS} tags", 410)
            for key, value in tags.items():
                if key in current:
                    current[key].value = value
                else:
                    s.add(ThingGroupTag(group_id=group_id, key=key, value=value))

    def untag(self, group: str, keys: Iterable[str]) -> None:
        with self._db.session() as s:
            group_id = self._group_id(s, group)
            s.execute(delete(ThingGroupTag).where(ThingGroupTag.group_id == group_id,
                                                  ThingGroupTag.key.in_(list(keys))))

    def list(self, group: str) -> list[dict[str, str]]:
        with self._db.reading() as s:
            group_id = self._group_id(s, group)
            rows = s.execute(select(ThingGroupTag.key, ThingGroupTag.value)
                             .where(ThingGroupTag.group_id == group_id).order_by(ThingGroupTag.key))
            return [{"Key": key, "Value": value} for key, value in rows.tuples()]
