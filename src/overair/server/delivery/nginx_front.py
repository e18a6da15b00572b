"""Debian's nginx as the download data plane in front of the device endpoint
(`download_front = "nginx"`; docs/scaling.md, "HTTPS delivery").

A FreeRTOS device fetches a 1 MiB image as 256 Range GETs of 4 KiB; a fleet of 1,000 is
256,000 requests, and the Python endpoint answered them at 1/18 of nginx's rate on 2
cores (bench/fleet.py --protocol HTTP). Here nginx does the bytes and the per-request
work in C while overair still makes every access decision:

- Every request first passes `auth_request` to overair's `/auth/ota/...` route
  (http_download.py `authorize`), which runs exactly the checks of the Python path:
  signature and expiry, N4 live execution, per-device budget, download policy, with
  refusals audited. nginx caches the answer keyed on the full signed request URI (only
  the URL's holder can produce it) for `DECISION_FRESH_SECONDS`; for at most
  `DECISION_STALE_SECONDS` more it answers from the expired decision while one request
  in the background asks overair again (Cache-Control stale-while-revalidate), so an
  ended execution or revoked access stops downloads within 2 s. Keying on the wall-clock
  second instead made each device wait for a fresh decision every second: with 1,000
  devices and the Python side busy with their status updates, that wait, not the bytes,
  set the pace (65,891 decisions for 256,000 requests, download 107 s vs nginx 8.3 s).
- Object bytes: a granted version's checked copy, served as a static file
  (front_files.py, named by the decision's `FILE_HEADER`); until the copy is in, slices
  cached by nginx (slice module + proxy_cache), filled by ranged GETs through overair's
  endpoint with the device's URL (so the fill passes the same checks and works with
  either object store). Both are named by the object version overair's decision names
  (`OBJECT_HEADER`), never by nginx's own reading of the URL: what nginx serves is what
  overair granted (threat N4; a URL whose query nginx and overair would read
  differently is refused, core/presign.py `parse_query`).
- nginx reaches overair on a Unix socket in the front's directory (`SOCKET_NAME`; the
  data directory is the overair user's alone), plain HTTP: the same app as the device
  endpoint's downloads, without the TLS that made a third of overair's CPU there
  (handshakes on both sides, records for every 204).
- A device's request rate is bounded by `limit_req` keyed on the URL's signature (an
  HMAC over the thing, object and expiry: no one can spend another thing's budget
  without its URL), at the rate and burst of Limits' device download budget.
- Ranges nginx does not serve as overair does, headers past the bounds, and refusals
  get clear 4xx answers with overair's stable codes (x-amzn-ErrorType, Retry-After).

The supervisor starts nginx with a configuration generated into the data directory and
restarts it (with a back-off) if it exits without being asked to, killing what is left
of its process group first (a killed master's workers keep its port). nginx dies with
the server (`setpriv --pdeathsig`, as the broker), so a server restarted after a SIGKILL
finds the front's port free.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from overair.core.errors import OverairError
from overair.core.limits import Limits

log = logging.getLogger("overair.download_front")

AUTH_PREFIX = "/auth"  # overair's decision route: AUTH_PREFIX + the download path
# The statuses overair's refusals carry (http_download.py); nginx's auth_request only
# tells 401/403 from success, so overair answers 403 and names the real one here.
REFUSAL_STATUSES = (400, 403, 404, 416, 429, 503)
STATUS_HEADER = "x-overair-status"
OBJECT_HEADER = "x-overair-object"  # a grant's object version, as `object_token` names it
FILE_HEADER = "x-overair-file"  # a grant's file in the front's files directory (front_files.py)
FILE_PREFIX = "v-"  # what those files' names start with (an empty FILE_HEADER names none)
MESSAGE_HEADER = "x-overair-message"
SLICE_BYTES = 256 * 1024
# How long nginx reuses an access decision, and how much longer it may answer from an
# expired one while asking again: the revocation bound is their sum.
DECISION_FRESH_SECONDS = 1
DECISION_STALE_SECONDS = 1
HEADER_BUFFER = "8k"  # a header line longer than this is refused (400), as by the Python endpoint
OBJECT_CACHE_BYTES = 1024 * 1024 * 1024
# How long overair keeps nginx's idle connections (uvicorn's default, 5 s, closed them
# between a device's decisions, and nginx opened new ones at once).
UPSTREAM_IDLE_SECONDS = 60
SOCKET_NAME = "overair.sock"  # in the front's directory: where overair answers nginx
# nginx writes each decision it caches to a file (a new one at every refresh, about one
# per downloading device per 2 s). On the data directory's file system (ext4 here) those
# writes, renames and evictions cost nginx more CPU than serving the bytes as the fleet
# grew; in memory they do not (docs/scaling.md, "HTTPS delivery"). So they go to a fresh
# private directory in /dev/shm when there is one; its path is recorded in the front's
# directory so the next start removes it should overair not have stopped cleanly.
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 - only through mkdtemp (0700, unguessable)
DECISIONS_PREFIX = "overair-decisions-"
DECISIONS_RECORD = "decisions-dir"
# At most this much of it, and at most a quarter of /dev/shm (Docker's is 64 MiB, and
# others use it: PostgreSQL's dynamic shared memory): a page each, 32,768 decisions at
# 128 MiB; one per downloading device is fresh at a time, and nginx drops one unused for
# DECISIONS_INACTIVE (a decision is of no use 2 s after it was made).
DECISIONS_MAX_BYTES = 128 * 1024 * 1024
DECISIONS_MIN_BYTES = 8 * 1024 * 1024  # less /dev/shm than 4x this: the front's directory
DECISIONS_INACTIVE = "10s"


@dataclass(frozen=True, slots=True)
class FrontConfig:
    workdir: Path
    listen_host: str
    listen_port: int
    cert: Path
    key: Path
    limits: Limits
    run_as_root: bool


def render(config: FrontConfig, decisions: Path, decisions_bytes: int = DECISIONS_MAX_BYTES) -> str:
    """The nginx.conf that makes nginx overair's download front; `decisions`: the
    directory of its cached decisions (`decision_directory`), at most `decisions_bytes`."""
    w, limits = config.workdir, config.limits
    temp = "".join(f"    {kind}_temp_path {w / 'tmp' / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    refusals = "".join(_refusal_location(status) for status in REFUSAL_STATUSES)
    rate = max(1, round(limits.device_downloads_per_second))
    return f"""# Generated by overair (server/delivery/nginx_front.py); rewritten at every start.
{"user root;" if config.run_as_root else ""}
worker_processes auto;
daemon off;
pid {w / 'nginx.pid'};
error_log {w / 'error.log'} warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    server_tokens off;
{temp}    keepalive_requests 1000000;
    # Hostile requests: a request line or header past these is a 414/400, never buffered.
    client_header_buffer_size 1k;
    large_client_header_buffers 4 {HEADER_BUFFER};
    client_max_body_size 0;
    client_body_buffer_size 1k;
    proxy_cache_path {w / 'objects'} levels=1:2 keys_zone=overair_objects:16m
                     max_size={OBJECT_CACHE_BYTES} inactive=10m use_temp_path=off;
    proxy_cache_path {decisions} levels=1:2 keys_zone=overair_decisions:32m
                     max_size={decisions_bytes // 1024}k inactive={DECISIONS_INACTIVE} use_temp_path=off;
    # A device's request budget, keyed on its URL's signature (which only its holder has).
    limit_req_zone $arg_signature zone=overair_devices:32m rate={rate}r/s;
    limit_req_status 429;
    # Only what overair's parser takes (core/presign.py parse_range): a single bytes=a-b.
    map $http_range $overair_bad_range {{ "" 0; "~^bytes=[0-9]{{0,18}}-[0-9]{{0,18}}$" 0; default 1; }}
    # A grant always names its object version; should one not, its bytes go uncached.
    map $overair_object $overair_uncached {{ "" 1; default 0; }}
    upstream overair {{
        server unix:{w / SOCKET_NAME};  # overair's downloads app (app.py `_start_front_side`)
        keepalive 512;
        # nginx lets an idle connection go before overair would (UPSTREAM_IDLE_SECONDS):
        # one overair closed while nginx sent on it would fail that request.
        keepalive_timeout {UPSTREAM_IDLE_SECONDS - 5}s;
    }}
    server {{
        listen {config.listen_host}:{config.listen_port} ssl;
        ssl_certificate {config.cert};
        ssl_certificate_key {config.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:overair_tls:8m;
        default_type text/plain;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location ~ "^/ota/[^/]+/." {{  # /ota/<bucket>/<key>: anything else is a 404 below
            if ($overair_bad_range) {{
                add_header x-amzn-ErrorType InvalidRange always;
                return 416 "InvalidRange: only a single bytes=a-b range is supported\\n";
            }}
            limit_req zone=overair_devices burst={limits.device_downloads_burst} nodelay;
            auth_request /_overair_decision;
            auth_request_set $overair_status $upstream_http_{STATUS_HEADER.replace('-', '_')};
            auth_request_set $overair_object $upstream_http_{OBJECT_HEADER.replace('-', '_')};
            auth_request_set $overair_code $upstream_http_x_amzn_errortype;
            auth_request_set $overair_message $upstream_http_{MESSAGE_HEADER.replace('-', '_')};
            auth_request_set $overair_retry $upstream_http_retry_after;
            auth_request_set $overair_retry_ms $upstream_http_x_overair_retry_after_ms;
            auth_request_set $overair_file $upstream_http_{FILE_HEADER.replace('-', '_')};
            error_page 403 = /_overair_refused/$overair_status;
            error_page 429 = /_overair_throttled;
            error_page 500 502 504 = /_overair_unavailable;
            # The granted version's checked copy (delivery/front_files.py), if the decision
            # names one; else its slices, filled through overair.
            root {w / 'files'};
            default_type application/octet-stream;
            open_file_cache max=1024 inactive=60s;
            open_file_cache_valid 10s;
            etag off;
            if_modified_since off;
            add_header Cache-Control no-store;
            try_files /{FILE_PREFIX}$overair_file @overair_slices;
        }}
        location @overair_slices {{
            error_page 500 502 504 = /_overair_unavailable;
            slice {SLICE_BYTES};
            proxy_cache overair_objects;
            proxy_cache_key "$overair_object $slice_range";
            proxy_no_cache $overair_uncached;
            proxy_cache_bypass $overair_uncached;
            proxy_cache_valid 200 206 10m;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;
            proxy_set_header Range $slice_range;
            # A location that sets headers inherits none of the server's: without this
            # line nginx sends `Connection: close` and opens a connection per request.
            proxy_set_header Connection "";
            proxy_pass http://overair;
        }}
        location = /_overair_decision {{
            internal;
            proxy_pass http://overair{AUTH_PREFIX}$request_uri;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Range "";
            proxy_set_header Connection "";  # keep-alive to overair (as in the slices)
            proxy_cache overair_decisions;
            proxy_cache_key "$request_uri";
            # nginx reads a cached decision from its file at every request: kept open, not
            # opened per request. A refreshed decision is a new file (nginx compares inodes).
            open_file_cache max=16384 inactive=10s;
            # overair's Cache-Control says how long (decision_cache_control); these are
            # the fallback. A stale decision is used only while the background refresh runs.
            proxy_cache_valid 204 403 {DECISION_FRESH_SECONDS}s;
            proxy_cache_background_update on;
            proxy_cache_lock on;
            proxy_ignore_headers Expires Set-Cookie X-Accel-Expires;
        }}
{refusals}        location = /_overair_throttled {{
            internal;
            add_header Retry-After 1 always;
            add_header x-amzn-ErrorType ThrottlingException always;
            return 429 "ThrottlingException: download rate exceeds the device's budget\\n";
        }}
        location = /_overair_unavailable {{
            internal;
            add_header Retry-After 1 always;
            add_header x-amzn-ErrorType ServiceUnavailable always;
            return 503 "ServiceUnavailable: file unavailable, try again\\n";
        }}
        location / {{
            return 404 "NotFound: downloads only\\n";
        }}
    }}
}}
"""


def object_token(bucket: str, key: str, version: str) -> str:
    """The name of one object version in the front's cache: a digest, so that it is
    fixed-length and safe in a cache key or a file name whatever the key holds."""
    return hashlib.sha256("\n".join((bucket, key, version)).encode()).hexdigest()


def decision_cache_control(granted: bool) -> str:
    """The Cache-Control of overair's answer to the front's question: a grant may be
    reused while fresh and, during its refresh, a little longer; a refusal only while
    fresh (the device asks again and is refused again, or let in once things changed)."""
    if granted:
        return f"max-age={DECISION_FRESH_SECONDS}, stale-while-revalidate={DECISION_STALE_SECONDS}"
    return f"max-age={DECISION_FRESH_SECONDS}"


def _refusal_location(status: int) -> str:
    return f"""        location = /_overair_refused/{status} {{
            internal;
            add_header x-amzn-ErrorType $overair_code always;
            add_header Retry-After $overair_retry always;
            add_header x-overair-retry-after-ms $overair_retry_ms always;
            return {status} "$overair_code: $overair_message\\n";
        }}
"""


class NginxFront:
    """nginx under supervision: started with `start`, restarted with a back-off when it
    exits unasked, stopped with `stop`."""

    def __init__(self, binary: str, config: FrontConfig, *, max_backoff: float = 30.0) -> None:
        self.binary = binary
        self.config = config
        self.restarts = 0
        self._max_backoff = max_backoff
        self._process: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._decisions: Path | None = None

    @property
    def pid(self) -> int | None:
        """The nginx master's process id while it runs (its workers are its children)."""
        return self._process.pid if self.up and self._process is not None else None

    @property
    def up(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _launch(self) -> None:
        w = self.config.workdir
        for sub in ("tmp", "objects"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        if self._decisions is None:  # restarts keep the directory (nginx reads it back)
            self._decisions = decision_directory(w)
        conf = w / "nginx.conf"
        conf.write_text(render(self.config, self._decisions, decisions_bound(self._decisions)))
        command = [self.binary, "-c", str(conf), "-p", str(w)]
        setpriv = shutil.which("setpriv")
        if setpriv:
            # As the broker (gateway/broker.py): a server killed without stopping nginx
            # takes it down too, so its restart finds the front's port free.
            command = [setpriv, "--pdeathsig", "TERM", *command]
        # Its own process group: the workers of a master that died are killed with it
        # (`_kill_group`), or they would keep the port and the new master could not bind.
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection((_connect_host(self.config.listen_host), self.config.listen_port),
                                         timeout=1).close()
                return
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._kill()
                raise OverairError(f"nginx ({self.binary}) did not start as the download front: "
                                   f"{_tail(w / 'error.log')}")
            time.sleep(0.05)

    async def start(self) -> None:
        await asyncio.to_thread(self._launch)
        self._task = asyncio.create_task(self._watch())
        log.info("download front: nginx on https://%s:%s", self.config.listen_host, self.config.listen_port)

    async def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping:
            process = self._process
            assert process is not None
            code = await asyncio.to_thread(process.wait)
            if self._stopping:
                return
            _kill_group(process)
            log.error("the download front (nginx) exited with %s: %s; restarting in %.1f s", code,
                      _tail(self.config.workdir / "error.log"), backoff)
            await asyncio.sleep(backoff)
            try:
                await asyncio.to_thread(self._launch)
                self.restarts += 1
                backoff = 0.5
            except OverairError as exc:
                log.error("%s", exc.message)
                backoff = min(self._max_backoff, backoff * 2)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None:
            _kill_group(self._process)

    @property
    def decisions(self) -> Path | None:
        """Where nginx caches overair's decisions (`decision_directory`), once started."""
        return self._decisions

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.to_thread(self._kill)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 10)
        await asyncio.to_thread(remove_recorded_decisions, self.config.workdir)


def decision_directory(workdir: Path) -> Path:
    """A new directory for the front's cached decisions: private (0700, a name no one can
    choose for us: another local user able to write there could forge grants) in
    /dev/shm when it is there and writable, else `workdir`/decisions. The one a previous
    start recorded is removed first."""
    remove_recorded_decisions(workdir)
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK) \
            and _size(SHARED_MEMORY) // 4 >= DECISIONS_MIN_BYTES:
        path = Path(tempfile.mkdtemp(prefix=DECISIONS_PREFIX, dir=SHARED_MEMORY))
        (workdir / DECISIONS_RECORD).write_text(str(path))
        # Decisions an earlier version (or a start without /dev/shm) kept on disk.
        shutil.rmtree(workdir / "decisions", ignore_errors=True)
        return path
    path = workdir / "decisions"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def decisions_bound(directory: Path) -> int:
    """How much nginx may keep in `directory`: DECISIONS_MAX_BYTES, and in /dev/shm at
    most a quarter of it."""
    if directory.parent != SHARED_MEMORY:
        return DECISIONS_MAX_BYTES
    return max(DECISIONS_MIN_BYTES, min(DECISIONS_MAX_BYTES, _size(SHARED_MEMORY) // 4))


def _size(path: Path) -> int:
    try:
        info = os.statvfs(path)
    except OSError:
        return 0
    return info.f_blocks * info.f_frsize


def remove_recorded_decisions(workdir: Path) -> None:
    """Remove the decisions directory `decision_directory` recorded in `workdir`, if it
    is still what was made there: ours, a directory, named as we name them."""
    record = workdir / DECISIONS_RECORD
    try:
        path = Path(record.read_text().strip())
    except OSError:
        return
    with contextlib.suppress(OSError):
        info = path.lstat()
        if path.parent == SHARED_MEMORY and path.name.startswith(DECISIONS_PREFIX) \
                and stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            shutil.rmtree(path)
    record.unlink(missing_ok=True)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill what is left of an nginx that exited: its workers, in its process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _connect_host(host: str) -> str:
    """An address to reach a server listening on `host` (the wildcard: loopback)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if not address.is_unspecified:
        return host
    return "::1" if address.version == 6 else "127.0.0.1"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(no log)"
    except OSError:
        return "(no log)"


def uses_root() -> bool:
    return os.geteuid() == 0
