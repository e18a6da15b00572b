"""The agent runtime: the thin driver around the sans-IO state machine.

One thread owns the machine. Transport callbacks and the self-test worker only put
events on a queue; the runtime thread takes them one at a time, calls `handle()`,
persists the journal if the step changed it (before anything else happens: R2),
then runs the step's commands in order, feeding results (BlockStored, VerifyResult,
...) straight back. When nothing arrives it feeds `Tick` so that timers fire. HTTPS
range requests (HTTP delivery) run one at a time in the download client's worker
thread (agent/transport/http.py), whose results come back through the queue like MQTT
messages do.

A reboot is done in-process, like a device reset but in well under a second: flush
pending reports, disconnect, let the platform pick the boot image, rebuild the
machine from the journal, reconnect. Events still queued from before the reboot carry
an older generation number and are dropped, as a real reset would drop them.

The runtime also holds the device's trust (agent/trust.py, where every trust decision
is made): it offers each revocation list to it and persists the newest one admitted in
`<data_dir>/revocations.json` (threat O2), verified again at every boot; likewise the
trust list chain that rotates code-signing roots and deployment keys, in
`<data_dir>/trust-list.json` (walked again from the bundle at every boot, before secure
boot); it hands the trust to the verification of staged images, to the platform's
secure boot, and its deployment keys to the machine's settings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import queue
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from overair.agent.app_runner import AppRunner
from overair.agent.config import AgentConfig, ConfigError
from overair.agent.fsutil import DataDirLock, atomic_write
from overair.agent.health import HealthReporter, update_topic
from overair.agent.identity import check_certificate_identity
from overair.agent.machine import commands as cmd
from overair.agent.machine.events import (
    BlockStored,
    Booted,
    Connected,
    Disconnected,
    Event,
    HandlingFailed,
    HttpRangeFailed,
    HttpRangeReceived,
    ImageCommitted,
    MessageReceived,
    PlatformFailed,
    SelfTestResult,
    Tick,
    VerifyResult,
)
from overair.agent.machine.state import FileSpec, JobResult, Settings, State
from overair.agent.machine.transitions import handle
from overair.agent.package_report import PackageReporter, Running
from overair.agent.platform.base import Platform, PlatformError, PowerLost
from overair.agent.platform.select import build_platform
from overair.agent.progress import StagedProgress
from overair.agent.sealed_key import prepare_client_key
from overair.agent.transport.base import Transport, TransportCallbacks
from overair.agent.transport.http import RangeClient, https_context
from overair.agent.transport.mqtt import MqttTransport, tls_context
from overair.agent.trust import DeviceTrust, RevocationVerdict, TrustListVerdict, signer_chain
from overair.core import delta, deployment
from overair.core.codesign import load_pem_certificates
from overair.core.delta import DeltaError
from overair.core.delta_offer import DeltaOffer
from overair.core.errors import DecodeError
from overair.core.revocation import RevocationList, verify_list
from overair.core.versions import Version

log = logging.getLogger("overair.agent")

ProgressCallback = Callable[[str, int, int], None]  # (job id, blocks received, total)
SelfTestHook = Callable[[Version], str | None]  # None = passed, else why it failed
TransportFactory = Callable[[TransportCallbacks], Transport]

FLUSH_BEFORE_REBOOT = 5.0
REVOCATIONS_FILE = "revocations.json"
TRUST_LIST_FILE = "trust-list.json"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """What a UI shows about one device; immutable, safe to read from any thread."""

    thing_name: str
    alive: bool  # the runtime thread is running
    connected: bool
    phase: str
    version: str | None  # running firmware, MAJOR.MINOR.BUILD
    slot: str | None
    trial: bool  # running a new image that is not committed yet
    job_id: str | None
    blocks_received: int
    blocks_total: int
    last_result: JobResult | None
    reboots: int  # in-process reboots since start()
    error: str | None
    revocation_sequence: int | None = None  # of the signed revocation list held, if any
    trust_list_version: int = 0  # of the trust list held (0: the bundle's roots and keys)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "thing_name": self.thing_name, "alive": self.alive, "connected": self.connected,
            "phase": self.phase, "version": self.version, "slot": self.slot, "trial": self.trial,
            "job_id": self.job_id, "blocks_received": self.blocks_received,
            "blocks_total": self.blocks_total,
            "last_result": None if self.last_result is None else self.last_result.to_json_obj(),
            "reboots": self.reboots, "error": self.error,
            "revocation_sequence": self.revocation_sequence,
            "trust_list_version": self.trust_list_version,
        }


def settings_from_config(config: AgentConfig) -> Settings:
    return Settings(
        thing_name=config.thing_name,
        block_size=config.ota.block_size,
        blocks_per_request=config.ota.blocks_per_request,
        status_every_blocks=config.ota.status_every_blocks,
        status_min_interval=config.ota.status_min_interval_seconds,
        http_range_blocks=config.ota.http_range_blocks,
        request_timeout=config.ota.request_timeout_seconds,
        self_test_deadline=config.self_test.deadline_seconds,
        max_file_size=config.ota.max_file_size,
        prefer_http=config.ota.prefer_http,
        save_progress_every=config.ota.save_progress_every_blocks,
        retry_base=config.ota.retry_base_seconds,
        retry_cap=config.ota.retry_cap_seconds,
        job_retry_budget=config.ota.job_retry_budget,
        deployment_keys=load_deployment_keys(config),
        require_deployment=config.trust.require_deployment_metadata,
        accept_delta=config.ota.accept_delta,
    )


def load_deployment_keys(config: AgentConfig) -> tuple[ec.EllipticCurvePublicKey, ...]:
    """The public keys that sign deployment metadata (F1 F2); () when none is configured."""
    path = config.trust.deployment_keys
    if path is None:
        return ()
    where = f"{config.source}: [trust] deployment_keys {path}"
    try:
        keys = deployment.load_public_keys(path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not keys:
        raise ConfigError(f"{where} holds no PUBLIC KEY")
    return tuple(keys)


def load_trust(config: AgentConfig) -> DeviceTrust:
    """The bundle's trust, before any revocation list held on the device is added."""
    path = config.trust.code_signing_roots
    try:
        roots = load_pem_certificates(path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise ConfigError(f"{config.source}: [trust] code_signing_roots {path}: {exc}") from exc
    if not roots:
        raise ConfigError(f"{config.source}: [trust] code_signing_roots {path} holds no certificate")
    return DeviceTrust(tuple(roots), config.trust.revoked_serials, load_revocation_signer(config),
                       bundle_deployment_keys=load_deployment_keys(config),
                       trust_list_threshold=config.trust.trust_list_threshold)


def load_revocation_signer(config: AgentConfig) -> x509.Certificate | None:
    """The certificate that verifies revocation lists; None when none is configured."""
    path = config.trust.revocation_signer
    if path is None:
        return None
    where = f"{config.source}: [trust] revocation_signer {path}"
    try:
        certs = load_pem_certificates(path.read_bytes())
    except (OSError, DecodeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if len(certs) != 1:
        raise ConfigError(f"{where} must hold exactly one certificate, it holds {len(certs)}")
    if not isinstance(certs[0].public_key(), ec.EllipticCurvePublicKey):
        raise ConfigError(f"{where}: the revocation signer must have an EC key")
    return certs[0]


def verify_revocations(envelope: bytes, signer: x509.Certificate) -> RevocationList:
    """core.revocation.verify_list: DecodeError or VerificationFailed, nothing else."""
    return verify_list(envelope, signer)


class RevocationStore:
    """The newest accepted revocation list, kept as the exact envelope the server signed.

    The file proves itself: it is verified again whenever it is loaded, so a file
    changed or planted on the device is never trusted for being there. It is replaced
    atomically (R2): a power cut leaves the old list or the new one, never neither.
    """

    def __init__(self, data_dir: Path, name: str = REVOCATIONS_FILE) -> None:
        self.path = Path(data_dir) / name

    def load(self, signer: x509.Certificate) -> RevocationList | None:
        """The held list, None if there is none; DecodeError/VerificationFailed if the
        file does not verify with `signer`."""
        envelope = self.read()
        return None if envelope is None else verify_revocations(envelope, signer)

    def read(self) -> bytes | None:
        """The held envelope as stored, unverified (DeviceTrust verifies it)."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def save(self, envelope: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, envelope)


class _Rebooted:
    """Marker: the step's remaining commands died with the reboot."""


class _BootFailed(Exception):
    """A reboot could not boot an image (or reach its storage): not a job's fault, and
    nothing the agent can go on without; it stops the agent like a failed first boot."""


_REBOOTED = _Rebooted()
_STOP = object()


class Runtime:
    def __init__(self, config: AgentConfig, *, platform: Platform | None = None,
                 transport_factory: TransportFactory | None = None,
                 progress: ProgressCallback | None = None, self_test_hook: SelfTestHook | None = None,
                 clock: Callable[[], float] = time.time, tick_interval: float = 0.2,
                 offline_bundle: bool = False) -> None:
        config = prepare_client_key(config)  # P1: the key is sealed at rest on a Linux device
        self.config = config
        self._settings = settings_from_config(config)
        if offline_bundle:  # agent/bundle_install.py: metadata signed for a bundle, always required
            self._settings = replace(self._settings, offline_bundle=True, require_deployment=True)
        self._data_lock = DataDirLock(config.storage.data_dir)
        self._revocation_store = RevocationStore(config.storage.data_dir)
        self._trust_list_store = RevocationStore(config.storage.data_dir, TRUST_LIST_FILE)  # the same rules
        self._trust = load_trust(config)  # and the held revocation list, at each boot
        self._said_revocations_ignored = False
        check_certificate_identity(config)
        self._platform: Platform = platform or build_platform(config, lambda: self._trust)
        # A delta is applied to the running image: only a platform that can read it takes one.
        self._settings = replace(self._settings, accept_delta=self._settings.accept_delta
                                 and hasattr(self._platform, "running_image"))
        self._journal_store = self._platform.journal_store(config.storage.data_dir)
        if transport_factory is None:
            transport_factory = self._mqtt_factory()
        self._transport_factory = transport_factory
        self._progress = progress
        self._self_test_hook = self_test_hook
        self._clock = clock
        self._tick_interval = tick_interval
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport: Transport | None = None
        self._ranges: RangeClient | None = None  # HTTPS downloads; one per boot, made when needed
        self._generation = 0
        self._reboots = 0
        self._error: str | None = None
        self._alive = False
        self._state = State(self._settings)
        self._health = HealthReporter(config.health.report_interval_seconds, config.health.metrics_command,
                                      config.base_dir, config.thing_name)
        self._app = AppRunner(config.app.command, cwd=config.base_dir, thing_name=config.thing_name,
                              on_crash=self._health.crashed)
        self._package = PackageReporter(config.thing_name)  # `$package`: what it runs

    def _mqtt_factory(self) -> TransportFactory:
        try:
            tls_context(self.config.mqtt)  # fail at start, not in a background thread
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.config.source}: [mqtt] TLS files are unusable: {exc}") from exc

        def factory(callbacks: TransportCallbacks) -> Transport:
            return MqttTransport(self.config.mqtt, self.config.thing_name, callbacks,
                                 max_backoff=self.config.ota.reconnect_cap_seconds)

        return factory

    @property
    def platform(self) -> Platform:
        return self._platform

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Run the agent in a background thread."""
        if self._thread is not None:
            raise RuntimeError("the runtime was already started")
        self._alive = True
        self._thread = threading.Thread(target=self.run, name=f"agent-{self.config.thing_name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._queue.put(_STOP)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run(self) -> None:
        """Run the agent in the calling thread until `stop()`."""
        self._alive = True
        try:
            self._data_lock.acquire()
            self._boot_and_connect()
            last_tick = self._clock()
            while not self._stopping.is_set():
                try:
                    item = self._queue.get(timeout=self._tick_interval)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    generation, event = item
                    if generation == self._generation:
                        self._dispatch(event)
                if self._clock() - last_tick >= self._tick_interval:
                    last_tick = self._clock()
                    self._feed(Tick())
                    self._report_health()
                    self._report_package()
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("agent %s stopped on an error", self.config.thing_name)
            if threading.current_thread() is not self._thread:
                raise  # run() in the foreground: the caller decides (start(): see snapshot().error)
        finally:
            self._shutdown()
            self._data_lock.release()
            self._alive = False

    def _shutdown(self) -> None:
        self._close_ranges()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.flush(1.0)
            transport.disconnect()
        self._app.stop()
        try:
            # Kept, not discarded: a download interrupted by a stop resumes at the next start.
            self._platform.close_staging()
        except PlatformError as exc:
            log.warning("closing the staging file failed: %s", exc)

    # --- status ------------------------------------------------------------------------

    def snapshot(self) -> AgentSnapshot:
        state = self._state
        dl = state.download
        job = state.journal.job
        return AgentSnapshot(
            thing_name=self.config.thing_name,
            alive=self._alive,
            connected=state.connected,
            phase=state.phase.value,
            version=str(state.running) if state.slot else None,
            slot=state.slot or None,
            trial=state.trial,
            job_id=dl.job_id if dl is not None else (job.job_id if job is not None else None),
            blocks_received=dl.stored if dl is not None else 0,
            blocks_total=dl.total_blocks if dl is not None else 0,
            last_result=state.journal.last_result,
            reboots=self._reboots,
            error=self._error,
            revocation_sequence=self._trust.revocation_sequence,
            trust_list_version=self._trust.trust_list_version,
        )

    def wait(self, predicate: Callable[[AgentSnapshot], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.02)
        return predicate(self.snapshot())

    # --- the loop ----------------------------------------------------------------------

    def _post(self, generation: int, event: Event) -> None:
        self._queue.put((generation, event))

    def _boot_and_connect(self) -> None:
        if self._platform.is_empty():
            factory = self.config.storage.factory_image
            if factory is None:
                raise ConfigError(f"{self.config.source}: the slot store is empty and [storage] "
                                  "factory_image is not set: there is no image to run")
            self._platform.install_factory(factory.read_bytes())
            log.info("installed the factory image %s", factory)
        # The held list is verified again at every (re)boot, before secure boot needs it.
        self._trust = self._with_held_trust_list(self._with_held_revocations(self._trust))
        info = self._platform.boot()
        self._settings = replace(self._settings, deployment_keys=self._trust.deployment_keys)
        self._state = State(self._settings, journal=self._journal_store.load())
        self._feed(Booted(info.version, info.slot, info.trial, info.fell_back, self._staged_progress(),
                          self._platform.security_counter()))
        record = self._state.journal.job  # on trial: the job that activated the image
        job_id = record.job_id if info.trial and record is not None else None
        self._health.booted(version=str(info.version), job_id=job_id, trial=info.trial,
                            boot_count=info.boot_count, now=self._clock())
        self._app.start(info)
        generation = self._generation
        callbacks = TransportCallbacks(
            on_connected=lambda: self._post(generation, Connected()),
            on_disconnected=lambda reason: self._post(generation, Disconnected(reason)),
            on_message=lambda topic, payload: self._post(generation, MessageReceived(topic, payload)),
        )
        self._transport = self._transport_factory(callbacks)
        self._transport.connect()

    def _staged_progress(self) -> StagedProgress | None:
        try:
            return self._platform.staged_progress()
        except PlatformError as exc:
            log.warning("the kept partial download is unusable (%s): downloading afresh", exc.message)
            return None

    def _reboot(self) -> None:
        self._app.stop()  # the application dies with the reset, and restarts on the booted image
        self._close_ranges()  # a reset drops the connections and the requests in flight
        transport, self._transport = self._transport, None
        if transport is not None:
            if not transport.flush(FLUSH_BEFORE_REBOOT):
                log.warning("rebooting with reports not acknowledged by the broker")
            transport.disconnect()
        self._generation += 1
        self._reboots += 1
        log.info("rebooting %s", self.config.thing_name)
        try:
            self._boot_and_connect()
        except PowerLost:
            raise
        except Exception as exc:
            raise _BootFailed(f"{type(exc).__name__}: {exc}") from exc

    def _feed(self, first: Event) -> None:
        """Handle `first` and the events its commands produce, in order.

        This is the one boundary between the agent and what the network sends it (issue
        12, finding 9): an unexpected exception while handling any event, in `handle()`
        or in a command it produced, is logged with its traceback and becomes a
        `HandlingFailed` event, which fails the job concerned (journaled first, so a
        restart does not replay the poison) and reports it FAILED; the rest of that
        step is dropped and the agent goes on serving. Only what ends the device itself
        stops the agent: a reboot that cannot boot (`_BootFailed`: no image, no
        storage) or a loss of power (`PowerLost`, injected by the power-cut suite)."""
        pending: deque[Event] = deque([first])
        while pending:
            event = pending.popleft()
            try:
                if self._step(event, pending):
                    return
            except (_BootFailed, PowerLost):
                raise  # the device cannot go on: not a job's fault
            except Exception as exc:
                if isinstance(event, HandlingFailed):
                    log.exception("agent %s: containing a defect failed too; the event is dropped",
                                  self.config.thing_name)
                    return
                log.exception("agent %s: defect while handling %s: failing the job concerned",
                              self.config.thing_name, type(event).__name__)
                pending.clear()
                pending.append(HandlingFailed(event, f"{type(exc).__name__}: {exc}"))

    def _step(self, event: Event, pending: deque[Event]) -> bool:
        """One step: handle, journal, run the commands (their results join `pending`);
        True when a command rebooted the device (the rest of the step died with it)."""
        old = self._state
        new, commands = handle(old, event, self._clock())
        self._state = new
        if new.journal is not old.journal and new.journal != old.journal:
            self._journal_store.save(new.journal)  # journal before acting
        for command in commands:
            result = self._execute(command)
            if result is _REBOOTED:
                return True
            if isinstance(result, PlatformFailed):
                pending.append(result)
                break  # the rest of the step depended on this command
            if result is not None:
                assert not isinstance(result, _Rebooted)
                pending.append(result)
        return False

    def _execute(self, command: cmd.Command) -> Event | _Rebooted | None:
        transport = self._transport
        match command:
            case cmd.Log(level, message):
                log.log(_LEVELS.get(level, logging.INFO), "%s", message,
                        extra={"thing": self.config.thing_name, "phase": self._state.phase.value})
            case cmd.Subscribe(topic, qos):
                if transport is not None:
                    transport.subscribe(topic, qos)
            case cmd.Unsubscribe(topic):
                if transport is not None:
                    transport.unsubscribe(topic)
            case cmd.Publish(topic, payload, qos):
                if transport is not None:
                    transport.publish(topic, payload, qos)
            case cmd.ReportProgress(job_id, received, total):
                if self._progress is not None:
                    try:
                        self._progress(job_id, received, total)
                    except Exception:
                        log.exception("progress callback failed")
            case cmd.CreateStaging(size, binding, block_size):
                return self._platform_op("create",
                                         lambda: self._platform.create_staging(size, binding, block_size))
            case cmd.ResumeStaging(progress):
                return self._platform_op("create", lambda: self._platform.resume_staging(progress))
            case cmd.SaveProgress(needed):
                try:
                    self._platform.save_progress(needed)
                except PlatformError as exc:
                    # Only resumability is lost: the download itself goes on.
                    log.warning("could not save the download progress: %s", exc.message)
            case cmd.WriteBlock(block_id, offset, data):
                failed = self._platform_op("write", lambda: self._platform.write_block(offset, data))
                return failed or BlockStored(block_id)
            case cmd.HttpGetRange(url, offset, length, request):
                return self._get_range(url, offset, length, request)
            case cmd.AbortStaging():
                self._platform_op("abort", self._platform.abort_staging)
            case cmd.VerifyImage(file, offer, image):
                if offer is not None and image is not None:
                    refused = self._apply_delta(offer, image)
                    if refused is not None:
                        return refused
                    file = image
                return self._verify(file)
            case cmd.ActivateAndReboot():
                failed = self._platform_op("activate", self._platform.activate)
                if failed is not None:
                    return failed
                self._reboot()
                return _REBOOTED
            case cmd.RunSelfTest(job_id, deadline, hold):
                return self._run_self_test(job_id, deadline, hold)
            case cmd.CommitImage():
                return (self._platform_op("commit", self._platform.commit)
                        or ImageCommitted(self._platform.security_counter()))
            case cmd.RollbackAndReboot():
                # A failed rollback still reboots: the boot counter then retires the image.
                self._platform_op("rollback", self._platform.rollback)
                self._reboot()
                return _REBOOTED
            case cmd.ApplyRevocations(envelope):
                self._apply_revocations(envelope)
            case cmd.ApplyTrustList(chain):
                self._apply_trust_list(chain)
        return None

    def _platform_op(self, operation: str, action: Callable[[], None]) -> PlatformFailed | None:
        try:
            action()
        except PlatformError as exc:
            log.error("platform %s failed: %s", operation, exc.message)
            return PlatformFailed(operation, exc.message)
        return None

    # --- HTTPS downloads ------------------------------------------------------------------

    def _get_range(self, url: str, offset: int, length: int, request: int) -> HttpRangeFailed | None:
        """Hand a range request to the download client; its result is posted later."""
        ranges = self._ranges
        if ranges is None:
            try:
                context = https_context(self.config.mqtt.ca_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                return HttpRangeFailed(request, offset, 0, f"unusable CA file for HTTPS: {exc}")
            ranges = self._ranges = RangeClient(context, self.config.ota.request_timeout_seconds,
                                                name=self.config.thing_name)
        generation = self._generation

        def done(data: bytes | None, status: int, reason: str, retry_after: float | None) -> None:
            event: Event = HttpRangeReceived(request, offset, data) if data is not None \
                else HttpRangeFailed(request, offset, status, reason, retry_after)
            self._post(generation, event)

        ranges.submit(url, offset, length, done)
        return None

    def _close_ranges(self) -> None:
        ranges, self._ranges = self._ranges, None
        if ranges is not None:
            ranges.close()

    # --- revocation lists (O2) ------------------------------------------------------------

    def _with_held_revocations(self, trust: DeviceTrust) -> DeviceTrust:
        try:
            envelope = self._revocation_store.read()
        except OSError as exc:
            log.warning("the held revocation list %s is unreadable (%s)", self._revocation_store.path, exc)
            return trust
        if envelope is None:
            return trust
        outcome = trust.with_held_revocations(envelope)
        if outcome.verdict is RevocationVerdict.IGNORED:
            self._say_revocations_ignored()
        elif outcome.verdict is RevocationVerdict.REFUSED:
            # Ignored, not deleted: a valid list from the server replaces it, and an
            # operator can still look at it.
            log.warning("the held revocation list %s does not verify (%s): ignored until a valid "
                        "list arrives", self._revocation_store.path, outcome.message)
        return outcome.trust

    def _apply_revocations(self, envelope: bytes) -> None:
        """I/O only: DeviceTrust decides (O2); an admitted list is persisted, then held."""
        outcome = self._trust.admit_revocations(envelope)
        match outcome.verdict:
            case RevocationVerdict.IGNORED:
                self._say_revocations_ignored()
            case RevocationVerdict.UNCHANGED:
                log.debug("%s", outcome.message)
            case RevocationVerdict.REFUSED:
                log.warning("%s", outcome.message)
            case RevocationVerdict.ADMITTED:
                try:
                    self._revocation_store.save(envelope)
                except OSError as exc:
                    # Applied anyway: refusing more signers is always safe; it only will not
                    # survive a restart, after which the retained list is delivered again.
                    log.error("could not persist %s: %s", outcome.message, exc)
                self._trust = outcome.trust
                log.info("%s", outcome.message)

    # --- trust lists: rotated roots and deployment keys (O2 F2) ---------------------------

    def _with_held_trust_list(self, trust: DeviceTrust) -> DeviceTrust:
        try:
            chain = self._trust_list_store.read()
        except OSError as exc:
            log.warning("the held trust list %s is unreadable (%s)", self._trust_list_store.path, exc)
            chain = None
        outcome = trust.with_held_trust_chain(chain)
        if outcome.verdict is TrustListVerdict.REFUSED:
            log.warning("the held trust list %s does not verify from the bundle (%s): the bundle's "
                        "roots and keys hold until a valid list arrives", self._trust_list_store.path,
                        outcome.message)
        return outcome.trust

    def _apply_trust_list(self, chain: bytes) -> None:
        """I/O only: DeviceTrust decides; an admitted chain is persisted, then held, and
        the machine checks deployment metadata with its keys from the next input on (a
        key the list leaves out stops working at once)."""
        outcome = self._trust.admit_trust_chain(chain)
        match outcome.verdict:
            case TrustListVerdict.UNCHANGED:
                log.debug("%s", outcome.message)
            case TrustListVerdict.REFUSED:
                log.warning("%s", outcome.message)
            case TrustListVerdict.ADMITTED:
                try:
                    self._trust_list_store.save(chain)
                except OSError as exc:
                    # Held anyway until the next boot, when the retained chain comes again.
                    log.error("could not persist %s: %s", outcome.message, exc)
                self._trust = outcome.trust
                self._settings = replace(self._settings, deployment_keys=self._trust.deployment_keys)
                self._state = replace(self._state, settings=self._settings)
                log.info("%s", outcome.message)

    def _say_revocations_ignored(self) -> None:
        if not self._said_revocations_ignored:
            self._said_revocations_ignored = True
            log.info("[trust] revocation_signer is not configured: signed revocation lists are ignored")

    # --- image verification ------------------------------------------------------------

    def _apply_delta(self, offer: DeltaOffer, image: FileSpec) -> VerifyResult | None:
        """Rebuild the image from the staged patch into the staging slot (core/delta.py);
        None when done (the result is then verified as a full image), else why not. The
        running slot is only read. The rebuilt file is created without a binding: a power
        cut in the middle leaves nothing to resume, and the job starts over cleanly."""
        def refused(message: str) -> VerifyResult:
            return VerifyResult(False, check=DeltaError.code, message=message)

        read_running = getattr(self._platform, "running_image", None)
        if read_running is None:
            return refused("this platform cannot read the running image")
        try:
            patch = self._platform.read_staging()
            if hashlib.sha256(patch).digest() != offer.sha256:
                return refused("the patch's SHA-256 differs from the offer's")
            source = read_running()
            if hashlib.sha256(source).digest() != offer.source_sha256:
                return refused("the running image is not the patch's source")
            self._platform.create_staging(image.size)
            delta.apply_patch(source, patch, image.size, self._platform.write_block)
        except DeltaError as exc:
            return refused(exc.message)
        except PlatformError as exc:
            return refused(f"storage: {exc.message}")
        return None

    def _verify(self, file: FileSpec) -> VerifyResult:
        """Check the staged image; the signer chain is the job's, never a file the job
        names (its `certfile` is not read: agent/verify.py)."""
        try:
            data = self._platform.read_staging()
        except PlatformError as exc:
            return VerifyResult(False, check="StorageError", message=exc.message)
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        result = self._trust.admit_image(data, file, now)
        remember = getattr(self._platform, "set_staging_signature", None)
        if result.ok and remember is not None:
            # Secure boot (P2) checks the signature again at every boot of this image.
            chain = signer_chain(file)
            remember(file.signature, [c.public_bytes(serialization.Encoding.DER) for c in chain])
        return result

    def _dispatch(self, event: Event) -> None:
        """The `$package` shadow's answers are the package reporter's; the rest the machine's."""
        if isinstance(event, MessageReceived) and self._package.owns(event.topic):
            self._package.received(event.topic, event.payload)
            self._report_package()  # the shadow was read: report now if it differs
            return
        self._feed(event)
        transport = self._transport
        if isinstance(event, Connected) and transport is not None:
            self._package.connected()
            for topic in self._package.subscriptions():
                transport.subscribe(topic, 1)
            self._report_package()

    def _report_package(self) -> None:
        transport, state = self._transport, self._state
        if transport is None or not state.connected:
            return
        running = Running(str(state.running), state.slot, state.security_counter) if state.slot else None
        for topic, payload in self._package.due(running, self._clock()):
            transport.publish(topic, payload, 1)

    def _report_health(self) -> None:
        transport = self._transport
        if transport is None or not self._state.connected:
            return
        report = self._health.due(self._clock())
        if report is None:
            return
        topic = update_topic(self.config.thing_name)
        if not self._health.metrics_command:
            transport.publish(topic, self._health.payload(report), 1)
            return
        # The metrics hook may take seconds: never on the agent's thread.
        threading.Thread(target=lambda: transport.publish(topic, self._health.payload(report), 1),
                         name=f"health-{self.config.thing_name}", daemon=True).start()

    def _run_self_test(self, job_id: str, deadline: float, hold: float = 0.0) -> SelfTestResult | None:
        command = self.config.self_test.command.strip()
        hook = self._self_test_hook
        if not command and hook is None and not hold:
            self._health.self_test(True)
            return SelfTestResult(True, "built-in checks passed")
        generation, version = self._generation, self._state.running
        hold_until = self._clock() + hold

        def work() -> None:
            result = self._self_test(job_id, version, command, hook, deadline)
            self._health.self_test(result.ok)
            # The health window: the image stays on trial, the application observed, so
            # that the rollout's gates can still have it rolled back (core/health.py).
            while result.ok and self._clock() < hold_until and generation == self._generation \
                    and not self._stopping.is_set():
                time.sleep(min(0.2, max(0.0, hold_until - self._clock())))
            self._post(generation, result)

        threading.Thread(target=work, name=f"selftest-{self.config.thing_name}", daemon=True).start()
        return None

    def _self_test(self, job_id: str, version: Version, command: str, hook: SelfTestHook | None,
                   deadline: float) -> SelfTestResult:
        if hook is not None:
            try:
                failure = hook(version)
            except Exception as exc:
                failure = f"self-test hook raised {type(exc).__name__}: {exc}"
            if failure is not None:
                return SelfTestResult(False, failure)
        if command:
            env = {**os.environ, "OVERAIR_THING_NAME": self.config.thing_name, "OVERAIR_JOB_ID": job_id,
                   "OVERAIR_VERSION": str(version)}
            try:
                done = subprocess.run(shlex.split(command), cwd=self.config.base_dir, env=env,
                                      capture_output=True, timeout=max(0.1, deadline - self._clock()),
                                      check=False)
            except subprocess.TimeoutExpired:
                return SelfTestResult(False, f"command {command!r} did not finish before the deadline")
            except (OSError, ValueError) as exc:
                return SelfTestResult(False, f"command {command!r} could not run: {exc}")
            if done.returncode != 0:
                tail = done.stderr.decode(errors="replace").strip()[-120:]
                return SelfTestResult(False, f"command {command!r} exited {done.returncode}"
                                             + (f": {tail}" if tail else ""))
        return SelfTestResult(True, "passed")
