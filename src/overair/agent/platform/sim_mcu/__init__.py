"""A simulated MCU: NOR flash with power-cut injection, a SimpleLink-style encrypted
file system on it, and `SimMcu`, a `Platform` with A/B + factory slots and secure boot."""

from overair.agent.platform.sim_mcu.efs import Efs, EfsAuthError, EfsError, EfsFile, derive_file_key
from overair.agent.platform.sim_mcu.flash import Flash, FlashError, PowerCut
from overair.agent.platform.sim_mcu.platform import (
    ImageMeta,
    SimMcu,
    Verifier,
    integrity_verifier,
    signature_verifier,
)

__all__ = ["Efs", "EfsAuthError", "EfsError", "EfsFile", "Flash", "FlashError", "ImageMeta", "PowerCut",
           "SimMcu", "Verifier", "derive_file_key", "integrity_verifier", "signature_verifier"]
