"""Log lines of ``pspnet-serve``: ``text`` for people, ``json`` for a log pipeline (``PSPNET_LOG_FORMAT``).

* ``text`` (the default) is what the server always wrote: ours as
  ``<time> <LEVEL> <logger>: <message>``, uvicorn's in its own format.
* ``json``: every line on stderr, uvicorn's included, is one JSON object with
  ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``msg``, plus ``exc`` (the
  traceback) when there is one and any structured fields the record carries.

Structured fields travel on a record as ``extra={"fields": {...}}``: the JSON
formatter puts them at the top level, the text formatter appends them as one
compact JSON object, so a text line stays greppable by field too.

One access line per request comes from :func:`log_request` (the middleware
calls it); uvicorn's own access log is switched off where the server starts.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
#: the record attribute that carries structured fields
FIELDS = "fields"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the keys of every JSON line; a record's fields never overwrite them
BASE_KEYS = ("ts", "level", "logger", "msg")

access_log = logging.getLogger("pspnet.access")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, FIELDS, None)
    return fields if isinstance(fields, dict) else {}


def _compact(value: Any) -> str:
    # default=str: a stray Path or numpy scalar in a field must not cost the line
    return json.dumps(value, separators=(",", ":"), default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes any newline in a message)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _compact(line)


class TextFormatter(logging.Formatter):
    """The classic line, with the record's structured fields (if any) appended as compact JSON."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = _fields(record)
        return f"{text} {_compact(fields)}" if fields else text


def logging_config(fmt: LogFormat, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the process: one stderr handler on the root logger.

    In json mode uvicorn's loggers lose their own handlers and propagate to it, so their lines
    are JSON too; in text mode uvicorn configures its own (``uvicorn_log_config``), as before.
    """
    config: dict[str, Any] = {
        "version": 1,
        # loggers made at import (service.engine.sessions, ...) must keep working
        "disable_existing_loggers": False,
        "formatters": {"main": {"()": JsonFormatter if fmt == "json" else TextFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
    if fmt == "json":
        config["loggers"] = {name: {"handlers": [], "propagate": True}
                             for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi")}
    return config


def uvicorn_log_config(fmt: LogFormat) -> dict[str, Any] | None:
    """What to give ``uvicorn.Config(log_config=...)``: its own default in text mode, nothing in json
    mode (ours, already applied, then formats its records)."""
    if fmt == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = LOGGING_CONFIG
    return config


def configure(fmt: LogFormat, level: str) -> None:
    """Apply :func:`logging_config`; in json mode Python's warnings become log records as well."""
    logging.config.dictConfig(logging_config(fmt, level))
    logging.captureWarnings(fmt == "json")


def log_request(fields: dict[str, Any]) -> None:
    """The access line of one request: a short message for people, every field for machines."""
    ms = fields.get("duration_ms")
    access_log.info("%s %s %s %s ms", fields.get("method"), fields.get("path"), fields.get("status"), ms,
                    extra={FIELDS: fields})
