"""Simulation: a fleet of real agents in one process, and firmware images to feed it."""

from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet

__all__ = ["Fleet", "make_firmware"]
