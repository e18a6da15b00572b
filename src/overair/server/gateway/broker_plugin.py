"""Build overair's Mosquitto access plugin (plugin/overair_access.c) for the broker that
`overair serve` runs.

Mosquitto 2.0 loads plugins as shared objects and Debian ships no way to load Python,
so the plugin is C, built here on first use with the system's C compiler against
Debian's `mosquitto-dev`, `libmosquitto-dev` and `libssl-dev` headers (what it does and
why: the comment at the top of the source, and docs/compatibility.md, "MQTT"). The
result is kept in the broker's directory under a name carrying the source's hash, so it
is built once per overair version and never loaded stale.

When it cannot be built (no compiler or headers), `build_plugin` says why and the broker
runs without it: device security is the same (the client id is then forced to the
certificate's subject), but the MQTT behaviours the plugin adds are missing; the server
logs that at every start and /health reports it (`brokerAccess`).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger("overair.broker")
SOURCE_NAME = "overair_access.c"
# What Debian calls the packages the build needs (docs/security.md, "Devices (N4)").
BUILD_PACKAGES = "gcc mosquitto-dev libmosquitto-dev libssl-dev"
BUILD_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class PluginBuild:
    path: Path | None  # the shared object, or None when it could not be built
    reason: str = ""  # why not

    @property
    def available(self) -> bool:
        return self.path is not None


def plugin_source() -> bytes:
    return resources.files("overair.server.gateway").joinpath("plugin", SOURCE_NAME).read_bytes()


def build_plugin(directory: Path, compiler: str = "cc") -> PluginBuild:
    """The plugin built into `directory` (reused when already built from this source)."""
    source = plugin_source()
    target = directory / f"overair_access-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.is_file():
        return PluginBuild(target)
    found = shutil.which(compiler)
    if found is None:
        return PluginBuild(None, f"no C compiler ({compiler}); install: apt-get install {BUILD_PACKAGES}")
    directory.mkdir(parents=True, exist_ok=True)
    source_path = directory / SOURCE_NAME
    source_path.write_bytes(source)
    partial = target.with_suffix(".so.partial")
    command = [found, "-std=c11", "-D_GNU_SOURCE", "-O2", "-fPIC", "-shared", "-Wall",
               "-o", str(partial), str(source_path), "-lcrypto"]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=BUILD_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return PluginBuild(None, f"the C compiler failed to run: {exc}")
    finally:
        source_path.unlink(missing_ok=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        output = done.stderr.decode(errors="replace").strip().splitlines()
        first = output[0] if output else f"status {done.returncode}"
        return PluginBuild(None, f"it does not compile here ({first}); install: apt-get install "
                                 f"{BUILD_PACKAGES}")
    partial.chmod(0o644)
    partial.replace(target)
    for stale in directory.glob("overair_access-*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)
    log.info("built the broker access plugin %s", target.name)
    return PluginBuild(target)
