"""The systemd units in deploy/systemd (issue 16, item 5) are valid as systemd reads
them (`systemd-analyze verify`: no error, no warning), run overair as its own non-root
user with a private 0700 state directory, and start the programs this checkout installs
(the units' /opt/overair paths are pointed at this virtualenv for the check)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("unit", "instance", "user"),
    [
        ("overair.service", "overair.service", "overair"),
        ("overair-agent@.service", "overair-agent@dev-1.service", "overair-agent"),
    ],
)
def test_unit_verifies_cleanly_and_runs_unprivileged(
    tmp_path: Path, unit: str, instance: str, user: str
) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: scripts/dev installs Debian's systemd"
    text = (UNITS / unit).read_text()
    (tmp_path / unit).write_text(text.replace("/opt/overair/bin/", f"{BIN}/"))
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / instance)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # unknown keys are only warnings: none allowed
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["User"] == user
    assert settings["StateDirectoryMode"] == "0700"
    assert settings["UMask"] == "0077"
    assert settings["NoNewPrivileges"] == "yes"
    assert "--log-format json" in settings["ExecStart"]
