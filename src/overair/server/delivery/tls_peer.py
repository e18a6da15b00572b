"""The device HTTPS endpoint's client certificate, handed to the ASGI app.

uvicorn does not put the TLS peer certificate into the ASGI scope, so this protocol
class (uvicorn's own h11 protocol) wraps the app once per connection and adds it as the
ASGI TLS extension's `client_cert_chain` entry, DER instead of PEM. The certificate
was already verified against the fleet CA by the TLS layer (CERT_OPTIONAL: pre-signed
downloads need none, the Jobs API requires one).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _add_peer_certificate(protocol: Any, transport: asyncio.Transport) -> None:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) else None
    inner = protocol.app

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [der] if der else []}
        await inner(scope, receive, send)

    protocol.app = app


class PeerCertificateProtocol(H11Protocol):
    """uvicorn's h11 protocol (pure Python), with the peer certificate in the scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _add_peer_certificate(self, transport)


class FastPeerCertificateProtocol(HttpToolsProtocol):
    """The same on uvicorn's httptools protocol (llhttp, in C): the device endpoint's,
    where a fleet makes one request per 4 KiB block (server/delivery/download_server.py)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _add_peer_certificate(self, transport)


def peer_certificate(scope: Any) -> bytes | None:
    """The DER client certificate of this request's connection, if it presented one."""
    chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
    return chain[0] if chain else None
