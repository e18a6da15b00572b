"""A raw HTTPS request to the device endpoint with a device's certificate: bodies and
paths boto3 would never send (tests/e2e/test_device_jobs_api.py,
tests/e2e/test_device_shadow_https.py)."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any

from tests.server_harness import RunningServer


def device_request(srv: RunningServer, bundle: Path, method: str, path: str,
                   body: bytes) -> tuple[int, dict[str, Any]]:
    """The status and the decoded JSON answer (empty: {})."""
    context = ssl.create_default_context(cafile=str(srv.settings.paths.fleet_ca_cert))
    context.load_cert_chain(str(bundle / "device.crt"), str(bundle / "device.key"))
    connection = http.client.HTTPSConnection("localhost", srv.settings.download_port, context=context,
                                             timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()
