"""The device's MQTT private key, encrypted at rest on Linux (threats P1, P3).

With `[storage] device_secret_file` on the Linux platform, the agent keeps the private
key of its client certificate as an encrypted PKCS#8 PEM whose password is derived
from the device secret and the machine id (platform/at_rest.py). A plaintext key from
a freshly unpacked bundle is sealed in place at the first start; from then on the file
holds no key material in the clear, and a copy of the bundle on another machine
cannot open it: the agent refuses to start there with a clear error.

The key stays in a PEM file because Python's TLS stack loads keys from files; it only
ever gets the password, in memory.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import replace

from cryptography.hazmat.primitives import serialization

from overair.agent.config import AgentConfig, ConfigError
from overair.agent.fsutil import atomic_write
from overair.agent.platform.at_rest import IMAGES, TLS_KEY, derive_key

log = logging.getLogger("overair.agent.keys")


def at_rest_key(config: AgentConfig, purpose: bytes = IMAGES) -> bytes | None:
    """The Linux platform's at-rest key for `purpose`; None without a device secret."""
    storage = config.storage
    if storage.platform != "linux" or storage.device_secret_file is None:
        return None
    try:
        secret = storage.device_secret_file.read_bytes()
        machine_id = storage.machine_id_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{config.source}: [storage] the device secret or machine id is unreadable: "
                          f"{exc}") from exc
    try:
        return derive_key(secret, machine_id, purpose)
    except ValueError as exc:
        raise ConfigError(f"{config.source}: [storage] {exc}") from exc


def prepare_client_key(config: AgentConfig) -> AgentConfig:
    """Seal a plaintext client key, check the key opens, and return the configuration
    with the password to load it (unchanged when there is no device secret)."""
    key = at_rest_key(config, TLS_KEY)
    if key is None:
        return config
    password = base64.b64encode(key)
    path = config.mqtt.client_key
    where = f"{config.source}: [mqtt] client_key {path}"
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # encrypted: it must open with this device's password
        try:
            serialization.load_pem_private_key(pem, password=password)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where} does not decrypt on this device (a copy from another device, or "
                              "the device secret or machine id changed); refusing to start") from exc
    except ValueError as exc:
        raise ConfigError(f"{where} is not a readable private key: {exc}") from exc
    else:
        sealed = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(password))
        atomic_write(path, sealed)
        log.info("sealed the private key %s under the device key (it was stored in the clear)", path)
    return replace(config, mqtt=replace(config.mqtt, client_key_password=password))
