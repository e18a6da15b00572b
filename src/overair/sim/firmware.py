"""Firmware images for simulations and tests: deterministic bytes in the overair format."""

from __future__ import annotations

import hashlib

from overair.core.image import HEADER_SIZE, build_image
from overair.core.versions import Version


def make_firmware(version: Version, size: int, seed: int | str | bytes = 0, *,
                  security_counter: int = 0) -> bytes:
    """An overair image (core.image format) of `size` bytes in total, header included.

    The payload is a SHAKE-256 stream of the seed and the version, so the same arguments
    always give the same image and two versions never share a payload.
    `security_counter` goes in the header (anti-rollback epoch, core.image).
    """
    if size < HEADER_SIZE:
        raise ValueError(f"an image needs at least {HEADER_SIZE} bytes (its header)")
    seed_bytes = seed if isinstance(seed, bytes) else str(seed).encode()
    stream = hashlib.shake_256(b"overair-sim-firmware\0" + seed_bytes + b"\0" + str(version).encode())
    return build_image(version, stream.digest(size - HEADER_SIZE), security_counter)
