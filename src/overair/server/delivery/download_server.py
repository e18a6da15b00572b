"""The device HTTPS endpoint (pre-signed downloads and the Jobs HTTPS API), served on a
thread and event loop of its own.

A FreeRTOS device fetches its image with one `Range` GET per 4 KiB block, so a 1 MiB
image is 256 requests and a fleet makes tens of thousands per second. Served from the
server's main loop with uvicorn's pure-Python HTTP parser and asyncio's TLS layer, the
per-request cost of the HTTP stack was most of the server's time and downloads ran at
1/15 of nginx's rate (bench/fleet.py --protocol HTTP). Here the endpoint runs on uvloop
(libuv, TLS records in C) with httptools (llhttp) for parsing, and on its own thread, so
that a fleet downloading does not stall the MQTT service's loop. The application is the
same Starlette app; its handlers already do their blocking work in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import uvicorn
import uvloop

log = logging.getLogger(__name__)


class DownloadEndpoint:
    """A uvicorn server on its own thread and uvloop event loop."""

    def __init__(self, config: uvicorn.Config) -> None:
        self.server = uvicorn.Server(config)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="device-https", daemon=True)

    def _main(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.serve())
        except BaseException as exc:  # reported to the server's loop by `check`
            self._error = exc
        finally:
            loop.close()

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    async def serve_until_stopped(self) -> None:
        """For callers that hold servers as tasks: wait (off the loop) until it ends, and
        raise what stopped it if it failed (e.g. its port was taken)."""
        await asyncio.to_thread(self._thread.join)
        if self._error is not None:
            raise self._error
