"""What the runtime needs from a message transport; MQTT is the one implementation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TransportCallbacks:
    """Called from the transport's own thread; they must only hand events over."""

    on_connected: Callable[[], None]
    on_disconnected: Callable[[str], None]
    on_message: Callable[[str, bytes], None]


class Transport(Protocol):
    def connect(self) -> None:
        """Start connecting in the background; reconnect on loss until `disconnect()`."""
        ...

    def disconnect(self) -> None: ...

    def subscribe(self, topic: str, qos: int) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int) -> None: ...

    def flush(self, timeout: float) -> bool:
        """Wait until QoS>0 publishes are acknowledged; False if some are still pending."""
        ...
