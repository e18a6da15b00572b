"""Log lines of the server (`overair serve`) and the agent (`overair-agent run`), in one
format for both: text for a person at a terminal, or JSON lines for a log pipeline
(`--log-format json`: time, level, logger, message and every `extra=` field, e.g. the
API's service, operation, caller, status and duration).

Library chatter is off below WARNING (gmqtt's and paho's connection internals, alembic's
"Context impl" on every start, uvicorn's access lines): overair logs what happened in
its own words."""

from __future__ import annotations

import json
import logging
import sys
import time
from enum import StrEnum
from typing import Any

QUIET_LIBRARIES = ("gmqtt", "paho", "alembic", "uvicorn", "uvicorn.access", "uvicorn.error", "hpack", "httpx")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                plain = isinstance(value, str | int | float | bool) or value is None
                entry[key] = value if plain else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(fmt: LogFormat, *, level: int = logging.INFO, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
