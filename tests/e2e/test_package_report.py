"""The overair agent reports what it runs into its `$package` shadow (issue 15, item 2),
end to end: real agents, broker and server; the operator asks with boto3.

At boot each agent reports its version, slot and security counter; SearchIndex on the
package version finds it and the shadow's metadata says since when. A restart into the
same image writes nothing (the report is idempotent). After an update one device runs
the new image, the other, whose self-test fails, rolls back, and the shadow says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.server_harness import RunningServer

V1, V2 = Version(1, 0, 0), Version(1, 1, 0)
SIZE = 16 * 1024
QUERY = "thingName:pkg-* AND shadow.name.$package.reported.firmware.version:{}"


def _bundles(srv: RunningServer, root: Path, names: list[str]) -> list[Path]:
    factory = root / "factory.bin"
    factory.write_bytes(make_firmware(V1, SIZE, seed="factory"))
    return [srv.provision(name, root / name, factory_image=factory) for name in names]


def _names(iot: Any, version: Version) -> list[str]:
    things = iot.search_index(indexName="AWS_Things", queryString=QUERY.format(version))["things"]
    return sorted(t["thingName"] for t in things)


def _package(data: Any, thing: str) -> dict[str, Any]:
    return dict(json.loads(data.get_thing_shadow(thingName=thing, shadowName="$package")["payload"].read()))


def _fails_after_a_while(_version: Version) -> str:
    time.sleep(1.5)
    return "watchdog fired"


def _reported(data: Any, thing: str) -> tuple[str, str]:
    firmware = _package(data, thing)["state"]["reported"]["firmware"]
    return firmware["version"], firmware["attributes"]["slot"]


def test_agents_report_what_they_run_at_boot_and_after_an_update_and_a_rollback(
    srv: RunningServer, tmp_path: Path
) -> None:
    iot, data = srv.client("iot"), srv.client("iot-data")
    good_name, bad_name = "pkg-good", "pkg-bad"
    good_bundle, bad_bundle = _bundles(srv, tmp_path, [good_name, bad_name])

    def fleets() -> tuple[Fleet, Fleet]:
        # The bad image runs a while on trial (and is reported) before its self-test fails.
        return Fleet([good_bundle]), Fleet([bad_bundle], self_test_hook=_fails_after_a_while)

    good, bad = fleets()
    with good, bad:
        wait_for(lambda: _names(iot, V1) == [bad_name, good_name], timeout=20, what="the boot reports")
        booted = _package(data, good_name)
        assert booted["state"]["reported"]["firmware"]["version"] == "1.0.0"
        attributes = booted["state"]["reported"]["firmware"]["attributes"]
        slot = good.snapshots()[good_name].slot
        assert attributes == {"slot": slot, "securityCounter": attributes["securityCounter"]}
        assert attributes["securityCounter"].isdigit()
        since = booted["metadata"]["reported"]["firmware"]["version"]["timestamp"]

    # A restart into the same image: the agent reads its $package shadow and writes nothing.
    good, bad = fleets()
    with good, bad:
        assert good.wait(lambda s: all(x.connected for x in s.values()), 20)
        wait_for(lambda: good.runtimes[good_name]._package.synced, timeout=10, what="the read")
        assert good.runtimes[good_name]._package.reports_sent == 0
        again = _package(data, good_name)
        assert again["version"] == booted["version"]
        assert again["metadata"]["reported"]["firmware"]["version"]["timestamp"] == since

        things = [iot.describe_thing(thingName=n)["thingArn"] for n in (good_name, bad_name)]
        info = create_ota(srv, "pkg-update", things, make_firmware(V2, SIZE, seed="pkg-update"))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        assert good.wait(lambda s: s[good_name].version == "1.1.0" and not s[good_name].trial, 60)
        new_slot = good.snapshots()[good_name].slot
        assert new_slot != slot
        wait_for(lambda: _reported(data, good_name) == ("1.1.0", new_slot), timeout=30,
                 what="the activation's report")
        # The device that rolls back reports the trial image, then the one it fell back to.
        wait_for(lambda: _reported(data, bad_name) == ("1.1.0", new_slot), timeout=30,
                 what="the trial's report")
        assert bad.wait(lambda s: s[bad_name].last_result is not None, 60)
        wait_for(lambda: _reported(data, bad_name) == ("1.0.0", slot), timeout=30,
                 what="the rollback's report")
        assert _names(iot, V1) == [bad_name]
        assert _names(iot, V2) == [good_name]
