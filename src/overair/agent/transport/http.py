"""HTTPS Range downloads from pre-signed URLs (device-protocol.md §4), standard library only.

The server is authenticated like the MQTT broker (threat L1): against the fleet CA
bundle (`[mqtt] ca_file`), with host-name checking and TLS 1.2 as the minimum. No
client certificate is sent: a pre-signed URL carries its own authorization.

`RangeClient.fetch` asks for one byte range and returns exactly those bytes or raises
`RangeError`: only a `206 Partial Content` whose `Content-Range` is the range asked
for, whose body is exactly that long and not content-encoded, is accepted; a `200`
with the whole file, a longer or shorter body, or another range is refused and never
returned. Connections are kept alive and reused per host; a reused connection that the
server closed meanwhile is reopened once. `submit` runs fetches one at a time in a
worker thread and reports each result, exactly once, to a callback (the runtime posts
it to its queue). Every socket operation (connect, handshake, send, each receive) has
`timeout`, and the body must be complete `DEADLINE_TIMEOUTS` timeouts after the request
started, so a request ends within about four timeouts even if the server trickles.

Pre-signed URLs are credentials until they expire: their query never goes to a log.
"""

from __future__ import annotations

import http.client
import logging
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("overair.agent.http")

USER_AGENT = "overair-agent"
READ_CHUNK = 64 * 1024
DEADLINE_TIMEOUTS = 3.0  # a response body must be complete this many timeouts after the request
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

RangeDone = Callable[[bytes | None, int, str, float | None], None]
"""Result of a submitted fetch: (data, status, reason, retry_after); data None when it
failed, status 0 when no response came (connection, TLS, timeout), retry_after the
seconds the server's Retry-After header asked for (None: none, or not usable)."""

MAX_RETRY_AFTER_DIGITS = 6  # about 11 days: anything longer is not a delay we honour
RETRY_AFTER_MS = "x-overair-retry-after-ms"  # overair's download policy: the same to the millisecond


def https_context(ca_file: Path) -> ssl.SSLContext:
    """TLS client context for downloads: the fleet CA, host names checked, TLS 1.2+."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(ca_file))
    return context


def redact(url: str) -> str:
    """The URL without its query (where a pre-signed URL keeps its signature)."""
    return url.split("?", 1)[0]


class RangeError(Exception):
    """A range request got no acceptable answer; `status` is the HTTP status (0: none)."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.retry_after = retry_after
        self.reason = reason


class RangeClient:
    def __init__(self, context: ssl.SSLContext, timeout: float, *, name: str = "agent") -> None:
        self._context = context
        self._timeout = timeout
        self._name = name
        self._connections: dict[tuple[str, int], http.client.HTTPSConnection] = {}
        self._queue: queue.Queue[tuple[str, int, int, RangeDone] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- asynchronous use (the runtime) -----------------------------------------------------

    def submit(self, url: str, offset: int, length: int, done: RangeDone) -> None:
        """Fetch in the worker thread; `done` is called from there, exactly once."""
        with self._lock:
            if self._closed:
                done(None, 0, "the download client is closed", None)
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"http-{self._name}", daemon=True)
                self._thread.start()
            self._queue.put((url, offset, length, done))

    def close(self) -> None:
        """Stop the worker after its current request; requests still queued are dropped
        (their callbacks are not called: the runtime discards them anyway at a reboot)."""
        with self._lock:
            self._closed = True
            started = self._thread is not None
        if started:
            self._queue.put(None)
        else:
            self._close_connections()

    def _work(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None or self._closed:
                    return
                url, offset, length, done = item
                try:
                    data = self.fetch(url, offset, length)
                except RangeError as exc:
                    done(None, exc.status, exc.reason, exc.retry_after)
                except Exception as exc:  # never leave a request unanswered
                    log.exception("range request to %s failed unexpectedly", redact(url))
                    done(None, 0, f"unexpected {type(exc).__name__}", None)
                else:
                    done(data, 206, "", None)
        finally:
            self._close_connections()

    # --- one request --------------------------------------------------------------------------

    def fetch(self, url: str, offset: int, length: int) -> bytes:
        """Bytes `offset` to `offset + length - 1` of `url`, exactly; else RangeError."""
        if offset < 0 or length <= 0:
            raise RangeError(0, f"invalid range {offset}+{length}")
        parts = urlsplit(url)
        try:
            port = parts.port or 443
        except ValueError as exc:
            raise RangeError(0, "the URL has an invalid port") from exc
        host = parts.hostname
        if parts.scheme != "https" or not host:
            raise RangeError(0, f"not an https URL: {redact(url)}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Range": f"bytes={offset}-{offset + length - 1}", "Accept-Encoding": "identity",
                   "User-Agent": USER_AGENT}
        deadline = time.monotonic() + DEADLINE_TIMEOUTS * self._timeout
        key = (host, port)
        for attempt in range(2):
            connection = self._connections.get(key)
            reused = connection is not None
            if connection is None:
                connection = http.client.HTTPSConnection(host, port, timeout=self._timeout,
                                                         context=self._context)
                self._connections[key] = connection
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
            except ConnectionError as exc:
                self._drop(key)
                if reused and attempt == 0:
                    continue  # the server closed the idle keep-alive connection: reopen once
                raise RangeError(0, _describe(exc, parts.query)) from exc
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._drop(key)
                raise RangeError(0, _describe(exc, parts.query)) from exc
            try:
                return _read_range(response, offset, length, deadline)
            except RangeError:
                self._drop(key)  # the rest of that response is unread: never reuse it
                raise
            except (OSError, http.client.HTTPException) as exc:
                self._drop(key)
                raise RangeError(response.status, _describe(exc, parts.query)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, key: tuple[str, int]) -> None:
        connection = self._connections.pop(key, None)
        if connection is not None:
            connection.close()

    def _close_connections(self) -> None:
        for key in list(self._connections):
            self._drop(key)


def _read_range(response: http.client.HTTPResponse, offset: int, length: int, deadline: float) -> bytes:
    status = response.status
    asked = f"bytes {offset}-{offset + length - 1}"
    if status != 206:
        if status == 200:
            raise RangeError(status, f"200 with the whole file instead of {asked}: refused")
        precise = parse_retry_after_ms(response.getheader(RETRY_AFTER_MS))
        wait = precise if precise is not None else parse_retry_after(response.getheader("Retry-After"))
        raise RangeError(status, f"{status} {response.reason}".strip(), wait)
    encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise RangeError(status, f"content encoded with {encoding!r}: refused")
    content_range = (response.getheader("Content-Range") or "").strip()
    match = _CONTENT_RANGE.fullmatch(content_range)
    if match is None:
        raise RangeError(status, f"Content-Range {content_range!r} is not one byte range: refused")
    first, last, total = int(match[1]), int(match[2]), match[3]
    if first != offset or last != offset + length - 1 or (total != "*" and int(total) <= last):
        raise RangeError(status, f"Content-Range {content_range!r} instead of {asked}: refused")
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip() != str(length):
        raise RangeError(status, f"Content-Length {declared.strip()[:20]!r} instead of {length}: refused")
    body = bytearray()
    while len(body) <= length:  # read one byte past the range to catch a longer body
        if time.monotonic() > deadline:
            raise RangeError(status, "the response did not complete in time")
        chunk = response.read(min(READ_CHUNK, length + 1 - len(body)))
        if not chunk:
            break
        body += chunk
    if len(body) != length:
        which = "more" if len(body) > length else "fewer"
        raise RangeError(status, f"{which} bytes than the {length} asked: refused")
    return bytes(body)


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header's delay in seconds (RFC 9110 §10.2.3: delay-seconds); None for
    no header, the HTTP-date form or anything malformed (the caller's own pause applies)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > MAX_RETRY_AFTER_DIGITS:
        return None
    return float(int(text))


def parse_retry_after_ms(value: str | None) -> float | None:
    """overair's `x-overair-retry-after-ms` (the download policy's wait to the
    millisecond), in seconds; None for no header or anything but a bounded count."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > MAX_RETRY_AFTER_DIGITS + 3:
        return None
    return int(text) / 1000.0


def _describe(exc: BaseException, query: str) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"TLS certificate refused: {exc.verify_message}"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text.replace(query, "...") if query else text
