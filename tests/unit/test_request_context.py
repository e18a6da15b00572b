"""Where a request comes from (server/api/request_context.py): the connection, and
forwarding headers only from trusted proxies (threat O1)."""

from __future__ import annotations

import pytest

from overair.core.errors import MisuseError
from overair.server.api.request_context import RequestOrigin, TrustedProxies, request_origin

FORGED = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")]


def test_o1_forwarding_headers_from_an_untrusted_peer_are_ignored() -> None:
    assert request_origin("127.0.0.1", False, FORGED, TrustedProxies()) == RequestOrigin("127.0.0.1", False)
    # A trusted list that does not name this peer changes nothing either.
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert request_origin("127.0.0.1", False, FORGED, proxies) == RequestOrigin("127.0.0.1", False)


def test_o1_a_trusted_proxy_sets_client_and_scheme() -> None:
    origin = request_origin("127.0.0.1", False, FORGED, TrustedProxies(["127.0.0.1"]))
    assert origin == RequestOrigin("203.0.113.7", True, proxy="127.0.0.1")


def test_o1_the_client_is_the_rightmost_hop_no_trusted_proxy_vouches_past() -> None:
    # The client forged "1.1.1.1"; its real address 198.51.100.9 was appended by the
    # outer proxy 10.0.0.2, which the inner proxy 10.0.0.1 (the peer) appended.
    headers = [("x-forwarded-for", "1.1.1.1, 198.51.100.9"), ("X-Forwarded-For", "10.0.0.2")]
    origin = request_origin("10.0.0.1", False, headers, TrustedProxies(["10.0.0.0/24"]))
    assert origin.client_ip == "198.51.100.9"
    assert origin.proxy == "10.0.0.1"


def test_o1_an_unparseable_hop_leaves_the_client_unknown() -> None:
    headers = [("X-Forwarded-For", "203.0.113.7, not-an-address")]
    origin = request_origin("127.0.0.1", True, headers, TrustedProxies(["127.0.0.1"]))
    assert origin == RequestOrigin("", True, proxy="127.0.0.1")


def test_trusted_proxy_without_forwarding_headers_is_the_client() -> None:
    origin = request_origin("::ffff:127.0.0.1", True, [], TrustedProxies(["127.0.0.0/8"]))
    assert origin == RequestOrigin("127.0.0.1", True, proxy="127.0.0.1")


def test_the_nearest_proxys_scheme_counts() -> None:
    headers = [("X-Forwarded-Proto", "https, http")]
    origin = request_origin("127.0.0.1", True, headers, TrustedProxies(["127.0.0.1"]))
    assert origin.secure is False


def test_bad_trusted_proxy_entries_are_refused() -> None:
    with pytest.raises(MisuseError):
        TrustedProxies(["localhost"])
