"""Offline bundles and online delivery never accept each other's deployment metadata
(agent/trust.py `admit_deployment` with `Settings.offline_bundle`): metadata signed for
a bundle names a `url_path` starting with "bundle:", which no online delivery's URL
has. Through the pure state machine; each fails when the source check is removed. A
bundle installed by a real agent: tests/integration/test_offline_bundle.py."""

from __future__ import annotations

from dataclasses import replace

from overair.agent.machine import commands as c
from overair.agent.machine.state import Phase
from overair.core.deployment import BUNDLE_SOURCE_PREFIX
from tests.unit.test_trust_f1_f2 import REQUIRED, offered, refused_for, signed_doc, stated

OFFLINE = replace(REQUIRED, offline_bundle=True)
BUNDLE_SOURCE = f"{BUNDLE_SOURCE_PREFIX}ota-1"


def test_f2_metadata_signed_for_a_bundle_is_refused_online() -> None:
    """A bundle's metadata captured and replayed at the broker does not start a job, even
    in a document forged to name a URL whose path is the bundle's source."""
    _, commands = offered(signed_doc(stated(url_path=BUNDLE_SOURCE)))
    refused_for(commands, "DeploymentSourceMismatch")
    _, commands = offered(signed_doc(stated(url_path=BUNDLE_SOURCE), update_data_url=f"x:{BUNDLE_SOURCE}"))
    refused_for(commands, "DeploymentSourceMismatch")


def test_f2_an_offline_install_admits_metadata_signed_for_a_bundle() -> None:
    state, commands = offered(signed_doc(stated(url_path=BUNDLE_SOURCE)), OFFLINE)
    assert state.phase is Phase.DOWNLOADING
    assert of_kind(commands, c.CreateStaging)


def test_f2_an_offline_install_refuses_metadata_of_an_online_delivery() -> None:
    _, commands = offered(signed_doc(stated(url_path="")), OFFLINE)
    refused_for(commands, "DeploymentSourceMismatch")


def test_f2_an_offline_install_refuses_a_document_that_names_a_url() -> None:
    """The files of a bundle come from the bundle: a document naming a download URL was
    not made for one."""
    doc = signed_doc(stated(url_path=BUNDLE_SOURCE), update_data_url="https://example.invalid/fw")
    _, commands = offered(doc, OFFLINE)
    refused_for(commands, "DeploymentSourceMismatch")


def of_kind(commands: list[c.Command], kind: type) -> list[c.Command]:
    return [command for command in commands if isinstance(command, kind)]
