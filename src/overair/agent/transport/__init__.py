"""Transports: how the agent reaches the service (MQTT over mutual TLS)."""

from overair.agent.transport.base import Transport, TransportCallbacks

__all__ = ["Transport", "TransportCallbacks"]
