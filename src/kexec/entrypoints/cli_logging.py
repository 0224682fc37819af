"""Logging for `kexec controller` and the CLI: ``--log-format json|text``, ``--log-level``.

JSON lines carry the execution's fields (execution, namespace, uid, action, phase, reason,
step) from the record's ``extra`` or from the context the controller sets around a
reconcile (``log_context``). Only these names and the message are written: never a
spec's parameters, so secret values cannot reach the log through the fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import click

FIELDS = ("execution", "namespace", "uid", "action", "phase", "reason", "step")
_context: ContextVar[dict[str, Any] | None] = ContextVar("kexec_log_context", default=None)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields added to every log line written inside the block (this task only)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out = {k: v for k, v in (_context.get() or {}).items() if k in FIELDS}
    out.update({k: getattr(record, k) for k in FIELDS if getattr(record, k, None) is not None})
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        text = super().format(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


LEVELS = ("debug", "info", "warning", "error")


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    """One handler on the root logger, on stderr, in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # kubernetes-asyncio logs every raw response body at debug level: Secrets' data included.
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(max(root.level, logging.INFO))


def logging_options(fn: Any, default_level: str = "info") -> Any:
    """``--log-format`` and ``--log-level`` (also $KEXEC_LOG_FORMAT, $KEXEC_LOG_LEVEL)."""
    fn = click.option("--log-level", envvar="KEXEC_LOG_LEVEL", default=default_level,
                      show_default=True, type=click.Choice(LEVELS))(fn)
    return click.option("--log-format", envvar="KEXEC_LOG_FORMAT", default="text",
                        show_default=True, type=click.Choice(["text", "json"]))(fn)
