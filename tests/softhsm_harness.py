"""A throw-away SoftHSM2 token for the PKCS#11 tests.

`SoftHsm.start()` writes a `softhsm2.conf` whose token directory is a temporary
directory, points `SOFTHSM2_CONF` at it, and initialises one token with
`softhsm2-util`. Keys are generated inside the token with python-pkcs11, non-extractable
and sensitive, as an operator would for a real signing key.

A PKCS#11 module reads its configuration once, at C_Initialize, and can be initialised
only once per process: start one `SoftHsm` per test session and keep the environment
variable set until the end (`stop()` restores it). SoftHSM2 comes from Debian's
`softhsm2` package, which `scripts/dev test` installs.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pkcs11
from pkcs11 import exceptions as p11
from pkcs11.constants import Attribute, MechanismFlag
from pkcs11.mechanisms import KeyType
from pkcs11.types import Session
from pkcs11.util.ec import encode_named_curve_parameters

from overair.server.signing.keys import Pkcs11Ref

TOKEN_LABEL = "overair-test"
SO_PIN = "0000"
USER_PIN = "1234"
MISSING = ("SoftHSM2 is not installed: the PKCS#11 tests run against a SoftHSM2 token. "
           "Run `scripts/dev test` (it installs Debian's `softhsm2`) or `apt-get install softhsm2`.")

# A signing key as it should be generated: usable only to sign, never readable or exportable.
PRIVATE_TEMPLATE = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True}


class SoftHsmMissing(RuntimeError):
    pass


def softhsm2_util() -> str:
    found = shutil.which("softhsm2-util") or next(
        (p for p in ("/usr/bin/softhsm2-util", "/usr/local/bin/softhsm2-util") if os.access(p, os.X_OK)),
        None)
    if found is None:
        raise SoftHsmMissing(MISSING)
    return found


def module_path() -> str:
    """The SoftHSM2 PKCS#11 module, symlinks resolved (a module must not be loaded twice
    under two names in one process)."""
    candidates = ["/usr/lib/softhsm/libsofthsm2.so", *sorted(glob.glob("/usr/lib/*/softhsm/libsofthsm2.so")),
                  "/usr/local/lib/softhsm/libsofthsm2.so"]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.realpath(candidate)
    raise SoftHsmMissing(MISSING)


@dataclass
class SoftHsm:
    root: Path
    module: str
    token_label: str
    _previous_conf: str | None

    @classmethod
    def start(cls) -> SoftHsm:
        util, module = softhsm2_util(), module_path()
        root = Path(tempfile.mkdtemp(prefix="overair-softhsm-"))
        (root / "tokens").mkdir()
        conf = root / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                        "log.level = ERROR\nslots.removable = false\n")
        hsm = cls(root, module, TOKEN_LABEL, os.environ.get("SOFTHSM2_CONF"))
        os.environ["SOFTHSM2_CONF"] = str(conf)
        try:
            result = subprocess.run([util, "--init-token", "--free", "--label", TOKEN_LABEL,
                                     "--so-pin", SO_PIN, "--pin", USER_PIN],
                                    capture_output=True, text=True, timeout=60, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"softhsm2-util --init-token failed ({result.returncode}): "
                                   f"{result.stderr or result.stdout}")
        except BaseException:
            hsm.stop()
            raise
        return hsm

    def stop(self) -> None:
        # The module stays initialised (it cannot be re-initialised with another
        # configuration anyway); only the environment and the files go.
        if self._previous_conf is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = self._previous_conf
        shutil.rmtree(self.root, ignore_errors=True)

    def ref(self, label: str) -> Pkcs11Ref:
        return Pkcs11Ref(self.module, self.token_label, label)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read/write session logged in as the user. If this process is already logged
        in (login state is per process, e.g. an open `Pkcs11Key`), an unauthenticated
        session sees the private objects too, and closing it does not log anyone out."""
        token = pkcs11.lib(self.module).get_token(token_label=self.token_label)
        try:
            session = token.open(rw=True, user_pin=USER_PIN)
        except p11.UserAlreadyLoggedIn:
            session = token.open(rw=True)
        try:
            yield session
        finally:
            session.close()

    def generate_ec(self, label: str, curve: str = "secp256r1") -> None:
        with self.session() as session:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True)
            params.generate_keypair(store=True, label=label,
                                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                                    private_template=PRIVATE_TEMPLATE)

    def generate_rsa(self, label: str, bits: int = 2048) -> None:
        with self.session() as session:
            session.generate_keypair(KeyType.RSA, bits, store=True, label=label,
                                     capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                                     private_template=PRIVATE_TEMPLATE)
