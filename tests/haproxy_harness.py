"""HAProxy (Debian's `haproxy`) as the TLS-passthrough TCP load balancer in front of the
brokers of several `overair serve` processes (docs/scaling.md, "Broker tier"): devices
connect to one address, HAProxy hands each connection to one node's Mosquitto, and TLS
(mutual, the device's certificate) stays end to end between device and Mosquitto.

`haproxy_config` renders the configuration docs/scaling.md shows (a test checks the two
agree); `running_haproxy` starts it in the foreground for a test.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HAPROXY = "/usr/sbin/haproxy"
START_SECONDS = 10.0


def haproxy_config(listen: str, nodes: Sequence[tuple[str, str]], *, maxconn: int = 100_000) -> str:
    """TCP mode, one frontend for the devices' MQTT over TLS, the brokers as backends.

    `leastconn` spreads a fleet connecting at once evenly; a node whose broker stops
    accepting TCP (checked every 500 ms) is marked down after 2 failures and its
    remaining sessions are cut (`on-marked-down shutdown-sessions`) so that devices
    reconnect at once; a connection whose node refuses it is retried on another
    (`retries`, `option redispatch`). The idle timeouts exceed MQTT keep-alives (FreeRTOS:
    60 s; the broker drops a silent client after 1.5 keep-alives anyway)."""
    servers = "\n".join(f"    server {name} {address}" for name, address in nodes)
    return f"""global
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    retries 2
    option redispatch

frontend mqtts
    bind {listen}
    default_backend brokers

backend brokers
    balance leastconn
    default-server check inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
{servers}
"""


@dataclass
class Haproxy:
    port: int
    process: subprocess.Popen[bytes]
    config: Path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def running_haproxy(root: Path, port: int, broker_ports: Sequence[int], *,
                    maxconn: int = 4_000) -> Iterator[Haproxy]:
    config = root / "haproxy.cfg"
    nodes = [(f"node-{i}", f"127.0.0.1:{p}") for i, p in enumerate(broker_ports)]
    config.write_text(haproxy_config(f"127.0.0.1:{port}", nodes, maxconn=maxconn))
    subprocess.run([HAPROXY, "-c", "-q", "-f", str(config)], check=True)
    with (root / "haproxy.log").open("wb") as log:
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {(root / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield Haproxy(port, process, config)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
