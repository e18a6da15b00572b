"""A server's device side, built for fuzzing in-process: the real composition root
(`Server`: SQLite, object store, job, stream, audit and device services) in a temporary
data directory, not started (no broker, no sockets). One thing with an attached
certificate and a live execution of a job that delivers one file over MQTT (a stream)
and HTTPS (a pre-signed URL), so hostile input reaches every parser and the serving
paths behind them.

`call_asgi` drives the device HTTPS app (the download endpoint and the iot-jobs-data
API) the way uvicorn does, with the client certificate where PeerCertificateProtocol
puts it (delivery/tls_peer.py). Budgets are raised out of the way: the fuzz targets
exercise parsers, `tests/e2e/test_device_limits.py` the budgets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.applications import Starlette
from starlette.types import ASGIApp

from overair.server.app import Server
from overair.server.bootstrap import initialize
from overair.server.jobs.deliveries import HTTP_FILES
from overair.server.settings import load_settings

THING = "fuzz-device"
OTHER_THING = "fuzz-other"
STREAM = "fuzz-stream"
JOB = "fuzz-job"
BUCKET = "firmware"
FILE = bytes(range(256)) * 40  # 10,240 bytes: 3 blocks of 4 KiB
UNLIMITED = 1_000_000_000


@dataclass
class DeviceWorld:
    server: Server
    cert_der: bytes
    url_path: str  # path of a valid pre-signed URL for THING
    url_query: dict[str, str]
    app: ASGIApp


def build(data_dir: Path) -> DeviceWorld:
    logging.getLogger("overair").setLevel(logging.CRITICAL)  # hostile input is logged by design
    initialize(data_dir)
    settings = load_settings(data_dir)
    limits = dataclasses.replace(
        settings.limits,
        device_job_updates_burst=UNLIMITED,
        device_job_reads_burst=UNLIMITED,
        device_stream_requests_burst=UNLIMITED,
        device_https_calls_burst=UNLIMITED,
        device_downloads_burst=UNLIMITED,
    )
    server = Server(dataclasses.replace(settings, limits=limits))
    server.registry.on_access_change = lambda _principals: None  # no broker in this world
    server.objects.create_bucket(BUCKET)
    server.objects.set_versioning(BUCKET, "Enabled")
    stored = server.objects.put_object(BUCKET, "fw.bin", FILE)
    location = {"bucket": BUCKET, "key": "fw.bin", "version": stored.version_id}
    for name in (THING, OTHER_THING):
        server.registry.create_thing(name)
    cert = server.registry.create_keys_and_certificate(True)
    server.registry.attach_principal(THING, cert.arn)
    server.streams.create_stream(STREAM, [{"fileId": 0, "s3Location": location}])
    document = {
        "afr_ota": {
            "protocols": ["MQTT", "HTTP"],
            "streamname": STREAM,
            "files": [
                {
                    "filepath": "/fw.bin",
                    "filesize": len(FILE),
                    "fileid": 0,
                    "certfile": "signer.crt",
                    "sig-sha256-ecdsa": "AA==",
                }
            ],
        }
    }
    job, _ = server.jobs.create_job(
        JOB, [server.registry.thing_arn(THING)], document, config={HTTP_FILES: [{"fileId": 0, **location}]}
    )
    url = urlsplit(server.delivery.render(job, THING)["afr_ota"]["files"][0]["update_data_url"])
    query = dict(part.split("=", 1) for part in url.query.split("&"))
    der = x509.load_pem_x509_certificate(cert.pem.encode()).public_bytes(Encoding.DER)
    # As the server mounts it: the in-memory fast path in front of the routes.
    app = server.delivery.fast_app(Starlette(routes=server.delivery.routes() + server.device_shadows.routes()
                                             + server.device_jobs.routes()))
    return DeviceWorld(server, der, url.path, {k: unquote(v) for k, v in query.items()}, app)


def call_asgi(
    app: ASGIApp,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    cert_der: bytes | None,
) -> tuple[int, bytes]:
    """One HTTP request through the ASGI app; (status, body). `target` is the request
    target as sent (percent-encoded path and query, ASCII)."""
    raw_path, _, query = target.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("ascii"),
        "query_string": query.encode("ascii"),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8443),
        "extensions": {"tls": {"client_cert_chain": [cert_der] if cert_der else []}},
    }
    sent: list[MutableMapping[str, Any]] = []
    chunks = [body]

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(), "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await app(scope, receive, send)

    asyncio.run(call())
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body"
    )
