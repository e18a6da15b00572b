"""HAProxy (Debian's `haproxy`) as the TLS-passthrough TCP load balancer in front of
several `overair serve` processes (docs/scaling.md, "Broker tier"): devices connect to
one address, HAProxy hands each MQTT connection to one node's Mosquitto and each HTTPS
download connection to one node's download endpoint, and TLS (mutual, the device's
certificate) stays end to end between the device and the node.

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


def haproxy_config(listen: str, nodes: Sequence[tuple[str, str]], *, maxconn: int = 100_000,
                   downloads: tuple[str, Sequence[tuple[str, str]]] | None = None) -> str:
    """TCP mode, one frontend for the devices' MQTT over TLS, the brokers as backends;
    with `downloads` (its listen address, the nodes' download endpoints), a second one
    for the devices' HTTPS downloads (the pre-signed URLs name the balancer:
    `download_public_url`), the nodes' `download_port`s as backends.

    `leastconn` spreads a fleet connecting at once evenly; a node whose broker (or
    download endpoint) stops accepting TCP (checked every 500 ms) is marked down after 2
    failures and its remaining sessions are cut (`on-marked-down shutdown-sessions`) so
    that devices reconnect at once; a connection whose node refuses it is retried on
    another (`retries`, `option redispatch`). The idle timeouts exceed MQTT keep-alives
    (FreeRTOS: 60 s; the broker drops a silent client after 1.5 keep-alives anyway). Any
    node serves any download URL: the URL-signing key and the object store are shared."""
    frontends = [("mqtts", listen, "brokers", nodes)]
    if downloads is not None:
        frontends.append(("https", downloads[0], "downloads", downloads[1]))
    sections = [f"frontend {name}\n    bind {address}\n    default_backend {backend}\n"
                for name, address, backend, _ in frontends]
    sections += [f"backend {backend}\n    balance leastconn\n"
                 f"    default-server check inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions\n"
                 + "".join(f"    server {name} {address}\n" for name, address in servers)
                 for _, _, backend, servers in frontends]
    return f"""global
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    retries 2
    option redispatch

""" + "\n".join(sections)


@dataclass
class Haproxy:
    port: int  # the devices' MQTT
    download_port: int  # their HTTPS downloads (0: no such frontend)
    process: subprocess.Popen[bytes]
    config: Path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def running_haproxy(root: Path, port: int, broker_ports: Sequence[int], *, maxconn: int = 4_000,
                    download_port: int = 0, download_ports: Sequence[int] = ()) -> Iterator[Haproxy]:
    """MQTT on `port` to `broker_ports`; with `download_port`, HTTPS downloads on it to
    `download_ports` (the same nodes, in the same order)."""
    config = root / "haproxy.cfg"
    nodes = [(f"node-{i}", f"127.0.0.1:{p}") for i, p in enumerate(broker_ports)]
    endpoints = [(f"node-{i}", f"127.0.0.1:{p}") for i, p in enumerate(download_ports)]
    downloads = (f"127.0.0.1:{download_port}", endpoints) if download_port else None
    config.write_text(haproxy_config(f"127.0.0.1:{port}", nodes, maxconn=maxconn, downloads=downloads))
    subprocess.run([HAPROXY, "-c", "-q", "-f", str(config)], check=True)
    with (root / "haproxy.log").open("wb") as log:
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not all(_accepts(p) for p in (port, download_port) if p):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {(root / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield Haproxy(port, download_port, process, config)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
