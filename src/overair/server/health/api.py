"""overair's DescribeRolloutHealth and ResumeRollout (model: overair/apimodels)."""

from __future__ import annotations

import json
from typing import Any

from overair.server.api.contract import ApiRequest, OperationTable
from overair.server.health.monitor import HealthMonitor


def register(table: OperationTable, monitor: HealthMonitor) -> None:
    def describe(r: ApiRequest) -> dict[str, Any]:
        described = monitor.describe(str(r.params["JobId"]))
        current = described["current"]
        reason = described["decision"].get("reason") or current["reason"]
        return {"JobId": described["jobId"], "JobStatus": described["jobStatus"],
                "Status": described["status"],
                "Reason": reason, "Verdict": current["verdict"],
                "Details": json.dumps(described, separators=(",", ":"), sort_keys=True)}

    def resume(r: ApiRequest) -> dict[str, Any]:
        resumed = monitor.resume(str(r.params["JobId"]))
        return {"JobId": resumed["jobId"], "Status": resumed["status"]}

    table.register("overair", "DescribeRolloutHealth", describe)
    table.register("overair", "ResumeRollout", resume)
