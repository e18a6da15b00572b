"""The hash-chained audit log on SQLite and PostgreSQL: concurrent appends, the
migration of entries written before the chain, `overair audit verify/head/list`, and
tampering made with plain SQL behind the server's back (threat O2), and device events
(refused connections, job status updates) recorded by a real server."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text
from typer.testing import CliRunner, Result

from overair.cli.main import app as overair_cli
from overair.core.errors import MisuseError
from overair.server.audit import chain
from overair.server.audit.device_events import RefusedConnectionRecorder
from overair.server.audit.log import AuditLog
from overair.server.audit.reader import Query, list_entries, read_head, verify_log
from overair.server.gateway.broker_log import RefusedConnection
from overair.server.storage.db import MIGRATIONS_DIR, Database, migrate
from overair.server.storage.schema import AuditHead
from tests.pki_helpers import issue, make_ca
from tests.row_counting import transactions
from tests.server_harness import RunningServer, running_server

ACCOUNT = "123456789012"


@pytest.fixture
def data_dir(tmp_path: Path, database_url: str) -> Path:
    """A data directory as far as `overair audit` needs one: the settings naming the database."""
    root = tmp_path / "data"
    root.mkdir()
    url = database_url if database_url.startswith("postgresql") else f"sqlite:///{root / 'overair.db'}"
    (root / "overair.toml").write_text(f'account_id = "{ACCOUNT}"\ndatabase_url = "{url}"\n')
    return root


@pytest.fixture
def data_db(data_dir: Path) -> Iterator[Database]:
    url = (data_dir / "overair.toml").read_text().split('database_url = "')[1].split('"')[0]
    database = Database(url)
    migrate(database.engine)
    yield database
    database.close()


def _cli(*args: str) -> Result:
    return CliRunner().invoke(overair_cli, ["audit", *args])


# What the authorizer writes: every 4th entry a denial, implicit or explicit.
_DECISIONS = {i: "Allow" for i in range(8)} | {4: "ImplicitDeny", 0: "ExplicitDeny"}


def _fill(audit: AuditLog, n: int) -> None:
    for i in range(1, n + 1):
        audit.record(principal=f"arn:aws:iam::{ACCOUNT}:user/{'alice' if i % 2 else 'bob'}",
                     action="iot:CreateJob" if i % 3 else "s3:GetObject",
                     resource=f"arn:aws:iot:us-east-1:{ACCOUNT}:job/j{i}",
                     decision=_DECISIONS[i % 8], statement="OverairOTAOperator#Jobs",
                     source="127.0.0.1", detail={"i": i})


def _sql(db: Database, statement: str, **params: object) -> None:
    with db.engine.begin() as connection:
        connection.execute(text(statement), params)


# The writer ------------------------------------------------------------------------------
def test_concurrent_appends_keep_one_valid_chain(db: Database) -> None:
    audit = AuditLog(db, time.time)
    threads, per_thread = 8, 40
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def append(worker: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                audit.record(principal=f"user/w{worker}", action="iot:ListJobs", resource="*",
                             decision="Allow", detail={"i": i})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=append, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    report = verify_log(db)
    assert report.ok, report.problem
    assert report.count == threads * per_thread
    assert read_head(db) == report.head
    with db.engine.connect() as connection:
        seqs = [row[0] for row in connection.execute(text("SELECT seq FROM audit_log ORDER BY seq"))]
    assert seqs == list(range(1, threads * per_thread + 1))
    # Every thread's entries are there, in the order that thread wrote them.
    mine = [e.fields.detail["i"] for e in list_entries(db, Query(principal="user/w3"))]
    assert mine == list(range(per_thread))


def test_two_writers_on_one_database_share_the_chain(db: Database, database_url: str) -> None:
    """Two server processes (here: two Database objects, so no shared in-process lock)
    appending at once must still produce one chain: the database serialises them."""
    other = Database(database_url)
    try:
        logs = [AuditLog(db, time.time), AuditLog(other, time.time)]
        workers = [threading.Thread(target=_fill, args=(logs[i % 2], 30)) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        other.close()
    report = verify_log(db)
    assert report.ok, report.problem
    assert report.count == 120


def test_recorded_fields_read_back_exactly(db: Database) -> None:
    audit = AuditLog(db, lambda: 1_700_000_000.123456)
    audit.record(principal="thing/é\x00x", action="iot:Connect", resource="client/x", decision="Refused",
                 source="[::1]:1883", detail={"reason": "bad \udc80", "n": 1.5, "t": (1, 2)},
                 statement="S#1")
    audit.record(principal="p" * 300, action="a", resource="r", decision="Allow")  # cut to the column
    (first, second) = list(list_entries(db, Query()))
    assert first.fields == chain.EntryFields(
        1_700_000_000.123456, "thing/é\ufffdx", "iot:Connect", "client/x", "Refused", "S#1", "[::1]:1883",
        {"reason": "bad ?", "n": 1.5, "t": [1, 2]})
    assert second.fields.principal == "p" * 256
    assert verify_log(db).ok


def test_status_updates_of_a_run_are_one_append_in_their_order(db: Database) -> None:
    """`record_status_updates` (a device worker's run of ended executions): one
    transaction, the entries in the order given, the chain valid."""
    audit = AuditLog(db, lambda: 1_700_000_000.0)
    with transactions(db) as opened:
        audit.record_status_updates([(f"dev-{i}", "arn:aws:iot:us-east-1:123456789012:job/j", "Accepted",
                                      {"status": "SUCCEEDED", "i": i}) for i in range(5)])
    assert opened == [1]
    entries = list(list_entries(db, Query()))
    assert [(e.fields.principal, e.fields.action, e.fields.detail["i"]) for e in entries] == [
        (f"thing/dev-{i}", "iot:UpdateJobExecution", i) for i in range(5)]
    assert verify_log(db).ok


def test_old_callers_without_statement_still_work(db: Database) -> None:
    AuditLog(db, time.time).record(principal="user/alice", action="iot:CreateJob", resource="job/j1",
                                   decision="ALLOW")
    (entry,) = list(list_entries(db, Query()))
    assert entry.fields.statement == ""
    assert entry.prev_hash == chain.GENESIS


def test_recording_inside_a_write_transaction_is_refused_not_deadlocked(db: Database,
                                                                        database_url: str) -> None:
    audit = AuditLog(db, time.time)
    with db.session():
        if database_url.startswith("sqlite"):
            with pytest.raises(MisuseError):
                audit.record(principal="user/alice", action="iot:ListJobs", resource="*", decision="Allow")
        else:  # separate connections and a row lock: nothing to wait for
            audit.record(principal="user/alice", action="iot:ListJobs", resource="*", decision="Allow")
    audit.record(principal="user/alice", action="iot:ListJobs", resource="*", decision="Allow")
    assert verify_log(db).ok


# The migration ------------------------------------------------------------------------------
def test_migration_chains_entries_written_before_it(database_url: str) -> None:
    database = Database(database_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
        # Pre-chain entries, with a gap such as a PostgreSQL sequence leaves.
        for seq in (1, 2, 5):
            _sql(database, "INSERT INTO audit_log (seq, at, principal, action, resource, decision, source, "
                           "detail) VALUES (:seq, :at, 'user/alice', 'iot:CreateJob', 'job/j', 'DENY', '', "
                           ":detail)", seq=seq, at=1000.0 + seq, detail=json.dumps({"seq": seq}))
        migrate(database.engine)
        report = verify_log(database)
        assert report.ok, report.problem
        assert report.count == 3
        assert [e.fields.detail for e in list_entries(database, Query())] == [{"seq": 1}, {"seq": 2},
                                                                             {"seq": 5}]
        # And the chain goes on from there.
        AuditLog(database, time.time).record(principal="user/bob", action="iot:ListJobs", resource="*",
                                             decision="Allow")
        report = verify_log(database)
        assert report.ok, report.problem
        assert report.count == 4
    finally:
        database.close()


# `overair audit verify` and tampering with SQL (O2) -----------------------------------------
def test_o2_audit_tampering_verify_passes_on_an_untouched_log(data_dir: Path, data_db: Database) -> None:
    _fill(AuditLog(data_db, time.time), 6)
    head = read_head(data_db)
    result = _cli("verify", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    assert f"OK: 6 entries, head 6:{head.entry_hash}" in result.output
    assert _cli("head", "--data-dir", str(data_dir)).output.strip() == f"6:{head.entry_hash}"


def test_o2_audit_tampering_edited_entry_is_detected(data_dir: Path, data_db: Database) -> None:
    _fill(AuditLog(data_db, time.time), 6)
    _sql(data_db, "UPDATE audit_log SET decision = 'Allow' WHERE seq = 4")  # hide a Deny
    result = _cli("verify", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert "EntryModified" in result.output
    assert "seq 4" in result.output


def test_o2_audit_tampering_edited_detail_is_detected(data_dir: Path, data_db: Database) -> None:
    _fill(AuditLog(data_db, time.time), 3)
    _sql(data_db, "UPDATE audit_log SET detail = :d WHERE seq = 2", d=json.dumps({"i": 99}))
    result = _cli("verify", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert "EntryModified" in result.output
    assert "seq 2" in result.output


def test_o2_audit_tampering_deleted_entry_is_detected(data_dir: Path, data_db: Database) -> None:
    _fill(AuditLog(data_db, time.time), 6)
    _sql(data_db, "DELETE FROM audit_log WHERE seq = 3")
    result = _cli("verify", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert "EntryMissing" in result.output
    assert "seq 3 missing" in result.output


def test_o2_audit_tampering_truncated_tail_is_detected(data_dir: Path, data_db: Database) -> None:
    _fill(AuditLog(data_db, time.time), 6)
    _sql(data_db, "DELETE FROM audit_log WHERE seq >= 5")
    result = _cli("verify", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert "TailTruncated" in result.output
    assert "5..6" in result.output


def test_o2_audit_tampering_appended_entry_is_detected(data_dir: Path, data_db: Database) -> None:
    _fill(AuditLog(data_db, time.time), 3)
    head = read_head(data_db)
    forged = chain.seal(head, chain.EntryFields(time.time(), "user/mallory", "iot:CreateJob", "*", "Allow"))
    _sql(data_db, "INSERT INTO audit_log (seq, at, principal, action, resource, decision, statement, source, "
                  "detail, prev_hash, entry_hash) VALUES (:seq, :at, 'user/mallory', 'iot:CreateJob', '*', "
                  "'Allow', '', '', '{}', :prev, :hash)",
         seq=forged.seq, at=forged.fields.time, prev=forged.prev_hash, hash=forged.entry_hash)
    result = _cli("verify", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert "EntriesBeyondHead" in result.output


def test_o2_audit_tampering_deleted_head_anchor_is_detected(data_dir: Path, data_db: Database) -> None:
    _fill(AuditLog(data_db, time.time), 2)
    _sql(data_db, "DELETE FROM audit_head")
    result = _cli("verify", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert "HeadMissing" in result.output


def test_o2_audit_tampering_rewritten_anchor_is_caught_by_a_saved_head(data_dir: Path,
                                                                      data_db: Database) -> None:
    _fill(AuditLog(data_db, time.time), 6)
    saved = _cli("head", "--data-dir", str(data_dir)).output.strip()
    # Full write access: drop the last two entries and move the anchor back to match.
    _sql(data_db, "DELETE FROM audit_log WHERE seq >= 5")
    _sql(data_db, "UPDATE audit_head SET seq = 4, entry_hash = "
                  "(SELECT entry_hash FROM audit_log WHERE seq = 4)")
    # The caveat: the database alone cannot tell ...
    assert _cli("verify", "--data-dir", str(data_dir)).exit_code == 0
    # ... the head saved elsewhere can.
    result = _cli("verify", "--data-dir", str(data_dir), "--expect-head", saved)
    assert result.exit_code == 1
    assert "SavedHeadMissing" in result.output


def test_verify_with_a_saved_head_accepts_a_grown_log(data_dir: Path, data_db: Database) -> None:
    audit = AuditLog(data_db, time.time)
    _fill(audit, 3)
    saved = _cli("head", "--data-dir", str(data_dir)).output.strip()
    _fill(audit, 3)
    result = _cli("verify", "--data-dir", str(data_dir), "--expect-head", saved)
    assert result.exit_code == 0, result.output
    assert "OK: 6 entries" in result.output


def test_verify_refuses_a_malformed_saved_head(data_dir: Path, data_db: Database) -> None:
    result = _cli("verify", "--data-dir", str(data_dir), "--expect-head", "not-a-head")
    assert result.exit_code == 2
    assert "InvalidHead" in result.output


def test_audit_commands_need_a_data_directory(tmp_path: Path) -> None:
    result = _cli("verify", "--data-dir", str(tmp_path / "nothing"))
    assert result.exit_code == 2
    assert "not an overair data directory" in result.output


# `overair audit list` ------------------------------------------------------------------------
def _listed(data_dir: Path, *args: str) -> list[dict[str, object]]:
    result = _cli("list", "--data-dir", str(data_dir), "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


def test_list_filters_by_principal_action_decision_and_time(data_dir: Path, data_db: Database) -> None:
    times = iter(1_714_521_600.0 + 3600 * i for i in range(100))  # 2024-05-01T00:00Z, hourly
    _fill(AuditLog(data_db, lambda: next(times)), 12)
    everything = _listed(data_dir)
    assert [e["seq"] for e in everything] == list(range(1, 13))  # newest last
    assert everything[0]["time"] == "2024-05-01T00:00:00.000Z"
    assert {e["principal"] for e in _listed(data_dir, "--principal", f"arn:aws:iam::{ACCOUNT}:user/bob")} \
        == {f"arn:aws:iam::{ACCOUNT}:user/bob"}
    assert [e["seq"] for e in _listed(data_dir, "--principal", "*:user/b?b")] == [2, 4, 6, 8, 10, 12]
    assert [e["seq"] for e in _listed(data_dir, "--action", "s3:*")] == [3, 6, 9, 12]
    assert [e["seq"] for e in _listed(data_dir, "--action", "IOT:*")] == []  # globs are case-sensitive
    # `Deny` is every denial, implicit or explicit; the exact outcome narrows it.
    assert [e["seq"] for e in _listed(data_dir, "--decision", "deny")] == [4, 8, 12]
    assert [e["seq"] for e in _listed(data_dir, "--decision", "ImplicitDeny")] == [4, 12]
    assert [e["seq"] for e in _listed(data_dir, "--decision", "explicitdeny")] == [8]
    window = _listed(data_dir, "--since", "2024-05-01T02:00:00Z", "--until", "2024-05-01T04:00:00+00:00")
    assert [e["seq"] for e in window] == [3, 4, 5]
    assert [e["seq"] for e in _listed(data_dir, "--since", "2024-05-01T09:00")] == [10, 11, 12]
    assert [e["seq"] for e in _listed(data_dir, "--limit", "2")] == [11, 12]
    newest_alice_jobs = _listed(data_dir, "--principal", "*alice", "--action", "iot:*", "--limit", "2")
    assert [e["seq"] for e in newest_alice_jobs] == [7, 11]
    first = everything[0]
    assert first["statement"] == "OverairOTAOperator#Jobs"
    assert first["source"] == "127.0.0.1"
    assert first["detail"] == {"i": 1}


def test_list_prints_readable_lines(data_dir: Path, data_db: Database) -> None:
    _fill(AuditLog(data_db, lambda: 1_714_521_600.0), 1)
    result = _cli("list", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    assert result.output.split() == [
        "1", "2024-05-01T00:00:00.000Z", "Allow", f"arn:aws:iam::{ACCOUNT}:user/alice", "iot:CreateJob",
        f"arn:aws:iot:us-east-1:{ACCOUNT}:job/j1", "by", "OverairOTAOperator#Jobs", "from", "127.0.0.1",
        '{"i":', "1}"]


def test_list_refuses_a_malformed_time(data_dir: Path, data_db: Database) -> None:
    result = _cli("list", "--data-dir", str(data_dir), "--since", "yesterday")
    assert result.exit_code == 2
    assert "InvalidTime" in result.output


# Device events, recorded by a real server ---------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


def _entries(srv: RunningServer, query: Query) -> list[chain.ChainEntry]:
    return list(list_entries(srv.server.db, query))


def _connect_refusals_after(srv: RunningServer, before: int) -> list[chain.ChainEntry]:
    """The refused-connection entries once there are more than `before` (the broker's log
    is read asynchronously), or as they are after 20 s."""
    deadline = time.monotonic() + 20
    while True:
        refused = _entries(srv, Query(action="iot:Connect"))
        if len(refused) > before or time.monotonic() > deadline:
            return refused
        time.sleep(0.1)


# MQTT 3.1.1 CONNECT: protocol "MQTT" level 4, clean session, keep-alive 60 s, client id "probe".
def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s) with this client id."""
    ident = client_id.encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02, 0, 60]) + len(ident).to_bytes(2, "big") + ident
    return bytes([0x10, len(variable)]) + variable


CONNACK_ACCEPTED = bytes([0x20, 2, 0, 0])


def _mqtt_connects(srv: RunningServer, cert: Path, key: Path, client_id: str = "probe") -> bool:
    """True if the broker accepts an MQTT connection with this client certificate (and
    client id: a device may use only its own things' ids)."""
    context = ssl.create_default_context(cafile=str(srv.settings.paths.fleet_ca_cert))
    context.check_hostname = False
    context.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection(("127.0.0.1", srv.settings.mqtt_port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(_connect_packet(client_id))
            return tls.recv(4) == CONNACK_ACCEPTED
    except (ssl.SSLError, OSError):
        return False


def test_l1_refused_connection_with_a_foreign_certificate_is_audited(srv: RunningServer,
                                                                     tmp_path: Path) -> None:
    rogue_ca = make_ca("rogue fleet CA")
    rogue = issue(rogue_ca, "thing-x", client=True)
    rogue.write(tmp_path / "rogue.crt", tmp_path / "rogue.key")
    before = len(_entries(srv, Query(action="iot:Connect")))
    assert not _mqtt_connects(srv, tmp_path / "rogue.crt", tmp_path / "rogue.key")
    refused = _connect_refusals_after(srv, before)
    assert len(refused) > before
    entry = refused[-1]
    assert entry.fields.decision == "Refused"
    assert entry.fields.principal == "unknown"
    assert entry.fields.source.startswith("127.0.0.1")
    assert "certificate" in entry.fields.detail["reason"]
    assert verify_log(srv.server.db).ok


def test_n4_revoked_device_connection_is_audited(srv: RunningServer, tmp_path: Path) -> None:
    bundle = srv.provision("audited-device", tmp_path / "device")
    cert, key = bundle / "device.crt", bundle / "device.key"
    assert _mqtt_connects(srv, cert, key, "audited-device")
    iot = srv.client("iot")
    principal = iot.list_thing_principals(thingName="audited-device")["principals"][0]
    iot.update_certificate(certificateId=principal.rsplit("/", 1)[1], newStatus="REVOKED")
    before = len(_entries(srv, Query(action="iot:Connect")))
    deadline = time.monotonic() + 20
    while _mqtt_connects(srv, cert, key, "audited-device"):  # in force when the call returned
        assert time.monotonic() < deadline, "the revoked certificate was never refused"
        time.sleep(0.2)
    refused = _connect_refusals_after(srv, before)
    assert len(refused) > before
    assert refused[-1].fields.decision == "Refused"
    # The access plugin refuses it at once (its rules went with the change); the CRL, now
    # written, refuses it at TLS from the broker's next start.
    assert "not authorised" in refused[-1].fields.detail["reason"]


def test_job_status_updates_are_audited_when_final_or_rejected(srv: RunningServer, tmp_path: Path) -> None:
    thing, job = "audited-jobs", "audited-job-1"
    srv.provision(thing, tmp_path / "device")
    iot = srv.client("iot")
    iot.create_job(jobId=job, targets=[iot.describe_thing(thingName=thing)["thingArn"]],
                   document=json.dumps({"operation": "reboot"}))
    devices = srv.server.devices
    topic = f"$aws/things/{thing}/jobs/{job}/update"

    def update(body: dict[str, object]) -> str:
        (reply, *_) = devices.handle(topic, json.dumps(body).encode())
        return reply.topic.rsplit("/", 1)[1]

    assert update({"status": "IN_PROGRESS", "statusDetails": {"step": "download"}}) == "accepted"
    assert update({"status": "SUCCEEDED", "statusDetails": {"result": "ok"}}) == "accepted"
    assert update({"status": "FAILED"}) == "rejected"  # already final
    assert update({"status": "BOGUS"}) == "rejected"
    entries = _entries(srv, Query(principal=f"thing/{thing}", action="iot:UpdateJobExecution"))
    assert [(e.fields.decision, e.fields.detail.get("status") or e.fields.detail.get("code"))
            for e in entries] == [("Accepted", "SUCCEEDED"), ("Rejected", "InvalidStateTransition"),
                                  ("Rejected", "InvalidRequest")]
    assert entries[0].fields.resource == f"arn:aws:iot:us-east-1:{srv.settings.account_id}:job/{job}"
    assert entries[0].fields.detail["statusDetails"] == {"result": "ok"}
    assert verify_log(srv.server.db).ok


def test_refusals_from_a_flood_are_summarised_not_dropped(db: Database) -> None:
    """The broker's log reader never waits for the database: while appends are stuck,
    refusals beyond the queue are counted and then recorded as one summary entry."""
    recorder = RefusedConnectionRecorder(AuditLog(db, time.time), max_queued=3)
    with db.session() as held:
        # Hold the audit head (and on SQLite the write lock): every append now waits.
        held.execute(select(AuditHead.seq).with_for_update())
        for i in range(10):
            recorder(RefusedConnection("unknown", f"10.0.0.{i}", "certificate verify failed"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entries = list(list_entries(db, Query(action="iot:Connect")))
        if sum(int(e.fields.detail.get("count", 1)) for e in entries) >= 10:
            break
        time.sleep(0.05)
    summaries = [e for e in entries if "count" in e.fields.detail]
    individual = [e for e in entries if "count" not in e.fields.detail]
    assert len(summaries) == 1
    assert len(individual) <= 4  # the one being written when the lock was taken, and 3 queued
    assert len(individual) + summaries[0].fields.detail["count"] == 10
    assert all(e.fields.decision == "Refused" for e in entries)
    assert verify_log(db).ok
