"""N1 (an earlier version sent as an update): the anti-rollback decisions of
agent/trust.py, `admit_version` and `floor_after_boot`. Pure: values in, verdicts out.
The machine's use of them is in test_agent_resume_and_counter.py and, through a real
agent and broker, in tests/integration/test_agent_device.py."""

from __future__ import annotations

import pytest

from overair.agent.machine import reasons
from overair.agent.trust import admit_version, floor_after_boot
from overair.core.versions import Version

V1, V2, V3 = Version(1, 0, 0), Version(1, 1, 0), Version(1, 2, 0)


def test_n1_newer_image_with_the_device_counter_is_admitted() -> None:
    assert admit_version(V2, 3, running=V1, floor=V1, device_counter=3) is None


def test_n1_image_below_the_security_counter_is_refused_even_when_newer() -> None:
    refusal = admit_version(V3, 1, running=V1, floor=V1, device_counter=2)
    assert refusal is not None
    assert (refusal.reason, refusal.check) == ("rejected: 0x0000000f", reasons.SECURITY_COUNTER_CHECK)


@pytest.mark.parametrize(("version", "code"), [(V1, reasons.ERR_SAME_FIRMWARE_VERSION),
                                               (Version(0, 9, 0), reasons.ERR_DOWNGRADE_NOT_ALLOWED)])
def test_n1_same_or_older_version_is_refused(version: Version, code: int) -> None:
    refusal = admit_version(version, 0, running=V1, floor=None, device_counter=0)
    assert refusal is not None
    assert refusal.reason == reasons.rejected(code)
    assert refusal.check == ""


def test_n1_the_floor_refuses_what_the_running_version_would_allow() -> None:
    """After a rollback to V1 the floor still remembers V3: V2 never runs again."""
    refusal = admit_version(V2, 0, running=V1, floor=V3, device_counter=0)
    assert refusal is not None
    assert refusal.reason == reasons.rejected(reasons.ERR_DOWNGRADE_NOT_ALLOWED)


def test_n1_floor_rises_only_when_a_confirmed_image_boots() -> None:
    assert floor_after_boot(None, V1, trial=False) == V1
    assert floor_after_boot(V1, V2, trial=False) == V2
    assert floor_after_boot(V1, V2, trial=True) == V1  # a trial image may still roll back
    assert floor_after_boot(V3, V2, trial=False) == V3  # never goes down
