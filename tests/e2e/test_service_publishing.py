"""The service writes runs of QoS 1 messages (a job's notifications) as one write of
packets it frames itself (gateway/mqtt_driver.py `_write_qos1`): through the real broker
a device receives every message of a run, in order, and every PUBACK frees what the
service kept for a resend (gmqtt's store of unacknowledged packets and their ids)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from overair.server.gateway.device_service import Outgoing
from tests.mqtt_peer import WAIT, MqttPeer
from tests.server_harness import RunningServer

THING = "qos1-run"


def _device_tls(bundle: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(bundle / "root-ca.pem"))
    context.load_cert_chain(str(bundle / "device.crt"), str(bundle / "device.key"))
    return context


def test_a_run_of_qos1_messages_reaches_the_device_in_order_and_every_puback_frees_its_packet(
        srv: RunningServer, tmp_path: Path) -> None:
    bundle = srv.provision(THING, tmp_path / THING)
    device = MqttPeer(_device_tls(bundle), srv.settings.mqtt_port, THING)
    try:
        device.subscribe(f"$aws/things/{THING}/jobs/notify")
        service = srv.server.connection
        assert service is not None
        topic = f"$aws/things/{THING}/jobs/notify"
        run = [Outgoing(topic, f'{{"n":{i}}}'.encode() + b" " * (i * 37), 1) for i in range(300)]
        service.publish_threadsafe(run)
        device.wait_until(lambda received: len(received) >= len(run), "the whole run")
        assert device.received == [(m.topic, m.payload) for m in run]
        client = service._client
        loop = service._loop
        assert loop is not None
        asyncio.run_coroutine_threadsafe(client._persistent_storage.wait_empty(), loop).result(WAIT)
        assert client._connection._protocol.id_generator._used_ids == set()
    finally:
        device.close()
