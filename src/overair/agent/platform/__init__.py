"""Platform layer (PAL): slot storage and boot selection behind one small protocol."""

from overair.agent.platform.base import BootInfo, Platform, PlatformError, SlotInfo
from overair.agent.platform.linux_slots import LinuxSlots
from overair.agent.platform.sim_mcu import SimMcu

__all__ = ["BootInfo", "LinuxSlots", "Platform", "PlatformError", "SimMcu", "SlotInfo"]
