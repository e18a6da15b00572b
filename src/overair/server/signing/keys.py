"""Signing keys for the code-signing service: where a private key lives and how it signs.

Two backends behind one `SigningKey` interface:

* `SoftwareKey` wraps an in-memory private key. The certificate store keeps such keys
  only sealed at rest (`sealing.Sealer`, bound to the certificate's ARN) and builds a
  `SoftwareKey` from the opened key when it signs.
* `Pkcs11Key` names a key inside an HSM through its PKCS#11 module (RFC 7512 URI with
  `module-path` and `pin-value`). The private key never leaves the token: the token
  signs the digest, we only reformat its output.

Both turn a SHA-256 digest into exactly what `overair.core.codesign.verify_digest`
accepts: a DER ECDSA signature, or an RSA PKCS#1 v1.5 signature with the SHA-256
DigestInfo.

PKCS#11 quirks that shape `Pkcs11Key` (all per process, not per key):

* A module is initialised once; loading it again under another path (a symlink)
  fails with "already initialized", so modules are keyed by their real path.
* Login state belongs to the application, not the session: a second C_Login on the
  same token fails with "already logged in", and C_Logout from any session logs every
  session out. So keys on the same token share one logged-in session (`_Login`), and
  it is logged out only when the last of them closes.
* python-pkcs11 calls C_Initialize without CKF_OS_LOCKING_OK, which promises the
  module that it is never called concurrently: one lock per module serialises calls.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import quote, unquote_to_bytes

import pkcs11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import exceptions as p11
from pkcs11.constants import Attribute, ObjectClass
from pkcs11.mechanisms import KeyType, Mechanism
from pkcs11.types import Object, Session, SignMixin
from pkcs11.types import PrivateKey as TokenPrivateKey

from overair.core import codesign
from overair.core.errors import MisuseError, OverairError, PeerInputError, UnavailableError

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

log = logging.getLogger("overair.signing")
T = TypeVar("T")

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_SHA256_BYTES = 32
# DER DigestInfo { sha256, NULL } up to the digest's OCTET STRING header (RFC 8017 §9.2,
# note 1): CKM_RSA_PKCS pads whatever it is given, so the DigestInfo is ours to add.
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_CURVE_NAMES = {"secp256r1": "ECDSA-P256", "secp384r1": "ECDSA-P384", "secp521r1": "ECDSA-P521"}


class SigningKey(Protocol):
    """A private key that signs SHA-256 digests, wherever it lives."""

    @property
    def algorithm(self) -> str: ...

    def public_key(self) -> PublicKey: ...

    def sign_digest(self, digest: bytes) -> bytes: ...


def key_algorithm(public_key: object) -> str:
    """Name a public key ("ECDSA-P256", "RSA-2048", ...). Naming only: which algorithms
    and sizes are acceptable is the caller's policy (see `import_checks`)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        name = _CURVE_NAMES.get(public_key.curve.name)
        if name is None:
            raise PeerInputError(f"ECDSA curve {public_key.curve.name} is not supported; "
                                 "use P-256, P-384 or P-521", code="UnsupportedKey")
        return name
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    raise PeerInputError(f"{type(public_key).__name__} keys are not supported; use ECDSA or RSA",
                         code="UnsupportedKey")


def _check_digest(digest: bytes) -> None:
    # Our callers hash the file themselves; anything else is a programming error and
    # would otherwise come out as a valid signature over the wrong thing.
    if len(digest) != _SHA256_BYTES:
        raise MisuseError(f"sign_digest takes a 32-byte SHA-256 digest, not {len(digest)} bytes")


class SoftwareKey:
    """An in-memory EC or RSA private key (opened from its sealed form by the caller)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self._key = key
        self.algorithm = key_algorithm(key.public_key())

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign_digest(self, digest: bytes) -> bytes:
        _check_digest(digest)
        return codesign.sign_digest(self._key, digest)

    def __repr__(self) -> str:
        return f"SoftwareKey({self.algorithm})"


# PKCS#11 references and URIs ---------------------------------------------------------------

def _invalid_uri(message: str) -> PeerInputError:
    # Messages name attributes, never values: a value may be the PIN.
    return PeerInputError(f"invalid PKCS#11 URI: {message}", code="InvalidPkcs11Uri")


@dataclass(frozen=True, slots=True)
class Pkcs11Ref:
    """Where a token key is: the module's path, the token's label and the key's label.
    Holds no secret, so it can be stored and logged; the PIN travels separately."""

    module: str
    token: str
    label: str

    def to_json(self) -> dict[str, str]:
        return {"module": self.module, "token": self.token, "label": self.label}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Pkcs11Ref:
        values = {name: data.get(name) for name in ("module", "token", "label")}
        bad = [name for name, value in values.items() if not isinstance(value, str) or not value]
        if bad:
            raise PeerInputError(f"PKCS#11 key reference lacks {', '.join(bad)}", code="InvalidPkcs11Ref")
        return cls(str(values["module"]), str(values["token"]), str(values["label"]))

    def to_uri(self, pin: str | None = None) -> str:
        """The RFC 7512 URI of this key; with `pin` it is what `parse_pkcs11_uri` takes."""
        query = [f"module-path={quote(self.module, safe=_QUERY_SAFE)}"]
        if pin is not None:
            query.append(f"pin-value={quote(pin, safe=_QUERY_SAFE)}")
        return (f"pkcs11:token={quote(self.token, safe=_PATH_SAFE)};"
                f"object={quote(self.label, safe=_PATH_SAFE)};type=private?{'&'.join(query)}")

    def __str__(self) -> str:
        return self.to_uri()


# Characters RFC 7512 lets stand unencoded in a path / query value (besides unreserved).
_PATH_SAFE = ":[]@!$'()*+,="
_QUERY_SAFE = ":[]@!$'()*+,=/?|"
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PATH_ATTRIBUTES = ("token", "object", "type")
_QUERY_ATTRIBUTES = ("module-path", "pin-value")


def _uri_attributes(part: str, separator: str, where: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for position, item in enumerate(part.split(separator) if part else [], start=1):
        if not item:
            continue  # a stray separator carries nothing
        name, equals, raw = item.partition("=")
        if not equals or not _ATTRIBUTE_NAME.match(name):
            raise _invalid_uri(f"{where} attribute #{position} is not of the form name=value")
        if name in attributes:
            raise _invalid_uri(f"attribute {name} appears more than once")
        if _BAD_PERCENT.search(raw):
            raise _invalid_uri(f"attribute {name} has a malformed percent-encoding")
        try:
            attributes[name] = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid_uri(f"attribute {name} is not UTF-8 once percent-decoded") from exc
    return attributes


def parse_pkcs11_uri(text: str) -> tuple[Pkcs11Ref, str]:
    """Parse an RFC 7512 URI naming a private key and how to reach it, e.g.
    ``pkcs11:token=overair;object=signer-1;type=private?module-path=/usr/lib/softhsm/
    libsofthsm2.so&pin-value=1234``. Returns the reference and the PIN.

    Attributes that would narrow the choice of token or key (id, serial, slot-id, ...)
    are refused rather than ignored: ignoring them could select a different key."""
    scheme, colon, rest = text.strip().partition(":")
    if not colon or scheme.lower() != "pkcs11":
        raise _invalid_uri("it must start with pkcs11:")
    if "#" in rest:
        raise _invalid_uri("a fragment (#...) is not allowed")
    path, _, query = rest.partition("?")
    path_attributes = _uri_attributes(path, ";", "path")
    query_attributes = _uri_attributes(query, "&", "query")
    for name in path_attributes:
        if name not in _PATH_ATTRIBUTES:
            raise _invalid_uri(f"path attribute {name} is not supported (use token, object and type)")
    for name in query_attributes:
        if name not in _QUERY_ATTRIBUTES:
            raise _invalid_uri(f"query attribute {name} is not supported (use module-path and pin-value)")
    if path_attributes.get("type", "private") != "private":
        raise _invalid_uri("type must be private: a signing key is a private key")
    values = {**path_attributes, **query_attributes}
    missing = [name for name in ("token", "object", "module-path", "pin-value") if not values.get(name)]
    if missing:
        raise _invalid_uri(f"missing {', '.join(missing)}")
    if not os.path.isabs(values["module-path"]):
        # A bare name would be looked up along the loader's search path.
        raise _invalid_uri("module-path must be an absolute path")
    return Pkcs11Ref(values["module-path"], values["token"], values["object"]), values["pin-value"]


# PKCS#11 modules and logins (shared by every key in the process) ---------------------------

@dataclass(eq=False)
class _Login:
    """The one logged-in session on a token; `users` keys share it."""

    token: str
    session: Session
    pin_digest: bytes
    users: int = 0
    alive: bool = True


@dataclass(eq=False)
class _Module:
    """A loaded PKCS#11 module. Every call into it happens under `lock`."""

    path: str
    lib: Pkcs11Lib
    lock: threading.Lock = field(default_factory=threading.Lock)
    logins: dict[str, _Login] = field(default_factory=dict)

    def login(self, token_label: str, pin: str) -> _Login:
        """Share the token's logged-in session, logging in if nobody has. Under `lock`."""
        pin_digest = hashlib.sha256(pin.encode()).digest()
        login = self.logins.get(token_label)
        if login is not None:
            # C_Login cannot check a second PIN while the token is logged in, so compare
            # with the PIN that did log in.
            if not hmac.compare_digest(login.pin_digest, pin_digest):
                raise PeerInputError(f"the PIN for PKCS#11 token {token_label} is incorrect",
                                     code="Pkcs11PinIncorrect")
            login.users += 1
            return login
        try:
            token = self.lib.get_token(token_label=token_label)
        except p11.NoSuchToken as exc:
            raise UnavailableError(f"no PKCS#11 token labelled {token_label} in {self.path}",
                                   code="Pkcs11TokenNotFound") from exc
        except p11.MultipleTokensReturned as exc:
            raise PeerInputError(f"more than one PKCS#11 token is labelled {token_label} in {self.path}",
                                 code="Pkcs11TokenAmbiguous") from exc
        except p11.PKCS11Error as exc:
            raise _unavailable(f"listing the tokens of {self.path}", exc) from exc
        try:
            # Read-only: signing needs nothing more.
            session = token.open(user_pin=pin)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange) as exc:
            raise PeerInputError(f"the PIN for PKCS#11 token {token_label} is incorrect",
                                 code="Pkcs11PinIncorrect") from exc
        except (p11.PinLocked, p11.PinExpired) as exc:
            raise PeerInputError(f"the user PIN of PKCS#11 token {token_label} is locked or expired",
                                 code="Pkcs11PinLocked") from exc
        except p11.UserAlreadyLoggedIn as exc:
            raise UnavailableError(f"PKCS#11 token {token_label} is already logged in by other code "
                                   "in this process", code="Pkcs11LoginConflict") from exc
        except p11.PKCS11Error as exc:
            raise _unavailable(f"logging in to token {token_label}", exc) from exc
        login = self.logins[token_label] = _Login(token_label, session, pin_digest, users=1)
        log.info("logged in to PKCS#11 token %s (%s)", token_label, self.path)
        return login

    def release(self, login: _Login) -> None:
        """One user fewer; the last one logs out. Under `lock`."""
        login.users -= 1
        if login.users <= 0 and login.alive:
            self.discard(login)

    def discard(self, login: _Login) -> None:
        """Forget a login (its last user left, or the token failed). Under `lock`."""
        login.alive = False
        if self.logins.get(login.token) is login:
            del self.logins[login.token]
        try:
            login.session.close()  # C_Logout, then C_CloseSession
        except p11.PKCS11Error as exc:
            # A session the token already dropped cannot be closed; nothing is left to undo.
            log.debug("closing PKCS#11 session on %s failed: %s", login.token, type(exc).__name__)


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def _module(path: str) -> _Module:
    real = os.path.realpath(path)
    with _modules_lock:
        module = _modules.get(real)
        if module is None:
            try:
                lib = pkcs11.lib(real)
            except (p11.PKCS11Error, OSError) as exc:
                # The loader's own words (dlerror) say why: missing file, not a library, ...
                raise UnavailableError(f"cannot load PKCS#11 module {path}: {str(exc) or type(exc).__name__}",
                                       code="Pkcs11ModuleError") from exc
            module = _modules[real] = _Module(path, lib)
        return module


def _unavailable(doing: str, exc: Exception) -> UnavailableError:
    # The exception's name says enough (PinIncorrect, DeviceRemoved, ...); its text is
    # not echoed, to keep anything a module might put there out of logs and answers.
    return UnavailableError(f"PKCS#11 error {doing}: {type(exc).__name__}", code="Pkcs11Error")


# Keys inside a token -----------------------------------------------------------------------

# CKA_EC_PARAMS as DER OIDs of the named curves `key_algorithm` names.
_EC_PARAMS: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),
    bytes.fromhex("06052b81040023"): ec.SECP521R1(),
}
_SELF_TEST_DIGEST = hashlib.sha256(b"overair pkcs11 key self-test").digest()


@dataclass(frozen=True, slots=True)
class _Opened:
    module: _Module
    login: _Login
    private: SignMixin
    public: PublicKey
    algorithm: str


def _ec_point(point: bytes, curve: ec.EllipticCurve) -> ec.EllipticCurvePublicKey:
    # CKA_EC_POINT is specified as a DER OCTET STRING around the point, but some tokens
    # return the bare point; try the specified form first.
    candidates = []
    if len(point) > 2 and point[0] == 0x04:
        header = 2 if point[1] < 0x80 else 2 + (point[1] & 0x7F)
        candidates.append(point[header:])
    candidates.append(point)
    for candidate in candidates:
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, candidate)
        except ValueError:
            continue
    raise PeerInputError("the token's EC public key point cannot be read", code="Pkcs11PublicKeyInvalid")


def _find(session: Session, object_class: ObjectClass, label: str) -> list[Object]:
    # Consume the search: an unfinished C_FindObjects blocks every later call.
    return list(session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}))


def _token_public_key(session: Session, private: TokenPrivateKey, label: str) -> PublicKey:
    key_type = private.key_type
    if key_type == KeyType.RSA:
        try:
            # An RSA private key carries its own modulus and exponent: no pairing to trust.
            return rsa.RSAPublicNumbers(int.from_bytes(private[Attribute.PUBLIC_EXPONENT], "big"),
                                        int.from_bytes(private[Attribute.MODULUS], "big")).public_key()
        except (p11.AttributeTypeInvalid, p11.AttributeSensitive):
            pass
    elif key_type != KeyType.EC:
        raise PeerInputError(f"PKCS#11 key {label} is a {getattr(key_type, 'name', key_type)} key; "
                             "only EC and RSA keys can sign", code="UnsupportedKey")
    publics = _find(session, ObjectClass.PUBLIC_KEY, label)
    if len(publics) != 1:
        raise PeerInputError(f"PKCS#11 token has {len(publics)} public keys labelled {label}; the "
                             "public half is needed (exactly one, same label as the private key)",
                             code="Pkcs11PublicKeyNotFound")
    public = publics[0]
    if key_type == KeyType.RSA:
        return rsa.RSAPublicNumbers(int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
                                    int.from_bytes(public[Attribute.MODULUS], "big")).public_key()
    curve = _EC_PARAMS.get(bytes(public[Attribute.EC_PARAMS]))
    if curve is None:
        raise PeerInputError(f"PKCS#11 key {label} is on an unsupported curve; use P-256, P-384 or P-521",
                             code="UnsupportedKey")
    return _ec_point(bytes(public[Attribute.EC_POINT]), curve)


def _token_sign(private: SignMixin, public: PublicKey, digest: bytes) -> bytes:
    if isinstance(public, ec.EllipticCurvePublicKey):
        raw = private.sign(digest, mechanism=Mechanism.ECDSA)  # r || s, each the curve's size
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
    return private.sign(_SHA256_DIGEST_INFO + digest, mechanism=Mechanism.RSA_PKCS)


def _self_test(private: SignMixin, public: PublicKey, label: str) -> None:
    # A public key object that is not the private key's pair would make every signature
    # fail on the devices; find out when the key is opened, not in the field. (There is
    # no certificate yet, so not `codesign.verify_digest`: the same check on the bare key.)
    signature = _token_sign(private, public, _SELF_TEST_DIGEST)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, _SELF_TEST_DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))
        else:
            public.verify(signature, _SELF_TEST_DIGEST, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    except InvalidSignature as exc:
        raise PeerInputError(f"PKCS#11 public key {label} does not belong to the private key {label}",
                             code="Pkcs11KeyMismatch") from exc


def _exportable(private: TokenPrivateKey) -> bool:
    try:
        return bool(private[Attribute.EXTRACTABLE]) or not private[Attribute.SENSITIVE]
    except p11.PKCS11Error:
        return False  # a token that does not say is not worth refusing the key over


class Pkcs11Key:
    """A private key inside a PKCS#11 token. Opened on first use; the session is then
    reused for every signature until `close`. Safe to share between threads."""

    def __init__(self, ref: Pkcs11Ref, pin: str) -> None:
        self.ref = ref
        self._pin = pin
        self._lock = threading.Lock()  # taken before the module's lock, never after it
        self._opened: _Opened | None = None
        self._failure: PeerInputError | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Pkcs11Key({self.ref})"

    @property
    def algorithm(self) -> str:
        return self._use(lambda opened: opened.algorithm)

    def public_key(self) -> PublicKey:
        return self._use(lambda opened: opened.public)

    def sign_digest(self, digest: bytes) -> bytes:
        _check_digest(digest)
        return self._use(lambda opened: self._sign(opened, digest))

    def close(self) -> None:
        """Give up this key's share of the token session. Final: a closed key does not
        reopen (the store closes the keys of deleted and revoked certificates)."""
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, None
            if opened is not None:
                with opened.module.lock:
                    if opened.login.alive:
                        opened.module.release(opened.login)

    def _use(self, action: Callable[[_Opened], T]) -> T:
        with self._lock:
            if self._closed:
                raise MisuseError(f"PKCS#11 key {self.ref.label} was closed")
            if self._failure is not None:
                # Each wrong PIN counts towards the token's retry limit and may lock it:
                # do not try the same PIN again. (A fresh exception: re-raising the stored
                # one would grow its traceback with every attempt.)
                raise PeerInputError(self._failure.message, code=self._failure.code)
            module = _module(self.ref.module)
            with module.lock:
                if self._opened is not None and not self._opened.login.alive:
                    self._opened = None  # the token session failed under another key
                if self._opened is None:
                    self._opened = self._open(module)
                return action(self._opened)

    def _open(self, module: _Module) -> _Opened:
        try:
            login = module.login(self.ref.token, self._pin)
        except PeerInputError as exc:
            if exc.code in ("Pkcs11PinIncorrect", "Pkcs11PinLocked"):
                self._failure = exc
            raise
        try:
            return self._find_key(module, login)
        except OverairError:
            module.release(login)
            raise
        except p11.PKCS11Error as exc:
            # Not necessarily the session's fault (a token may lack an attribute): if the
            # session is broken, the next signature on it finds out and discards it.
            module.release(login)
            raise _unavailable(f"opening key {self.ref.label}", exc) from exc

    def _find_key(self, module: _Module, login: _Login) -> _Opened:
        label = self.ref.label
        privates = _find(login.session, ObjectClass.PRIVATE_KEY, label)
        if not privates:
            raise PeerInputError(f"no private key labelled {label} on PKCS#11 token {self.ref.token}",
                                 code="Pkcs11KeyNotFound")
        if len(privates) > 1:
            raise PeerInputError(f"{len(privates)} private keys are labelled {label} on PKCS#11 token "
                                 f"{self.ref.token}", code="Pkcs11KeyAmbiguous")
        private = privates[0]
        assert isinstance(private, TokenPrivateKey)  # the search asked for CKO_PRIVATE_KEY
        if not isinstance(private, SignMixin):  # python-pkcs11 adds it when CKA_SIGN is true
            raise PeerInputError(f"PKCS#11 key {label} is not allowed to sign (CKA_SIGN is false)",
                                 code="Pkcs11KeyCannotSign")
        public = _token_public_key(login.session, private, label)
        algorithm = key_algorithm(public)
        _self_test(private, public, label)
        if _exportable(private):
            log.warning("PKCS#11 key %s on token %s can be exported from the token; generate signing "
                        "keys with CKA_EXTRACTABLE false and CKA_SENSITIVE true", label, self.ref.token)
        return _Opened(module, login, private, public, algorithm)

    def _sign(self, opened: _Opened, digest: bytes) -> bytes:
        try:
            return _token_sign(opened.private, opened.public, digest)
        except p11.PKCS11Error as exc:
            # Most failures here mean the session or the device went away. Drop the
            # session so that the next signature (by any key on the token) logs in afresh.
            opened.module.discard(opened.login)
            self._opened = None
            raise _unavailable(f"signing with key {self.ref.label}", exc) from exc

