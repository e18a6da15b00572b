"""Provision a device: thing, certificate (CN = thing name), attachment, and the bundle
an agent starts from (`agent.toml` plus the files it names).

The thing is marked as an overair agent with the attribute `overair:deviceProfile =
overair-agent` (an ordinary AWS thing attribute, visible in DescribeThing and settable
with UpdateThing): its job documents then carry the `overair` extension (the signer
chain the agent checks) and files larger than a FreeRTOS device takes may target it
(server/ota/profile_config.py).

The bundle names the broker devices really use: by default it asks the server
(DescribeEndpoint), which answers the external broker when `serve` uses one, so a bundle
never points at a port nothing listens on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from overair.core.errors import MisuseError, PeerInputError
from overair.server.files import write_atomic, write_private
from overair.server.ota.profile_config import OVERAIR_AGENT, PROFILE_ATTRIBUTE
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


_ENDPOINT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")


def device_endpoint(iot: Any) -> tuple[str, int]:
    """(host, port) of the broker, as the server answers DescribeEndpoint ("host" means
    port 8883, else "host:port")."""
    address = str(iot.describe_endpoint(endpointType="iot:Data-ATS").get("endpointAddress", ""))
    found = _ENDPOINT.fullmatch(address)
    port = int(found["port"]) if found and found["port"] else 8883
    if found is None or not 0 < port <= 65535:
        raise PeerInputError(f"the server's DescribeEndpoint answered {address[:200]!r}, not host[:port]")
    return found["host"].strip("[]"), port


BUNDLE_FACTORY_IMAGE = "factory.bin"


def provision_thing(iot: Any, thing_name: str, out_dir: Path, *, fleet_ca_pem: bytes,
                    code_signing_roots_pem: bytes, mqtt_host: str | None = None,
                    mqtt_port: int | None = None,
                    group: str | None = None, factory_image: Path | None = None,
                    revocation_signer_pem: bytes | None = None,
                    deployment_keys_pem: bytes | None = None) -> Path:
    """Create the thing in the registry and write its bundle; returns the agent.toml path.
    Without `mqtt_host`/`mqtt_port` the bundle names the broker the server reports.

    Refuses a thing that already exists: CreateThing is idempotent in AWS, so without
    the check a typo'd re-run would silently issue the thing a second certificate."""
    # Read the factory image first: a missing file must stop us before anything is created.
    factory_bytes = factory_image.read_bytes() if factory_image is not None else None
    try:
        iot.describe_thing(thingName=thing_name)
    except iot.exceptions.ResourceNotFoundException:
        pass
    else:
        raise MisuseError(f"thing {thing_name} already exists; delete it first or pick another name",
                          code="ResourceAlreadyExistsException")
    if mqtt_host is None or mqtt_port is None:
        mqtt_host, mqtt_port = device_endpoint(iot)
    iot.create_thing(thingName=thing_name,
                     attributePayload={"attributes": {PROFILE_ATTRIBUTE: OVERAIR_AGENT}})
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
    if deployment_keys_pem:
        # F1 F2: the agent refuses any job without deployment metadata signed by these keys.
        write_atomic(out_dir / "deployment-keys.pem", deployment_keys_pem)
    factory = ""
    if factory_bytes is not None:
        # Copied into the bundle: the agent resolves paths against the bundle, and a
        # bundle must be movable to the device as one directory.
        write_atomic(out_dir / BUNDLE_FACTORY_IMAGE, factory_bytes)
        factory = f'factory_image = "{BUNDLE_FACTORY_IMAGE}"\n'

    config = (
        f'thing_name = "{thing_name}"\n\n'
        f'[mqtt]\nhost = "{mqtt_host}"\nport = {mqtt_port}\nclient_cert = "device.crt"\n'
        'client_key = "device.key"\nca_file = "root-ca.pem"\n\n'
        '[trust]\ncode_signing_roots = "code-signing-root.pem"\n'
        + ('revocation_signer = "revocation-signer.pem"\n' if revocation_signer_pem else "")
        + ('deployment_keys = "deployment-keys.pem"\nrequire_deployment_metadata = true\n'
           if deployment_keys_pem else "") + "\n"
        f'[storage]\ndata_dir = "state"\n{factory}\n'
        '[self_test]\ndeadline_seconds = 60\ncommand = ""\n\n'
        '[ota]\nblock_size = 4096\nblocks_per_request = 8\n'
    )
    path = out_dir / "agent.toml"
    write_atomic(path, config.encode())
    return path
