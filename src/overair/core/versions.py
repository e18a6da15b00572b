"""Firmware version numbers as FreeRTOS encodes them: major<<24 | minor<<16 | build."""

from __future__ import annotations

from dataclasses import dataclass

from overair.core.errors import DecodeError


@dataclass(frozen=True, order=True, slots=True)
class Version:
    major: int
    minor: int
    build: int

    def __post_init__(self) -> None:
        if not (0 <= self.major <= 0xFF and 0 <= self.minor <= 0xFF and 0 <= self.build <= 0xFFFF):
            raise DecodeError(f"version {self.major}.{self.minor}.{self.build} out of range")

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse `1.2.3` (the form operators write)."""
        parts = text.strip().split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise DecodeError(f"version must be MAJOR.MINOR.BUILD, got {text!r}")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))

    @classmethod
    def from_u32(cls, value: int) -> Version:
        if not 0 <= value <= 0xFFFFFFFF:
            raise DecodeError(f"version word {value} out of range")
        return cls(value >> 24, (value >> 16) & 0xFF, value & 0xFFFF)

    def to_u32(self) -> int:
        return (self.major << 24) | (self.minor << 16) | self.build

    def hex(self) -> str:
        """The `0x%08x` form the FreeRTOS agent puts in `updatedBy`."""
        return f"0x{self.to_u32():08x}"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"
