"""`overair-agent`: run the device agent, show what a device holds, or reset it to its
factory image."""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from overair.agent.config import AgentConfig, load_config
from overair.agent.machine.state import Journal
from overair.agent.platform.base import Platform, PlatformError
from overair.agent.platform.select import build_platform
from overair.agent.progress import block_total, missing_blocks
from overair.agent.runtime import (
    TRUST_LIST_FILE,
    RevocationStore,
    Runtime,
    load_revocation_signer,
    load_trust,
)
from overair.agent.trust import TrustListVerdict
from overair.cli.common import print_error
from overair.cli.logs import LogFormat, configure_logging
from overair.core.errors import OverairError

app = typer.Typer(help="overair device agent (FreeRTOS OTA compatible).", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(stderr=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", envvar="OVERAIR_AGENT_CONFIG",
                                            help="The agent's TOML file or bundle directory.")]

def _fail(exc: OverairError) -> None:
    print_error(console, exc.code, exc.message)
    raise typer.Exit(2)


@app.command()
def run(config: ConfigOption,
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
        log_format: Annotated[LogFormat, typer.Option(help="Log lines as JSON or text.")] = LogFormat.JSON,
        ) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        print_error(console, "InvalidOption", f"unknown log level {log_level!r}")
        raise typer.Exit(2)
    configure_logging(log_format, level=logging.getLevelName(log_level.upper()))
    try:
        runtime = Runtime(load_config(config))
    except OverairError as exc:
        _fail(exc)
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("overair.agent").info("signal %s: stopping", signal.Signals(signum).name)
        runtime.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        runtime.run()
    except OverairError as exc:
        _fail(exc)


def _open_platform(config: AgentConfig) -> Platform | None:
    """The device's platform for reading (integrity checks only); None when nothing was
    ever installed (a sim_mcu flash file that does not exist is not created)."""
    flash = config.storage.flash_file
    if config.storage.platform == "sim_mcu" and (flash is None or not flash.exists()):
        return None
    return build_platform(config, None)


def status_report(config_path: Path) -> dict[str, Any]:
    """What the device holds, read from its persisted state without changing anything."""
    config = load_config(config_path, check_files=False)
    data_dir = config.storage.data_dir
    platform = _open_platform(config)
    journal = Journal() if platform is None else platform.journal_store(data_dir).load(set_aside=False)
    slots = [] if platform is None or platform.is_empty() else platform.slots()
    current = next((s for s in slots if s.current), None)
    staged = None if not slots or platform is None else platform.staged_progress()
    job = journal.job
    return {
        "thing_name": config.thing_name,
        "platform": config.storage.platform,
        "data_dir": str(data_dir),
        "running": None if current is None else {
            "slot": current.name, "version": None if current.version is None else str(current.version),
            "trial": current.state == "pending"},
        "slots": [{"name": s.name, "version": None if s.version is None else str(s.version),
                   "size": s.size, "state": s.state, "current": s.current, "valid": s.valid,
                   "security_counter": s.security_counter} for s in slots],
        "security_counter": platform.security_counter() if slots and platform is not None else None,
        # Where the device stands as its journal says: the current job's stage, else idle.
        "phase": "idle" if job is None else job.stage.value,
        "current_job": None if job is None else {
            "job_id": job.job_id, "stage": job.stage.value,
            "updated_by": None if job.updated_by is None else str(job.updated_by),
            "new_version": None if job.new_version is None else str(job.new_version)},
        "kept_download": None if staged is None else {
            "size": staged.size, "block_size": staged.block_size,
            "blocks_missing": missing_blocks(staged), "blocks_total": block_total(staged)},
        "last_result": None if journal.last_result is None else journal.last_result.to_json_obj(),
        "version_floor": None if journal.version_floor is None else str(journal.version_floor),
        "revocations": _revocation_report(config),
        "trust_list": _trust_list_report(config),
    }


def _revocation_report(config: AgentConfig) -> dict[str, Any] | None:
    """The held revocation list, verified as the agent verifies it at boot: a file that
    does not verify is shown as unused, never as protection the device does not have."""
    store = RevocationStore(config.storage.data_dir)
    if not store.path.exists():
        return None
    try:
        signer = load_revocation_signer(config)
        held = None if signer is None else store.load(signer)
    except OverairError as exc:
        return {"sequence": None, "problem": exc.message}
    if held is None:
        return {"sequence": None, "problem": "[trust] revocation_signer is not configured"}
    return {"sequence": held.sequence, "issued_at": held.issued_at,
            "revoked_serials": [format(serial, "x") for serial in sorted(held.serials)]}


def _trust_list_report(config: AgentConfig) -> dict[str, Any]:
    """The roots and deployment keys the device trusts, as its agent decides at boot
    (the held trust list walked again from the bundle: agent/trust.py)."""
    try:
        trust = load_trust(config)
        chain = RevocationStore(config.storage.data_dir, TRUST_LIST_FILE).read()
    except (OverairError, OSError) as exc:
        return {"version": None, "problem": str(exc)}
    outcome = trust.with_held_trust_chain(chain)
    held = outcome.trust
    return {"version": held.trust_list_version,
            "code_signing_roots": [c.subject.rfc4514_string() for c in held.code_signing_roots],
            "deployment_keys": len(held.deployment_keys),
            **({"problem": outcome.message} if outcome.verdict is TrustListVerdict.REFUSED else {})}


@app.command()
def status(config: ConfigOption,
           json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show slots, versions, the current job, the last result, the revocation list and
    the roots and deployment keys the device trusts (after key rotations)."""
    try:
        report = status_report(config)
    except OverairError as exc:
        _fail(exc)
        return
    if json_output:
        print(json.dumps(report, indent=2))
        return
    out = Console()
    running = report["running"]
    out.print(f"[bold]{report['thing_name']}[/bold]  platform: {report['platform']}  "
              f"data: {report['data_dir']}")
    out.print("running: " + ("nothing installed" if running is None else
                             f"{running['version']} from slot {running['slot']}"
                             + (" [yellow](trial, not committed)[/yellow]" if running["trial"] else "")))
    table = Table("slot", "version", "size", "state", "valid", "security counter", "current")
    for slot in report["slots"]:
        valid = {True: "yes", False: "[red]NO[/red]", None: "-"}[slot["valid"]]
        counter = "-" if slot["security_counter"] is None else str(slot["security_counter"])
        table.add_row(slot["name"], slot["version"] or "-", str(slot["size"]), slot["state"], valid, counter,
                      "*" if slot["current"] else "")
    out.print(table)
    counter = report["security_counter"]
    out.print(f"security counter: {'-' if counter is None else counter}  "
              f"version floor: {report['version_floor'] or '-'}")
    job = report["current_job"]
    out.print(f"phase: {report['phase']}  current job: "
              + ("none" if job is None else f"{job['job_id']} ({job['stage']})"))
    kept = report["kept_download"]
    if kept is not None:
        out.print(f"kept partial download: {kept['blocks_total'] - kept['blocks_missing']} of "
                  f"{kept['blocks_total']} blocks held (resumes when its job is offered again)")
    result = report["last_result"]
    if result is None:
        out.print("last result: none")
    else:
        out.print(f"last result: {result['job_id']} {result['status']} "
                  f"{result['details'].get('reason', '')}")
    revocations = report["revocations"]
    if revocations is None:
        out.print("revocation list: none")
    elif revocations["sequence"] is None:
        problem = escape(str(revocations["problem"]))
        out.print(f"revocation list: [yellow]held but not used[/yellow] ({problem})")
    else:
        out.print(f"revocation list: sequence {revocations['sequence']} "
                  f"({len(revocations['revoked_serials'])} revoked)")
    trusted = report["trust_list"]
    if trusted["version"] is None:
        out.print(f"trust list: [yellow]unreadable[/yellow] ({escape(str(trusted['problem']))})")
    else:
        where = "the bundle's" if trusted["version"] == 0 else f"trust list {trusted['version']}"
        out.print(f"trusted ({where}): {escape(', '.join(trusted['code_signing_roots']))}; "
                  f"{trusted['deployment_keys']} deployment key(s)"
                  + (f" [yellow]held list refused: {escape(trusted['problem'])}[/yellow]"
                     if "problem" in trusted else ""))


@app.command("factory-reset")
def factory_reset(config: ConfigOption,
                  json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Boot the factory image from now on: pending image and kept download dropped.

    Run it while the agent is stopped. The device keeps its identity (certificate, key,
    secrets), the results of past jobs (replay protection, N3), its version floor and
    its security counter (anti-rollback, N1): the next update must be newer than any
    version it ever committed.
    """
    try:
        report = reset_to_factory(config)
    except OverairError as exc:
        _fail(exc)
        return
    if json_output:
        print(json.dumps(report, indent=2))
        return
    Console().print(f"{report['thing_name']}: factory image {report['version']} confirmed in slot "
                    f"{report['slot']}; it boots at the next start")


def reset_to_factory(config_path: Path) -> dict[str, Any]:
    config = load_config(config_path)
    platform = build_platform(config, lambda: load_trust(config))
    if platform.is_empty():
        raise PlatformError("nothing is installed: there is nothing to reset")
    factory = config.storage.factory_image
    platform.factory_reset(None if factory is None else factory.read_bytes())
    store = platform.journal_store(config.storage.data_dir)
    journal = store.load()
    if journal.job is not None:
        store.save(replace(journal, job=None))
    info = platform.boot()  # what the bootloader selects now (also checks it boots)
    return {"thing_name": config.thing_name, "slot": info.slot, "version": str(info.version),
            "security_counter": platform.security_counter(),
            "version_floor": None if journal.version_floor is None else str(journal.version_floor)}


@app.command()
def install(bundle: Annotated[Path, typer.Argument(help="The bundle file (`overair bundle create`).")],
            config: ConfigOption,
            timeout: Annotated[float, typer.Option(help="Seconds to wait for the job to finish.")] = 600.0,
            json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
            log_format: Annotated[LogFormat, typer.Option(help="text or json.")] = LogFormat.TEXT,
            ) -> None:
    """Apply an offline bundle with every check of an online update; run it while the
    agent is stopped. Exit 0 if the update was committed, 1 if it was refused or rolled
    back, 2 on an error. The server learns the result when the device next connects."""
    from overair.agent.bundle_install import install as install_bundle

    configure_logging(log_format, level=logging.INFO)
    try:
        outcome = install_bundle(load_config(config), bundle, timeout=timeout)
    except OverairError as exc:
        _fail(exc)
        return
    if json_output:
        print(json.dumps(outcome.to_json_obj(), indent=2))
    else:
        reason = outcome.details.get("reason", "")
        check = outcome.details.get("check", "")
        Console().print(f"job {outcome.job_id}: {outcome.status or 'not finished'} {reason}"
                        + (f" (check {check})" if check else "")
                        + f"; running {outcome.version or '-'}")
    if outcome.error is not None:
        print_error(console, "InstallFailed", outcome.error)
    if outcome.error is not None or not outcome.status:
        raise typer.Exit(2)
    if outcome.status != "SUCCEEDED":
        raise typer.Exit(1)
