"""Every shell example in README.md and docs/cli.md runs as written (issue 16, item 6).

The `sh` blocks are taken from README.md in order and run by bash in a fresh directory
(with this checkout's `.venv` linked in and on PATH, as after `scripts/dev setup`),
with only what a reader does in other terminals changed: `overair serve` and
`overair-agent run` go to the background (the test waits until the server answers
/health). The first block (`scripts/dev demo|test`) is CI itself and is left out. The
sequence is a new user's: init, serve, two devices and their agents, the AWS CLI, a wrapped
binary rolled out to both agents and watched to the end, IAM users, the audit log.

The examples use the README's default ports (8080, 8883, 8443): they must be free."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
BACKGROUND = re.compile(r"^(\S*(overair serve|overair-agent run)\b.*?)(\s+#.*)?$")
PORTS = (8080, 8883, 8443)


def readme_blocks() -> list[tuple[str, str]]:
    """(where, block) for every sh block of README.md, then of docs/cli.md (whose
    examples continue from the README's server)."""
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert blocks[0].startswith("scripts/dev"), "the README's first block is the set-up; it moved"
    found = [(f"README.md block {n}", block) for n, block in enumerate(blocks[1:], start=2)]
    found += [(f"docs/cli.md block {n}", block)
              for n, block in enumerate(BLOCK.findall((ROOT / "docs" / "cli.md").read_text()), start=1)]
    return found


def to_script(block: str) -> str:
    """The block as bash runs it, long-running commands sent to the background."""
    lines = []
    for line in block.splitlines():
        match = BACKGROUND.match(line)
        if match is None:
            lines.append(line)
            continue
        command = match[1]
        name = "serve" if "serve" in match[2] else "agent"
        lines.append(f"{command} > {name}.log 2>&1 & echo $! >> background.pids")
        if name == "serve":
            lines.append('"$PYTHON" "$WAIT_HEALTH"')
    return "set -euo pipefail\n" + "\n".join(lines) + "\n"


WAIT_HEALTH = """
import sys, time, urllib.request
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/health", timeout=2) as answer:
            if answer.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit("overair serve did not answer /health within 60 s: see serve.log")
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_every_readme_shell_example_runs_as_written(tmp_path: Path) -> None:
    busy = [port for port in PORTS if not _port_free(port)]
    assert not busy, f"the README's ports {busy} are taken on this machine"
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "wait_health.py").write_text(WAIT_HEALTH)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OVERAIR_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        HOME=str(tmp_path),
        PYTHON=sys.executable,
        WAIT_HEALTH=str(tmp_path / "wait_health.py"),
        COLUMNS="120",
    )
    started = time.monotonic()
    try:
        for where, block in readme_blocks():
            script = to_script(block)
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
            assert done.returncode == 0, (
                f"{where} failed:\n{block}\n--- stdout\n"
                f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}{logs}"
            )
    finally:
        pids = tmp_path / "background.pids"
        running = [int(pid) for pid in (pids.read_text().split() if pids.exists() else [])]
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30  # serve stops its broker on SIGTERM
        while running and time.monotonic() < deadline:
            running = [pid for pid in running if _alive(pid)]
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    print(f"\nREADME from init to a watched rollout and the audit checks: {elapsed:.1f} s")
    # (`overair ota watch` in the README exits non-zero unless every device SUCCEEDED.)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            ".venv/bin/overair serve --data-dir ./data           # API on 127.0.0.1:8080",
            ".venv/bin/overair serve --data-dir ./data > serve.log 2>&1 & echo $! >> background.pids",
        ),
        (
            ".venv/bin/overair-agent run --config ./dev-1/agent.toml",
            ".venv/bin/overair-agent run --config ./dev-1/agent.toml > agent.log 2>&1 "
            "& echo $! >> background.pids",
        ),
    ],
)
def test_long_running_commands_go_to_the_background(line: str, expected: str) -> None:
    assert to_script(line).splitlines()[1] == expected
    assert shlex.split(expected)[0].endswith(("overair", "overair-agent"))
