#!/usr/bin/env python3
"""Event messages with plain boto3 and paho: turn registry and job events on
(UpdateEventConfigurations), create an event reader (overair's CreateEventReader: a
certificate that may read `$aws/events/#` and nothing else; AWS would use an IoT policy),
subscribe with it, make a thing and delete it, and print every event until the thing's
`deleted` event arrives. The reader is revoked at the end.

With the administrator's keys (as boto3 finds them), the API endpoint and the broker:

    OVERAIR_ENDPOINT=http://127.0.0.1:8080 python examples/events_reader_boto3.py --mqtt-port 8883
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from overair.apimodels import MODELS_DIR  # the model of overair's own operations, for boto3


def clients(endpoint: str) -> tuple[Any, Any]:
    core = botocore.session.get_session()
    core.get_component("data_loader").search_paths.append(str(MODELS_DIR))
    session = boto3.Session(botocore_session=core)
    return session.client("iot", endpoint_url=endpoint), session.client("overair", endpoint_url=endpoint)


def connect(reader: dict[str, Any], host: str, port: int,
            files: Path) -> tuple[mqtt.Client, queue.Queue[Any]]:
    for name, member in (("reader.crt", "CertificatePem"), ("reader.key", "PrivateKeyPem"),
                         ("root-ca.pem", "RootCaPem")):
        (files / name).write_text(reader[member])
    os.chmod(files / "reader.key", 0o600)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(files / "root-ca.pem"))
    context.load_cert_chain(str(files / "reader.crt"), str(files / "reader.key"))
    received: queue.Queue[Any] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=reader["ClientId"], protocol=mqtt.MQTTv311)
    client.tls_set_context(context)
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(reader["TopicFilter"], qos=1)
    client.on_subscribe = lambda _c, _u, _m, codes, _p: received.put(("subscribed", codes))
    client.on_message = lambda _c, _u, message: received.put((message.topic, json.loads(message.payload)))
    client.connect(host, port, keepalive=30)
    client.loop_start()
    return client, received


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=os.environ.get("OVERAIR_ENDPOINT", "http://127.0.0.1:8080"))
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=8883)
    parser.add_argument("--reader", default="example-reader")
    parser.add_argument("--thing", default="events-example-thing")
    args = parser.parse_args()

    iot, overair = clients(args.endpoint)
    iot.update_event_configurations(eventConfigurations={
        name: {"Enabled": True} for name in ("THING", "THING_GROUP_MEMBERSHIP", "JOB", "JOB_EXECUTION")})
    reader = overair.create_event_reader(Name=args.reader)
    try:
        with tempfile.TemporaryDirectory() as files:
            client, received = connect(reader, args.mqtt_host, args.mqtt_port, Path(files))
            try:
                topic, codes = received.get(timeout=30)
                if topic != "subscribed" or any(code.is_failure for code in codes):
                    print(f"the subscription was refused: {codes}", file=sys.stderr)
                    return 1
                iot.create_thing(thingName=args.thing, attributePayload={"attributes": {"site": "example"}})
                iot.delete_thing(thingName=args.thing)
                while True:
                    topic, payload = received.get(timeout=30)
                    print(topic, json.dumps(payload))
                    if topic == f"$aws/events/thing/{args.thing}/deleted":
                        return 0
            except queue.Empty:
                print("no event arrived within 30 s", file=sys.stderr)
                return 1
            finally:
                client.disconnect()
                client.loop_stop()
    finally:
        overair.revoke_event_reader(Name=args.reader)


if __name__ == "__main__":
    sys.exit(main())
