"""Prometheus metrics: what an operator graphs and alerts on (issue 16, item 3).

Two kinds of figures:

- **Event counters** (requests by operation, blocks and bytes served, signing jobs, audit
  entries written), incremented where the event happens. They live in the module-level
  `REGISTRY` (one process, one set: tests that start several servers see the sum).
- **State read at scrape time** (`ServerCollector`): devices connected and the broker's
  capacity, broker up/restarts, executions by state, each active rollout's progress,
  code-signing certificates' expiry. Read from the database and the broker's supervisor
  when Prometheus asks, so they are never stale and cost nothing between scrapes. Each
  query is bounded (group-by counts; at most `MAX_JOBS` active jobs are labelled).

Label values come from bounded sets only (model operation names, execution states,
job ids of active rollouts, certificate ARNs), never from what a device or caller sends.

The endpoint (`metrics_app`) is served on its own port (`metrics_port` in overair.toml,
`serve --metrics-port`), bound to the API's host: Prometheus scrapes it without
credentials, so it listens where only the monitoring network reaches it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overair.server.storage.db import Database
from overair.server.storage.schema import Job, JobExecution, SigningCertificate

log = logging.getLogger("overair.metrics")
MAX_JOBS = 50  # active rollouts labelled one by one (the rest are in the totals)

REGISTRY = CollectorRegistry(auto_describe=True)
API_REQUESTS = Counter(
    "overair_api_requests",
    "Operator API requests by service, operation and HTTP status",
    ["service", "operation", "status"],
    registry=REGISTRY,
)
API_SECONDS = Histogram(
    "overair_api_request_seconds",
    "Operator API request latency",
    ["service", "operation"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BLOCKS_SERVED = Counter(
    "overair_stream_blocks_served", "File blocks published to devices over MQTT", registry=REGISTRY
)
BYTES_SERVED = Counter(
    "overair_bytes_served", "File bytes sent to devices, by transport", ["transport"], registry=REGISTRY
)
# Counted per block request and per download request: the children looked up once
# (`labels` takes a lock and a dict lookup each time).
BYTES_SERVED_MQTT = BYTES_SERVED.labels("mqtt")
BYTES_SERVED_HTTPS = BYTES_SERVED.labels("https")
SIGNING_JOBS = Counter("overair_signing_jobs", "Signing jobs by outcome", ["outcome"], registry=REGISTRY)
AUDIT_ENTRIES = Counter(
    "overair_audit_entries_written", "Entries appended to the audit log", registry=REGISTRY
)


def observe_request(service: str, operation: str, status: int, seconds: float) -> None:
    service, operation = service or "unknown", operation or "unknown"
    API_REQUESTS.labels(service, operation, str(status)).inc()
    API_SECONDS.labels(service, operation).observe(seconds)


class ServerCollector(Collector):
    """The figures read when Prometheus scrapes: `broker` gives the broker's counters
    (up, restarts, exits) and `load` the connected devices and capacity."""

    def __init__(
        self,
        db: Database,
        broker: Callable[[], dict[str, float]],
        load: Callable[[], dict[str, object]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._broker = broker
        self._load = load
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._broker_metrics()
            yield from self._database_metrics()
        except Exception:  # a scrape must answer; the error is logged, the figures left out
            log.exception("collecting metrics failed")

    def _broker_metrics(self) -> Iterator[Metric]:
        for name, value in self._broker().items():
            yield GaugeMetricFamily(name, f"broker: {name.removeprefix('overair_broker_')}", value=value)
        load = self._load()
        for key, name, text in (
            ("brokerConnections", "overair_devices_connected", "Device connections held"),
            (
                "brokerCapacity",
                "overair_device_capacity",
                "Device connections the broker's open-file limit allows",
            ),
        ):
            held = load.get(key)
            if isinstance(held, int):
                yield GaugeMetricFamily(name, text, value=held)

    def _database_metrics(self) -> Iterator[Metric]:
        with self._db.reading() as s:
            by_state = s.execute(
                select(JobExecution.status, func.count()).group_by(JobExecution.status)
            ).all()
            active = list(
                s.scalars(
                    select(Job.job_id)
                    .where(Job.status == "IN_PROGRESS")
                    .order_by(Job.created_at.desc())
                    .limit(MAX_JOBS)
                )
            )
            per_job = (
                s.execute(
                    select(JobExecution.job_id, JobExecution.status, func.count())
                    .where(JobExecution.job_id.in_(active))
                    .group_by(JobExecution.job_id, JobExecution.status)
                ).all()
                if active
                else []
            )
            jobs_by_status = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            certificates = s.execute(
                select(SigningCertificate.arn, SigningCertificate.not_after, SigningCertificate.status)
            ).all()
        executions = GaugeMetricFamily("overair_job_executions", "Job executions by state", labels=["state"])
        for state, count in by_state:
            executions.add_metric([state], count)
        yield executions
        jobs = GaugeMetricFamily("overair_jobs", "Jobs by status", labels=["status"])
        for status, count in jobs_by_status:
            jobs.add_metric([status], count)
        yield jobs
        rollout = GaugeMetricFamily(
            "overair_rollout_executions",
            f"Executions of each active job (the {MAX_JOBS} newest) by state",
            labels=["job", "state"],
        )
        for job, state, count in per_job:
            rollout.add_metric([job, state], count)
        yield rollout
        now = self._clock()
        expiry = GaugeMetricFamily(
            "overair_code_signing_certificate_expiry_seconds",
            "Seconds until each code-signing certificate expires (negative: expired)",
            labels=["arn", "status"],
        )
        for arn, not_after, status in certificates:
            expiry.add_metric([arn, status], not_after - now)
        yield expiry


def render(collectors: Iterable[Collector]) -> bytes:
    """The exposition text of the event counters and `collectors`."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(REGISTRY) + generate_latest(registry)


def metrics_app(*collectors: Collector) -> Starlette:
    def endpoint(_request: Request) -> Response:
        return Response(render(collectors), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", endpoint)])
