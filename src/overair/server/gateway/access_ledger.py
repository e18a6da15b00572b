"""What the broker was last told, and whose sessions must still be closed.

Each regeneration of the broker's files is recorded here with its ACL generation (the
one gateway/witness.py checks). Comparing it with the previous one finds the broker
identities that lost *all* access: granted something before and nothing now, or whose
certificate was just taken out of service. Those sessions are closed
(gateway/session_close.py); identities that only lost some things keep their session,
since the broker re-checks the ACL on every message. A close that fails stays pending
until one succeeds, so an unconfirmed change is never forgotten; a broker that starts
afresh has no sessions, so it clears the list.
"""

from __future__ import annotations

import threading

from cryptography import x509

from overair.server.registry.service import BrokerAccess


class AccessLedger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._access: BrokerAccess | None = None
        self._generation = ""
        self._to_close: dict[str, x509.Name] = {}

    @property
    def generation(self) -> str:
        return self._generation

    def record(self, access: BrokerAccess, generation: str, *, fresh_broker: bool) -> BrokerAccess | None:
        """Note what the broker was just given; returns what it had before."""
        with self._lock:
            before = self._access
            if fresh_broker:
                self._to_close.clear()
            elif before is not None:
                lost = {i for i in before.grants if i not in access.grants}
                lost |= access.withdrawn - before.withdrawn
                for identity in lost:
                    subject = access.subjects.get(identity) or before.subjects.get(identity)
                    if subject is not None:
                        self._to_close[identity] = subject
            self._access = access
            self._generation = generation
            return before

    def to_close(self) -> dict[str, x509.Name]:
        with self._lock:
            return dict(self._to_close)

    def closed(self, identities: set[str]) -> None:
        with self._lock:
            for identity in identities:
                self._to_close.pop(identity, None)
