"""Which delta library overair uses, chosen by measurement on realistic firmware pairs.

    .venv/bin/python -m bench.delta [--candidates bsdiff4,detools-lzma,...] [--runs 3]

Pairs (both made in this run, nothing checked in):
- `c-build`: the C program overair ships (its Mosquitto access plugin,
  server/gateway/plugin/overair_access.c) compiled twice with gcc -O2, the second build
  with a small source change (one limit constant changed and one more log line), as a
  firmware maintenance release would be.
- `httptools-0.8-0.9`: a version bump of a real open-source binary, httptools' C parser
  (parser.cpython-311-x86_64-linux-gnu.so) from the PyPI wheels of 0.8.0 and 0.9.0,
  fetched with pip into a cache directory.

For each candidate and pair: patch size and its ratio to the full image (the bytes a
device downloads instead), time to create the patch (server), time to apply it and the
peak resident memory the apply adds (device), each apply in a fresh subprocess with
its own peak (VmHWM: C allocations included, which tracemalloc would not see) less that of
the same interpreter with the same library imported.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CACHE = Path(os.environ.get("OVERAIR_BENCH_CACHE", Path.home() / ".cache" / "overair-bench"))
CANDIDATES = ("bsdiff4", "detools-bsdiff-lzma", "detools-hdiffpatch-lzma", "detools-bsdiff-heatshrink")


@dataclass(frozen=True, slots=True)
class Pair:
    name: str
    source: bytes
    target: bytes


def _create(candidate: str, source: bytes, target: bytes) -> bytes:
    if candidate == "bsdiff4":
        import bsdiff4
        return bytes(bsdiff4.diff(source, target))
    import detools
    _, algorithm, compression = candidate.split("-")
    patch = io.BytesIO()
    detools.create_patch(io.BytesIO(source), io.BytesIO(target), patch, compression=compression,
                         algorithm=algorithm, patch_type=algorithm if algorithm == "hdiffpatch"
                         else "sequential", use_mmap=False)
    return patch.getvalue()


APPLY_CHILD = """
import hashlib, sys, time
candidate, source_path, patch_path, out_path = sys.argv[1:5]
if candidate.endswith('bsdiff4'):
    import bsdiff4
else:
    import detools
started = time.perf_counter()
if candidate.startswith('baseline'):
    pass
elif candidate == 'bsdiff4':
    # bsdiff4 works on whole buffers: source, patch and output all in memory.
    with open(source_path, 'rb') as f: source = f.read()
    with open(patch_path, 'rb') as f: patch = f.read()
    with open(out_path, 'wb') as f: f.write(bsdiff4.patch(source, patch))
else:
    # detools reads and writes file objects (the agent's slot files).
    with open(source_path, 'rb') as ffrom, open(patch_path, 'rb') as fpatch, open(out_path, 'wb') as fto:
        detools.apply_patch(ffrom, fpatch, fto)
elapsed = time.perf_counter() - started
# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork and exec.
with open('/proc/self/status') as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) * 1024
digest = hashlib.sha256()
with open(out_path, 'rb') as f:
    for block in iter(lambda: f.read(65536), b''):
        digest.update(block)
print(elapsed, peak, digest.hexdigest())
"""


def _apply(candidate: str, source_path: Path, patch_path: Path) -> tuple[float, int, str]:
    """Apply time, peak RSS of the applying process, SHA-256 of what it wrote."""
    out_path = patch_path.with_suffix(".out")
    out_path.write_bytes(b"")
    done = subprocess.run([sys.executable, "-c", APPLY_CHILD, candidate, str(source_path),
                           str(patch_path), str(out_path)], capture_output=True, text=True,
                          check=True)
    elapsed, memory, digest = done.stdout.split()
    return float(elapsed), int(memory), digest


def c_build_pair(work: Path) -> Pair:
    source = resources.files("overair.server.gateway").joinpath(
        "plugin", "overair_access.c").read_text()
    changed = source.replace("#include <string.h>", "#include <string.h>\n#define OVERAIR_BUILD 2", 1)
    marker = "mosquitto_log_printf("
    at = changed.find(marker)
    if at < 0 or changed == source:
        raise SystemExit("the plugin source changed shape; update bench.delta's edit")
    changed = (changed[:at] + 'mosquitto_log_printf(MOSQ_LOG_DEBUG, "overair build %d", OVERAIR_BUILD);\n    '
               + changed[at:])
    images = []
    for index, text in enumerate((source, changed)):
        path = work / f"build{index}.c"
        path.write_text(text)
        out = work / f"build{index}.so"
        subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-O2", "-fPIC", "-shared", "-o",
                        str(out), str(path), "-lcrypto"], check=True, capture_output=True)
        images.append(out.read_bytes())
    if images[0] == images[1]:
        raise SystemExit("the two builds are identical")
    return Pair("c-build", images[0], images[1])


def wheel_member(package: str, version: str, member_suffix: str) -> bytes:
    folder = CACHE / f"{package}-{version}"
    wheels = list(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        tools_pip = Path(".tools/bin/pip")
        pip = [str(tools_pip)] if tools_pip.exists() else [sys.executable, "-m", "pip"]
        subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                        "-d", str(folder), f"{package}=={version}"], check=True)
        wheels = list(folder.glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(member_suffix))
        return wheel.read(name)


def httptools_pair() -> Pair:
    suffix = "parser/parser.cpython-311-x86_64-linux-gnu.so"
    return Pair("httptools-0.8-0.9", wheel_member("httptools", "0.8.0", suffix),
                wheel_member("httptools", "0.9.0", suffix))


def measure(candidate: str, pair: Pair, work: Path, runs: int) -> dict[str, object]:
    creates: list[float] = []
    patch = b""
    for _ in range(runs):
        started = time.perf_counter()
        patch = _create(candidate, pair.source, pair.target)
        creates.append(time.perf_counter() - started)
    source_path, patch_path = work / "source.bin", work / "patch.bin"
    source_path.write_bytes(pair.source)
    patch_path.write_bytes(patch)
    applies = [_apply(candidate, source_path, patch_path) for _ in range(runs)]
    # What the apply adds over the same interpreter with the same library imported.
    baseline = min(_apply("baseline-bsdiff4" if candidate == "bsdiff4" else "baseline-detools",
                          source_path, patch_path)[1] for _ in range(runs))
    if any(digest != hashlib.sha256(pair.target).hexdigest() for _, _, digest in applies):
        raise SystemExit(f"{candidate} did not reconstruct {pair.name}")
    return {"candidate": candidate, "pair": pair.name, "image": len(pair.target),
            "patch": len(patch), "ratio": round(len(patch) / len(pair.target), 4),
            "create_s": round(min(creates), 3), "apply_s": round(min(a[0] for a in applies), 4),
            "apply_peak_rss_kib": max(0, min(a[1] for a in applies) - baseline) // 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-delta-"))
    try:
        pairs: list[Callable[[], Pair]] = [lambda: c_build_pair(work), httptools_pair]
        rows = []
        for make in pairs:
            pair = make()
            for candidate in args.candidates.split(","):
                rows.append(measure(candidate, pair, work, args.runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'pair':<20}{'candidate':<28}{'image':>10}{'patch':>9}{'ratio':>8}"
          f"{'create s':>10}{'apply s':>9}{'apply +RSS KiB':>16}")
    for row in rows:
        print(f"{row['pair']!s:<20}{row['candidate']!s:<28}{row['image']!s:>10}{row['patch']!s:>9}"
              f"{row['ratio']!s:>8}{row['create_s']!s:>10}{row['apply_s']!s:>9}"
              f"{row['apply_peak_rss_kib']!s:>16}")


if __name__ == "__main__":
    main()
