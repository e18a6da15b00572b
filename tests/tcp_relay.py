"""A TCP relay for tests: what a TLS-passthrough proxy in front of overair does (HAProxy
`mode tcp`, nginx `stream`): it forwards bytes both ways without looking at them, so TLS
stays end to end between the device and overair. It counts the bytes it carries towards
the clients, which shows how much of a file a device really fetched, and can stall
that direction once a number of bytes went through (`hold_after`), as a link that stops
half-way, so that a test interrupts a download at a known point."""

from __future__ import annotations

import contextlib
import socket
import threading

CHUNK = 64 * 1024


class Relay:
    def __init__(self, target: tuple[str, int] | None, port: int = 0) -> None:
        """`target` None: listen now (the port is taken, so nothing else picks it) and set
        `target` before the first client connects."""
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Condition()
        self._downstream = 0
        self._limit: int | None = None
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True)
        self._thread.start()

    @property
    def downstream(self) -> int:
        """Bytes relayed from the target to clients since the last `reset`."""
        with self._lock:
            return self._downstream

    def reset(self) -> None:
        with self._lock:
            self._downstream = 0

    def hold_after(self, limit: int | None) -> None:
        """Stop relaying towards clients once `limit` bytes went through since the last
        reset (None: relay everything again)."""
        with self._lock:
            self._limit = limit
            self._lock.notify_all()

    def _wait_below_limit(self) -> None:
        with self._lock:
            while self._limit is not None and self._downstream >= self._limit and not self._closed:
                self._lock.wait(0.1)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                if self.target is None:  # not set yet: refused as an unreachable target would be
                    raise ConnectionRefusedError("the relay's target is not set")
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):  # as proxies do: no Nagle delay on small TLS records
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while True:
                if count:
                    self._wait_below_limit()
                data = source.recv(CHUNK)
                if not data:
                    break
                sink.sendall(data)
                if count:
                    with self._lock:
                        self._downstream += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._sockets = [s for s in self._sockets if s not in (source, sink)]
