"""The cache of "may this thing read this stream / file now?" (threat N4): a cached yes
never outlives the change that ended it, and a change to one thing does not stop the
cache working for the others (server/streams/access.py)."""

from __future__ import annotations

from overair.server.streams.access import AccessCache


def test_n4_an_answer_decided_before_its_thing_changed_is_not_stored() -> None:
    cache = AccessCache(ttl=60, max_entries=100)
    before = cache.generation("dev-1")
    cache.forget_things(["dev-1"])  # its execution ended while the lookup ran
    cache.put("dev-1", "stream", True, now=0.0, generation=before)
    assert cache.get("dev-1", "stream", now=1.0) is None


def test_an_answer_is_stored_when_only_other_things_changed_meanwhile() -> None:
    cache = AccessCache(ttl=60, max_entries=100)
    before = cache.generation("dev-1")
    cache.forget_things(["dev-2", "dev-3"])
    cache.put("dev-1", "stream", True, now=0.0, generation=before)
    assert cache.get("dev-1", "stream", now=1.0) is True


def test_n4_forgetting_a_thing_drops_its_cached_answers_at_once() -> None:
    cache = AccessCache(ttl=60, max_entries=100)
    cache.put("dev-1", "stream", True, now=0.0, generation=cache.generation("dev-1"))
    cache.put("dev-2", "stream", True, now=0.0, generation=cache.generation("dev-2"))
    cache.forget_things(["dev-1"])
    assert cache.get("dev-1", "stream", now=1.0) is None
    assert cache.get("dev-2", "stream", now=1.0) is True


def test_n4_dropping_everything_makes_every_earlier_lookup_stale() -> None:
    cache = AccessCache(ttl=60, max_entries=100)
    before = cache.generation("dev-1")
    cache.forget_things(["dev-1"])
    cache.clear()  # the per-thing counters start again; the epoch keeps old lookups out
    cache.put("dev-1", "stream", True, now=0.0, generation=before)
    assert cache.get("dev-1", "stream", now=1.0) is None


def test_n4_answers_expire_and_a_clock_that_went_back_expires_them() -> None:
    cache = AccessCache(ttl=2, max_entries=100)
    cache.put("dev-1", "stream", True, now=10.0, generation=cache.generation("dev-1"))
    assert cache.get("dev-1", "stream", now=11.9) is True
    assert cache.get("dev-1", "stream", now=12.0) is None
    assert cache.get("dev-1", "stream", now=9.0) is None


def test_the_cache_and_its_counters_stay_bounded() -> None:
    cache = AccessCache(ttl=60, max_entries=10)
    for i in range(25):
        cache.put(f"dev-{i}", "stream", True, now=0.0, generation=cache.generation(f"dev-{i}"))
        cache.forget_things([f"gone-{i}"])
    assert cache._count <= 10
    assert len(cache._invalidated) <= 10
