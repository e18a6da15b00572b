"""TLS contexts for the service's own connections to the broker."""

from __future__ import annotations

import ssl


def client_ssl_context(ca_file: str, cert: str, key: str) -> ssl.SSLContext:
    """Mutual TLS, TLS 1.2 or newer, the broker authenticated against `ca_file`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
