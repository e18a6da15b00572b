"""Client identities the server mints for itself at the broker, held only in memory.

The session closer, the ACL witness and the external-broker probe connect to the broker
with fleet-CA certificates minted on the spot. Their private keys never touch a file
system: `ssl` loads a certificate chain only from a path, so the PEM goes through an
anonymous in-memory file (Linux memfd) that disappears when closed.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from overair.server import pki


def client_context(issued: pki.Issued, ca_file: Path) -> ssl.SSLContext:
    """Mutual TLS 1.2+ as `issued`, the broker authenticated against `ca_file`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(ca_file))
    fd = os.memfd_create("overair-identity", os.MFD_CLOEXEC)
    try:
        os.write(fd, issued.cert_pem + issued.key_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context
