"""iot DescribeEventConfigurations / UpdateEventConfigurations (AWS's shapes) and
overair's event reader operations (CreateEventReader, RevokeEventReader,
ListEventReaders; model: overair/apimodels). Authorization (iot:/overair:<Operation>)
and the audit entry of each call are the API edge's, as for every operation."""

from __future__ import annotations

from typing import Any

from overair.core.events import EVENTS_TOPIC_FILTER, to_aws
from overair.server.api.contract import ApiRequest, OperationTable, invalid
from overair.server.events.config import EventConfigStore
from overair.server.events.readers import EventReaders, client_id_of


def register(table: OperationTable, store: EventConfigStore, readers: EventReaders) -> None:
    def describe(_r: ApiRequest) -> dict[str, Any]:
        created, modified = store.dates()
        answer: dict[str, Any] = {"eventConfigurations": to_aws(store.get())}
        if created is not None:
            answer["creationDate"], answer["lastModifiedDate"] = created, modified
        return answer

    def update(r: ApiRequest) -> dict[str, Any]:
        spec = r.params.get("eventConfigurations")
        if spec is None:
            raise invalid("eventConfigurations is required")
        store.update(spec)
        return {}

    def create_reader(r: ApiRequest) -> dict[str, Any]:
        new = readers.create(r.params["Name"])
        return {"Name": new.name, "CertificateId": new.certificate_id, "CertificatePem": new.certificate_pem,
                "PrivateKeyPem": new.private_key_pem, "ClientId": new.client_id,
                "TopicFilter": EVENTS_TOPIC_FILTER, "RootCaPem": new.root_ca_pem}

    def revoke_reader(r: ApiRequest) -> dict[str, Any]:
        readers.revoke(r.params["Name"])
        return {}

    def list_readers(_r: ApiRequest) -> dict[str, Any]:
        out = []
        for row in readers.listed():
            item: dict[str, Any] = {"Name": row.name, "CertificateId": row.certificate_id,
                                    "ClientId": client_id_of(row.name), "Status": row.status,
                                    "CreationDate": int(row.created_at)}
            if row.revoked_at is not None:
                item["RevocationDate"] = int(row.revoked_at)
            out.append(item)
        return {"EventReaders": out}

    table.register("iot", "DescribeEventConfigurations", describe)
    table.register("iot", "UpdateEventConfigurations", update)
    table.register("overair", "CreateEventReader", create_reader)
    table.register("overair", "RevokeEventReader", revoke_reader)
    table.register("overair", "ListEventReaders", list_readers)
