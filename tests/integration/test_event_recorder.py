"""server/events/recorder.py on a real database (SQLite and PostgreSQL): the statement
paths no API test reaches alone (bulk INSERTs of things and memberships, a multi-row
UPDATE of executions, a DELETE of memberships), and that nothing is handed over before
the commit, or at all after a rollback."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, insert, update

from overair.core.events import PUBLISHED_TYPES
from overair.server.events.recorder import Change, ChangeRecorder, forget_pending
from overair.server.storage.db import Database, migrate
from overair.server.storage.schema import Job, JobExecution, Thing, ThingGroup, ThingGroupMember


def _recording(url: str, enabled: frozenset[str] = PUBLISHED_TYPES) -> tuple[Database, list[list[Change]]]:
    db = Database(url)
    migrate(db.engine)
    handed: list[list[Change]] = []
    recorder = ChangeRecorder(lambda: enabled, handed.append)
    db.listen("before_flush", recorder.before_flush)
    db.listen("do_orm_execute", recorder.do_orm_execute)
    db.listen("after_rollback", forget_pending)
    return db, handed


def _things(n: int) -> list[dict[str, object]]:
    return [{"name": f"t{i}", "thing_id": f"id-{i}", "arn": f"arn:t{i}", "attributes": {}, "version": 1,
             "created_at": 0.0} for i in range(n)]


def test_statements_are_recorded_and_handed_over_at_commit(database_url: str) -> None:
    db, handed = _recording(database_url)
    with db.session() as s:
        s.execute(insert(Thing), _things(3))
        s.add(ThingGroup(name="g", group_id="gid", arn="arn:g", created_at=0.0))
        s.flush()
        s.execute(insert(ThingGroupMember), [{"group_name": "g", "thing_name": f"t{i}", "added_at": 0.0}
                                             for i in range(3)])
        s.add(Job(job_id="j", arn="arn:j", status="IN_PROGRESS", document={}, targets=[], created_at=0.0,
                  last_updated_at=0.0))
        s.flush()
        s.add_all([JobExecution(job_id="j", thing_name=f"t{i}", status="QUEUED", queued_at=0.0,
                                last_updated_at=0.0, released_at=0.0) for i in range(3)])
        assert handed == []  # nothing before the commit
    assert [(c.event_type, c.operation) for c in handed[0]].count(("THING", "CREATED")) == 3
    with db.session() as s:
        s.execute(update(JobExecution).where(JobExecution.thing_name != "t2")
                  .values(status="CANCELED", version_number=JobExecution.version_number + 1))
        s.execute(update(JobExecution).values(last_updated_at=1.0))  # no status: nothing
        s.execute(delete(ThingGroupMember).where(ThingGroupMember.thing_name == "t0"))
    assert sorted((c.event_type, c.operation, c.facts.get("thingName")) for c in handed[1]) == [
        ("JOB_EXECUTION", "canceled", "t0"), ("JOB_EXECUTION", "canceled", "t1"),
        ("THING_GROUP_MEMBERSHIP", "REMOVED", "t0")]
    db.close()


def test_a_rollback_hands_over_nothing_and_disabled_types_record_nothing(database_url: str) -> None:
    db, handed = _recording(database_url)
    with pytest.raises(RuntimeError), db.session() as s:  # noqa: PT012 - the transaction is the subject
        s.execute(insert(Thing), _things(2))
        raise RuntimeError("roll back")
    with db.session() as s:
        s.add(ThingGroup(name="g", group_id="gid", arn="arn:g", created_at=0.0))
    assert [[c.operation for c in batch] for batch in handed] == [["CREATED"]]  # the group, not the things
    db.close()
    quiet, nothing = _recording(database_url, frozenset({"JOB"}))
    with quiet.session() as s:
        s.execute(insert(Thing), [{**_things(1)[0], "name": "t9", "thing_id": "id-9"}])
    assert nothing == []
    quiet.close()
