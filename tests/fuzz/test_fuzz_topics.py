"""Fuzz target: core/topics.py, the topics a device publishes on (issue 12, finding 10:
names matched with `^...$` and `re.match` let a trailing newline through).

Parsing never raises; whatever it accepts names a thing, job and stream that match
their patterns exactly.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overair.core import topics
from overair.core.topics import JobsTopic, StreamsTopic

_PARTS = st.one_of(
    st.sampled_from(
        [
            "$aws",
            "things",
            "jobs",
            "streams",
            "get",
            "update",
            "start-next",
            "$next",
            "describe",
            "cbor",
            "json",
            "accepted",
            "rejected",
            "notify-next",
            "t1",
            "",
            "s-1",
            "AFR_OTA-x",
        ]
    ),
    st.text(alphabet="ab1:_-.$#+/\n\x00\u0661\u00e9 ", max_size=12),
    st.text(max_size=6),
)
TOPICS = st.one_of(
    st.lists(_PARTS, min_size=1, max_size=8).map("/".join),
    st.lists(_PARTS, min_size=2, max_size=5).map(lambda p: "$aws/things/" + "/".join(p)),
    st.text(max_size=80),
)


@given(TOPICS)
def test_fuzz_topics_parse_only_exact_names(topic: str) -> None:
    parsed = topics.parse_request_topic(topic)
    thing = topics.jobs_request_thing(topic)
    topics.thing_of(topic)
    assert thing is None or topics.is_thing_name(thing)
    if isinstance(parsed, JobsTopic):
        assert topics.is_thing_name(parsed.thing_name)
        assert parsed.job_id is None or parsed.job_id == topics.NEXT or topics.is_job_id(parsed.job_id)
    elif isinstance(parsed, StreamsTopic):
        assert topics.is_thing_name(parsed.thing_name)
        assert topics.is_stream_id(parsed.stream_id)
        assert parsed.fmt in ("cbor", "json")
    else:
        assert parsed is None
