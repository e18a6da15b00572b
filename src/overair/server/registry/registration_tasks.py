"""Bulk registration tasks: StartThingRegistrationTask and what follows it.

Starting a task checks what can be checked at once (the template parses; the service
role exists, lets iot.amazonaws.com assume it and may s3:GetObject the input file; the
file exists and is within `max_registration_file_bytes`), so a task that cannot work is
refused with InvalidRequestException rather than started. AWS: "Only one bulk
registration operation task can run at a time (per account)" (developer guide, "Bulk
registration"): tasks run one at a time, in the order started; one started while
another runs waits (InProgress, 0 %).

One worker thread reads the file (at most `max_registration_lines` lines, else the
task fails before registering anything), registers it batch by batch
(server/registry/bulk.py: a bad line is reported and registers nothing, the rest
proceeds), updates the counts after each batch, and finally writes the RESULTS and
ERRORS reports (newline-delimited JSON) next to the input file:
`thing-registration-tasks/<taskId>/results.json` and `.../errors.json` in the input
bucket. StopThingRegistrationTask is honoured between batches (Cancelling, then
Cancelled; the reports cover the lines done).

A server restart does not resume a task. A task running when the server stops ends
Failed before its next batch ("interrupted by the server stopping after N of M lines");
one still queued, or left running by a crash, is marked Failed at the next start
("interrupted by a server restart"). The lines it registered stay registered (each batch
is committed); run the file again with those lines removed, or as it is: they fail as
already existing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
from sqlalchemy import select, update

from overair.core.errors import OverairError, UnavailableError
from overair.core.limits import Limits
from overair.core.provtemplate import Template, TemplateError, parse_line, parse_template
from overair.server.api.contract import ApiError, invalid, not_found
from overair.server.clock import Clock
from overair.server.jobs.claims import Claim, Claims, LocalClaims
from overair.server.registry.bulk import AccessNotConfirmed, BulkRegistrar, LineResult
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.objects import ObjectStore
from overair.server.storage.schema import ThingRegistrationTask

log = logging.getLogger("overair.registry")

RUNNING = ("InProgress", "Cancelling")
REPORT_PREFIX = "thing-registration-tasks"
REPORT_FILES = {"RESULTS": "results.json", "ERRORS": "errors.json"}

# (role ARN, bucket, key) -> None, or ApiError: may the role read the input file?
RoleReadCheck = Callable[[str, str, str], None]


def report_key(task_id: str, report_type: str) -> str:
    return f"{REPORT_PREFIX}/{task_id}/{REPORT_FILES[report_type]}"


class RegistrationTasks:
    def __init__(self, db: Database, objects: ObjectStore, registrar: BulkRegistrar, limits: Limits,
                 clock: Clock, role_may_read: RoleReadCheck, claims: Claims | None = None) -> None:
        self._db = db
        # A running task is claimed by the process running it (jobs/claims.py): the
        # scheduler leader fails a task whose process died, never one a live process runs.
        self._claims: Claims = claims or LocalClaims()
        self._held: dict[str, Claim] = {}  # claims of the tasks queued or running here
        self._objects = objects
        self._registrar = registrar
        self._limits = limits
        self._clock = clock
        self._role_may_read = role_may_read
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="registration")
        self._stop_requested: set[str] = set()
        self._lock = threading.Lock()

    # API ------------------------------------------------------------------------------
    def start(self, template_body: str, bucket: str, key: str, role_arn: str) -> str:
        try:
            template = parse_template(template_body, self._limits)
        except TemplateError as exc:
            raise invalid(f"templateBody: {exc.message}") from None
        try:
            self._role_may_read(role_arn, bucket, key)
            size = self._objects.head_object(bucket, key).size
        except ApiError as exc:
            raise invalid(f"the input file s3://{bucket}/{key} cannot be read with {role_arn}: "
                          f"{exc.message}") from None
        if size > self._limits.max_registration_file_bytes:
            raise invalid(f"the input file is {size} bytes; at most "
                          f"{self._limits.max_registration_file_bytes} are allowed")
        task_id = str(uuid.uuid4())
        self._claim(task_id)  # before the row: a leader never sees it running unclaimed
        now = self._clock()
        try:
            with self._db.session() as s:
                s.add(ThingRegistrationTask(task_id=task_id, template_body=template_body, input_bucket=bucket,
                                            input_key=key, role_arn=role_arn, status="InProgress", message="",
                                            success_count=0, failure_count=0, percentage=0, created_at=now,
                                            last_modified_at=now))
            self._worker.submit(self._run_claimed, task_id, template)
        except BaseException:
            self._release(task_id)
            raise
        return task_id

    def _claim(self, task_id: str) -> None:
        try:
            claim = self._claims.take("registration", task_id)
        except psycopg.Error as exc:
            raise UnavailableError(f"the database could not record the task's runner: {exc}") from None
        if claim is None:  # a fresh uuid4: nobody else can hold it
            raise UnavailableError(f"thing registration task {task_id} is claimed already")
        with self._lock:
            self._held[task_id] = claim

    def describe(self, task_id: str) -> ThingRegistrationTask:
        with self._db.reading() as s:
            row = s.get(ThingRegistrationTask, task_id)
            if row is None:
                raise not_found(f"thing registration task {task_id}")
            return row

    def page_ids(self, status: str | None, after: tuple[float, str] | None,
                 size: int) -> tuple[list[tuple[float, str]], bool]:
        """(creation time, task id) of up to `size` tasks after `after`, oldest first, read
        by keyset over the (created_at, task_id) index; and whether more follow."""
        query = select(ThingRegistrationTask.created_at, ThingRegistrationTask.task_id)
        if status is not None:
            query = query.where(ThingRegistrationTask.status == status)
        query = page_query(query, [ThingRegistrationTask.created_at, ThingRegistrationTask.task_id],
                           after, size)
        with self._db.reading() as s:
            rows = [(created, task_id) for created, task_id in s.execute(query)]
        return split(rows, size)

    def stop(self, task_id: str) -> None:
        with self._db.session() as s:
            row = s.get(ThingRegistrationTask, task_id)
            if row is None:
                raise not_found(f"thing registration task {task_id}")
            if row.status != "InProgress":
                raise invalid(f"task {task_id} is {row.status}; only a task InProgress can be stopped")
            row.status, row.last_modified_at = "Cancelling", self._clock()
        with self._lock:
            self._stop_requested.add(task_id)

    def report_links(self, task_id: str, report_type: str) -> list[str]:
        """The report's object as an s3:// URI, once the task has written it. An unknown
        task is InvalidRequestException: the operation models no ResourceNotFoundException."""
        try:
            row = self.describe(task_id)
        except ApiError:
            raise invalid(f"thing registration task {task_id} does not exist") from None
        key = report_key(task_id, report_type)
        try:
            self._objects.head_object(row.input_bucket, key)
        except ApiError:
            return []
        return [f"s3://{row.input_bucket}/{key}"]

    # Lifecycle ------------------------------------------------------------------------
    def interrupted_by_restart(self) -> None:
        """Tasks left running by a server process that stopped or died are Failed (they
        are not resumed): at the leader's start, on a takeover and at its rescans. A task
        whose claim is still held runs in a live process and is left alone."""
        with self._db.reading() as s:
            running = list(s.scalars(select(ThingRegistrationTask.task_id)
                                     .where(ThingRegistrationTask.status.in_(RUNNING))))
        for task_id in running:
            try:
                claim = self._claims.take("registration", task_id)
            except psycopg.Error as exc:
                log.warning("could not check whether registration task %s still runs: %s", task_id, exc)
                return
            if claim is None:
                continue
            try:
                with self._db.session() as s:
                    row = s.get(ThingRegistrationTask, task_id)
                    if row is None or row.status not in RUNNING:
                        continue
                    done = row.success_count + row.failure_count
                    row.status = "Failed"
                    row.message = (f"interrupted by a server restart after {done} lines; the lines "
                                   "registered stay registered")
                    row.last_modified_at = self._clock()
                log.warning("registration task %s was left running by a stopped server process: Failed",
                            task_id)
            finally:
                claim.release()

    def shutdown(self) -> None:
        with self._lock:
            self._stop_requested.update(["*"])
        self._worker.shutdown(wait=True, cancel_futures=True)
        for task_id in list(self._held):  # queued tasks the shutdown cancelled
            self._release(task_id)

    # The worker -----------------------------------------------------------------------
    def _run_claimed(self, task_id: str, template: Template) -> None:
        try:
            self._run(task_id, template)
        finally:
            self._release(task_id)

    def _release(self, task_id: str) -> None:
        with self._lock:
            claim = self._held.pop(task_id, None)
        if claim is not None:
            claim.release()

    def _run(self, task_id: str, template: Template) -> None:
        reports = _Reports()
        status, message, unconfirmed = "Completed", "", ""
        try:
            row = self.describe(task_id)
            _, data = self._objects.get_object(row.input_bucket, row.input_key)
            lines = [line for line in data.split(b"\n") if line.strip()]
            if len(lines) > self._limits.max_registration_lines:
                raise invalid(f"the input file has {len(lines)} lines; at most "
                              f"{self._limits.max_registration_lines} are allowed")
            del data
            batch = self._limits.registration_batch
            for start in range(0, len(lines), batch):
                if self._server_stopping():
                    status, message = "Failed", (f"interrupted by the server stopping after {start} of "
                                                 f"{len(lines)} lines; the lines registered stay registered")
                    break
                if self._stopping(task_id):
                    status, message = "Cancelled", f"stopped after {start} of {len(lines)} lines"
                    break
                parsed: list[tuple[str, dict[str, str] | TemplateError]] = []
                for index, line in enumerate(lines[start:start + batch], start):
                    try:
                        parsed.append((str(index), parse_line(line, self._limits)))
                    except TemplateError as exc:
                        parsed.append((str(index), exc))
                try:
                    reports.add(self._registrar.register(template, parsed))
                except AccessNotConfirmed as exc:
                    # Registered, not yet confirmed at the broker: in force once it is back
                    # (its restart regenerates every device's access from the registry).
                    reports.add(exc.results)
                    unconfirmed = exc.message
                self._progress(task_id, reports, len(lines))
        except OverairError as exc:
            status, message = "Failed", exc.message
        except Exception as exc:
            log.exception("bulk registration task %s failed", task_id)
            status, message = "Failed", f"internal error: {type(exc).__name__}"
        if status == "Completed" and unconfirmed:
            message = unconfirmed
        try:
            row = self.describe(task_id)
            for report_type in REPORT_FILES:
                reports.store(report_type, self._objects, row.input_bucket, report_key(task_id, report_type))
        except OverairError as exc:
            status, message = "Failed", f"the reports could not be written: {exc.message}"
        finally:
            reports.close()
        self._finish(task_id, reports, status, message)

    def _server_stopping(self) -> bool:
        with self._lock:
            return "*" in self._stop_requested

    def _stopping(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._stop_requested or "*" in self._stop_requested

    def _progress(self, task_id: str, reports: _Reports, total: int) -> None:
        done = reports.ok + reports.failed
        with self._db.session() as s:
            s.execute(update(ThingRegistrationTask).where(ThingRegistrationTask.task_id == task_id)
                      .values(success_count=reports.ok, failure_count=reports.failed,
                              percentage=done * 100 // max(total, 1), last_modified_at=self._clock()))

    def _finish(self, task_id: str, reports: _Reports, status: str, message: str) -> None:
        with self._db.session() as s:
            row = s.get(ThingRegistrationTask, task_id)
            if row is None:
                return
            row.status, row.message = status, message[:2048]
            row.success_count, row.failure_count = reports.ok, reports.failed
            if status == "Completed":
                row.percentage = 100
            row.last_modified_at = self._clock()
        with self._lock:
            self._stop_requested.discard(task_id)
        log.info("bulk registration task %s %s: %d registered, %d failed%s", task_id, status, reports.ok,
                 reports.failed, f" ({message})" if message else "")


class _Reports:
    """The RESULTS and ERRORS lines, spooled to temporary files as batches end (a task's
    certificates are not held in memory), then stored as objects."""

    def __init__(self) -> None:
        self.ok = self.failed = 0
        self._files = {kind: tempfile.TemporaryFile() for kind in REPORT_FILES}  # noqa: SIM115 - closed in close()
        self._sizes = dict.fromkeys(REPORT_FILES, 0)
        self._sha256 = {kind: hashlib.sha256() for kind in REPORT_FILES}
        self._md5 = {kind: hashlib.md5(usedforsecurity=False) for kind in REPORT_FILES}

    def add(self, results: list[LineResult]) -> None:
        for result in results:
            kind = "RESULTS" if result.ok else "ERRORS"
            data = (json.dumps(result.report_line()) + "\n").encode()
            self._files[kind].write(data)
            self._sizes[kind] += len(data)
            self._sha256[kind].update(data)
            self._md5[kind].update(data)
            self.ok += result.ok
            self.failed += not result.ok

    def store(self, kind: str, objects: ObjectStore, bucket: str, key: str) -> None:
        objects.check_size(self._sizes[kind])
        spool = self._files[kind]
        spool.seek(0)
        tmp = objects.write_temp(iter(lambda: spool.read(1 << 20), b""), what="writing a registration report")
        objects.commit_file(bucket, key, tmp, size=self._sizes[kind], sha256=self._sha256[kind].hexdigest(),
                            etag=f'"{self._md5[kind].hexdigest()}"', content_type="application/json")

    def close(self) -> None:
        for spool in self._files.values():
            spool.close()
