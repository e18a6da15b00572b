"""Who a dashboard request is: sign-in with IAM credentials, and the check of a signed-in
key on every later request. Pure given the credential lookup (the same
`IdentityStore.lookup` SigV4 uses, server/api/sigv4.py), so the dashboard accepts
exactly the keys the API accepts: a user's active access key, or a role session's
temporary key with its session token, before it expires.
"""

from __future__ import annotations

import hashlib
import hmac

from overair.server.api.contract import Credential, CredentialLookup

# One message for every failed sign-in, as AWS's console does: which of key id, secret
# or token was wrong is not told to whoever is guessing.
SIGN_IN_REFUSED = "The access key, secret or session token is not valid"


class SignInRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # for the server's audit entry, never shown to the browser


def sign_in(lookup: CredentialLookup, access_key_id: str, secret: str, session_token: str,
            now: float) -> Credential:
    """The credential that the form's key, secret and (for temporary keys) token prove;
    raises SignInRefused."""
    credential = lookup(access_key_id.strip()) if access_key_id.strip() else None
    if credential is None:
        raise SignInRefused("unknown access key")
    # Compared as SigV4 compares signatures: in constant time.
    if not hmac.compare_digest(credential.secret_access_key.encode(), secret.encode()):
        raise SignInRefused("wrong secret")
    token = session_token.strip()
    if credential.session_token_sha256 is None:
        if token:
            raise SignInRefused("a session token with a long-term key")
    elif not token or not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(),
                                              credential.session_token_sha256):
        raise SignInRefused("missing or wrong session token")
    return still_valid(credential, now)


def still_valid(credential: Credential, now: float) -> Credential:
    """A signed-in key still counts only while the API would accept it."""
    if not credential.active:
        raise SignInRefused("the access key is inactive")
    if credential.expires_at is not None and now >= credential.expires_at:
        raise SignInRefused("the temporary credentials have expired")
    return credential
