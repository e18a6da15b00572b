"""`overair signing trust-list ...` and `overair signing deployment-key ...`: rotating the
code-signing roots and deployment keys of overair agents without re-provisioning them
(core/trustlist.py; docs/security.md, "Rotating roots and deployment keys").

The key ceremony: one operator `create`s the next list (a file), each root key holder
`sign`s that file in turn on their own (offline) machine, and `publish` sends it to the
server (overair's PublishTrustList), which checks it as a device will and sends it to
every agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from rich.markup import escape
from rich.table import Table

from overair.cli.common import DataDirOption, LocalDataDirOption, api_client, api_errors, out
from overair.core import deployment, trustlist
from overair.core.codesign import load_pem_certificates
from overair.core.errors import DecodeError, MisuseError
from overair.core.trustlist import TrustList

trust_app = typer.Typer(help="Rotate code-signing roots and deployment keys on agents (signed trust "
                             "lists).", no_args_is_help=True)
key_app = typer.Typer(help="Rotate the server's deployment key.", no_args_is_help=True)


def _misuse(message: str, code: str = "InvalidTrustList") -> MisuseError:
    return MisuseError(message, code=code)


def _read_draft(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _misuse(f"{path} is not a trust list file: {exc}") from None


def _write(path: Path, envelope: dict[str, Any]) -> None:
    from overair.server.files import write_atomic

    write_atomic(path, (json.dumps(envelope, indent=1) + "\n").encode())


@trust_app.command("create")
def create(
    root: Annotated[list[Path], typer.Option(help="A PEM file of code-signing roots the list trusts "
                                                 "(repeat it; all certificates of each file count).")],
    deployment_keys: Annotated[list[Path], typer.Option(
        "--deployment-keys", help="A PEM file of deployment public keys the list trusts (repeat it), "
                                  "e.g. the server's pki/deployment.pem and pki/deployment-next.pem.")],
    out_file: Annotated[Path, typer.Option("--out", help="The list to sign (a new file).")],
    threshold: Annotated[int, typer.Option(help="Root signatures the version after this one needs.",
                                           min=1, max=trustlist.MAX_ROOTS)] = 1,
    version: Annotated[int | None, typer.Option(
        help="Its version; by default the server's newest plus one (GetTrustList).", min=1)] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write the next trust list, unsigned. Roots left out are retired (their images stop
    installing and booting on agents that take the list), as are deployment keys."""
    with api_errors():
        if out_file.exists():
            raise _misuse(f"refusing to overwrite {out_file}")
        roots = [cert for path in root for cert in load_pem_certificates(path.read_bytes())]
        keys = [key for path in deployment_keys for key in deployment.load_public_keys(path.read_bytes())]
        if version is None:
            version = int(api_client(data_dir, "overair").get_trust_list()["Version"]) + 1
        trust = TrustList(version, threshold, tuple(roots), tuple(keys))
        # Decoding what was encoded applies every rule a device applies to the payload.
        trustlist.decode_payload(trustlist.encode_payload(trust))
        _write(out_file, trustlist.unsigned_envelope(trust))
    out.print(f"[green]wrote[/green] {escape(str(out_file))}: trust list {version}, {len(roots)} root(s), "
              f"{len(keys)} deployment key(s), threshold {threshold}; now each key holder runs "
              f"`overair signing trust-list sign {escape(str(out_file))} --key ROOT.key`")


@trust_app.command("sign")
def sign(
    draft: Annotated[Path, typer.Argument(help="The list (from `create`), signed in place.", exists=True)],
    key: Annotated[Path | None, typer.Option(help="A code-signing root's private key (PEM, unencrypted).",
                                             exists=True)] = None,
    pkcs11_uri: Annotated[str | None, typer.Option(
        help="Instead of --key: an RFC 7512 URI of the root's key in an HSM (with its PIN), e.g. "
             "'pkcs11:token=T;object=L?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234'. "
             "The key never leaves the HSM.")] = None,
) -> None:
    """Add this root key's signature. A list needs a threshold of the roots trusted now
    and a threshold of the roots it names (the new ones prove they are held)."""
    with api_errors():
        if (key is None) == (pkcs11_uri is None):
            raise MisuseError("give exactly one of --key and --pkcs11-uri")
        signer = _pem_key(key) if key is not None else _hsm_key(str(pkcs11_uri))
        try:
            signed = trustlist.add_signature(_read_draft(draft), signer)
            listed = trustlist.decode_envelope(signed)
        except DecodeError as exc:
            raise _misuse(f"{draft}: {exc.message}") from None
        finally:
            close = getattr(signer, "close", None)
            if close is not None:
                close()
        own = trustlist.signed_by(listed, listed.trust.anchor.keys)
        _write(draft, signed)
    names = {trustlist.key_id(k) for k in listed.trust.anchor.keys}
    named = "one of its roots" if signed["signatures"][-1]["keyid"] in names else "a key it does not name"
    out.print(f"signed {escape(str(draft))} with {named}; {len(listed.signatures)} signature(s), "
              f"{own} of its own roots")


def _pem_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise _misuse(f"{path} is not an unencrypted PEM private key: {exc}", "InvalidKey") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise _misuse(f"{path} is not an EC or RSA key", "InvalidKey")
    return private


def _hsm_key(uri: str) -> trustlist.DigestSigner:
    from overair.server.signing.keys import Pkcs11Key, parse_pkcs11_uri

    ref, pin = parse_pkcs11_uri(uri)
    return Pkcs11Key(ref, pin)


@trust_app.command("publish")
def publish(
    draft: Annotated[Path, typer.Argument(help="The signed list.", exists=True)],
    data_dir: DataDirOption = None,
) -> None:
    """Send the list to the server (PublishTrustList): it checks it as an agent will,
    trusts its roots from now on, and sends it to every agent."""
    with api_errors():
        envelope = draft.read_text(encoding="utf-8")
        answer = api_client(data_dir, "overair").publish_trust_list(TrustList=envelope)
    out.print(f"published trust list {answer['Version']}")


@trust_app.command("show")
def show(
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per version.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """The published trust lists, oldest first; roots within 30 days of expiry are
    flagged (agents refuse new images under an expired root: rotate before)."""
    import datetime as dt

    from overair.server.signing.import_checks import EXPIRY_WARNING

    soon = dt.datetime.now(dt.UTC) + EXPIRY_WARNING
    with api_errors():
        answer = api_client(data_dir, "overair").get_trust_list()
        chain = answer.get("Chain")
        lists = trustlist.decode_chain(chain.encode()) if chain else []
    rows = [_row(signed, soon) for signed in lists]
    if json_output:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    if not rows:
        out.print("no trust list is published: agents trust the roots and keys of their bundles")
        return
    table = Table(title="trust lists")
    for column in ("version", "threshold", "roots", "deployment keys", "signatures"):
        table.add_column(column, overflow="fold")
    for row in rows:
        roots = [f"{escape(r['subject'])} (until {r['notAfter'][:10]})"
                 + (" [yellow]expires-within-30-days[/yellow]" if r["expiresWithin30Days"] else "")
                 for r in row["roots"]]
        table.add_row(str(row["version"]), str(row["threshold"]), "\n".join(roots),
                      "\n".join(k[:16] for k in row["deploymentKeys"]), str(row["signatures"]))
    out.print(table)


def _row(signed: trustlist.SignedList, soon: Any) -> dict[str, Any]:
    trust = signed.trust
    roots = [{"subject": cert.subject.rfc4514_string(), "notAfter": cert.not_valid_after_utc.isoformat(),
              "keyId": trustlist.key_id(key), "expiresWithin30Days": cert.not_valid_after_utc <= soon}
             for cert, key in zip(trust.roots, trust.anchor.keys, strict=True)]
    return {"version": trust.version, "threshold": trust.threshold, "roots": roots,
            "deploymentKeys": [trustlist.key_id(k) for k in trust.deployment_keys],
            "signatures": len(signed.signatures)}


@key_app.command("next")
def key_next(data_dir: LocalDataDirOption) -> None:
    """Make the next deployment key (sealed with the master key). From now on the server
    signs deployment metadata with both keys; put pki/deployment-next.pem in the next
    trust list."""
    from overair.server.ota.deployment import create_next_key
    from overair.server.sealing import Sealer
    from overair.server.settings import DataDir, load_settings

    with api_errors():
        load_settings(data_dir)
        paths = DataDir(data_dir)
        try:
            public = create_next_key(paths.deployment_key, Sealer.load(paths.master_key))
        except FileExistsError as exc:
            raise _misuse(str(exc), "RotationUnderWay") from None
    out.print(f"[green]wrote[/green] {escape(str(public))}: add it to the next trust list "
              "(`overair signing trust-list create --deployment-keys ...`)")


@key_app.command("promote")
def key_promote(data_dir: LocalDataDirOption) -> None:
    """The next deployment key becomes the key; the old one is deleted. Refused unless
    the newest published trust list names the next key (else agents would refuse every
    job). Then publish a list without the old key to retire it on agents."""
    from overair.server.ota.deployment import next_key_paths, promote_next_key
    from overair.server.settings import DataDir, load_settings
    from overair.server.signing.trustlist import CHAIN_FILE

    with api_errors():
        load_settings(data_dir)
        paths = DataDir(data_dir)
        _, public_next = next_key_paths(paths.deployment_key)
        if not public_next.exists():
            raise _misuse(f"{public_next} does not exist: make the next key first", "NoRotation")
        (next_key,) = deployment.load_public_keys(public_next.read_bytes())
        chain_file = paths.pki / CHAIN_FILE
        lists = trustlist.decode_chain(chain_file.read_bytes()) if chain_file.exists() else []
        if not lists or trustlist.key_id(next_key) not in {
                trustlist.key_id(k) for k in lists[-1].trust.deployment_keys}:
            raise _misuse("the newest published trust list does not name the next deployment key: "
                          "publish one that does first", "NextKeyNotPublished")
        promote_next_key(paths.deployment_key, paths.deployment_keys)
    out.print(f"the next deployment key is the key now ({escape(str(paths.deployment_keys))}); retire the "
              "old one with a trust list that leaves it out")


def register(signing_app: typer.Typer) -> None:
    signing_app.add_typer(trust_app, name="trust-list")
    signing_app.add_typer(key_app, name="deployment-key")
