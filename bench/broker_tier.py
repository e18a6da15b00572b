"""The broker tier's cost: devices through HAProxy (TLS passthrough, TCP mode) against the
same devices straight to Mosquitto, in the same run (docs/scaling.md, "Broker tier").

One `overair serve` (its own Mosquitto, SQLite), N provisioned devices (bulk
registration), each its own mutual-TLS connection and certificate, in one child process
(bench/fleet_devices.py's non-blocking TLS links). For each path, direct and through
HAProxy in front of the broker:

- connect: every device connects at once (TCP, TLS handshake with its certificate,
  CONNECT, SUBSCRIBE `$next/get/accepted`); the time until the last SUBACK, as
  connections per second;
- requests: every device sends `$next/get` and waits for the server's answer, ROUNDS
  times (closed loop, all devices at once); round trip median / p99 and answers per
  second (the request goes device -> broker -> the server's service connection and back);
- HAProxy's CPU time over the run.

    .venv/bin/python -m bench.broker_tier [--devices 500] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import selectors
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from tests.haproxy_harness import running_haproxy
from tests.server_harness import free_port, running_server

from bench.fleet import BUCKET, GROUP, provision_bulk
from bench.fleet_devices import DeviceSpec, _context, _Link, _parse_publish, _raise_fd_limit
from bench.lean_devices import mqtt_publish_qos0
from bench.stream_throughput import _proc_cpu


@dataclass
class PathResult:
    connect_s: float = 0.0
    connected: int = 0
    round_trips: list[float] = field(default_factory=list)
    requests_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def devices_process(specs: list[DeviceSpec], ca: Path, port: int, rounds: int, conn: Connection) -> None:
    """Child process: connect every device at once, then `rounds` closed-loop requests."""
    _raise_fd_limit()
    selector = selectors.DefaultSelector()
    result = PathResult()
    links: dict[str, _Link] = {}
    started = time.perf_counter()
    for spec in specs:
        topic = f"$aws/things/{spec.thing}/jobs/$next/get/accepted"
        link = _Link(_context(ca, spec.cert, spec.key), "127.0.0.1", port, spec.thing, [(topic, 0)])
        links[spec.thing] = link
        selector.register(link.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, spec.thing)
    sent: dict[str, float] = {}
    left = dict.fromkeys(links, rounds)

    def ask(thing: str) -> None:
        sent[thing] = time.perf_counter()
        links[thing].send(mqtt_publish_qos0(f"$aws/things/{thing}/jobs/$next/get",
                                            json.dumps({"clientToken": thing}).encode()))

    requesting = 0.0
    deadline = time.perf_counter() + 300
    while (any(left.values()) or result.connected < len(links)) and time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=0.5):
            thing = key.data
            link = links[thing]
            was_ready = link.ready
            try:
                packets = link.advance()
            except (OSError, ConnectionError) as exc:
                result.errors.append(f"{thing}: {exc}")
                selector.unregister(link.sock)
                left[thing] = 0
                continue
            if link.ready and not was_ready:
                result.connected += 1
                if result.connected == len(links):
                    result.connect_s = time.perf_counter() - started
                    requesting = time.perf_counter()
                    for name in links:
                        ask(name)
            for first, body in packets:
                if first & 0xF0 == 0x30 and _parse_publish(first, body)[0].endswith("/accepted") \
                        and thing in sent:
                    result.round_trips.append(time.perf_counter() - sent.pop(thing))
                    left[thing] -= 1
                    if left[thing]:
                        ask(thing)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.wants_write() else 0)
            selector.modify(link.sock, events, thing)
    result.requests_s = time.perf_counter() - requesting if requesting else 0.0
    for link in links.values():
        link.close()
    conn.send(result)


def run_path(specs: list[DeviceSpec], ca: Path, port: int, rounds: int) -> PathResult:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=devices_process, args=(specs, ca, port, rounds, child), daemon=True)
    process.start()
    if not parent.poll(400):
        raise RuntimeError("the devices did not finish")
    result: PathResult = parent.recv()
    process.join(10)
    return result


def describe(name: str, result: PathResult, devices: int, cpu: float | None = None) -> str:
    trips = sorted(result.round_trips)
    p99 = trips[min(len(trips) - 1, int(len(trips) * 0.99))] if trips else 0.0
    median = statistics.median(trips) if trips else 0.0
    rate = devices / result.connect_s if result.connect_s else 0.0
    answers = len(trips) / result.requests_s if result.requests_s else 0.0
    line = (f"{name:>16}: {devices} connected in {result.connect_s:.2f} s ({rate:.0f}/s); "
            f"{len(trips)} requests in {result.requests_s:.2f} s ({answers:.0f}/s), "
            f"round trip median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    if cpu is not None:
        line += f"; HAProxy CPU {cpu:.2f} s"
    if result.errors:
        line += f"; {len(result.errors)} errors, e.g. {result.errors[0]}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="overair-broker-tier-") as tmp:
        root = Path(tmp)
        with running_server(root / "server") as srv:
            srv.client("s3").create_bucket(Bucket=BUCKET)
            srv.client("iot").create_thing_group(thingGroupName=GROUP)
            specs = provision_bulk(srv, root / "devices", args.devices).specs
            ca = srv.settings.paths.fleet_ca_cert
            with running_haproxy(root, free_port(), [srv.settings.mqtt_port]) as balancer:
                results = []
                for attempt in range(2):  # alternate, twice, so that neither gets the warm machine only
                    direct = run_path(specs, ca, srv.settings.mqtt_port, args.rounds)
                    cpu0 = _proc_cpu(balancer.process.pid)
                    via = run_path(specs, ca, balancer.port, args.rounds)
                    cpu = _proc_cpu(balancer.process.pid) - cpu0
                    results.append((direct, via, cpu))
                    print(describe(f"direct #{attempt + 1}", direct, args.devices), flush=True)
                    print(describe(f"HAProxy #{attempt + 1}", via, args.devices, cpu), flush=True)


if __name__ == "__main__":
    main()
