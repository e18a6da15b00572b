"""The device side end to end on both platforms: anti-rollback by security counter (N1),
a self-test that hangs (R1), `overair-agent status` and `factory-reset`, the
application run by the agent, and the Linux platform's encryption at rest (P1, P3).
Real `Runtime`, real Mosquitto (mutual TLS), the scripted service of test_agent_mqtt.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from overair.agent.config import ConfigError, load_config
from overair.agent.runtime import Runtime
from overair.cli.agent_main import app as agent_cli
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.integration.test_agent_mqtt import (  # noqa: F401 - broker and service are fixtures
    IMAGE_SIZE,
    V2,
    BrokerEnv,
    Service,
    broker,
    ota_job,
    runtimes,
    service,
    start_agent,
)
from tests.integration.test_agent_resume import device_bundle

V1_0_9 = Version(1, 0, 9)
V1_2 = Version(1, 2, 0)


def offer(service: Service, env: BrokerEnv, thing: str, job_id: str, image: bytes) -> None:  # noqa: F811
    service.add_job(thing, job_id, f"s-{job_id}", image, ota_job(env.signer, image, f"s-{job_id}"))
    service.replay(thing, service.executions[thing].view())  # notify-next, as the service pushes it


def status(bundle: Path) -> dict[str, object]:
    result = CliRunner().invoke(agent_cli, ["status", "--config", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize("platform", ["linux", "sim_mcu"])
def test_n1_image_below_the_security_counter_is_refused_after_a_restart(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],  # noqa: F811
        platform: str) -> None:
    thing = f"counter-{platform}"
    bundle = device_bundle(broker, tmp_path, thing, platform)
    first = make_firmware(V2, IMAGE_SIZE, seed="c2", security_counter=2)
    service.add_job(thing, "job-c2", "s-c2", first, ota_job(broker.signer, first, "s-c2"))
    runtime = start_agent(bundle, runtimes)
    assert service.wait_terminal(thing).updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})
    assert runtime.wait(lambda s: s.phase == "idle" and s.version == "1.1.0" and not s.trial, 10)
    runtime.stop()
    report = status(bundle)
    assert report["security_counter"] == 2
    assert report["running"] == {"slot": "b", "version": "1.1.0", "trial": False}

    runtime = start_agent(bundle, runtimes)  # the counter comes back from the platform
    assert runtime.wait(lambda s: s.connected and s.phase == "idle", 10)
    # Newer version, lower counter: refused for its counter.
    offer(service, broker, thing, "job-c1", make_firmware(V1_2, IMAGE_SIZE, seed="c1", security_counter=1))
    ex = service.wait_terminal(thing)
    assert ex.updates[-1][0] == "FAILED"
    assert ex.updates[-1][1]["reason"] == "rejected: 0x0000000f"
    assert ex.updates[-1][1]["check"] == "SecurityCounter"
    # A correctly signed older version with the same counter: refused for its version.
    older = make_firmware(V1_0_9, IMAGE_SIZE, seed="old", security_counter=2)
    offer(service, broker, thing, "job-old", older)
    ex = service.wait_terminal(thing)
    assert ex.job_id == "job-old"
    assert ex.updates[-1][1]["reason"] == "rejected: 0x0000000f"
    assert "check" not in ex.updates[-1][1]
    snap = runtime.snapshot()
    assert (snap.version, snap.slot, snap.reboots) == ("1.1.0", "b", 0)


def test_r1_self_test_that_hangs_past_its_deadline_rolls_back(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:  # noqa: F811
    thing = "hang"
    bundle = device_bundle(broker, tmp_path, thing, "linux")
    toml = bundle / "agent.toml"
    toml.write_text(toml.read_text().replace("deadline_seconds = 20", "deadline_seconds = 2")
                    .replace('command = ""', 'command = "sleep 60"'))
    image = make_firmware(V2, IMAGE_SIZE, seed="hang")
    service.add_job(thing, "job-hang", "s-hang", image, ota_job(broker.signer, image, "s-hang"))
    runtime = start_agent(bundle, runtimes)
    ex = service.wait_terminal(thing, 30)
    status_, details = ex.updates[-1]
    assert (status_, details["reason"]) == ("FAILED", "rejected: 0x00000000")
    assert "deadline" in details["detail"] or "within 2 s" in details["detail"]
    assert [d.get("self_test") for _, d in ex.updates if "self_test" in d] == ["ready", "active"]
    assert runtime.wait(lambda s: s.reboots == 2 and s.phase == "idle", 10)
    snap = runtime.snapshot()
    assert (snap.version, snap.slot, snap.trial) == ("1.0.0", "a", False)


@pytest.mark.parametrize("platform", ["linux", "sim_mcu"])
def test_factory_reset_command_boots_the_factory_image_and_keeps_the_device(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],  # noqa: F811
        platform: str) -> None:
    thing = f"factory-{platform}"
    bundle = device_bundle(broker, tmp_path, thing, platform)
    image = make_firmware(V2, IMAGE_SIZE, seed="f", security_counter=1)
    service.add_job(thing, "job-f", "s-f", image, ota_job(broker.signer, image, "s-f"))
    runtime = start_agent(bundle, runtimes)
    assert service.wait_terminal(thing).updates[-1][0] == "SUCCEEDED"
    assert runtime.wait(lambda s: s.phase == "idle" and not s.trial, 10)
    runtime.stop()
    before = status(bundle)
    assert {s["name"]: (s["version"], s["valid"]) for s in before["slots"]} == {  # type: ignore[attr-defined]
        "a": ("1.0.0", True), "b": ("1.1.0", True), "factory": ("1.0.0", True)}
    assert before["last_result"]["status"] == "SUCCEEDED"  # type: ignore[index]

    result = CliRunner().invoke(agent_cli, ["factory-reset", "--config", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == "1.0.0"
    after = status(bundle)
    assert after["running"] == {"slot": "a", "version": "1.0.0", "trial": False}
    assert after["security_counter"] == 1  # anti-rollback state stays
    assert after["last_result"] == before["last_result"]  # replay protection stays
    assert after["current_job"] is None

    gets = service.next_gets.get(thing, 0)
    runtime = start_agent(bundle, runtimes)  # same identity: it connects and runs the factory image
    assert runtime.wait(lambda s: s.connected and s.version == "1.0.0", 10)
    # Its `$next/get` follows its SUBSCRIBE on the one connection: once the service has it,
    # a replayed job message reaches the agent (connected alone did not promise that).
    assert service.wait_until(lambda: service.next_gets.get(thing, 0) > gets, 10)
    # The finished job, offered again, is still not applied (N3).
    ex = service.executions[thing]
    seen = len(ex.updates)
    service.replay(thing, {**ex.view(), "status": "IN_PROGRESS"})
    assert service.wait_until(lambda: len(ex.updates) > seen, 10)
    assert ex.updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})  # its result, repeated
    snap = runtime.snapshot()
    assert (snap.version, snap.reboots) == ("1.0.0", 0)


def test_status_of_a_device_that_never_ran(broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    bundle = device_bundle(broker, tmp_path, "fresh", "sim_mcu")
    report = status(bundle)
    assert (report["platform"], report["running"], report["slots"]) == ("sim_mcu", None, [])
    assert not (bundle / "flash.bin").exists()  # status never creates the flash
    result = CliRunner().invoke(agent_cli, ["factory-reset", "--config", str(bundle)])
    assert result.exit_code == 2
    assert "nothing is installed" in result.output


APP = ("import os, sys, time; open(sys.argv[1], 'a').write("
       "os.environ['OVERAIR_VERSION'] + ' ' + os.environ['OVERAIR_TRIAL'] + '\\n'); time.sleep(120)")


def test_p1_p3_linux_device_key_and_images_are_sealed_and_the_app_follows_the_update(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:  # noqa: F811
    thing = "sealed"
    bundle = device_bundle(broker, tmp_path, thing, "linux-sealed")
    starts = tmp_path / "app-starts.txt"
    with (bundle / "agent.toml").open("a") as toml:
        toml.write(f"[app]\ncommand = {json.dumps([sys.executable, '-c', APP, str(starts)])}\n")
    plain_key = (bundle / "device.key").read_bytes()
    image = make_firmware(V2, IMAGE_SIZE, seed="sealed")
    service.add_job(thing, "job-s", "s-s", image, ota_job(broker.signer, image, "s-s"))
    runtime = start_agent(bundle, runtimes)
    assert service.wait_terminal(thing).updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})
    assert runtime.wait(lambda s: s.phase == "idle" and s.version == "1.1.0" and not s.trial, 10)
    runtime.stop()
    # The application ran on the factory image, then on the new one (restarted by the reboot).
    assert starts.read_text().splitlines() == ["1.0.0 0", "1.1.0 1"]

    # P1: no plaintext key or image bytes at rest.
    sealed_key = (bundle / "device.key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in sealed_key
    body = b"".join(plain_key.splitlines()[1:-1])
    assert body[:40] not in sealed_key.replace(b"\n", b"")
    files = [p for p in (bundle / "state").rglob("*") if p.is_file() and not p.is_symlink()]
    stored = b"".join(p.read_bytes() for p in files)
    factory = (bundle / "factory.bin").read_bytes()
    for data in (image, factory):
        assert not any(data[i:i + 32] in stored for i in range(0, len(data) - 32, 997))

    # P3: the whole bundle copied to another machine (another machine id) is unusable.
    clone = tmp_path / "clone"
    shutil.copytree(bundle, clone, symlinks=True)
    (clone / "machine-id").write_text("another machine\n")
    with pytest.raises(ConfigError, match="does not decrypt on this device"):
        Runtime(load_config(clone))
    report = status(clone)
    assert [s["valid"] for s in report["slots"]] == [False, False, False]  # type: ignore[attr-defined]
    # On its own machine it still runs the update.
    assert status(bundle)["running"] == {"slot": "b", "version": "1.1.0", "trial": False}
