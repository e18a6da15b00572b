"""The server's side of key rotation: it keeps every trust list the operator published
(core/trustlist.py) and serves them, oldest first, as the chain agents walk.

A list is accepted only as a device would accept it (TUF's rule, `trustlist.admit_next`:
the next version, signed by a threshold of the roots trusted until then and of its own
roots), so an operator's mistake is refused here, before any device sees it. Version 0
is the data directory's `pki/code-signing-root.pem` (what `overair thing create` puts in
bundles) with a threshold of 1: devices provisioned with `[trust] trust_list_threshold`
above 1 ask for more signatures than the server does. A list must also keep the public
key the server signs deployment metadata with (else every overair agent would refuse
every job): promote the next deployment key before a list leaves the old one out.

Once a list is published the server trusts its roots too: CreateOTAUpdate and the
certificate store check signers against them (a retired root signs nothing more here
either). The chain is stored in `pki/trust-lists.json`, replaced atomically.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from overair.core import trustlist, wirejson
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.limits import Limits
from overair.core.trustlist import SignedList, TrustList
from overair.server.api.contract import ApiError, ApiRequest, OperationTable
from overair.server.files import write_atomic

CHAIN_FILE = "trust-lists.json"
log = logging.getLogger("overair.server")


def _invalid(message: str) -> ApiError:
    return ApiError("ValidationException", message, 400)  # the overair model's error


class TrustListStore:
    def __init__(self, path: Path, initial_roots: Callable[[], list[x509.Certificate]],
                 deployment_key: Callable[[], ec.EllipticCurvePublicKey], limits: Limits) -> None:
        self.path = path
        self._initial_roots = initial_roots
        self._deployment_key = deployment_key
        self._limits = limits
        self._lock = threading.Lock()

    def _envelopes(self) -> list[Any]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        chain = wirejson.loads(data, limits=self._limits, max_bytes=self._limits.max_trust_chain_bytes,
                               what=str(self.path))
        lists = chain.get("lists") if isinstance(chain, dict) else None
        if not isinstance(lists, list):
            raise DecodeError(f"{self.path} is not a trust list chain")
        return lists

    def chain(self) -> bytes | None:
        """The chain to publish (retained) to agents; None before the first list."""
        envelopes = self._envelopes()
        return trustlist.encode_chain(envelopes) if envelopes else None

    def current(self) -> TrustList | None:
        chain = self.chain()
        return None if chain is None else trustlist.decode_chain(chain, self._limits)[-1].trust

    def roots(self) -> list[x509.Certificate] | None:
        """The roots of the newest list, None before the first (the data directory's then)."""
        current = self.current()
        return None if current is None else list(current.roots)

    def publish(self, envelope_json: str) -> TrustList:
        """Accept the next version (ValidationException, saying why, otherwise)."""
        with self._lock:
            try:
                envelope = wirejson.loads(envelope_json.encode(), limits=self._limits,
                                          max_bytes=self._limits.max_trust_chain_bytes, what="trust list")
                signed: SignedList = trustlist.decode_envelope(envelope, self._limits)
            except DecodeError as exc:
                raise _invalid(f"not a trust list: {exc.message}") from None
            envelopes = self._envelopes()
            current = self.current()
            anchor = current.anchor if current is not None else trustlist.anchor_of(self._initial_roots(), 1)
            try:
                trusted = trustlist.admit_next(signed, anchor)
            except VerificationFailed as exc:
                raise _invalid(f"{exc.code}: {exc.message}") from None
            key_id = trustlist.key_id(self._deployment_key())
            if key_id not in {trustlist.key_id(k) for k in trusted.deployment_keys}:
                raise _invalid("the list leaves out the deployment key this server signs with (key id "
                               f"{key_id}): agents would refuse every job; promote the next key first "
                               "(`overair signing deployment-key promote`)")
            if len(envelopes) + 1 > trustlist.MAX_CHAIN:
                raise _invalid(f"the chain holds {trustlist.MAX_CHAIN} versions already: re-provision the "
                               "devices with the current roots and start a new data directory's chain")
            chain = trustlist.encode_chain([*envelopes, envelope])
            if len(chain) > self._limits.max_trust_chain_bytes:
                raise _invalid(f"the chain would exceed {self._limits.max_trust_chain_bytes} bytes")
            write_atomic(self.path, chain)
            return trusted


class RootExpiryCollector(Collector):
    """`overair_code_signing_root_expiry_seconds`: seconds until each code-signing root
    the server (and, once they take the newest list, every agent) trusts expires. A root
    past its end makes agents refuse every new image under it (its chain is checked at
    install time): alert well before, and rotate to a new root with a trust list."""

    def __init__(self, roots: Callable[[], list[x509.Certificate]], clock: Callable[[], float]) -> None:
        self._roots = roots
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("overair_code_signing_root_expiry_seconds",
                                  "Seconds until each trusted code-signing root expires (negative: expired)",
                                  labels=["subject", "key_id"])
        try:
            roots = self._roots()
        except Exception:  # a scrape must answer; the error is logged, the figures left out
            log.exception("reading the code-signing roots for the metrics failed")
            return
        now = self._clock()
        for root in roots:
            key = root.public_key()
            kid = trustlist.key_id(key) if isinstance(key, trustlist.PublicKey) else ""
            gauge.add_metric([root.subject.rfc4514_string()[:256], kid],
                             root.not_valid_after_utc.timestamp() - now)
        yield gauge


def register(table: OperationTable, store: TrustListStore, published: Callable[[], None]) -> None:
    """overair's PublishTrustList and GetTrustList (model: overair/apimodels)."""

    def publish(r: ApiRequest) -> dict[str, Any]:
        trusted = store.publish(str(r.params["TrustList"]))
        published()  # retained on the broker for every agent
        return {"Version": trusted.version}

    def get(_r: ApiRequest) -> dict[str, Any]:
        chain = store.chain()
        current = store.current()
        return {"Version": 0 if current is None else current.version,
                **({"Chain": chain.decode()} if chain is not None else {})}

    table.register("overair", "PublishTrustList", publish)
    table.register("overair", "GetTrustList", get)
