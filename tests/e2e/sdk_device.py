"""A device built on the AWS IoT Device SDK v2 for Python (`awsiotsdk`), unmodified, as a
customer would build one for AWS IoT Core: mutual TLS with the certificate the API
issued for its thing, MQTT 3.1.1 (`awsiot.mqtt_connection_builder`) or MQTT 5
(`awsiot.mqtt5_client_builder`), and the SDK's two jobs clients, the classic
`IotJobsClient` (publish/subscribe per topic) and `IotJobsClientV2` (request-response
with its own subscriptions and correlation by clientToken).

It connects by host name, as to an AWS endpoint: "localhost", which the broker's server
certificate names (server/bootstrap.py: localhost and 127.0.0.1). The client id is the
thing name, the AWS convention; nothing here depends on the id the broker ends up using.

Everything the device receives goes to an `Inbox`; tests wait there for an observable
event, never for silence.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import awscrt.mqtt
import awscrt.mqtt5
import awscrt.mqtt_request_response
from awsiot import (
    ServiceStreamOptions,
    V2ServiceException,
    iotjobs,
    mqtt5_client_builder,
    mqtt_connection_builder,
)

from tests.server_harness import RunningServer

WAIT = 10.0
HOST = "localhost"
QOS1 = awscrt.mqtt.QoS.AT_LEAST_ONCE
ESTABLISHED = awscrt.mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED


class Protocol(Enum):
    MQTT311 = "mqtt311"
    MQTT5 = "mqtt5"


@dataclass(frozen=True)
class Received:
    """One message the device's code saw: `kind` names the SDK callback or topic."""

    kind: str
    body: Any


class Inbox:
    """What the device received, in order; `wait_for` returns the first match."""

    def __init__(self) -> None:
        self.items: list[Received] = []
        self._changed = threading.Condition()

    def put(self, kind: str, body: Any) -> None:
        with self._changed:
            self.items.append(Received(kind, body))
            self._changed.notify_all()

    def of(self, kind: str) -> list[Any]:
        with self._changed:
            return [item.body for item in self.items if item.kind == kind]

    def wait_for(self, kind: str, match: Callable[[Any], bool] = lambda _b: True,
                 what: str = "") -> Any:
        found: list[Any] = []

        def arrived() -> bool:
            found[:] = [item.body for item in self.items if item.kind == kind and match(item.body)]
            return bool(found)

        with self._changed:
            assert self._changed.wait_for(arrived, WAIT), what or f"no {kind} arrived"
        return found[0]

    def wait_count(self, kind: str, count: int, what: str = "") -> list[Any]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.of(kind)) >= count, WAIT), \
                what or f"fewer than {count} {kind}"
            return self.of(kind)


def _result(future: Future[Any]) -> Any:
    return future.result(WAIT)


class SdkDevice:
    """One thing's device: an SDK MQTT client (3.1.1 or 5) with both jobs clients."""

    def __init__(self, srv: RunningServer, bundle: Path, thing: str, protocol: Protocol) -> None:
        self.thing = thing
        self.protocol = protocol
        self.inbox = Inbox()
        files = {"endpoint": HOST, "port": srv.settings.mqtt_port, "client_id": thing,
                 "cert_filepath": str(bundle / "device.crt"), "pri_key_filepath": str(bundle / "device.key"),
                 "ca_filepath": str(bundle / "root-ca.pem")}
        self._mqtt5: Any = None
        self._connection: Any = None
        if protocol is Protocol.MQTT5:
            connected: Future[None] = Future()
            self._stopped: Future[None] = Future()

            def settle(future: Future[None], error: BaseException | None = None) -> None:
                if future.done():
                    return
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

            self._mqtt5 = mqtt5_client_builder.mtls_from_path(
                **files,
                on_lifecycle_connection_success=lambda _e: settle(connected),
                on_lifecycle_connection_failure=lambda e: settle(
                    connected, RuntimeError(f"MQTT 5 connection failed: {e.exception}")),
                on_lifecycle_stopped=lambda _e: settle(self._stopped))
            self._mqtt5.start()
            _result(connected)
            transport = self._mqtt5
        else:
            self._connection = mqtt_connection_builder.mtls_from_path(**files, clean_session=True,
                                                                       keep_alive_secs=30)
            _result(self._connection.connect())
            transport = self._connection
        self.v1 = iotjobs.IotJobsClient(transport)
        self.v2 = iotjobs.IotJobsClientV2(transport, awscrt.mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=4, max_streaming_subscriptions=2,
            operation_timeout_in_seconds=int(WAIT)))
        self._subscribed: set[str] = set()
        self._streams: list[Any] = []

    @property
    def transport(self) -> Any:
        """The SDK client (MQTT 5) or connection (MQTT 3.1.1) the service clients take."""
        return self._mqtt5 if self._mqtt5 is not None else self._connection

    def close(self) -> None:
        if self._mqtt5 is not None:
            self._mqtt5.stop()
            _result(self._stopped)
        else:
            _result(self._connection.disconnect())

    # The classic client (IotJobsClient): subscribe to each reply topic, then publish. --
    def _once(self, key: str, subscribe: Callable[[], tuple[Future[Any], str]]) -> None:
        if key not in self._subscribed:
            future, _topic = subscribe()
            _result(future)
            self._subscribed.add(key)

    def watch_v1(self) -> None:
        """NextJobExecutionChanged and JobExecutionsChanged, as the SDK's jobs sample does."""
        thing = self.thing
        self._once("notify-next", lambda: self.v1.subscribe_to_next_job_execution_changed_events(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), QOS1,
            lambda event: self.inbox.put("next-changed", event)))
        self._once("notify", lambda: self.v1.subscribe_to_job_executions_changed_events(
            iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=thing), QOS1,
            lambda event: self.inbox.put("executions-changed", event)))

    def _v1_call(self, name: str, job_id: str | None, accepted: Callable[..., Any],
                 rejected: Callable[..., Any], publish: Callable[..., Future[Any]], request: Any) -> Any:
        """Publish a request and return its `/accepted` answer, or raise V1Rejected with
        its `/rejected` one, matched by clientToken as the SDK's samples do."""
        kwargs: dict[str, str] = {"thing_name": self.thing}
        if job_id is not None:
            kwargs["job_id"] = job_id
        for outcome, subscribe in (("accepted", accepted), ("rejected", rejected)):
            def on_reply(reply: Any, outcome: str = outcome) -> None:
                self.inbox.put(name, (outcome, reply))

            def subscribing(subscribe: Callable[..., Any] = subscribe,
                            on_reply: Callable[[Any], None] = on_reply) -> tuple[Future[Any], str]:
                return subscribe(_SUBSCRIPTION_REQUESTS[name](**kwargs), QOS1, on_reply)  # type: ignore[no-any-return]

            self._once(f"{name}/{job_id}/{outcome}", subscribing)
        token = str(uuid.uuid4())
        request.client_token = token
        _result(publish(request, QOS1))
        outcome, reply = self.inbox.wait_for(name, lambda answer: answer[1].client_token == token,
                                             f"no answer to {name}")
        if outcome == "rejected":
            raise V1Rejected(reply)
        return reply

    def v1_describe(self, job_id: str, **fields: Any) -> Any:
        return self._v1_call("describe", job_id, self.v1.subscribe_to_describe_job_execution_accepted,
                             self.v1.subscribe_to_describe_job_execution_rejected,
                             self.v1.publish_describe_job_execution,
                             iotjobs.DescribeJobExecutionRequest(thing_name=self.thing, job_id=job_id,
                                                                 **fields))

    def v1_get_pending(self) -> Any:
        return self._v1_call("pending", None, self.v1.subscribe_to_get_pending_job_executions_accepted,
                             self.v1.subscribe_to_get_pending_job_executions_rejected,
                             self.v1.publish_get_pending_job_executions,
                             iotjobs.GetPendingJobExecutionsRequest(thing_name=self.thing))

    def v1_start_next(self, **fields: Any) -> Any:
        v1 = self.v1
        return self._v1_call("start-next", None, v1.subscribe_to_start_next_pending_job_execution_accepted,
                             v1.subscribe_to_start_next_pending_job_execution_rejected,
                             self.v1.publish_start_next_pending_job_execution,
                             iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.thing, **fields))

    def v1_update(self, job_id: str, status: str, **fields: Any) -> Any:
        return self._v1_call("update", job_id, self.v1.subscribe_to_update_job_execution_accepted,
                             self.v1.subscribe_to_update_job_execution_rejected,
                             self.v1.publish_update_job_execution,
                             iotjobs.UpdateJobExecutionRequest(thing_name=self.thing, job_id=job_id,
                                                               status=status, **fields))

    # The V2 client (IotJobsClientV2): request-response and streams. -------------------
    def watch_v2(self) -> None:
        """Open both event streams and wait until their subscriptions are established."""
        for kind, create, request in (
                ("next-changed", self.v2.create_next_job_execution_changed_stream,
                 iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=self.thing)),
                ("executions-changed", self.v2.create_job_executions_changed_stream,
                 iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=self.thing))):
            established: Future[None] = Future()

            def status(event: Any, done: Future[None] = established) -> None:
                if event.type == ESTABLISHED and not done.done():
                    done.set_result(None)

            def incoming(event: Any, kind: str = kind) -> None:
                self.inbox.put(kind, event)

            stream = create(request, ServiceStreamOptions(incoming_event_listener=incoming,
                                                          subscription_status_listener=status))
            stream.open()
            self._streams.append(stream)
            _result(established)

    def v2_call(self, operation: Callable[[Any], Future[Any]], request: Any) -> Any:
        """The operation's modeled response; V2Rejected with AWS's error document."""
        try:
            return _result(operation(request))
        except V2ServiceException as exc:
            if exc.modeled_error is None:
                raise
            raise V2Rejected(exc.modeled_error) from exc

    # Raw MQTT through the SDK's own connection (what no jobs client offers). ---------
    def raw_subscribe(self, topic: str) -> None:
        def received(topic: str, payload: bytes, **_kwargs: Any) -> None:
            self.inbox.put(topic, json.loads(payload))

        future, _packet = self.v1.mqtt_connection.subscribe(topic, QOS1, received)
        _result(future)

    def raw_publish(self, topic: str, payload: bytes) -> None:
        future, _packet = self.v1.mqtt_connection.publish(topic, payload, QOS1)
        _result(future)


_SUBSCRIPTION_REQUESTS: dict[str, Callable[..., Any]] = {
    "describe": iotjobs.DescribeJobExecutionSubscriptionRequest,
    "pending": iotjobs.GetPendingJobExecutionsSubscriptionRequest,
    "start-next": iotjobs.StartNextPendingJobExecutionSubscriptionRequest,
    "update": iotjobs.UpdateJobExecutionSubscriptionRequest,
}


class V1Rejected(Exception):
    """A classic-client request answered on `/rejected` (an `iotjobs.RejectedError`)."""

    def __init__(self, error: Any) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class V2Rejected(Exception):
    """A V2-client request answered on `/rejected` (an `iotjobs.V2ErrorResponse`)."""

    def __init__(self, error: Any) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
