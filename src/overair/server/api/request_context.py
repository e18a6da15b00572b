"""Where an API request comes from: the client's address and whether it arrived over TLS,
taken from the connection, never from what the client claims (threat O1).

`aws:SourceIp` and `aws:SecureTransport` decide IAM conditions, so they must be facts.
`X-Forwarded-For` and `X-Forwarded-Proto` are headers anyone can write; uvicorn honours
them by default from 127.0.0.1, which let any local client choose both keys. The
servers run with uvicorn's proxy handling off, and this module decides instead:

* A request whose TCP peer is not in `trusted_proxies` (empty by default) is judged by
  the connection alone: the peer's address, and TLS if the listener is HTTPS. Its
  forwarding headers are ignored.
* A request from a trusted proxy takes its client from `X-Forwarded-For`, read from the
  right: each proxy appends the address it received the request from, so the right-most
  entry that is not itself a trusted proxy is the first hop no trusted party vouches
  past; anything to its left may be forged. `aws:SecureTransport` is what the nearest
  proxy says in `X-Forwarded-Proto` (else the connection's own scheme). An entry that
  is not an IP address leaves the client unknown: no `aws:SourceIp` at all, which
  matches no `IpAddress` condition (fails closed).

The audit log records the client and, when one forwarded, the proxy (`client via proxy`).
`Forwarded` (RFC 7239) is not read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from overair.core.errors import MisuseError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    client_ip: str  # aws:SourceIp ("" when unknown)
    secure: bool  # aws:SecureTransport
    proxy: str = ""  # the trusted proxy that forwarded the request, "" when direct


class TrustedProxies:
    """The operator's `trusted_proxies`: addresses or CIDR networks."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        networks: list[IpNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise MisuseError(f"trusted_proxies: {entry!r} is not an IP address or CIDR network") from exc
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self.networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket is that IPv4 client.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    """Every comma-separated element of every `name` header, in order."""
    out: list[str] = []
    for key, value in headers:
        if key.lower() == name:
            out.extend(part.strip() for part in value.split(","))
    return out


def request_origin(peer: str, connection_secure: bool, headers: Sequence[tuple[str, str]],
                   proxies: TrustedProxies) -> RequestOrigin:
    """The origin of a request that arrived from `peer` on a listener that is HTTPS or not."""
    peer_ip = _ip(peer) if peer else None
    peer_text = str(peer_ip) if peer_ip is not None else ""
    if not proxies or not proxies.trusts(peer_text):
        return RequestOrigin(peer_text, connection_secure)
    forwarded_for = _header_values(headers, "x-forwarded-for")
    client = peer_text
    for hop in reversed(forwarded_for):
        hop_ip = _ip(hop)
        if hop_ip is None:
            client = ""  # the nearest untrusted hop is not an address: unknown client
            break
        client = str(hop_ip)
        if not proxies.trusts(client):
            break
    protos = [p.lower() for p in _header_values(headers, "x-forwarded-proto") if p]
    secure = protos[-1] == "https" if protos else connection_secure
    return RequestOrigin(client, secure, proxy=peer_text)
