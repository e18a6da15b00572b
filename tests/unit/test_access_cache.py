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


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_renewal_keeps_a_working_devices_decision_fresh_past_its_lifetime() -> None:
    cache = AccessCache(ttl=10, max_entries=100)
    cache.put("dev-1", "stream", True, now=0.0, generation=cache.generation("dev-1"))
    assert cache.get("dev-1", "stream", now=8.0) is True  # asked about: renewed next time
    asked: list[list[str]] = []

    def decide(things: list[str]) -> dict[str, set[str]]:
        asked.append(things)
        return {"dev-1": {"stream"}}

    assert cache.renew(decide, _Clock(9.0)) == 1
    assert asked == [["dev-1"]]
    assert cache.get("dev-1", "stream", now=15.0) is True  # 15 s after the put, 6 s after the read


def test_n4_renewal_decides_again_and_a_revoked_access_becomes_no() -> None:
    # Another server process ended the execution: no hook ran here, the read sees it.
    cache = AccessCache(ttl=10, max_entries=100)
    cache.put("dev-1", "stream", True, now=0.0, generation=cache.generation("dev-1"))
    cache.put("dev-2", "stream", True, now=0.0, generation=cache.generation("dev-2"))
    cache.renew(lambda things: {"dev-2": {"stream"}}, _Clock(3.0))
    assert cache.get("dev-1", "stream", now=4.0) is False
    assert cache.get("dev-2", "stream", now=4.0) is True


def test_n4_renewal_stores_nothing_for_a_thing_that_changed_during_its_read() -> None:
    cache = AccessCache(ttl=10, max_entries=100)
    cache.put("dev-1", "stream", False, now=0.0, generation=cache.generation("dev-1"))

    def decide(things: list[str]) -> dict[str, set[str]]:
        cache.forget_things(["dev-1"])  # its execution ended while the read ran
        # ... and a request decided it afresh, stamped by a clock that had gone back.
        cache.put("dev-1", "stream", False, now=2.5, generation=cache.generation("dev-1"))
        return {"dev-1": {"stream"}}  # what the read saw before the change

    cache.renew(decide, _Clock(3.0))
    assert cache.get("dev-1", "stream", now=4.0) is False


def test_renewal_leaves_an_answer_decided_after_its_read_began() -> None:
    cache = AccessCache(ttl=10, max_entries=100)
    cache.put("dev-1", "a", True, now=0.0, generation=cache.generation("dev-1"))

    def decide(things: list[str]) -> dict[str, set[str]]:
        cache.put("dev-1", "b", False, now=3.5, generation=cache.generation("dev-1"))
        return {"dev-1": {"a", "b"}}  # read before "b" was decided (and refused)

    cache.renew(decide, _Clock(3.0))
    assert cache.get("dev-1", "b", now=4.0) is False
    assert cache.get("dev-1", "a", now=12.0) is True  # renewed at 3.0


def test_renewal_drops_things_nobody_asked_about_within_the_lifetime() -> None:
    cache = AccessCache(ttl=10, max_entries=100)
    cache.put("idle", "stream", True, now=0.0, generation=cache.generation("idle"))
    cache.put("busy", "stream", True, now=0.0, generation=cache.generation("busy"))
    assert cache.get("busy", "stream", now=9.0) is True
    asked: list[list[str]] = []

    def decide(things: list[str]) -> dict[str, set[str]]:
        asked.append(things)
        return {thing: {"stream"} for thing in things}

    cache.renew(decide, _Clock(11.0))
    assert asked == [["busy"]]
    assert cache.get("idle", "stream", now=11.5) is None


def test_renewal_after_everything_was_dropped_stores_nothing() -> None:
    cache = AccessCache(ttl=10, max_entries=100)
    cache.put("dev-1", "stream", False, now=0.0, generation=cache.generation("dev-1"))

    def decide(things: list[str]) -> dict[str, set[str]]:
        cache.clear()
        cache.put("dev-1", "stream", False, now=3.5, generation=cache.generation("dev-1"))
        return {"dev-1": {"stream"}}

    assert cache.renew(decide, _Clock(3.0)) == 0
    assert cache.get("dev-1", "stream", now=4.0) is False
