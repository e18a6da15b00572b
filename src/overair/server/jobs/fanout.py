"""What one server process must tell the others sharing its database: which things to
notify (their next job or pending list changed), whose broker access changed, and which
objects were deleted (their bytes must leave every process's delivery caches).

With several `overair serve` processes, each with its own broker (docs/scaling.md), a
device is connected to one of them, but a job can be created, or a certificate revoked,
through any. The process where it happens acts on its own broker as a single server
does, and announces it on PostgreSQL's LISTEN/NOTIFY channel `CHANNEL`; every other
process acts on its broker in turn (a notify-next to a thing not connected there is a
publish to nobody; an access change regenerates that broker's access from the shared
registry).

NOTIFY is delivered only to sessions listening at commit time, at most once: a process
that is down or reconnecting misses what is sent meanwhile. It then loses nothing
lasting: its broker access is regenerated whole when it (re)starts or its listener
reconnects (`on_reconnect`), and devices read their next job with `$next/get` at every
connection. On SQLite there is one process and nothing to announce.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import psycopg

from overair.core import wirejson
from overair.core.errors import DecodeError
from overair.server.jobs.leader import postgres_conninfo

log = logging.getLogger("overair.fanout")

CHANNEL = "overair_fanout"
# next / pending: things to notify; access: certificates whose access changed;
# deleted: objects ("<bucket>/<key>") whose bytes were deleted (caches drop them).
KINDS = ("next", "pending", "access", "deleted")
ANY_ACCESS = "*"  # an access change naming no certificate: anything may have changed
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more (its documented default
# limit): long lists go in several. Names are thing names and certificate ids (short).
MAX_PAYLOAD = 7000
_RETRY_SECONDS = 1.0

Handler = Callable[[str, list[str]], None]  # (kind, names)


class Fanout(Protocol):
    def announce(self, kind: str, names: list[str]) -> None: ...

    def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None: ...

    def stop(self) -> None: ...


class NoFanout:
    """SQLite: one process, nobody to tell."""

    def announce(self, kind: str, names: list[str]) -> None:
        pass

    def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        pass

    def stop(self) -> None:
        pass


def encode(origin: str, kind: str, names: list[str]) -> list[str]:
    """Payloads under MAX_PAYLOAD carrying `names` (each payload a JSON object)."""
    payloads: list[str] = []
    batch: list[str] = []
    size = 0
    for name in names:
        cost = len(json.dumps(name)) + 2  # as it appears in the payload (escapes included)
        if batch and size + cost > MAX_PAYLOAD - 100:
            payloads.append(json.dumps({"from": origin, "kind": kind, "names": batch}))
            batch, size = [], 0
        batch.append(name)
        size += cost
    if batch:
        payloads.append(json.dumps({"from": origin, "kind": kind, "names": batch}))
    return payloads


def decode(payload: str) -> tuple[str, str, list[str]]:
    """(origin, kind, names) of a payload; DecodeError for anything else."""
    message = wirejson.loads(payload)
    if not isinstance(message, dict):
        raise DecodeError("a fan-out message must be a JSON object")
    origin, kind, names = message.get("from"), message.get("kind"), message.get("names")
    if not isinstance(origin, str) or kind not in KINDS or not isinstance(names, list) \
            or not all(isinstance(name, str) for name in names):
        raise DecodeError("a fan-out message needs from, kind and names")
    return origin, str(kind), [str(name) for name in names]


class PostgresFanout:
    """LISTEN/NOTIFY on two dedicated connections (one sends, one listens)."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.origin = secrets.token_hex(8)  # this process; its own messages are skipped
        # stop() wakes the listener on a channel of its own: a wake-up on CHANNEL reached
        # every other process, which warned of a malformed message each time one stopped.
        self._wake_channel = f"{CHANNEL}_wake_{self.origin}"
        self._send: psycopg.Connection[Any] | None = None
        self._send_lock = threading.Lock()
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="fanout-send")  # in order
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None
        self._listening: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5,
                               application_name="overair-fanout")

    def announce(self, kind: str, names: list[str]) -> None:
        """Queue the announcement (never waits for the database: callers run on the
        event loop too)."""
        if names:
            with contextlib.suppress(RuntimeError):  # stopping: nobody to tell any more
                self._sender.submit(self._send_now, kind, list(names))

    def _send_now(self, kind: str, names: list[str]) -> None:
        with self._send_lock:
            for payload in encode(self.origin, kind, names):
                try:
                    if self._send is None or self._send.closed:
                        self._send = self._connect()
                    self._send.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                except psycopg.Error as exc:
                    # The other processes miss it; they recover as the module says.
                    log.error("could not announce %s for %d names to the other servers: %s",
                              kind, len(names), exc)
                    self._send = None
                    return

    def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        self._listener = threading.Thread(target=self._listen, args=(handler, on_reconnect),
                                          name="fanout", daemon=True)
        self._listener.start()

    def _listen(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                connection = self._listening = self._connect()
                connection.execute(f"LISTEN {CHANNEL}")
                connection.execute(f"LISTEN {self._wake_channel}")
                if not first:
                    on_reconnect()  # what was announced while we were away is lost
                first = False
                for notice in connection.notifies():
                    if self._stopping.is_set():
                        break
                    if notice.channel == CHANNEL:
                        self._deliver(notice.payload, handler)
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    return
                log.warning("fan-out listener lost its database connection (%s); reconnecting", exc)
                time.sleep(_RETRY_SECONDS)
            finally:
                if self._listening is not None:
                    with contextlib.suppress(psycopg.Error):
                        self._listening.close()
                    self._listening = None

    def _deliver(self, payload: str, handler: Handler) -> None:
        try:
            origin, kind, names = decode(payload)
        except DecodeError as exc:
            log.warning("ignored a malformed fan-out message: %s", exc.message)
            return
        if origin == self.origin:
            return
        try:
            handler(kind, names)
        except Exception:
            log.exception("acting on a fan-out message (%s, %d names) failed", kind, len(names))

    def stop(self) -> None:
        self._sender.shutdown(wait=True)
        self._stopping.set()
        listening = self._listening
        if listening is not None:
            # Wakes notifies(): a NOTIFY to ourselves ends the wait.
            with contextlib.suppress(psycopg.Error), self._connect() as waker:
                waker.execute("SELECT pg_notify(%s, '')", (self._wake_channel,))
        if self._listener is not None:
            self._listener.join(10)
        with self._send_lock:
            if self._send is not None:
                with contextlib.suppress(psycopg.Error):
                    self._send.close()
                self._send = None


def fanout_for(db_url: str) -> Fanout:
    conninfo = postgres_conninfo(db_url)
    return NoFanout() if conninfo is None else PostgresFanout(conninfo)
