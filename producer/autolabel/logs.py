"""Log lines for terminals (``text``) or for a log collector (``json``: one object per line),
chosen by AUTOLABEL_LOG_FORMAT; secrets are masked in both.

A JSON line carries the time, level, logger and message, and where known the process's model and
device, and the Celery task it comes from: its id, name, job_id and frame count. Celery's own
lines about a task (received, succeeded, retried) carry the task's id (and a frame task's job
and frames) from their arguments.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from autolabel.settings import MASK, Settings

# user:password@ in any URL (redis://:pw@host, rediss://user:pw@host, http://user:pw@host).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# Set by the worker launcher for each child: the device as --devices names it (cpu, or a GPU
# index) and the child's slot on it; its log lines and metrics carry both.
POOL_DEVICE_ENV = "AUTOLABEL_POOL_DEVICE"
POOL_SLOT_ENV = "AUTOLABEL_POOL_SLOT"
# A frame task's kwargsrepr (autolabel.celery_app.frames_repr), which Celery's "received" line carries.
_FRAMES_REPR = re.compile(r"^job=(?P<job_id>\S+) frames=(?P<frames>\d+)")


def secrets_of(settings: Settings) -> list[str]:
    """The settings' secret values, for masking where they appear outside a URL."""
    values = [secret.get_secret_value() for secret in (settings.s3_access_key_id, settings.s3_secret_access_key)
              if secret is not None]
    for url in (settings.broker_url,):
        if match := re.search(r"://[^:/@\s]*:([^@\s]+)@", url):
            values.append(match.group(1))
    # Long ones first, so that a secret containing another is masked whole.
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with URL passwords and the given secret values replaced by the mask."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def task_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The Celery task a line is about: the one running on this thread, or, for Celery's own
    lines about a task (received, succeeded), the id in their arguments, and a frame task's job and
    frames from its kwargsrepr."""
    fields: dict[str, Any] = {}
    try:
        from celery._state import get_current_task
    except ImportError:  # pragma: no cover - celery is a dependency; a stripped install logs without tasks
        return fields
    task = get_current_task()
    if task is not None and task.request.id:
        kwargs = task.request.kwargs or {}
        fields.update(task_id=task.request.id, task=task.name)
        if job_id := kwargs.get("job_id") or (kwargs.get("spec") or {}).get("job_id"):
            fields["job_id"] = job_id
        if isinstance(kwargs.get("frames"), list):
            fields["frames"] = len(kwargs["frames"])
    elif isinstance(record.args, Mapping) and "id" in record.args:
        fields.update(task_id=record.args["id"], task=record.args.get("name"))
        if described := _FRAMES_REPR.match(str(record.args.get("kwargs") or "")):
            fields.update(job_id=described["job_id"], frames=int(described["frames"]))
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; an exception's traceback is a field of it."""

    def __init__(self, static: Mapping[str, str], secrets: list[str]) -> None:
        super().__init__()
        self.static, self.secrets = dict(static), secrets

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage(), self.secrets),
            "pid": record.process,
            **self.static,
            **task_fields(record),
        }
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info), self.secrets)
        return json.dumps(line, default=str)


class RedactingFormatter(logging.Formatter):
    """A text formatter (``base``'s layout) that masks secrets in the whole line, traceback included."""

    def __init__(self, base: logging.Formatter | None, secrets: list[str]) -> None:
        super().__init__(TEXT_FORMAT)
        self.base, self.secrets = base, secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact((self.base or super()).format(record), self.secrets)


def relay_lines(lines: Iterable[bytes], fields: Mapping[str, str], secrets: list[str]) -> None:
    """Copy a child process's output to stderr as JSON lines: its JSON lines as they are, any other
    line (Celery's shutdown notice, printed past the log handlers; a native library's message; a
    crash's traceback) wrapped in one, masked. Each line is one write to the buffered stream, so
    lines of several children and of this process never mix."""
    out = sys.stderr.buffer
    for raw in lines:
        text = raw.decode(errors="replace").rstrip("\r\n")
        if not text.strip():
            continue
        try:
            is_line = isinstance(json.loads(text), dict)
        except ValueError:
            is_line = False
        if not is_line:
            text = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                               "level": "INFO", "logger": "output", "message": redact(text, secrets), **fields})
        out.write(text.encode() + b"\n")
        out.flush()


def static_fields(settings: Settings) -> dict[str, str]:
    """What every line of this process says about it: the model, and the device a worker process runs on."""
    fields = {"model": settings.model}
    if device := os.environ.get(POOL_DEVICE_ENV):
        fields.update(device=device, process=os.environ.get(POOL_SLOT_ENV, "0"))
    return fields


def configure(settings: Settings, level: str | int = "INFO") -> None:
    """The root logger writes to stderr in the chosen format; Python's warnings go through it too."""
    secrets = secrets_of(settings)
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(static_fields(settings), secrets))
    else:
        handler.setFormatter(RedactingFormatter(None, secrets))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def mask_handlers(logger: logging.Logger, settings: Settings) -> None:
    """Wrap the formatters of ``logger``'s handlers (Celery's own, in text mode) so that secrets are masked."""
    secrets = secrets_of(settings)
    for handler in logger.handlers:
        if not isinstance(handler.formatter, (JsonFormatter, RedactingFormatter)):
            handler.setFormatter(RedactingFormatter(handler.formatter, secrets))
