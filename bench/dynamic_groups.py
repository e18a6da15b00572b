"""What dynamic thing groups cost device traffic: shadow updates per second from real
devices with no dynamic group and with G of them, and what the membership worker spends
per changed thing.

    .venv/bin/python -m bench.dynamic_groups [--things 2000] [--devices 4] [--groups 5] [--seconds 10]
                                             [--rounds 3]

A real server runs (API, device service, its own Mosquitto) on a fresh SQLite data
directory, its devices' shadow-update budget lifted (10/s per device by default) so that
D devices can load it fully, with N things inserted directly (half `zone:hot`, with a
classic shadow each). D provisioned devices (mutual TLS, their own certificates) each
run a closed loop: publish `$aws/things/<thing>/shadow/update` with a random battery
level, wait for `update/accepted`, repeat, for S seconds.

Measured:
- shadow updates accepted per second, all devices together, with no dynamic group (the
  limit, same run) and with G dynamic groups (phases alternated, `--rounds` times; the
  groups deleted and created again between rounds) whose queries read the battery level (so
  the devices' updates move them in and out: the worst case); the ratio of the two;
- how long after the devices stop the worker has caught up (membership current);
- the worker's cost per changed thing: all N things marked changed at once, the time
  until it is idle, divided by N (documents built as SearchIndex builds them, every
  group's query matched, differences written);
- that each group's members then equal SearchIndex's answer for its query.

Left out: PostgreSQL, more than one server, CONTINUOUS jobs on the groups (a join costs
what AddThingToThingGroup costs a static group's CONTINUOUS jobs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import ssl
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import insert
from tests.server_harness import RunningServer, free_port

from overair.cli.client import ApiClients
from overair.server.app import ServerThread
from overair.server.bootstrap import initialize
from overair.server.settings import load_settings
from overair.server.storage.schema import Thing, ThingShadow

CHUNK = 2000


@contextmanager
def unthrottled_server(data_dir: Path) -> Iterator[RunningServer]:
    """A real server whose devices' shadow-update budget (10/s each) is lifted, so a few
    devices can load it to its capacity."""
    initialize(data_dir, http_port=free_port(), mqtt_port=free_port(), download_port=free_port())
    settings = load_settings(data_dir)
    settings = dataclasses.replace(settings, limits=dataclasses.replace(
        settings.limits, device_job_updates_burst=1_000_000, device_job_updates_per_second=1_000_000.0))
    thread = ServerThread(settings)
    thread.start()
    try:
        yield RunningServer(settings, thread, ApiClients.from_data_dir(data_dir))
    finally:
        thread.stop()


def bulk_fleet(srv: RunningServer, count: int) -> None:
    now = time.time()
    for base in range(0, count, CHUNK):
        names = [f"fleet-{i}" for i in range(base, min(base + CHUNK, count))]
        things = [{"name": n, "thing_id": uuid.uuid4().hex, "arn": srv.settings.arn("iot", f"thing/{n}"),
                   "thing_type_name": None, "attributes": {"zone": "hot" if i % 2 else "cold"},
                   "version": 1, "created_at": now} for i, n in enumerate(names)]
        shadows = [{"thing_name": n, "shadow_name": "", "desired": {}, "reported": {"battery": i % 100},
                    "metadata_": {}, "version": 1, "present": True, "updated_at": now}
                   for i, n in enumerate(names)]
        with srv.server.db.session() as s:
            s.execute(insert(Thing), things)
            s.execute(insert(ThingShadow), shadows)


class ShadowDevice:
    """A device in a closed loop of shadow updates (one in flight at a time)."""

    def __init__(self, srv: RunningServer, bundle: Path, thing: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(bundle / "root-ca.pem"))
        context.load_cert_chain(str(bundle / "device.crt"), str(bundle / "device.key"))
        self.thing = thing
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing, protocol=mqtt.MQTTv311)
        self.client.tls_set_context(context)
        self.accepted = threading.Event()
        self.connected = threading.Event()
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_message = lambda _c, _u, _m: self.accepted.set()
        self.client.connect("127.0.0.1", srv.settings.mqtt_port, keepalive=60)
        self.client.loop_start()
        if not self.connected.wait(30):
            raise RuntimeError(f"{thing} could not connect")
        self.client.subscribe(f"$aws/things/{thing}/shadow/update/accepted", 1)
        time.sleep(0.3)
        self.count = 0

    def run(self, until: float, seed: int) -> None:
        rng = random.Random(seed)
        topic = f"$aws/things/{self.thing}/shadow/update"
        while time.monotonic() < until:
            self.accepted.clear()
            payload = json.dumps({"state": {"reported": {"battery": rng.randrange(100)}}})
            self.client.publish(topic, payload, qos=1)
            if not self.accepted.wait(10):
                raise RuntimeError(f"{self.thing}: no update/accepted within 10 s")
            self.count += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def updates_per_second(devices: list[ShadowDevice], seconds: float) -> float:
    for device in devices:
        device.count = 0
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=d.run, args=(until, i)) for i, d in enumerate(devices)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(d.count for d in devices) / (time.monotonic() - started)


def wait_idle(srv: RunningServer, timeout: float = 600) -> float:
    """Seconds until the membership worker has nothing left to do."""
    started = time.monotonic()
    time.sleep(0.05)
    while not srv.server.dynamic_groups.idle():
        if time.monotonic() - started > timeout:
            raise RuntimeError("the membership worker did not catch up")
        time.sleep(0.01)
    return time.monotonic() - started


def _all_pages(call: Any, key: str, **params: Any) -> list[Any]:
    items: list[Any] = []
    token = ""
    while True:
        page = call(**params, **({"nextToken": token} if token else {}))
        items += page[key]
        token = page.get("nextToken", "")
        if not token:
            return items


def check_membership(srv: RunningServer, queries: list[str]) -> None:
    """Each group's members are SearchIndex's answer for its query."""
    iot = srv.client("iot")
    for g, query in enumerate(queries):
        members = _all_pages(iot.list_things_in_thing_group, "things", thingGroupName=f"bench-dyn-{g}",
                             maxResults=250)
        found = [t["thingName"] for t in _all_pages(iot.search_index, "things", queryString=query,
                                                      maxResults=500)]
        if sorted(members) != sorted(found):
            raise RuntimeError(f"bench-dyn-{g}: members differ from SearchIndex's answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--things", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--groups", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, unthrottled_server(Path(tmp) / "server") as srv:
        iot = srv.client("iot")
        bulk_fleet(srv, args.things)
        names = [f"bench-dev-{i}" for i in range(args.devices)]
        devices = [ShadowDevice(srv, srv.provision(n, Path(tmp) / n), n) for n in names]
        try:
            print(f"{args.things} things, {args.devices} devices, {args.seconds:.0f} s per phase")
            updates_per_second(devices, 2)  # warm up
            queries = [f"shadow.reported.battery>{(g + 1) * 100 // (args.groups + 1)}" if g % 2 == 0 else
                       f"attributes.zone:hot AND shadow.reported.battery<{(g + 1) * 100 // (args.groups + 1)}"
                       for g in range(args.groups)]
            bases, loads, lags = [], [], []
            for _round in range(args.rounds):  # alternated: the shared machine's load drifts
                bases.append(updates_per_second(devices, args.seconds))
                started = time.monotonic()
                for g, query in enumerate(queries):
                    iot.create_dynamic_thing_group(thingGroupName=f"bench-dyn-{g}", queryString=query)
                wait_idle(srv)
                built = time.monotonic() - started
                loads.append(updates_per_second(devices, args.seconds))
                lags.append(wait_idle(srv))
                if _round < args.rounds - 1:
                    for g in range(args.groups):
                        iot.delete_dynamic_thing_group(thingGroupName=f"bench-dyn-{g}")
            base, loaded = statistics.median(bases), statistics.median(loads)
            print(f"  shadow updates/s, no dynamic group (limit)     {base:10.1f}   "
                  f"({', '.join(f'{b:.1f}' for b in bases)})")
            print(f"  shadow updates/s, {args.groups} dynamic groups            {loaded:10.1f}   "
                  f"({', '.join(f'{b:.1f}' for b in loads)})   ratio {loaded / base:5.2f}")
            print(f"  {args.groups} groups built from {args.things + args.devices} things in {built:8.2f} s")
            print(f"  worker caught up after the devices stopped in  {max(lags) * 1000:8.1f} ms (at most)")
            started = time.monotonic()
            srv.server.dynamic_groups.touch([f"fleet-{i}" for i in range(args.things)])
            spent = wait_idle(srv)
            print(f"  worker cost per changed thing ({args.groups} groups)     "
                  f"{spent / args.things * 1e6:8.1f} µs   ({args.things} things in {spent:.2f} s)")
            check_membership(srv, queries)
            print("  every group's members equal SearchIndex's answer for its query")
        finally:
            for device in devices:
                device.close()


if __name__ == "__main__":
    main()
