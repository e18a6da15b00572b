"""Fuzz target of thing group tags (server/registry/tags.py check_tags): any list of
anything gives AWS-valid tags (at most 50, bounded keys and values, no `aws:` prefix) or
InvalidRequestException, nothing else."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.server.api.contract import ApiError
from overair.server.registry.tags import MAX_TAGS, MAX_VALUE, check_tags
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES

TAGS = st.lists(st.dictionaries(st.sampled_from(["Key", "Value"]) | HOSTILE_TEXT,
                                HOSTILE_TEXT | JSON_VALUES | st.sampled_from(["aws:x", "AWS:y", "k" * 129])),
                max_size=60)


@given(st.none() | TAGS)
def test_fuzz_tags(tags: list[dict[str, Any]] | None) -> None:
    try:
        checked = check_tags(tags)
    except ApiError as exc:
        refused = exc.code
        assert refused == "InvalidRequestException"
        return
    assert len(checked) <= MAX_TAGS
    for key, value in checked.items():
        assert 1 <= len(key) <= 128
        assert not key.lower().startswith("aws:")
        assert isinstance(value, str)
        assert len(value) <= MAX_VALUE
