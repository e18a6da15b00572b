"""The composition root: builds every service from one `Settings` and runs them in one
process (HTTP API, device service, the Mosquitto child, background work).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import hmac
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import psycopg
import uvicorn
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from overair.core import codesign, revocation, trustlist
from overair.core.errors import MisuseError, OverairError, UnavailableError
from overair.server import pki
from overair.server.api.contract import ApiError, Caller, OperationTable
from overair.server.api.edge import build_api_app
from overair.server.audit.device_events import RefusedConnectionRecorder
from overair.server.audit.log import AuditLog
from overair.server.bootstrap import upgrade_installation
from overair.server.clock import Clock, system_clock
from overair.server.dashboard.routes import build_dashboard
from overair.server.delivery.device_jobs_api import DeviceJobsApi
from overair.server.delivery.download_gate import DownloadGate
from overair.server.delivery.download_server import DownloadEndpoint
from overair.server.delivery.front_files import FrontFiles
from overair.server.delivery.http_download import HttpDelivery
from overair.server.delivery.nginx_front import (
    SOCKET_NAME,
    UPSTREAM_IDLE_SECONDS,
    FrontConfig,
    NginxFront,
    uses_root,
)
from overair.server.delivery.policy import DownloadPolicy
from overair.server.delivery.tls_peer import FastPeerCertificateProtocol
from overair.server.events import api as events_api
from overair.server.events.config import EventConfigStore
from overair.server.events.publisher import EventPublisher
from overair.server.events.readers import EventReaders
from overair.server.events.recorder import ChangeRecorder, forget_pending
from overair.server.files import write_atomic, write_private
from overair.server.fleet import api as fleet_api
from overair.server.fleet.config import IndexingStore
from overair.server.fleet.dynamic import DynamicGroups
from overair.server.fleet.search import FleetSearch
from overair.server.gateway import capacity
from overair.server.gateway.access_change import render_change
from overair.server.gateway.access_ledger import AccessLedger
from overair.server.gateway.access_sync import AccessSync
from overair.server.gateway.broker import Broker, check_port_free, render_acl, render_config
from overair.server.gateway.broker_plugin import PluginBuild, build_plugin
from overair.server.gateway.broker_probe import ExternalBrokerProbe
from overair.server.gateway.device_service import DeviceService, Outgoing
from overair.server.gateway.mqtt_driver import ServiceConnection
from overair.server.gateway.presence import PresenceEvent
from overair.server.gateway.reload import ConfirmedReload, command_trigger
from overair.server.gateway.session_close import SessionCloser
from overair.server.gateway.supervisor import BrokerSupervisor
from overair.server.gateway.tls import client_ssl_context
from overair.server.gateway.witness import AclWitness
from overair.server.health import api as health_api
from overair.server.health.monitor import HealthMonitor
from overair.server.iam import actions
from overair.server.iam import api as iam_api
from overair.server.iam.actions import Check
from overair.server.iam.arns import Arns
from overair.server.iam.authorizer import Authorizer
from overair.server.iam.identity import IdentityStore
from overair.server.iam.policies import PolicyStore
from overair.server.iam.principals import PrincipalBinder, PrincipalDirectory
from overair.server.iam.roles import RoleStore
from overair.server.jobs import api as jobs_api
from overair.server.jobs import steering_api
from overair.server.jobs.claims import RESCAN_SECONDS, Claim, claims_for
from overair.server.jobs.documents import JobDocuments
from overair.server.jobs.fanout import ANY_ACCESS, fanout_for
from overair.server.jobs.leader import leadership_for
from overair.server.jobs.scheduler import TICK_SECONDS, JobScheduler
from overair.server.jobs.service import JobService
from overair.server.jobs.steering import JobSteering
from overair.server.jobs.templates import JobTemplates
from overair.server.metrics import ServerCollector, metrics_app
from overair.server.ota import api as ota_api
from overair.server.ota import bundle as bundle_api
from overair.server.ota.delta import DeltaRenderer
from overair.server.ota.deployment import DeploymentKeys, DeploymentSigner
from overair.server.ota.manager import OtaManager, StepGate
from overair.server.ota.profiles import DeviceProfiles
from overair.server.packages import api as packages_api
from overair.server.packages.catalog import Catalog
from overair.server.packages.shadow_sync import PackageShadowSync
from overair.server.provisioning import api as provisioning_api
from overair.server.provisioning.claims import ClaimCertificates
from overair.server.provisioning.device import ClaimService
from overair.server.provisioning.templates import ProvisioningTemplates
from overair.server.registry import api as registry_api
from overair.server.registry import bulk_api, tags_api
from overair.server.registry.bulk import BulkRegistrar
from overair.server.registry.connectivity import NODE_CLAIM, Connectivity
from overair.server.registry.registration_tasks import RegistrationTasks
from overair.server.registry.service import Registry
from overair.server.registry.tags import GroupTags
from overair.server.sealing import Sealer
from overair.server.serial_batches import SerialBatches
from overair.server.settings import Settings
from overair.server.shadow import api as shadow_api
from overair.server.shadow.device_api import DeviceShadowApi
from overair.server.shadow.mqtt import ShadowMqtt
from overair.server.shadow.service import ShadowService
from overair.server.signing import api as signing_api
from overair.server.signing import trustlist as trust_api
from overair.server.signing.certstore import CertificateStore
from overair.server.signing.service import SigningService
from overair.server.signing.trustlist import CHAIN_FILE as TRUST_CHAIN_FILE
from overair.server.signing.trustlist import RootExpiryCollector, TrustListStore
from overair.server.storage.blob_config import make_blobs
from overair.server.storage.db import Database
from overair.server.storage.objects import ObjectStore
from overair.server.streams import api as streams_api
from overair.server.streams.service import STREAM_ROW_TTL, StreamService

log = logging.getLogger("overair.server")
# Allocations (less deallocations) between two young collections; CPython's default is
# 700. See `Server.run` where it is set.
GC_YOUNG_THRESHOLD = 20_000
# A restarted process may find its node's claim still held by its predecessor's dying
# session for a moment (on a vanished host, until the leader's keepalive bound).
NODE_CLAIM_ATTEMPTS, NODE_CLAIM_WAIT_SECONDS = 30, 1.0




class Server:
    # overair's access plugin in the broker it runs (gateway/broker_plugin.py); None for
    # an external broker or before the start.
    broker_plugin: PluginBuild | None = None
    _capacity_warned = False  # the last /health was above the warning level (log once per crossing)
    _change_seq = 0  # access changes sent to the access plugin
    _control_works = False  # the broker answers them (_probe_access_control)

    def __init__(self, settings: Settings, clock: Clock = system_clock) -> None:
        self.settings = settings
        paths = settings.paths
        self.clock = clock
        self.db = Database(settings.db_url)
        self.sealer = Sealer.load(paths.master_key)
        self.upgrade = upgrade_installation(self.db, self.sealer, settings, clock)
        self.fleet_ca = pki.load_issued(paths.fleet_ca_cert.read_bytes(), paths.fleet_ca_key.read_bytes())
        self.audit = AuditLog(self.db, clock)
        self.identity = IdentityStore(self.db, self.sealer, settings, clock)
        self.policies = PolicyStore(self.db, settings, clock)
        self.roles = RoleStore(self.db, self.sealer, settings, clock)
        self.registry = Registry(self.db, settings, self.fleet_ca, clock, self._access_changed)
        self._wire_events(settings, clock)
        self.objects = ObjectStore(self.db, paths.objects, max_object_bytes=settings.limits.max_object_bytes,
                                   blobs=make_blobs(settings.object_store, settings.data_dir, paths.objects))
        self.arns = Arns.of(settings)  # every ARN a request carries is parsed by it (O1)
        self.principals = PrincipalBinder(PrincipalDirectory(self.db), self.arns.scope)
        self.authorizer = Authorizer(self.policies, self.roles, PrincipalDirectory(self.db),
                                     self._bucket_policy, self.audit, clock, self.arns)
        self.certificates = CertificateStore(self.db, settings, self.sealer, clock, self._code_signing_roots,
                                             self._publish_revocations)
        self.signing = SigningService(self.db, settings, self.certificates, self.objects, clock)
        self.revocation_signer = self._revocation_signer()
        self.streams = StreamService(self.db, settings, self.objects, clock)
        self.jobs = JobService(self.db, settings, self.registry, clock)
        self.scheduler = JobScheduler(self.db, self.jobs, clock)
        # Fleet-wide periodic work runs in one process of those sharing the database
        # (jobs/leader.py; always this one on SQLite).
        # ... and the notifications and access changes the other processes must act on
        # too (jobs/fanout.py; nothing on SQLite).
        self.leadership, self.fanout = leadership_for(settings.db_url), fanout_for(settings.db_url)
        # Who works on an OTA update being created or a running registration task: the
        # leader takes over what a dead process left (jobs/claims.py).
        self.work_claims = claims_for(settings.db_url)
        self.registry.on_group_join = self._thing_joined_group
        self.ota = OtaManager(self.db, settings, self.objects, self.signing, self.streams, self.jobs,
                              self._code_signing_roots, clock,
                              DeviceProfiles(self.db, settings.device_profiles),
                              self.registry.resolve_targets, self._notify_threadsafe,
                              assume_role=self._assume_ota_role)
        self._wire_file_delivery(settings, clock)
        self.device_jobs = DeviceJobsApi(self.jobs, self.registry, self.audit, settings.limits, clock)
        self._connect_job_hooks()
        self.background = ThreadPoolExecutor(2, thread_name_prefix="ota")
        self.table = OperationTable()
        registry_api.register(self.table, self.registry, settings.device_mqtt_endpoint,
                              self.arns)
        self._register_fleet(settings, clock)
        streams_api.register(self.table, self.streams)
        ota_api.register(self.table, self.ota, self.jobs.job_arn, self._schedule_ota)
        signing_api.register_acm(self.table, self.certificates, self.signing)
        signing_api.register_signer(self.table, self.signing, self.authorizer.gate_for)
        self._register_overair_signing()
        bundle_api.register(self.table, bundle_api.BundleMaker(
            self.ota, self.jobs, self.streams, lambda: self.deployment_signer, self.revocation_envelope,
            self.trust_lists.chain))
        iam_api.register_iam(self.table, self.identity, self.roles, self.policies)
        iam_api.register_sts(self.table, self.identity, self.roles, self.arns)
        self._init_broker_state()
        self.ready = threading.Event()

    def _init_broker_state(self) -> None:
        """The broker (gateway/): the Mosquitto overair runs and its supervisor, or none
        when an external broker is used; the witness and reload that confirm access
        changes in both cases. Set at start (run)."""
        self.broker: Broker | None = None
        self.supervisor: BrokerSupervisor | None = None
        self.download_front: NginxFront | None = None  # delivery/nginx_front.py, when configured
        self.witness: AclWitness | None = None
        self.reload: ConfirmedReload | None = None
        self.connection: ServiceConnection | None = None
        self.access = AccessSync(self._apply_access)
        self.access_ledger = AccessLedger()
        self.broker_probe: ExternalBrokerProbe | None = None
        self.session_closer: SessionCloser | None = None

    def _wire_events(self, settings: Settings, clock: Clock) -> None:
        """Event messages (server/events/): every committed change the recorder sees goes
        to the publisher's queue; event readers get `$aws/events/#` at the broker."""
        self.event_config = EventConfigStore(self.db, clock)
        self.event_publisher = EventPublisher(self.db, clock, account=settings.account_id,
                                              arn=lambda resource: self.arns.arn("iot", resource),
                                              max_queued=settings.limits.max_queued_events,
                                              publish=self._publish_events)
        recorder = ChangeRecorder(self.event_config.enabled_types, self.event_publisher.changes_committed)
        self.db.listen("before_flush", recorder.before_flush)
        self.db.listen("do_orm_execute", recorder.do_orm_execute)
        self.db.listen("after_rollback", forget_pending)
        self.event_readers = EventReaders(self.db, self.fleet_ca, clock, self._readers_changed)

    def _readers_changed(self) -> None:
        self.access.changed()  # the full access file: it reserves the readers' client ids

    def _publish_events(self, messages: list[tuple[str, bytes]]) -> None:
        if self.connection is not None:
            # QoS 1: a reader with a persistent session gets what was published while it was away.
            self.connection.publish_threadsafe([Outgoing(topic, payload, qos=1)
                                                for topic, payload in messages])

    def _wire_file_delivery(self, settings: Settings, clock: Clock) -> None:
        """MQTT streams and HTTPS downloads, under one download policy (issue 18:
        delivery/policy.py); a deleted object leaves their caches at once."""
        self.downloads = DownloadGate(DownloadPolicy(settings.download_policy,
                                                     max_devices=settings.limits.device_budgets_tracked),
                                      self.jobs, clock)
        self.devices = DeviceService(self.jobs, self.streams, self.audit, settings.limits, clock,
                                     gate=self.downloads)
        self.delivery = HttpDelivery(self._url_signing_key(), settings.download_base_url,
                                     self.objects, self.jobs, self.audit, clock, limits=settings.limits,
                                     gate=self.downloads)
        self.objects.deletion_watchers += [self.delivery.forget_file, self.streams.forget_object,
                                           self._announce_deletion]

    def _announce_deletion(self, bucket: str, key: str) -> None:
        self.fanout.announce("deleted", [f"{bucket}/{key}"])

    def _check_download_host(self) -> None:
        """Devices check the download endpoint's certificate (the broker's) against the
        host of the URL they are given: say so at start if it cannot match."""
        host = urlsplit(self.settings.download_base_url).hostname or ""
        cert = x509.load_pem_x509_certificate(self.settings.paths.broker_cert.read_bytes())
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            names = x509.SubjectAlternativeName([])
        dns = {name.lower() for name in names.get_values_for_type(x509.DNSName)}
        addresses = {str(address) for address in names.get_values_for_type(x509.IPAddress)}
        if host.lower() not in dns and host not in addresses:
            log.error("download URLs name %s, which the endpoint's certificate (%s) does not: devices will "
                      "refuse it; add it with `overair init --hostname` or set download_public_url",
                      host, self.settings.paths.broker_cert)

    def _register_overair_signing(self) -> None:
        """overair's revocation and key rotation operations. The published trust lists'
        roots are the server's once one is published (`_code_signing_roots`)."""
        signing_api.register_overair(self.table, self.certificates)
        self.trust_lists = TrustListStore(self.settings.paths.pki / TRUST_CHAIN_FILE, self._configured_roots,
                                          lambda: self.deployment_signer.public_key, self.settings.limits)
        trust_api.register(self.table, self.trust_lists, self._publish_trust_lists)

    def _register_fleet(self, settings: Settings, clock: Clock) -> None:
        """Jobs, job steering and templates, the Software Package Catalog and the Device Shadow
        service (MQTT and iot-data)."""
        self.shadows = ShadowService(self.db, settings.limits, clock)
        self.devices.shadows = ShadowMqtt(self.shadows, settings.limits, clock)
        catalog = Catalog(self.db, settings, clock)
        events_api.register(self.table, self.event_config, self.event_readers)
        packages_api.register(self.table, catalog)
        # This process's broker node, for the connectivity rows its broker's events set
        # (registry/connectivity.py): stable across restarts of the same node.
        self.connectivity = Connectivity(self.db, clock, node=f"{socket.gethostname()}:{settings.mqtt_port}")
        self._node_claim: Claim | None = None
        # One thread applies the broker's connection events in order, off the event loop.
        self.presence_worker = ThreadPoolExecutor(1, thread_name_prefix="presence")
        self.presence_events: SerialBatches[PresenceEvent] = SerialBatches(
            self.presence_worker, self.connectivity.apply, "device connection events",
            settings.limits.serial_batch)
        registry_api.register_connectivity(self.table, self.registry, self.connectivity)
        self._register_fleet_index(settings, clock)
        self._register_bulk_registration(settings, clock)
        self.package_shadow_worker = ThreadPoolExecutor(1, thread_name_prefix="package-shadow")
        self.jobs.on_installed = PackageShadowSync(
            self.shadows, self._publish_threadsafe,
            lambda: catalog.configuration().jobs_update_versions, self.package_shadow_worker,
            settings.limits.serial_batch).installed
        templates = JobTemplates(self.db, settings, clock)
        jobs_api.register(self.table, self.jobs, self.registry.thing_arn, self._notify_threadsafe,
                          self.objects, settings.limits.max_job_document_bytes, self._caller_may_read,
                          templates, catalog.published_versions)
        shadow_operations = shadow_api.ShadowOperations(self.shadows, self._publish_threadsafe, clock,
                                                        settings.limits)
        shadow_api.register(self.table, shadow_operations)
        self.device_shadows = DeviceShadowApi(shadow_operations, self.registry, self.device_jobs.budgets,
                                              self.device_jobs.events, settings.limits, clock)
        # Health-gated rollouts (issue 18): the scheduler asks the gates before releasing.
        self.health = HealthMonitor(self.db, self.jobs, self.audit, settings.limits, clock,
                                    self._notify_threadsafe)
        self.scheduler.release_cap = self.health.release_cap
        health_api.register(self.table, self.health)
        steering_api.register(self.table, self.jobs, JobSteering(self.db, self.jobs, self.registry, clock),
                              templates,
                              JobDocuments(self.objects, settings.limits.max_job_document_bytes,
                                           self._caller_may_read),
                              self._notify_threadsafe)

    def _register_bulk_registration(self, settings: Settings, clock: Clock) -> None:
        """RegisterThing and bulk registration tasks (server/registry/bulk.py); the task
        reads its input file as its service role."""
        self.registrar = BulkRegistrar(self.db, self.registry, self.fleet_ca, clock)
        self.registrar.followed = self.jobs.continuous_targets

        def role_may_read(role_arn: str, bucket: str, key: str) -> None:
            principal = self.authorizer.service_role(role_arn, "thing-registration")
            resource = f"arn:{settings.partition}:s3:::{bucket}/{key}"
            self.authorizer.require(principal, Check("s3:GetObject", resource), "iot")

        self.registration_tasks = RegistrationTasks(self.db, self.objects, self.registrar, settings.limits,
                                                     clock, role_may_read, self.work_claims)
        bulk_api.register(self.table, self.registration_tasks, self.registrar, settings.limits)
        self._register_fleet_provisioning(settings, clock)

    def _register_fleet_provisioning(self, settings: Settings, clock: Clock) -> None:
        """Provisioning templates, claim certificates and the device provisioning MQTT
        API (server/provisioning/). A template's role is checked as bulk registration's
        is: IoT must be able to assume it; RegisterThing also needs iot:CreateThing."""

        def role_check(role_arn: str) -> None:
            self.authorizer.service_role(role_arn, "fleet-provisioning")

        def role_may_register(role_arn: str, thing_arn: str) -> None:
            principal = self.authorizer.service_role(role_arn, "fleet-provisioning")
            self.authorizer.require(principal, Check("iot:CreateThing", thing_arn), "iot")

        self.provisioning_templates = ProvisioningTemplates(self.db, settings, clock, role_check)
        self.claims = ClaimCertificates(self.db)
        # Claim certificates gain or lose topics: the broker's rules are regenerated whole.
        self.provisioning_templates.on_change = self._access_changed
        self.claims.on_change = self._access_changed
        token_key = hmac.new(self._url_signing_key(), b"overair claim ownership token v1", "sha256").digest()
        self.claim_service = ClaimService(self.db, self.registry, self.registrar, self.provisioning_templates,
                                          self.fleet_ca, self.audit, settings.limits, clock, token_key,
                                          role_may_register)
        provisioning_api.register(self.table, self.provisioning_templates, self.claims)

    def _claims_served(self) -> bool:
        """Only overair's access plugin can answer one device of the many that share a
        claim certificate (plugin/overair_access.c); without it no claim is granted."""
        return self.broker_plugin is not None and self.broker_plugin.available

    def _register_fleet_index(self, settings: Settings, clock: Clock) -> None:
        """Fleet indexing (SearchIndex, aggregations, the indexing configuration) and the
        dynamic thing groups, whose worker is told of every change to a thing's data."""
        indexing = IndexingStore(self.db, clock)
        search = FleetSearch(self.db, settings.limits, indexing.get)
        dynamic = self.dynamic_groups = DynamicGroups(self.db, search, indexing, settings.limits, clock,
                                                      self.registry.group_arn)
        dynamic.on_join = self._thing_joined_group
        dynamic.on_leave = self.jobs.withdraw_unreleased
        dynamic.followed = self.jobs.continuous_targets
        indexing.on_change = dynamic.rebuild_all
        self.registry.on_things_changed = dynamic.touch
        self.shadows.on_change = lambda thing: dynamic.touch((thing,))
        self.connectivity.on_change = dynamic.touch
        group_tags = GroupTags(self.db)
        fleet_api.register(self.table, search, indexing, dynamic, settings.limits, group_tags)
        tags_api.register(self.table, group_tags)

    # Wiring callbacks ----------------------------------------------------------------
    def _bucket_policy(self, bucket: str) -> str | None:
        try:
            return self.objects.get_bucket_policy(bucket)
        except ApiError:  # no such bucket: the operation itself will say so, if allowed
            return None

    def _caller_may_read(self, caller: Caller, bucket: str, key: str) -> None:
        """CreateJob's documentSource and URL placeholders read objects for the caller."""
        self.authorizer.check_s3(caller, "s3:GetObject", f"arn:{self.settings.partition}:s3:::{bucket}/{key}")

    def _assume_ota_role(self, role_arn: str, ota_id: str) -> StepGate:
        principal = self.authorizer.service_role(role_arn, f"ota-{ota_id}"[:64])

        def gate(action: str, resource: str) -> None:
            # Reported in the OTA update's errorInfo, in CreateOTAUpdate's (iot's) terms.
            self.authorizer.require(principal, Check(action, resource), "iot")

        return gate

    def _authorize(self, caller: Caller, service: str, operation: str, params: dict[str, Any],
                   headers: Mapping[str, str]) -> None:
        needs = actions.needs(service, operation, params, self.arns, caller, headers)
        self.authorizer.check(caller, service, needs.checks)

    def _configured_roots(self) -> list[x509.Certificate]:
        return codesign.load_pem_certificates(self.settings.paths.code_signing_root.read_bytes())

    def _code_signing_roots(self) -> list[x509.Certificate]:
        """The newest published trust list's roots (a retired root signs nothing more),
        else the data directory's."""
        return self.trust_lists.roots() or self._configured_roots()

    def _url_signing_key(self) -> bytes:
        path = self.settings.paths.url_signing_key
        if not path.exists():  # a data directory from before HTTP delivery
            write_private(path, secrets.token_bytes(32))
        return bytes(path.read_bytes())

    def _revocation_signer(self) -> pki.Issued:
        paths = self.settings.paths
        if not paths.revocation_signer_key.exists():  # a data directory from before revocation lists
            issued = pki.make_revocation_signer(dt.datetime.fromtimestamp(self.clock(), dt.UTC))
            write_private(paths.revocation_signer_key, issued.key_pem)
            write_atomic(paths.revocation_signer_cert, issued.cert_pem)
        return pki.load_issued(paths.revocation_signer_cert.read_bytes(),
                               paths.revocation_signer_key.read_bytes())

    def revocation_envelope(self) -> bytes:
        """The signed code-signing revocation list as it stands (core/revocation.py)."""
        current = revocation.RevocationList(self.certificates.revocation_count(), int(self.clock()),
                                            self.certificates.revoked_serials())
        return revocation.sign_list(current, self.revocation_signer.key)

    def _publish_revocations(self) -> None:
        if self.connection is not None:
            self.connection.publish_retained_threadsafe(revocation.REVOCATIONS_TOPIC,
                                                        self.revocation_envelope())

    def _republish_revocations(self) -> None:
        """On the event loop, whenever the service connects to the broker."""
        if self.connection is None:
            return
        try:
            self.connection.publish_retained(revocation.REVOCATIONS_TOPIC, self.revocation_envelope())
        except Exception:
            log.exception("could not publish the code-signing revocation list")

    def _publish_trust_lists(self) -> None:
        chain = self.trust_lists.chain()
        if self.connection is not None and chain is not None:
            self.connection.publish_retained_threadsafe(trustlist.TRUST_TOPIC, chain)

    def _republish_retained(self) -> None:
        """On the event loop, whenever the service connects to the broker: the signed
        revocation list and the trust list chain."""
        self._republish_revocations()
        if self.connection is None:
            return
        try:
            chain = self.trust_lists.chain()
            if chain is not None:
                self.connection.publish_retained(trustlist.TRUST_TOPIC, chain)
        except Exception:
            log.exception("could not publish the trust list chain")

    def _publish_threadsafe(self, messages: list[tuple[str, bytes]]) -> None:
        if self.connection is not None:
            self.connection.publish_threadsafe([Outgoing(topic, payload) for topic, payload in messages])

    def _presence_event(self, event: PresenceEvent) -> None:
        """On the event loop: hand the event to the presence worker (never waits)."""
        self.event_publisher.presence(event)
        self.presence_events.add(event)

    def _notify_threadsafe(self, things: list[str]) -> None:
        self._notify_here(things)
        self.fanout.announce("next", things)

    def _notify_here(self, things: list[str]) -> None:
        if self.connection is not None:
            self.connection.notify_next_threadsafe(things)

    def _connect_job_hooks(self) -> None:
        # Each delivery: fresh pre-signed URLs, then what the thing's device profile adds.
        self.jobs.render_document = self.ota.profiles.renderer(self.delivery.render)
        # Then a thing's delta patch, for overair agents that run its source (ota/delta.py).
        deltas = DeltaRenderer(self.db, self.ota.profiles.takes_extension, self.delivery.object_url)
        self.jobs.render_document = deltas.wrap(self.jobs.render_document)
        self.jobs.prepare_render = self.ota.profiles.prefetch
        paths = self.settings.paths
        keys = DeploymentKeys(paths.deployment_key, paths.deployment_keys, self.sealer)
        self.deployment_signer = DeploymentSigner(keys()[0], self.clock, keys=keys)
        self.ota.profiles.sign_deployment = self.deployment_signer.sign_delivery
        self.jobs.on_pending_changed = self._notify_pending_threadsafe
        # A thing joining a CONTINUOUS job's group is checked as CreateOTAUpdate checks targets.
        self.jobs.refuse_target = self.ota.profiles.refusal
        self.jobs.on_target_refused = self._audit_refused_target
        self.device_jobs.on_next_changed = self._notify_threadsafe

    def _audit_refused_target(self, job_id: str, thing: str, reason: str) -> None:
        try:
            self.audit.record(principal="service/overair", action="iot:CreateJobExecution",
                              resource=self.jobs.job_arn(job_id), decision="Refused",
                              detail={"thing": thing, "reason": reason})
        except UnavailableError as exc:
            log.error("could not audit the refused target %s of job %s: %s", thing, job_id, exc.message)

    def _thing_joined_group(self, thing: str, group_arn: str) -> None:
        self._notify_threadsafe(self.jobs.add_thing_to_continuous_jobs(thing, group_arn))

    async def _run_scheduler(self) -> None:
        """Timeouts, aborts and staged releases (jobs/scheduler.py), once a second, in the
        leader process only; the others try to become it at every tick. On becoming
        leader, and every RESCAN_SECONDS while leading, it takes over the work of processes
        that died (the previous leader, or any other)."""
        rescan_at = 0.0
        while True:
            if not await asyncio.to_thread(self.leadership.poll):
                rescan_at = 0.0  # at once when this process leads (again)
                await asyncio.sleep(TICK_SECONDS)
                continue
            if time.monotonic() >= rescan_at and self.ready.is_set():
                rescan_at = time.monotonic() + RESCAN_SECONDS
                self.background.submit(self._take_over_orphans)
            result = await asyncio.to_thread(self.scheduler.tick)
            if self.connection is not None:
                if result.next_changed:
                    await self.connection.notify_next(result.next_changed)
                if result.pending_changed:
                    await self.connection.notify_pending(result.pending_changed)
            self.fanout.announce("next", result.next_changed)
            self.fanout.announce("pending", result.pending_changed)
            await asyncio.sleep(TICK_SECONDS)

    async def _run_health(self) -> None:
        """The health gates' decisions and actions (server/health/monitor.py), once a second."""
        while True:
            await asyncio.to_thread(self.health.tick)
            await asyncio.sleep(TICK_SECONDS)

    async def _run_renewals(self, access_ttl: float) -> None:
        """What block requests are answered from without the database, read again before it
        expires, so that the event loop's fast path keeps answering them: the stream rows
        asked for (every second; they live STREAM_ROW_TTL) and the N4 decisions of the
        devices downloading (every third of their lifetime: streams/access.py `renew`)."""
        access_renewed = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, STREAM_ROW_TTL / 2))
            try:
                await asyncio.to_thread(self.streams.renew_rows)
                if time.monotonic() - access_renewed >= access_ttl / 3:
                    access_renewed = time.monotonic()
                    await asyncio.to_thread(self.devices.renew_access)
                    await asyncio.to_thread(self.delivery.renew_access)
            except Exception:  # the loop goes on: what was not renewed expires and is read again
                log.exception("renewing cached stream rows or device access decisions failed")

    def _notify_pending_threadsafe(self, things: list[str]) -> None:
        self._notify_pending_here(things)
        self.fanout.announce("pending", things)

    def _notify_pending_here(self, things: list[str]) -> None:
        if self.connection is not None and things:
            self.connection.notify_pending_threadsafe(things)

    def _on_fanout(self, kind: str, names: list[str]) -> None:
        """Another server process announced a change (jobs/fanout.py): act on it here."""
        if kind == "next":
            self._notify_here(names)
        elif kind == "pending":
            self._notify_pending_here(names)
        elif kind == "deleted":
            for name in names:
                bucket, _, key = name.partition("/")
                self.delivery.forget_file(bucket, key)
                self.streams.forget_object(bucket, key)
        else:
            self._access_changed_here([] if names == [ANY_ACCESS] else names)

    def _schedule_ota(self, ota_id: str) -> None:
        self.background.submit(self._process_ota, ota_id)

    def _process_ota(self, ota_id: str) -> None:
        """Create the OTA update under its claim: one process at a time, and the leader
        takes it over if this process dies meanwhile (jobs/claims.py)."""
        try:
            claim = self.work_claims.take("ota", ota_id)
        except psycopg.Error as exc:
            log.error("OTA update %s not processed now (the leader's rescan takes it up): %s", ota_id, exc)
            return
        if claim is None:
            return  # a live process is creating it
        try:
            if ota_id in self.ota.pending_ids():  # not finished (or deleted) meanwhile
                self.ota.process(ota_id)
        finally:
            claim.release()

    def _take_over_orphans(self) -> None:
        """As leader: OTA updates still pending and registration tasks still running
        whose process died (nobody holds their claim) are taken up here, and the things
        recorded as connected through a dead process's broker are disconnected."""
        try:
            self._resume_pending_updates()
            self.registration_tasks.interrupted_by_restart()
            dead = self.presence_events.submit_after(
                lambda: self.connectivity.sweep_dead_nodes(self.work_claims)).result()
            if dead:
                log.warning("broker nodes gone with their server process: %s; their things are "
                            "recorded as disconnected", ", ".join(dead))
        except OverairError as exc:
            log.warning("work left by stopped server processes not checked now: %s", exc.message)
        except psycopg.Error as exc:
            log.warning("broker nodes of stopped server processes not checked now: %s", exc)

    def _claim_node(self) -> None:
        """Hold this process's broker node for as long as it runs, so that the leader
        knows its connectivity rows are alive. Two live processes on one node (same host
        name and MQTT port) would each take the other's connections for their own."""
        node = self.connectivity.node
        for _ in range(NODE_CLAIM_ATTEMPTS):
            self._node_claim = self.work_claims.take(NODE_CLAIM, node)
            if self._node_claim is not None:
                return
            # A previous process of this node may be dying: its session ends with it.
            time.sleep(NODE_CLAIM_WAIT_SECONDS)
        raise MisuseError(f"another server process runs as broker node {node} (same host name and "
                          "mqtt_port) on this database: give each process its own mqtt_port or host")

    def _access_changed(self, principals: Sequence[str] = ()) -> None:
        """A registry change of these certificates' access (none named: anything may have
        changed), here and in the other server processes' brokers."""
        self._access_changed_here(principals)
        self.fanout.announce("access", list(principals) or [ANY_ACCESS])

    def _access_changed_here(self, principals: Sequence[str] = ()) -> None:
        """With overair's access plugin the change goes to the broker alone, in
        constant time; otherwise the broker's files are regenerated and reloaded."""
        if principals and self._changes_in_place() and not self.claims.any_claim(principals):
            self.access.one(lambda: self._apply_change(principals))
        else:
            self.access.changed()

    def _changes_in_place(self) -> bool:
        return (self.supervisor is not None and self.witness is not None and self.reload is not None
                and self.broker_plugin is not None and self.broker_plugin.available and self._control_works)

    def _apply_change(self, principals: Sequence[str]) -> None:
        access = self.registry.identity_access(principals)
        if access.shared:
            # Several ACTIVE certificates present one identity (certificates issued before
            # unique subjects): only the CRL keeps a withdrawn one out, so reload it too.
            self._apply_access()
            return
        assert self.witness is not None
        self._change_seq += 1
        self.witness.change(self._change_seq, render_change(self._change_seq, access.things))
        if access.withdrawn:
            # For the broker's next start, where the CRL keeps the certificate out at TLS;
            # until then the plugin refuses it (its rules are gone). The access file is
            # regenerated whole at every (re)start (_regenerate_for_restart).
            now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
            crl = pki.make_crl(self.fleet_ca, self.registry.revoked_serials(), now)
            write_atomic(self.settings.paths.crl, crl)
        self.devices.forget_access()
        self.delivery.forget_access()

    def _probe_access_control(self) -> None:
        """Does the broker hand the control topic to the access plugin (Mosquitto built
        with control topics)? An empty change must be answered."""
        assert self.witness is not None
        try:
            self._change_seq += 1
            self.witness.change(self._change_seq, render_change(self._change_seq, {}), timeout=5.0)
            self._control_works = True
        except UnavailableError as exc:
            self._control_works = False
            log.warning("access changes go by reloading the broker (its cost grows with the fleet): %s",
                        exc.message)

    def _apply_access(self) -> None:
        """Regenerate the broker's files, have the broker enforce them (UnavailableError
        if it cannot confirm that), then disconnect whoever lost all access."""
        self.write_broker_access()
        self.devices.forget_access()
        self.delivery.forget_access()
        if self.reload is None:
            return  # no broker yet: run() starts it with these files
        self.reload(self.access_ledger.generation)
        self._close_withdrawn_sessions()

    def _close_withdrawn_sessions(self) -> None:
        """A certificate that lost some things keeps its session: the broker re-checks
        the ACL on every message. One that lost all access (revoked, inactive, detached
        from its last thing) is disconnected (gateway/session_close.py); a failure is
        retried with the next change and reported."""
        pending = self.access_ledger.to_close()
        if self.broker_plugin is not None and self.broker_plugin.available:
            # The access plugin re-authenticates every session at the reload just
            # confirmed, and disconnected these there (plugin/overair_access.c).
            self.access_ledger.closed(set(pending))
            return
        if not pending or self.session_closer is None:
            return
        failed = set(self.session_closer.close_sessions(pending))
        self.access_ledger.closed(pending.keys() - failed)
        if failed:
            raise UnavailableError(f"could not disconnect {len(failed)} client(s) whose access was withdrawn")

    def write_broker_access(self, *, fresh_broker: bool = False) -> None:
        """Regenerate the broker ACL and CRL from the registry. `fresh_broker`: no session
        is open (the broker is about to start), so there is nobody to disconnect."""
        paths = self.settings.paths
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        access = self.registry.broker_access()
        generation = secrets.token_hex(8)
        control = self.broker_probe.rules() if self.broker_probe is not None else {}
        if self.witness is not None:
            control[self.witness.identity] = self.witness.rules(generation)
        service = self._service_identity()
        client_ids = {service: [pki.SERVICE_IDENTITY]}  # the service connection's client id
        readers, reader_ids = self.event_readers.rules()  # `read $aws/events/#` only
        control.update(readers)
        client_ids.update(reader_ids)
        if self.witness is not None:
            client_ids[self.witness.identity] = [self.witness.identity]
        acl = render_acl(service=service, devices=access.grants, control=control, client_ids=client_ids,
                         for_plugin=self.broker_plugin is not None and self.broker_plugin.available,
                         claims=self.claims.identities() if self._claims_served() else None)
        revoked = self.registry.revoked_serials() + self.event_readers.revoked_serials()
        if self.broker_probe is not None:
            revoked += self.broker_probe.revoked_serials()
        write_atomic(paths.crl, pki.make_crl(self.fleet_ca, revoked, now))
        write_atomic(paths.broker / "acl", acl.encode(), mode=0o640)
        before = self.access_ledger.record(access, generation, fresh_broker=fresh_broker)
        if before is None or access.shared != before.shared or access.unnamed != before.unnamed:
            for identity in sorted(access.shared):
                log.warning("several ACTIVE certificates share the broker identity %s (issued before "
                            "unique subjects): it gets only what all of them are attached to; revoke the "
                            "stale one (docs/security.md, Devices)", identity)
            if access.unnamed:
                log.warning("certificates %s have subjects the broker cannot name safely: they reach nothing",
                            ", ".join(access.unnamed))

    def _service_identity(self) -> str:
        subject = x509.load_pem_x509_certificate(self.settings.paths.service_cert.read_bytes()).subject
        identity = pki.broker_username(subject)
        if identity is None:
            raise MisuseError(f"the service certificate's subject {subject.rfc4514_string()!r} cannot be a "
                              "broker identity")
        return identity

    def _signal_managed_broker(self) -> None:
        if self.supervisor is None or self.broker is None or not self.supervisor.up:
            raise UnavailableError("the broker is down; the supervisor is restarting it")
        self.broker.signal_reload()

    def _regenerate_for_restart(self) -> None:
        self.access.exclusively(lambda: self.write_broker_access(fresh_broker=True))
        # The broker died with its connections, logging none of their ends: after the
        # events it did log (same worker, so in order), every thing is disconnected.
        self.presence_events.submit_after(self.connectivity.restarted).result()

    def broker_health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, what /health shows about the broker)."""
        if self.supervisor is not None:
            status = self.supervisor.status()
            up = self.supervisor.up
            return up, {"broker": "up" if up else "down", "brokerState": status["state"],
                        "brokerRestarts": status["restarts"], "brokerLastExit": status["lastExit"],
                        "brokerAccess": self._broker_access_mode(), **self._broker_load()}
        if self.witness is not None:  # an external broker: up while overair reaches it
            up = self.witness.connected
            return up, {"broker": "up" if up else "down", "brokerState": "external"}
        return True, {"broker": "up"}  # not started yet

    def _broker_load(self) -> dict[str, object]:
        """Device connections against what the managed broker can hold (gateway/capacity.py);
        a warning from 90 % on."""
        broker = self.broker
        if broker is None or broker.process is None or self.settings.external_broker is not None:
            return {}
        held = capacity.capacity(broker.process.pid)
        connected = capacity.connections(self.settings.mqtt_port)
        load: dict[str, object] = {"brokerConnections": connected, "brokerCapacity": held}
        if held is not None and connected is not None and connected >= capacity.WARN_AT * held:
            load["brokerWarning"] = (f"{connected} connections of a capacity of {held}: raise the open-file "
                                     "limit (ulimit -n, LimitNOFILE=) before more devices are refused")
            if not self._capacity_warned:
                log.warning("the broker holds %d connections of a capacity of %d", connected, held)
            self._capacity_warned = True
        else:
            self._capacity_warned = False
        return load

    def _log_capacity(self) -> None:
        broker = self.broker
        held = capacity.capacity(broker.process.pid) if broker is not None and broker.process else None
        if held is None:
            log.info("the broker's open-file limit is unlimited or unknown")
        else:
            log.info("the broker can hold about %d device connections (its open-file limit)", held)

    def _broker_access_mode(self) -> str:
        """`plugin`: overair's access plugin decides (AWS's client ids, SUBACK and PUBLISH
        refusals); `subject`: the client id is forced to the certificate's subject."""
        return "plugin" if self.broker_plugin is not None and self.broker_plugin.available else "subject"

    def broker_metrics(self) -> dict[str, float]:
        """Counters for a metrics endpoint (broker up, restarts, exits)."""
        service = self.connection.metrics() if self.connection is not None else {}
        if self.supervisor is not None:
            return {**self.supervisor.metrics(), **service}
        up = self.witness is not None and self.witness.connected
        return {**service, "overair_broker_up": 1.0 if up else 0.0}

    def _health(self, _request: Request) -> JSONResponse:
        """Ok only when the broker is up and the database answers (a bounded read of the
        schema and every table, and no unrecovered database failure: storage/db.py)."""
        broker_up, broker = self.broker_health()
        database_problem = self.db.health()
        database: dict[str, object] = {"database": "up"} if database_problem is None else {
            "database": "down", "database_error": f"the database is unavailable: {database_problem}"}
        healthy = broker_up and database_problem is None and self.ready.is_set()
        status = "ok" if healthy else "degraded"
        return JSONResponse({"status": status, **broker, **database}, status_code=200 if healthy else 503)

    def _dashboard_routes(self) -> list[BaseRoute]:
        """The web dashboard under /dashboard/ (server/dashboard/)."""
        def connections() -> int | None:
            if self.broker is None or self.settings.external_broker is not None:
                return None
            return capacity.connections(self.settings.mqtt_port)

        return build_dashboard(self, connections)

    def _http_servers(self) -> tuple[list[uvicorn.Server], uvicorn.Config]:
        """The operator API (and metrics) servers, and the device endpoint's configuration
        (HTTPS, fleet-CA certificate, which devices authenticate like the broker's; served
        on a thread of its own: delivery/download_server.py)."""
        settings, paths = self.settings, self.settings.paths
        app = build_api_app(self.table, self.identity.lookup, self.objects, region=settings.region,
                            max_body_bytes=settings.limits.max_api_body_bytes,
                            extra_routes=[Route("/health", self._health), *self._dashboard_routes()],
                            now=self.clock,
                            authorize=self._authorize, s3_authorizer=self.authorizer.check_s3,
                            bucket_policies=self.principals, partition=settings.partition,
                            limits=settings.limits, trusted_proxies=settings.trusted_proxies)
        tls_cert, tls_key = settings.http_tls_cert, settings.http_tls_key
        # proxy_headers=False on both: uvicorn would otherwise take the client address
        # and scheme from X-Forwarded-* of any loopback peer (threat O1); the API edge
        # honours them from `trusted_proxies` only (api/request_context.py).
        servers = [
            uvicorn.Server(uvicorn.Config(
                app, host=settings.http_host, port=settings.http_port, log_level="warning", lifespan="off",
                proxy_headers=False,
                ssl_certfile=str(tls_cert) if tls_cert else None,
                ssl_keyfile=str(tls_key) if tls_key else None)),
        ]
        devices = uvicorn.Config(
            self.delivery.fast_app(Starlette(routes=self.delivery.routes() + self.device_shadows.routes()
                                             + self.device_jobs.routes())),
            host=settings.mqtt_host, port=settings.download_port, log_level="warning", lifespan="off",
            proxy_headers=False,
            ssl_certfile=str(paths.broker_cert), ssl_keyfile=str(paths.broker_key),
            # Downloads need no client certificate (the URL is the grant); the Jobs API
            # does, and checks it against the registry.
            ssl_cert_reqs=ssl.CERT_OPTIONAL, ssl_ca_certs=str(paths.fleet_ca_cert),
            http=FastPeerCertificateProtocol, loop="none")
        if settings.metrics_port:
            collector = ServerCollector(self.db, self.broker_metrics, self._broker_load, self.clock)
            servers.append(uvicorn.Server(uvicorn.Config(
                metrics_app(collector, RootExpiryCollector(self._code_signing_roots, self.clock)),
                host=settings.http_host, port=settings.metrics_port,
                log_level="warning", lifespan="off", proxy_headers=False)))
        return servers, devices

    def _start_http(self, servers: list[uvicorn.Server]) -> list[asyncio.Task[object]]:
        """Start the HTTP servers (the device endpoint on its own thread); adds them to
        `servers` and returns the tasks that end when they do."""
        api_servers, device_config = self._http_servers()
        endpoint = DownloadEndpoint(device_config)
        servers.extend([*api_servers, endpoint.server])
        serving: list[asyncio.Task[object]] = [asyncio.create_task(server.serve()) for server in api_servers]
        endpoint.start()
        serving.append(asyncio.create_task(endpoint.serve_until_stopped()))
        if self.settings.download_front == "nginx":
            front_side = self._front_side()
            servers.append(front_side.server)
            front_side.start()
            serving.append(asyncio.create_task(front_side.serve_until_stopped()))
        return serving

    def _front_side(self) -> DownloadEndpoint:
        """What the nginx download front asks (delivery/nginx_front.py): the downloads
        app alone (access decisions, slice fills), on a Unix socket in the front's
        directory, on a thread and loop of its own. Plain HTTP: the socket is inside the
        data directory, which only the overair user (and root) may enter."""
        directory = self.settings.paths.download_front
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return DownloadEndpoint(uvicorn.Config(
            self.delivery.fast_app(Starlette(routes=self.delivery.routes())),
            uds=str(directory / SOCKET_NAME), log_level="warning", lifespan="off", proxy_headers=False,
            loop="none", http="httptools", timeout_keep_alive=UPSTREAM_IDLE_SECONDS,
            # nginx reads a cached decision's headers at every request it serves: only
            # those it uses.
            server_header=False, date_header=False))

    # Running -------------------------------------------------------------------------
    async def _start_download_front(self) -> None:
        """nginx in front of the device endpoint when configured (delivery/nginx_front.py):
        pre-signed URLs then name it (settings.download_base_url)."""
        settings, paths = self.settings, self.settings.paths
        if settings.download_front != "nginx":
            return
        check_port_free(settings.mqtt_host, settings.download_front_port)
        config = FrontConfig(paths.download_front, settings.mqtt_host, settings.download_front_port,
                             paths.broker_cert, paths.broker_key, settings.limits, uses_root())
        self.delivery.front_files = FrontFiles(paths.download_front / "files", self.objects,
                                               settings.limits.download_front_files_bytes)
        self.download_front = NginxFront(settings.nginx_binary, config)
        await self.download_front.start()

    async def _start_broker(self, service_tls: ssl.SSLContext, host: str, port: int) -> None:
        """Start the broker overair runs under its supervisor, or check the external one
        (gateway/broker_probe.py); either way access changes are then confirmed by the
        witness (gateway/witness.py, reload.py)."""
        settings, paths = self.settings, self.settings.paths
        witness = self.witness = AclWitness(self.fleet_ca, paths.fleet_ca_cert, host, port)
        self.session_closer = SessionCloser(self.fleet_ca, paths.fleet_ca_cert, host, port)
        if settings.external_broker is None:
            await asyncio.to_thread(self._claim_node)
            await asyncio.to_thread(self.connectivity.restarted)
            broker = self.broker = Broker(paths.broker, settings.mosquitto_binary, host, port,
                                          on_refused=RefusedConnectionRecorder(self.audit),
                                          on_presence=self._presence_event)
            plugin = self.broker_plugin = await asyncio.to_thread(build_plugin, paths.broker)
            if not plugin.available:
                log.error("the broker runs without overair's access plugin, so devices' client ids are "
                          "forced to their certificate's subject and out-of-bounds SUBSCRIBEs are granted "
                          "(docs/compatibility.md, MQTT): %s", plugin.reason)
            self.access.exclusively(lambda: self.write_broker_access(fresh_broker=True))
            broker.write_config(render_config(host=host, port=port, ca=paths.fleet_ca_cert,
                                              cert=paths.broker_cert, key=paths.broker_key, crl=paths.crl,
                                              acl=paths.broker / "acl", run_as_root=os.geteuid() == 0,
                                              workdir=paths.broker, plugin=plugin.path,
                                              session_expiry_hours=settings.mqtt_session_expiry_hours,
                                              max_queued_messages=settings.mqtt_max_queued_messages))
            self.supervisor = BrokerSupervisor(broker, service_tls, prepare=self._regenerate_for_restart,
                                               on_restarted=self.access.changed)
            capacity.raise_descriptor_limit()  # the broker inherits it: one descriptor per device
            await self.supervisor.start()
            self._log_capacity()
            witness.start()
            self.reload = ConfirmedReload(self._signal_managed_broker, witness)
            if plugin.available:
                await asyncio.to_thread(self.access.exclusively, self._probe_access_control)
            return
        probe = self.broker_probe = ExternalBrokerProbe(self.fleet_ca, paths.fleet_ca_cert, host, port,
                                                        witness.base)
        self.access.exclusively(lambda: self.write_broker_access(fresh_broker=True))
        witness.start()
        reload = ConfirmedReload(command_trigger(settings.broker_reload_command), witness, timeout=15.0)
        await asyncio.to_thread(probe.run, lambda: reload(self.access_ledger.generation))
        self.reload = reload

    async def _connect_service(self, service_tls: ssl.SSLContext, host: str, port: int) -> None:
        connection = self.connection = ServiceConnection(host, port, service_tls, self.devices)
        # Retained messages do not survive a broker restart: publish the list anew
        # each time the service (re)connects.
        connection.on_connected = self._republish_retained
        connection.connected_things = self.connectivity.connected_now
        connection.claims = self.claim_service if self._claims_served() else None
        await connection.start()
        # What the other processes announce from now on; after a lost connection, this
        # broker's access is regenerated whole (what was announced meanwhile is lost).
        self.fanout.start(self._on_fanout, on_reconnect=self._access_changed_here)

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        paths = settings.paths
        check_port_free(settings.http_host, settings.http_port)
        check_port_free(settings.mqtt_host, settings.download_port)
        if settings.metrics_port:
            check_port_free(settings.http_host, settings.metrics_port)
        self._check_download_host()
        service_tls = client_ssl_context(str(paths.fleet_ca_cert), str(paths.service_cert),
                                         str(paths.service_key))
        mqtt_host, mqtt_port = settings.external_broker or (settings.mqtt_host, settings.mqtt_port)
        tasks: list[asyncio.Task[object]] = []
        servers: list[uvicorn.Server] = []  # the operator API and the device download endpoint
        serving: list[asyncio.Task[object]] = []
        try:
            self.dynamic_groups.start()
            self.event_publisher.start()
            leading_at_start = await asyncio.to_thread(self._prepare_storage)
            await self._start_broker(service_tls, mqtt_host, mqtt_port)
            await self._connect_service(service_tls, mqtt_host, mqtt_port)
            serving = self._start_http(servers)
            await self._start_download_front()
            tasks.append(asyncio.create_task(self._run_scheduler()))
            tasks.append(asyncio.create_task(self._run_health()))
            tasks.append(asyncio.create_task(self._run_renewals(settings.limits.device_access_cache_seconds)))
            while not all(server.started for server in servers):
                for task in serving:
                    if task.done():
                        await task  # raises what stopped it (e.g. a port taken meanwhile)
                await asyncio.sleep(0.02)
            if leading_at_start:
                self._resume_pending_updates()
            # Everything built at start-up lives as long as the server: keep it out of
            # full collections, which otherwise stall every thread for ~100 ms.
            gc.collect()
            gc.freeze()
            # Collect young objects less often: a job's notifications to 10,000 things
            # allocate ~200,000 objects, which at CPython's 700 made 300 young and two
            # full collections (0.22-0.24 s of the fan-out's 1.5 s; every thread stops
            # meanwhile). Full collections follow young ones, so they become as rare.
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            self.ready.set()
            log.info("overair ready: API http%s://%s:%s, MQTT mqtts://%s:%s, downloads https://%s:%s "
                     "(devices are sent %s)", "s" if settings.http_tls_cert else "", settings.http_host,
                     settings.http_port, mqtt_host, mqtt_port, settings.mqtt_host, settings.download_port,
                     settings.download_base_url)
            if settings.metrics_port:
                log.info("metrics: http://%s:%s/metrics", settings.http_host, settings.metrics_port)
            await stop.wait()
        finally:
            await self._shut_down(servers, tasks, serving)

    async def _shut_down(self, servers: list[uvicorn.Server], tasks: list[asyncio.Task[object]],
                         serving: list[asyncio.Task[object]]) -> None:
        self.ready.clear()
        for server in servers:
            server.should_exit = True
        for task in tasks:
            task.cancel()
        for task in serving:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        if self.download_front is not None:
            await self.download_front.stop()
        if self.delivery.front_files is not None:
            self.delivery.front_files.close()
        if self.connection is not None:
            await self.connection.stop()
        if self.witness is not None:
            await asyncio.to_thread(self.witness.stop)
        if self.supervisor is not None:
            await self.supervisor.stop()
        await asyncio.to_thread(self._stop_workers)
        self.db.close()
        log.info("overair stopped")

    def _resume_pending_updates(self) -> None:
        for ota_id in self.ota.pending_ids():  # resume updates interrupted by a restart
            self._schedule_ota(ota_id)

    def _prepare_storage(self) -> bool:
        """Check the object store; lead? Work left unfinished by a stopped server is
        taken up by the leader only: a second process starting must not fail or redo
        what a live one is doing. Returns whether this process leads."""
        self._check_object_store()
        leading = self.leadership.poll()
        if leading:
            self.registration_tasks.interrupted_by_restart()
            self.background.submit(self._sweep_objects)
        return leading

    def _sweep_objects(self) -> None:
        """Object bytes a crash left unreferenced (objects.py), once old enough that no
        process can still be about to commit them."""
        try:
            removed = self.objects.sweep_unreferenced()
        except UnavailableError as exc:
            log.warning("unreferenced object bytes not swept: %s", exc.message)
            return
        if removed:
            log.info("removed %d unreferenced object bytes", removed)

    def _check_object_store(self) -> None:
        """Say at start if the object store cannot be used (wrong endpoint, bucket or
        credentials); the server still starts and answers object requests with 503."""
        try:
            self.objects.blobs.check()
        except UnavailableError as exc:
            log.error("the object store is unavailable: %s", exc.message)

    def _stop_workers(self) -> None:
        self.background.shutdown(wait=True, cancel_futures=True)
        self.presence_worker.shutdown(wait=True)
        self.package_shadow_worker.shutdown(wait=True)
        self.event_publisher.stop()
        self.dynamic_groups.stop()
        self.registration_tasks.shutdown()
        self.leadership.close()  # another process may lead from its next tick
        if self._node_claim is not None:
            self._node_claim.release()
        self.fanout.stop()


class ServerThread:
    """Runs a Server on its own event loop in a thread (the demo and tests use it)."""

    def __init__(self, settings: Settings, clock: Clock = system_clock) -> None:
        self.server = Server(settings, clock)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="overair-server", daemon=True)

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self.server.run(self._stop))
        except BaseException as exc:
            self._error = exc
            self.server.ready.set()

    def start(self, timeout: float = 30) -> None:
        self._thread.start()
        if not self.server.ready.wait(timeout):
            raise TimeoutError("the server did not start in time")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
