"""The Mosquitto broker that `overair serve` runs and configures.

One listener, mutual TLS only (`require_certificate`; no plaintext listener exists,
threat L1). A client is known by its certificate's whole subject (every fleet client
certificate has a subject of its own, server/pki.py), and what it may do comes from the
registry: the service identity may use `$aws/things/#`; each device identity only
`$aws/things/<thing>/#` of the things its certificate is attached to; the server's own
control identities (gateway/witness.py) only their topics under `overair/broker/`.

Two ways to enforce that, measured on Mosquitto 2.0.11 (Debian bookworm):

- With overair's access plugin (gateway/broker_plugin.py, plugin/overair_access.c), the
  default when it can be built: the client keeps its own client id, which must be one of
  its things' (`dev-1`, `dev-1#2`), so one certificate may hold several connections and
  no device can take another's session over; a SUBSCRIBE outside its topics is refused
  in the SUBACK, and a PUBLISH outside them is answered PUBACK 0x87 (MQTT 5) or closes
  the connection (MQTT 3.1.1), as AWS does. The access file the plugin reads is
  `render_acl(..., for_plugin=True)`.
- Without it (no compiler here, or an external broker): `use_subject_as_username` and
  `use_username_as_clientid` make the subject the username and the client id, and the
  ACL file is Mosquitto's own. Mosquitto then grants every SUBSCRIBE (the ACL only filters
  delivery), drops a PUBLISH outside the client's topics (PUBACK success on MQTT 3.1.1,
  0x87 on MQTT 5), and two connections of one certificate take each other over.

Either way Mosquitto checks access on every PUBLISH it receives and again on every
delivery, and a SIGHUP reload re-reads the rules and the CRL and re-derives each live
client's grants, so a connected client that loses a grant stops receiving and sending on
those topics at once (tests/integration/test_broker_identity.py). It keeps established
TLS sessions of certificates the new CRL revokes: with the plugin the reload's
re-authentication disconnects them, without it gateway/session_close.py does.

Sessions survive restarts (threat-free, and what devices using persistent sessions rely
on): persistence in the broker's directory, saved when Mosquitto stops and every
`AUTOSAVE_SECONDS`, sessions expiring `session_expiry_hours` after the device left (AWS's
default: one hour), at most `max_queued_messages` QoS 1 messages queued per session.

`Broker` is the child process alone (start, signal a reload, stop, how it ended);
gateway/supervisor.py keeps it running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from overair.core.claimwire import ANSWER_TOPIC as CLAIM_ANSWERS
from overair.core.claimwire import REQUEST_SUBSCRIPTION as CLAIM_REQUESTS
from overair.core.claimwire import claim_grants
from overair.core.errors import MisuseError, UnavailableError
from overair.core.events import EVENTS_TOPIC_FILTER
from overair.core.revocation import REVOCATIONS_TOPIC
from overair.core.topics import SERVICE_REPLY_FILTERS, THING_NAME_RE
from overair.core.trustlist import TRUST_TOPIC
from overair.server.files import write_atomic
from overair.server.gateway.broker_log import BrokerLogParser, RefusedConnection, dropping_client
from overair.server.gateway.presence import PresenceEvent, parse_line
from overair.server.pki import SERVICE_IDENTITY

log = logging.getLogger("overair.broker")
DEFAULT_MOSQUITTO = "mosquitto"
# Lines of the broker's own log kept to explain why it exited.
LOG_TAIL_LINES = 20

# What a line of Mosquitto's ACL file may contain: a username or topic with a newline,
# or with leading/trailing space, would change the meaning of the file (ACL injection).
ACL_IDENTITY = re.compile(r"[A-Za-z0-9:_.=,-]{1,1024}")
_ACL_TOPIC = re.compile(r"[A-Za-z0-9:_.$/#+-]{1,512}")
_ACCESS = ("read", "write", "readwrite")
# A client id the access file reserves for one of the server's identities: printable
# ASCII without spaces, at most AWS's 128 bytes.
_CLIENT_ID = re.compile(r"[!-~]{1,128}")
# A crash loses at most this much of the session state (a clean stop saves it all).
AUTOSAVE_SECONDS = 10


@dataclass(frozen=True, slots=True)
class AclRule:
    access: str  # read | write | readwrite
    topic: str


def render_acl(*, service: str, devices: Mapping[str, Iterable[str]],
               control: Mapping[str, Sequence[AclRule]] | None = None,
               client_ids: Mapping[str, Sequence[str]] | None = None, for_plugin: bool = False,
               claims: Mapping[str, Sequence[str]] | None = None) -> str:
    """Mosquitto's ACL file, or with `for_plugin` the access plugin's (the same lines,
    plus each device's `thing` lines and the server identities' reserved `clientid`s).
    `service`: the service's broker identity; `devices`: device identity -> the things
    whose topics it may use; `control`: the server's own identities -> their rules;
    `client_ids`: server identity -> the client ids it connects with; `claims`: claim
    certificate identity -> its fleet provisioning templates (plugin only: without it a
    claim certificate is granted nothing, since only the plugin can answer one device of
    many sharing it; server/provisioning/claims.py). Entries that could not be written
    safely are left out (granting nothing) and logged."""
    if not ACL_IDENTITY.fullmatch(service):
        raise MisuseError(f"the service certificate's subject {service!r} cannot be a broker identity")
    reserved = dict(client_ids or {}) if for_plugin else {}
    for identity, ids in reserved.items():
        if not all(_CLIENT_ID.fullmatch(client_id) for client_id in ids):
            raise MisuseError(f"the client ids {list(ids)!r} of {identity!r} cannot be written to the "
                              "access file")
    lines = ["# Generated by overair from the registry; do not edit.",
             # Every client may read the signed code-signing revocation list and the
             # trust list chain (key rotation); only the service may publish them
             # (tests/e2e/test_n4_identity.py, tests/e2e/test_key_rotation.py).
             f"pattern read {REVOCATIONS_TOPIC}", f"pattern read {TRUST_TOPIC}", "",
             f"user {service}", "topic readwrite $aws/things/#",
             # Its own replies and notifications are not routed back to it (plugin only:
             # Mosquitto's own ACL file has no such rule).
             *((f"topic noread {topic}" for topic in SERVICE_REPLY_FILTERS) if for_plugin else ()),
             # The service publishes event messages (server/events/); it alone may.
             f"topic write {EVENTS_TOPIC_FILTER}",
             f"topic readwrite {REVOCATIONS_TOPIC}", f"topic readwrite {TRUST_TOPIC}",
             # Fleet provisioning: the claim requests the plugin moves, and the answers it
             # hands to the requesting connection alone.
             *((f"topic read {CLAIM_REQUESTS}", f"topic write {CLAIM_ANSWERS}") if for_plugin else ()),
             *(f"clientid {client_id}" for client_id in reserved.get(service, ())), ""]
    claimed = _claim_lines(claims or {}, service, control or {}) if for_plugin else {}
    lines.extend(line for block in claimed.values() for line in block)
    for identity, rules in sorted((control or {}).items()):
        if not ACL_IDENTITY.fullmatch(identity) or not all(
                r.access in _ACCESS and _ACL_TOPIC.fullmatch(r.topic) for r in rules):
            raise MisuseError(f"control identity {identity!r} has rules that cannot be written to the ACL")
        lines.append(f"user {identity}")
        lines.extend(f"topic {rule.access} {rule.topic}" for rule in rules)
        lines.extend(f"clientid {client_id}" for client_id in reserved.get(identity, ()))
        lines.append("")
    for identity, things in sorted(devices.items()):
        safe = sorted(t for t in things if THING_NAME_RE.fullmatch(t))
        if len(safe) != len(set(things)):
            log.error("not granting %r the things %r: not valid thing names", identity,
                      sorted(set(things) - set(safe)))
        if not ACL_IDENTITY.fullmatch(identity):
            log.error("not granting anything to the broker identity %r: it cannot be written to the ACL",
                      identity)
            continue
        if not safe or identity == service or identity in (control or {}):
            continue
        if identity in claimed:
            log.error("the claim certificate %r is attached to things %r: it stays a claim certificate only",
                      identity, safe)
            continue
        lines.append(f"user {identity}")
        lines.extend(f"topic readwrite $aws/things/{thing}/#" for thing in safe)
        if for_plugin:
            lines.extend(f"thing {thing}" for thing in safe)
        lines.append("")
    return "\n".join(lines)


def _claim_lines(claims: Mapping[str, Sequence[str]], service: str,
                 control: Mapping[str, object]) -> dict[str, list[str]]:
    """The access file's block of each claim certificate (plugin/overair_access.c)."""
    out: dict[str, list[str]] = {}
    for identity, templates in sorted(claims.items()):
        if not ACL_IDENTITY.fullmatch(identity) or identity == service or identity in control:
            log.error("not granting anything to the claim identity %r: it cannot be written to the ACL",
                      identity)
            continue
        rules = claim_grants(list(templates))
        out[identity] = [f"user {identity}", *(f"topic {access} {topic}" for access, topic in rules),
                         "claim", ""]
    return out


def _device_listener(*, host: str, port: int, ca: Path, cert: Path, key: Path, crl: Path,
                     acl: Path, plugin: Path | None = None) -> list[str]:
    """What device security rests on, for the broker overair runs and for an external one
    alike (the external-broker probe checks each of these behaviours)."""
    if plugin is not None:
        # The access plugin names each client by its certificate's whole subject and
        # decides client ids, subscriptions and publishes (plugin/overair_access.c).
        access = [f"plugin {plugin}", f"plugin_opt_access_file {acl}"]
        identity = []
    else:
        access = [f"acl_file {acl}"]
        identity = [
            # The username is the certificate's whole subject, unique to each certificate
            # (server/pki.py): never a CN another certificate may share (threat N4).
            "use_subject_as_username true",
            # The client id becomes that identity too: no client can connect with another's
            # client id and so take its session over (kick it off); the server can, to cut
            # off a revoked device (session_close.py).
            "use_username_as_clientid true",
        ]
    return [
        "per_listener_settings false",
        "allow_anonymous false",
        *access,
        # Every listener option comes after this line: Mosquitto 2.0.11 applies one that
        # comes before it to a default listener it then opens on port 1883, plaintext.
        f"listener {port} {host}",
        f"cafile {ca}",
        f"certfile {cert}",
        f"keyfile {key}",
        f"crlfile {crl}",
        "require_certificate true",
        *identity,
        "tls_version tlsv1.2",
    ]


def render_config(*, host: str, port: int, ca: Path, cert: Path, key: Path, crl: Path,
                  acl: Path, run_as_root: bool, workdir: Path, plugin: Path | None = None,
                  session_expiry_hours: int = 1, max_queued_messages: int = 1000) -> str:
    """`plugin`: the access plugin, when it could be built (broker_plugin.py). Sessions
    persist in `workdir` across restarts."""
    lines = [
        "# Generated by overair serve; do not edit.",
        # Persistent sessions and their queued QoS 1 messages outlive a restart of the
        # broker or of overair (AWS keeps them; an MQTT 3.1.1 device does not resubscribe
        # when its CONNACK says the session is present).
        "persistence true",
        f"persistence_location {workdir}/",
        "persistence_file mosquitto.db",
        f"autosave_interval {AUTOSAVE_SECONDS}",
        # AWS: "Persistent sessions have a default expiry period of 1 hour" (MQTT
        # persistent sessions, AWS IoT Developer Guide), adjustable up to 7 days; it also
        # caps an MQTT 5 client's Session Expiry Interval, as this setting does.
        f"persistent_client_expiration {session_expiry_hours}h",
        # AWS stores QoS 1 messages only, as queue_qos0_messages false (the default) does.
        f"max_queued_messages {max_queued_messages}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "max_packet_size 1048576",
        # Blocks of one GetStream answer go out back to back; without this the kernel holds
        # them for delayed ACKs (tens of ms per answer, measured by bench/stream_throughput).
        "set_tcp_nodelay true",
        *_device_listener(host=host, port=port, ca=ca, cert=cert, key=key, crl=crl, acl=acl, plugin=plugin),
    ]
    if run_as_root:
        # Keep root so the broker can read key files that only root may read.
        lines.insert(1, "user root")
    return "\n".join(lines) + "\n"


def render_external_config(*, host: str, port: int, ca: Path, cert: Path, key: Path, crl: Path,
                           acl: Path) -> str:
    """A Mosquitto (2.0) configuration for an external broker serving overair's devices
    (`overair broker-config`; docs/security.md, External broker)."""
    return "\n".join([
        "# Mosquitto settings for overair's devices (from `overair broker-config`). overair serve",
        "# --broker checks at every start that the broker behaves as these lines say, and",
        "# refuses to run otherwise. The broker must be able to read the ACL and CRL files, and",
        "# overair's broker_reload_command must make it reload them (SIGHUP).",
        "max_packet_size 1048576",
        "set_tcp_nodelay true",
        *_device_listener(host=host, port=port, ca=ca, cert=cert, key=key, crl=crl, acl=acl),
    ]) + "\n"


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise MisuseError(f"port {port} on {host} is already in use ({exc.strerror}); "
                              "choose another with --mqtt-port/--http-port") from exc


def find_mosquitto(binary: str) -> str:
    """The broker executable. Debian installs it in /usr/sbin, which is often not on a
    user's PATH, so the default name is looked up there too; an explicit path is not."""
    candidates = (binary, "/usr/sbin/mosquitto") if binary == DEFAULT_MOSQUITTO else (binary,)
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise MisuseError(f"the `mosquitto` broker ({binary}) is not installed: install it (Debian/Ubuntu: "
                      "`apt-get install mosquitto`) or point to one with --broker mqtts://host:port")


@dataclass(frozen=True, slots=True)
class BrokerExit:
    """How a broker process ended."""

    returncode: int | None  # None: it never ran (e.g. its port was taken)
    at: float  # wall-clock time it was noticed
    log_tail: tuple[str, ...]  # its last log lines
    reason: str = ""  # why a start failed, when it did

    @property
    def cause(self) -> str:
        if self.returncode is None:
            return self.reason or "did not start"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"killed by {name}"
        return f"exited with status {self.returncode}"


class Broker:
    """A Mosquitto child process: start, signal a reload (SIGHUP), stop, how it ended."""

    def __init__(self, workdir: Path, binary: str, host: str, port: int,
                 on_refused: Callable[[RefusedConnection], None] | None = None,
                 on_presence: Callable[[PresenceEvent], None] | None = None) -> None:
        """`on_refused` hears of every connection Mosquitto refuses (broker_log.py); it is
        called on the event loop, so it must not block."""
        self.workdir = workdir
        self.on_refused = on_refused
        # Hears of every device connection and disconnection (gateway/presence.py).
        self.on_presence = on_presence
        self.binary = binary
        self.host = host
        self.port = port
        self.process: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        # Episodes of the broker dropping messages to the service (broker_log.dropping_client).
        self.service_drops = 0

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def acl_path(self) -> Path:
        return self.workdir / "acl"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def write_config(self, config: str) -> None:
        """The configuration; the ACL at `acl_path` and the CRL are written by whoever
        owns access (server/app.py) before the broker starts or reloads."""
        write_atomic(self.config_path, config.encode(), mode=0o640)

    async def start(self, ssl_context: ssl.SSLContext, timeout: float = 10.0) -> None:
        """Start Mosquitto and return once it accepts TLS connections; UnavailableError
        (with its last log lines) if it exits or does not listen in time."""
        self.process = None
        self._tail.clear()
        check_port_free(self.host, self.port)
        binary = find_mosquitto(self.binary)
        command = [binary, "-c", str(self.config_path)]
        setpriv = shutil.which("setpriv")
        if setpriv:
            # If the server dies without stopping the broker (SIGKILL, OOM), the kernel
            # takes the broker down too, so a restart finds its port free and no orphan
            # keeps serving devices with a stale ACL.
            command = [setpriv, "--pdeathsig", "TERM", *command]
        else:
            log.warning("setpriv (util-linux) not found: the broker will outlive a killed server")
        self.process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        self._log_task = asyncio.create_task(self._forward_logs(self.process))
        try:
            await self._wait_ready(ssl_context, timeout)
        except UnavailableError:
            await self._end(self.process)
            raise
        log.info("mosquitto (pid %s) listening with mutual TLS on %s:%s",
                 self.process.pid, self.host, self.port)

    async def _forward_logs(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        refusals = BrokerLogParser()
        async for line in process.stdout:
            text = line.decode(errors="replace").rstrip()
            self._tail.append(text)
            if self.on_refused is not None:
                for refused in refusals.feed(text):
                    self.on_refused(refused)
            if (client := dropping_client(text)) is not None:
                self._dropping(client)
            presence = parse_line(text) if self.on_presence is not None else None
            if presence is not None and self.on_presence is not None:
                self.on_presence(presence)
            log.info("mosquitto: %s", text)

    def _dropping(self, client: str) -> None:
        if client == SERVICE_IDENTITY:
            self.service_drops += 1
            log.error("the broker is dropping device messages to the service: the service fell "
                      "max_queued_messages packets behind, so device requests and status updates "
                      "are being lost (Mosquitto logs this once per episode)")
        else:
            log.warning("the broker is dropping messages to client %s: it is not reading them", client)

    async def _wait_ready(self, ssl_context: ssl.SSLContext, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.process is not None and self.process.returncode is not None:
                raise UnavailableError(f"mosquitto exited with status {self.process.returncode}: "
                                       f"{self.last_lines()}; see {self.config_path}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port, ssl=ssl_context)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                return
            except (OSError, ssl.SSLError):
                if loop.time() > deadline:
                    raise UnavailableError(f"mosquitto did not accept connections on port "
                                           f"{self.port} within {timeout:.0f} s") from None
                await asyncio.sleep(0.05)

    def last_lines(self, count: int = 3) -> str:
        return " | ".join(list(self._tail)[-count:]) or "no output"

    def log_tail(self) -> tuple[str, ...]:
        return tuple(self._tail)

    def signal_reload(self) -> None:
        """Make Mosquitto re-read its ACL and CRL (connections stay up). It confirms
        nothing: gateway/witness.py checks what the broker enforces afterwards."""
        process = self.process
        if process is None or process.returncode is not None:
            raise UnavailableError("the broker is not running")
        try:
            os.kill(process.pid, signal.SIGHUP)
        except ProcessLookupError:
            raise UnavailableError("the broker is not running") from None

    async def wait_exit(self) -> BrokerExit:
        """Wait until the running process ends, however it ends."""
        process = self.process
        assert process is not None
        returncode = await process.wait()
        await self._drain_logs()
        return BrokerExit(returncode, time.time(), tuple(self._tail))

    async def _drain_logs(self) -> None:
        if self._log_task is not None:
            # The pipe closes with the process; its last lines say why it ended.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._log_task), 2)

    async def _end(self, process: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        await self._drain_logs()
        if self._log_task is not None:
            self._log_task.cancel()

    async def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        await self._end(process, timeout)
        log.info("mosquitto stopped")
