"""Build the platform a bundle's `[storage] platform` names."""

from __future__ import annotations

from collections.abc import Callable

from overair.agent.config import AgentConfig, ConfigError
from overair.agent.platform.base import Platform
from overair.agent.platform.linux_slots import LinuxSlots
from overair.agent.platform.sim_mcu.platform import ImageMeta, SimMcu, signature_verifier
from overair.agent.sealed_key import at_rest_key
from overair.core.codesign import TrustPolicy


def build_platform(config: AgentConfig, trust: Callable[[], TrustPolicy] | None) -> Platform:
    """`trust` is read at every boot, so a revocation list received since is honoured;
    None (read-only tools such as `status`) checks images for integrity only."""
    storage = config.storage
    if storage.platform != "sim_mcu":
        return LinuxSlots(storage.data_dir, max_boot_attempts=storage.max_boot_attempts,
                          key=at_rest_key(config))
    if storage.flash_file is None or storage.device_secret_file is None:
        raise ConfigError(f"{config.source}: [storage] sim_mcu needs flash_file and device_secret_file")
    try:
        secret = storage.device_secret_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{config.source}: [storage] device_secret_file: {exc}") from exc

    def secure_boot(data: bytes, meta: ImageMeta) -> bool:
        # Images installed by an update carry their signature (checked against the
        # current trust); the factory image, installed unsigned, is held to its hash.
        assert trust is not None
        return signature_verifier(trust(), require_signature=False)(data, meta)

    return SimMcu.open(storage.flash_file, device_secret=secret, unique_id=storage.unique_id,
                       image_capacity=storage.image_capacity,
                       verifier=None if trust is None else secure_boot,
                       max_boot_attempts=storage.max_boot_attempts)
