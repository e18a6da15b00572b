"""Build the platform a bundle's `[storage] platform` names."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from overair.agent.config import AgentConfig, ConfigError
from overair.agent.platform.base import Platform
from overair.agent.platform.linux_slots import LinuxSlots
from overair.agent.platform.sim_mcu.platform import ImageMeta, SimMcu, integrity_verifier, signature_verifier
from overair.agent.sealed_key import at_rest_key
from overair.core.codesign import TrustPolicy


def build_platform(config: AgentConfig, trust: Callable[[], TrustPolicy] | None) -> Platform:
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
        # P2: an image installed by an update boots only with its signature, by a signer
        # that chains to the current trust (revocations included). The factory image is
        # installed unsigned: it boots only if it is the bundle's factory image, whose
        # SHA-256 is pinned here, outside the flash (whoever can write the flash can
        # write the hash recorded in it, so that one proves nothing).
        assert trust is not None
        if meta.signature is None:
            return meta.sha256 == factory_sha256 and integrity_verifier(data, meta)
        return signature_verifier(trust(), require_signature=True)(data, meta)

    return SimMcu.open(storage.flash_file, device_secret=secret, unique_id=storage.unique_id,
                       image_capacity=storage.image_capacity,
                       verifier=None if trust is None else secure_boot,
                       max_boot_attempts=storage.max_boot_attempts)
