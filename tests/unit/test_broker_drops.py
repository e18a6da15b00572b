"""Mosquitto drops messages to a client that falls `max_queued_messages` packets behind
and says so once per episode in its log. For overair's own service connection that means
lost device requests and status updates: the server must not stay silent about it."""

from __future__ import annotations

import logging
from pathlib import Path

from overair.server.gateway.broker import Broker
from overair.server.gateway.broker_log import dropping_client
from overair.server.pki import SERVICE_IDENTITY


def test_the_notice_line_names_the_client_with_or_without_a_timestamp() -> None:
    line = "Outgoing messages are being dropped for client overair.service."
    assert dropping_client(line) == "overair.service"
    assert dropping_client("1765000000: Outgoing messages are being dropped for client dev-7.") == "dev-7"
    assert dropping_client("Outgoing messages are being dropped for client dev-7") is None
    assert dropping_client("New client connected from 127.0.0.1:5 as dev-7 (p2, c1, k60).") is None


def test_drops_to_the_service_are_counted_and_logged_as_errors(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []
    keep = logging.Handler(logging.WARNING)
    keep.emit = records.append  # type: ignore[method-assign,assignment]
    # Its own handler and level: other tests in the same process reconfigure logging.
    logger = logging.getLogger("overair.broker")
    saved = logger.level, logger.disabled
    logger.addHandler(keep)
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    try:
        broker = Broker(tmp_path, "mosquitto", "127.0.0.1", 1)
        broker._dropping("dev-7")
        assert broker.service_drops == 0
        broker._dropping(SERVICE_IDENTITY)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(saved[0])
        logger.disabled = saved[1]
    assert broker.service_drops == 1
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "dropping device messages to the service" in errors[0].getMessage()
    assert any("dev-7" in r.getMessage() and r.levelno == logging.WARNING for r in records)
