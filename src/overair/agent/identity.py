"""The device's identity check at start: its certificate must name its thing.

The broker knows the client by its certificate (its whole subject, unique to it) and
confines it to the topics of the things that certificate is attached to; `overair thing
create` issues it with CN = thing name. An agent configured as thing A but holding B's
certificate would talk on topics it cannot use (threat N4), so the agent refuses to
start on such a mismatch, with a clear error. The CN is only this consistency check:
it grants nothing at the broker.
"""

from __future__ import annotations

from cryptography import x509

from overair.agent.config import AgentConfig, ConfigError


def check_certificate_identity(config: AgentConfig) -> None:
    path = config.mqtt.client_cert
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{config.source}: [mqtt] client_cert {path} is not a readable certificate: "
                          f"{exc}") from exc
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    if common_name != config.thing_name:
        raise ConfigError(f"{config.source}: the certificate {path} is for {common_name or 'no name'!r}, "
                          f"not for thing_name {config.thing_name!r}; refusing to start")
