"""Firmware version numbers as FreeRTOS encodes them: major<<24 | minor<<16 | build."""

from __future__ import annotations

from dataclasses import dataclass

from overair.core.asciinum import parse_uint
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
        numbers = [parse_uint(p, max_digits=5) for p in text.strip().split(".")]
        if len(numbers) != 3 or None in numbers:
            raise DecodeError(f"version must be MAJOR.MINOR.BUILD in ASCII digits, got {text[:64]!r}")
        major, minor, build = (n for n in numbers if n is not None)
        return cls(major, minor, build)

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
