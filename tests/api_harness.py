"""Run the operator API (`build_api_app`) for tests: uvicorn on 127.0.0.1, a free port,
a background thread, a temporary SQLite database and object store, and one working
access key. Optionally over TLS with a throw-away self-signed certificate (current
boto3 only sends `aws-chunked` uploads with trailing checksums over https).

Use `running_api(tmp_dir, table)` as a context manager; `ApiServer.client(service)`
returns a real boto3 client pointed at it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import urllib3
import uvicorn
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.routing import BaseRoute

from overair.server.api.contract import Credential, OperationTable
from overair.server.api.edge import build_api_app
from overair.server.storage.blobs import BlobStore
from overair.server.storage.db import Database, migrate
from overair.server.storage.objects import ObjectStore

REGION = "us-east-1"
ACCESS_KEY = "AKIAOVERAIRTEST00001"
SECRET_KEY = "test-secret-key/0123456789abcdefghijklmnop"
INACTIVE_KEY = "AKIAOVERAIRINACTIVE1"
INACTIVE_SECRET = "inactive-secret-key/0123456789abcdefghijk"
USER_ARN = "arn:aws:iam::123456789012:user/tester"


@dataclass
class Clock:
    """The server's idea of now; shift `offset` to simulate skew or expiry."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class ApiServer:
    endpoint: str
    access_key: str
    secret_key: str
    table: OperationTable
    credentials: dict[str, Credential]
    objects: ObjectStore
    db: Database
    clock: Clock
    root: Path
    ca_file: str | None = None

    def client(self, service: str, *, access_key: str | None = None, secret_key: str | None = None,
               **config: Any) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
        )
        cfg = botocore.config.Config(retries={"max_attempts": 1}, **config)
        return session.client(service, endpoint_url=self.endpoint, config=cfg,
                              verify=self.ca_file if self.ca_file else True)

    def sign(self, method: str, path: str, *, service: str, body: bytes = b"",
             headers: dict[str, str] | None = None, secret_key: str | None = None) -> AWSRequest:
        """A request signed with botocore's signer (path may carry a query string)."""
        request = AWSRequest(method=method, url=self.endpoint + path, data=body, headers=headers or {})
        signer = S3SigV4Auth if service == "s3" else SigV4Auth
        signer(Credentials(self.access_key, secret_key or self.secret_key), service, REGION).add_auth(request)
        return request

    def send(self, method: str, url: str, *, body: bytes = b"",
             headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """Send a raw request (no retries, no redirects); returns whatever the server says."""
        pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED" if self.ca_file else "CERT_NONE",
                                   ca_certs=self.ca_file)
        return pool.request(method, url, body=body, headers=headers or {}, retries=False, redirect=False)

    def send_signed(self, request: AWSRequest) -> urllib3.BaseHTTPResponse:
        prepared = request.prepare()
        return self.send(prepared.method, prepared.url, body=prepared.body or b"",
                         headers=dict(prepared.headers.items()))


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextmanager
def running_api(tmp: Path, table: OperationTable | None = None, *, tls: bool = False,
                max_body_bytes: int = 4 * 1024 * 1024,
                extra_routes: list[BaseRoute] | None = None,
                blobs: BlobStore | None = None) -> Iterator[ApiServer]:
    """The operator API on a free port; the object store's bytes in `blobs` (default: a
    local directory under `tmp`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{tmp}/db.sqlite")
    migrate(db.engine)
    objects = ObjectStore(db, tmp / "objects", blobs=blobs)
    credentials = {
        ACCESS_KEY: Credential(ACCESS_KEY, SECRET_KEY, "tester", USER_ARN, True),
        INACTIVE_KEY: Credential(INACTIVE_KEY, INACTIVE_SECRET, "tester", USER_ARN, False),
    }
    table = table if table is not None else OperationTable()
    clock = Clock()
    app = build_api_app(table, credentials.get, objects, region=REGION, max_body_bytes=max_body_bytes,
                        now=clock, extra_routes=extra_routes)
    certfile: str | None = None
    keyfile: str | None = None
    if tls:
        cert, key = _self_signed(tmp)
        certfile, keyfile = str(cert), str(key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # As the real server (server/app.py): the edge, not uvicorn, decides on proxy headers.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2,
                            proxy_headers=False, ssl_certfile=certfile, ssl_keyfile=keyfile)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("API server did not start")
        time.sleep(0.01)
    scheme = "https" if tls else "http"
    try:
        yield ApiServer(
            endpoint=f"{scheme}://127.0.0.1:{port}",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            table=table,
            credentials=credentials,
            objects=objects,
            db=db,
            clock=clock,
            root=tmp,
            ca_file=certfile,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        db.close()
