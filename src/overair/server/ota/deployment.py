"""The deployment key and the signed, expiring deployment metadata the server puts in
each delivery of an OTA job to an overair agent (core/deployment.py; threats F1, F2).

The key (ECDSA P-256) is separate from code signing and from the revocation key: it
says "this thing is to install these exact files now", not "this image is genuine". It
is kept sealed at rest with the master key (`pki/deployment.key`, as imported signing
keys are), and its public key is `pki/deployment.pem`, which `overair thing create`
copies into each bundle. A rotation (docs/security.md, "Rotating roots and deployment
keys") makes the next key (`pki/deployment-next.key`, sealed, and its public key
`pki/deployment-next.pem`); while it exists every delivery is signed by both keys, so
that agents admit it before and after they take the trust list that names the next key;
`promote_next_key` then makes it the key. The server reads both files again when they
change (`DeploymentKeys`): a rotation needs no restart.

Metadata is signed at delivery, for the thing it is delivered to, over the document as
rendered for it (its fresh pre-signed URL's path included), so every delivery carries
fresh metadata: the freshness heartbeat is the delivery itself, and an agent whose
metadata nears expiry asks for its job again (`$next/get`). A delivery never signed
cannot be produced by a broker or a server process without the key (F2); one captured
and replayed is refused when it has expired or is older than what the device admitted
(F1). The sequence is the signing time in milliseconds, forced strictly increasing in
this process: it only goes up as long as the server's clock does.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from overair.core import deployment
from overair.core.errors import DecodeError
from overair.core.image import parse_header
from overair.server.files import write_atomic, write_private
from overair.server.ota import profiles
from overair.server.sealing import Sealer
from overair.server.storage.schema import Job

# Job config key: what the metadata says of each file beyond the document (SHA-256,
# version, security counter), computed once when CreateOTAUpdate reads the files.
DEPLOYMENT_FILES = profiles.DEPLOYMENT_FILES
DEFAULT_TTL_SECONDS = 3600
_SEAL_CONTEXT = "overair:deployment-key"


def describe_file(data: bytes) -> dict[str, Any]:
    """A file's entry in DEPLOYMENT_FILES (version and counter from an overair image header)."""
    try:
        header = parse_header(data)
        version, counter = str(header.version), header.security_counter
    except DecodeError:
        version, counter = "", 0
    return {"sha256": hashlib.sha256(data).hexdigest(), "version": version, "security_counter": counter}


def load_or_create_key(sealed_path: Path, public_path: Path, sealer: Sealer) -> ec.EllipticCurvePrivateKey:
    """The deployment key, created (sealed) on first use; its public key is (re)written
    to `public_path` when that file does not exist yet."""
    key = _open_key(sealed_path, sealer) if sealed_path.exists() else _create_key(sealed_path, sealer)
    if not public_path.exists():
        write_atomic(public_path, deployment.public_pem(key.public_key()))
    return key


def _open_key(sealed_path: Path, sealer: Sealer) -> ec.EllipticCurvePrivateKey:
    opened = sealer.open(sealed_path.read_bytes(), _SEAL_CONTEXT)
    key = serialization.load_der_private_key(opened, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{sealed_path} does not hold an EC key")
    return key


def _create_key(sealed_path: Path, sealer: Sealer) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private(sealed_path, sealer.seal(der, _SEAL_CONTEXT))
    return key


def next_key_paths(sealed_path: Path) -> tuple[Path, Path]:
    """Where the next deployment key (sealed) and its public key are kept."""
    return sealed_path.with_name("deployment-next.key"), sealed_path.with_name("deployment-next.pem")


def create_next_key(sealed_path: Path, sealer: Sealer) -> Path:
    """Make the next deployment key (refused if one exists); returns its public key's file."""
    sealed_next, public_next = next_key_paths(sealed_path)
    if sealed_next.exists():
        raise FileExistsError(f"{sealed_next} exists: a rotation is under way (promote it first)")
    key = _create_key(sealed_next, sealer)
    write_atomic(public_next, deployment.public_pem(key.public_key()))
    return public_next


def promote_next_key(sealed_path: Path, public_path: Path) -> None:
    """The next key becomes the key (the old one is gone; new bundles get the new public
    key). Each rename is atomic; the key first, so that a crash between the two leaves
    the server signing with the new key, whose public key it rewrites then."""
    sealed_next, public_next = next_key_paths(sealed_path)
    if not sealed_next.exists():
        raise FileNotFoundError(f"{sealed_next} does not exist: make the next key first")
    sealed_next.replace(sealed_path)
    public_next.replace(public_path)


class DeploymentKeys:
    """The deployment key and, during a rotation, the next one, as the data directory
    holds them now: each file is opened again only when it changed (its mtime), so
    `overair signing deployment-key next|promote` take effect on a running server."""

    def __init__(self, sealed_path: Path, public_path: Path, sealer: Sealer) -> None:
        self._paths = (sealed_path, next_key_paths(sealed_path)[0])
        self._sealer = sealer
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], ec.EllipticCurvePrivateKey]] = {}
        load_or_create_key(sealed_path, public_path, sealer)

    def _key(self, path: Path) -> ec.EllipticCurvePrivateKey | None:
        try:
            status = path.stat()
            stamp = (status.st_ino, status.st_mtime_ns)  # a rename (promote) changes the inode
        except FileNotFoundError:
            return None
        cached = self._cache.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._cache[path] = (stamp, _open_key(path, self._sealer))
        return cached[1]

    def __call__(self) -> tuple[ec.EllipticCurvePrivateKey, ...]:
        with self._lock:
            key, following = (self._key(path) for path in self._paths)
        if key is None:
            raise FileNotFoundError(f"{self._paths[0]} is missing: the server has no deployment key")
        return (key,) if following is None else (key, following)


class DeploymentSigner:
    def __init__(self, key: ec.EllipticCurvePrivateKey, clock: Callable[[], float],
                 ttl_seconds: int = DEFAULT_TTL_SECONDS, *,
                 keys: Callable[[], tuple[ec.EllipticCurvePrivateKey, ...]] | None = None) -> None:
        """`keys`: the keys to sign with now (the key first), read at each signature;
        without it, `key` alone."""
        self._keys = keys or (lambda: (key,))
        self._clock = clock
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._last_sequence = 0

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key deliveries are signed with (and will be after a promotion: the first)."""
        return self._keys()[0].public_key()

    def _next_sequence(self, now: float) -> int:
        with self._lock:
            self._last_sequence = max(int(now * 1000), self._last_sequence + 1)
            return self._last_sequence

    def sign_delivery(self, job: Job, thing: str, document: dict[str, Any]) -> dict[str, Any] | None:
        """The envelope for `document` as delivered to `thing`; None for a job that is not
        an OTA job created by CreateOTAUpdate (it has no file descriptions to bind)."""
        described = job.config.get(DEPLOYMENT_FILES)
        ota = document.get("afr_ota")
        if not isinstance(described, list) or not isinstance(ota, dict):
            return None
        files = ota.get("files") or []
        if len(files) != len(described):
            return None
        now = self._clock()
        url = files[0].get("update_data_url") if files else None
        stated = deployment.Deployment(
            job_id=job.job_id, thing=thing,
            files=tuple(deployment.DeployedFile(str(f["filepath"]), int(f["filesize"]),
                                                bytes.fromhex(d["sha256"]), str(d["version"]),
                                                int(d["security_counter"]))
                        for f, d in zip(files, described, strict=True)),
            stream=str(ota.get("streamname") or ""),
            url_path=urlsplit(url).path if isinstance(url, str) else "",
            expires=int(now) + self.ttl_seconds, sequence=self._next_sequence(now))
        return deployment.sign(stated, *self._keys())

    def sign_bundle(self, job: Job, thing: str, document: dict[str, Any], source: str,
                    valid_seconds: int) -> dict[str, Any] | None:
        """The envelope for an offline bundle's `document` (core/bundle.py): as for a
        delivery, but valid for `valid_seconds` and naming `source`, a `url_path` that
        starts with `deployment.BUNDLE_SOURCE_PREFIX` (so that it is refused online);
        None as `sign_delivery`."""
        if not source.startswith(deployment.BUNDLE_SOURCE_PREFIX):
            raise ValueError(f"a bundle's source must start with {deployment.BUNDLE_SOURCE_PREFIX!r}")
        described = job.config.get(DEPLOYMENT_FILES)
        ota = document.get("afr_ota")
        if not isinstance(described, list) or not isinstance(ota, dict):
            return None
        files = ota.get("files") or []
        if not files or len(files) != len(described):
            return None
        now = self._clock()
        stated = deployment.Deployment(
            job_id=job.job_id, thing=thing,
            files=tuple(deployment.DeployedFile(str(f["filepath"]), int(f["filesize"]),
                                                bytes.fromhex(d["sha256"]), str(d["version"]),
                                                int(d["security_counter"]))
                        for f, d in zip(files, described, strict=True)),
            stream=str(ota.get("streamname") or ""), url_path=source,
            expires=int(now) + valid_seconds, sequence=self._next_sequence(now))
        return deployment.sign(stated, *self._keys())
