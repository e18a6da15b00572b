"""The overair device agent: a FreeRTOS-compatible OTA agent for Linux devices.

Layers: `machine/` is the pure state machine; `platform/` stores images and picks the
boot image; `transport/` talks MQTT; `runtime.py` drives them. The agent depends on
`overair.core` only, never on the server.
"""

from overair.agent.config import AgentConfig, ConfigError, load_config
from overair.agent.runtime import AgentSnapshot, Runtime

__all__ = ["AgentConfig", "AgentSnapshot", "ConfigError", "Runtime", "load_config"]
