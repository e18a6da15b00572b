"""Provision a device: thing, certificate (CN = thing name), attachment, and the bundle
an agent starts from (`agent.toml` plus the files it names)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from overair.core.errors import MisuseError
from overair.server.files import write_atomic, write_private
from overair.server.registry.api import THING_NAME_HEADER


def create_keys_and_certificate_for(iot: Any, thing_name: str) -> dict[str, Any]:
    """CreateKeysAndCertificate with the certificate's CN set to `thing_name`.

    AWS's operation has no such parameter; overair takes it from a header the request
    signs (added before signing, so SigV4 covers it). Without it, as from plain boto3,
    the CN is a unique id and access still follows the thing the certificate is
    attached to."""
    def add_header(request: Any, **_kwargs: Any) -> None:
        request.headers[THING_NAME_HEADER] = thing_name

    event = "before-sign.iot.CreateKeysAndCertificate"
    iot.meta.events.register_first(event, add_header)
    try:
        return dict(iot.create_keys_and_certificate(setAsActive=True))
    finally:
        iot.meta.events.unregister(event, add_header)


def provision_thing(iot: Any, thing_name: str, out_dir: Path, *, fleet_ca_pem: bytes,
                    code_signing_roots_pem: bytes, mqtt_host: str, mqtt_port: int,
                    group: str | None = None, factory_image: Path | None = None,
                    revocation_signer_pem: bytes | None = None) -> Path:
    """Create the thing in the registry and write its bundle; returns the agent.toml path.

    Refuses a thing that already exists: CreateThing is idempotent in AWS, so without
    the check a typo'd re-run would silently issue the thing a second certificate."""
    try:
        iot.describe_thing(thingName=thing_name)
    except iot.exceptions.ResourceNotFoundException:
        pass
    else:
        raise MisuseError(f"thing {thing_name} already exists; delete it first or pick another name",
                          code="ResourceAlreadyExistsException")
    iot.create_thing(thingName=thing_name)
    cert = create_keys_and_certificate_for(iot, thing_name)
    iot.attach_thing_principal(thingName=thing_name, principal=cert["certificateArn"])
    if group:
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    write_atomic(out_dir / "device.crt", cert["certificatePem"].encode())
    write_private(out_dir / "device.key", cert["keyPair"]["PrivateKey"].encode())
    write_atomic(out_dir / "root-ca.pem", fleet_ca_pem)
    write_atomic(out_dir / "code-signing-root.pem", code_signing_roots_pem)
    if revocation_signer_pem:
        write_atomic(out_dir / "revocation-signer.pem", revocation_signer_pem)
    factory = f'factory_image = "{factory_image}"\n' if factory_image else ""
    config = (
        f'thing_name = "{thing_name}"\n\n'
        f'[mqtt]\nhost = "{mqtt_host}"\nport = {mqtt_port}\nclient_cert = "device.crt"\n'
        'client_key = "device.key"\nca_file = "root-ca.pem"\n\n'
        '[trust]\ncode_signing_roots = "code-signing-root.pem"\n'
        + ('revocation_signer = "revocation-signer.pem"\n' if revocation_signer_pem else "") + "\n"
        f'[storage]\ndata_dir = "state"\n{factory}\n'
        '[self_test]\ndeadline_seconds = 60\ncommand = ""\n\n'
        '[ota]\nblock_size = 4096\nblocks_per_request = 8\n'
    )
    path = out_dir / "agent.toml"
    write_atomic(path, config.encode())
    return path
