"""Reads the compatibility matrix (docs/compatibility.md) into sets of operations.

Per service section (`## <service>`): table rows whose first cell names operations in
backticks and whose second cell is `yes` or `no`, and `Not supported:` lines listing
operations in backticks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MATRIX = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"
SERVICES = ("iot", "iot-jobs-data", "iot-data", "signer", "acm", "iam", "sts", "s3", "overair")
_NAME = re.compile(r"`([A-Za-z0-9]+)`")


@dataclass
class Matrix:
    supported: dict[str, set[str]] = field(default_factory=dict)
    unsupported: dict[str, set[str]] = field(default_factory=dict)
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    def _add(self, into: dict[str, set[str]], service: str, names: list[str]) -> None:
        for name in names:
            if name in self.supported.get(service, set()) | self.unsupported.get(service, set()):
                self.duplicates.append((service, name))
            into.setdefault(service, set()).add(name)


def read_matrix(text: str | None = None) -> Matrix:
    matrix = Matrix()
    service: str | None = None
    for line in (MATRIX.read_text() if text is None else text).splitlines():
        heading = re.fullmatch(r"## (\S+)", line.strip())
        if heading:
            service = heading.group(1) if heading.group(1) in SERVICES else None
            continue
        if service is None:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and cells[1] in ("yes", "no"):
            target = matrix.supported if cells[1] == "yes" else matrix.unsupported
            matrix._add(target, service, _NAME.findall(cells[0]))
        elif line.startswith("Not supported:"):
            matrix._add(matrix.unsupported, service, _NAME.findall(line))
    return matrix
