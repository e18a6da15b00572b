"""Build the platform a bundle's `[storage] platform` names."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from overair.agent.config import AgentConfig, ConfigError
from overair.agent.platform.base import Platform
from overair.agent.platform.linux_slots import LinuxSlots
from overair.agent.platform.sim_mcu.platform import ImageMeta, SimMcu, integrity_verifier
from overair.agent.sealed_key import at_rest_key
from overair.agent.trust import DeviceTrust


def build_platform(config: AgentConfig, trust: Callable[[], DeviceTrust] | None) -> Platform:
    """`trust` is read at every boot, so a revocation list received since is honoured;
    None (read-only tools such as `status`) checks images for integrity only. With a
    trust, secure boot (sim_mcu) requires every image to be signed, except the bundle's
    `factory_image`, pinned by its SHA-256."""
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

    factory_sha256 = None
    if storage.factory_image is not None and trust is not None:
        try:
            factory_sha256 = hashlib.sha256(storage.factory_image.read_bytes()).digest()
        except OSError as exc:
            raise ConfigError(f"{config.source}: [storage] factory_image: {exc}") from exc

    def secure_boot(data: bytes, meta: ImageMeta) -> bool:
        # P2: the platform checks integrity (the bytes are the ones recorded at
        # installation); the trust held now decides whether they may run
        # (agent/trust.py: signature, chain, revocation; the factory image by its
        # SHA-256 pinned here, outside the flash).
        assert trust is not None
        return integrity_verifier(data, meta) and trust().admit_boot(meta, factory_sha256=factory_sha256)

    return SimMcu.open(storage.flash_file, device_secret=secret, unique_id=storage.unique_id,
                       image_capacity=storage.image_capacity,
                       verifier=None if trust is None else secure_boot,
                       max_boot_attempts=storage.max_boot_attempts)
