"""Structured logging: one event per line, readable in journald and in a terminal.

Events carry a short message plus ``key=value`` fields::

    log = get_logger("vehicles.kafka")
    log.warning("record skipped", topic=topic, partition=3, offset=991, reason="bad protobuf")

Under journald (``$JOURNAL_STREAM`` matches stderr) lines have no timestamp of
their own (journald adds one) and start with an ``<N>`` priority prefix, so
``journalctl -p warning`` works. Secrets are scrubbed from every part of an event
(message, each field, the traceback) *before* it is quoted or serialised, so a secret
holding ``"`` or ``\\`` cannot slip through as its escaped form; URL passwords and
``password=`` values are masked too. Uncaught exceptions go through the same path.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from gridmate.runtime.secrets import mask_credentials

_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _scrub(text: str) -> str:
    """Secrets masked in one piece of an event, before it is quoted or serialised
    (known secrets in any escaped form, URL passwords, ``password=`` values)."""
    return mask_credentials(text)


# The finished line is scrubbed once more, in case quoting produced a new form.
_scrub_serialised = _scrub


def _scrub_field(value: Any) -> Any:
    return value if isinstance(value, int | float | bool) else _scrub(str(value))


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    return getattr(record, "fields", None) or {}


class TextFormatter(logging.Formatter):
    """``event key=value`` lines; ``with_time`` off under journald."""

    def __init__(self, *, with_time: bool, priority_prefix: bool) -> None:
        super().__init__()
        self.with_time = with_time
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.priority_prefix:
            parts.append(f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>")
        if self.with_time:
            stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            parts.append(f"{stamp[:-4]}Z ")
        if self.with_time or not self.priority_prefix:
            parts.append(f"{record.levelname:<7} ")
        parts.append(f"{record.name}: {_scrub(record.getMessage())}")
        fields = " ".join(
            f"{k}={_format_value(_scrub_field(v))}" for k, v in _fields(record).items()
        )
        if fields:
            parts.append(f" {fields}")
        line = "".join(parts)
        if record.exc_info:
            # Tracebacks stay one event: journald keeps the continuation lines together.
            line += "\n" + _scrub(self.formatException(record.exc_info))
        return _scrub_serialised(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _scrub(record.getMessage()),
        }
        event.update({k: _scrub_field(v) for k, v in _fields(record).items()})
        if record.exc_info:
            event["exception"] = _scrub(self.formatException(record.exc_info))
        return _scrub_serialised(json.dumps(event, ensure_ascii=False))


class EventLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose calls take the event's fields as keyword arguments."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        reserved = {"exc_info", "stack_info", "stacklevel", "extra"}
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in reserved}
        kwargs.setdefault("extra", {})["fields"] = fields
        return msg, kwargs


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(f"gridmate.{name}" if name else "gridmate"), {})


def under_journald(stream: Any = None) -> bool:
    """True when ``stream`` (stderr by default) is the journal stream systemd set up."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    stream = stream or sys.stderr
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "journal" if under_journald(stream) else "text"
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        journal = fmt == "journal"
        formatter = TextFormatter(with_time=not journal, priority_prefix=journal)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    # A broker restart makes aiokafka log the same error dozens of times a second.
    handler.addFilter(LibraryFloodFilter(("aiokafka",)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # An exception nobody caught is printed by Python itself, unscrubbed: log it instead.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    # Libraries speak at warning and above unless we are debugging.
    for noisy in ("aiokafka", "asyncio", "httpx", "httpcore", "matplotlib", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("gridmate").critical("uncaught exception", exc_info=(kind, error, traceback))


def _log_uncaught_in_thread(arguments: threading.ExceptHookArgs) -> None:
    if arguments.exc_value is None or arguments.exc_type is SystemExit:
        return
    logging.getLogger("gridmate").critical(
        "uncaught exception in a thread",
        exc_info=(arguments.exc_type, arguments.exc_value, arguments.exc_traceback),
    )


class LibraryFloodFilter(logging.Filter):
    """Libraries' warnings and errors: one line per message per ``interval`` seconds.

    Records are told apart by logger, level and message template (before its
    arguments), so a reconnect loop logging "Unable connect to node %s" passes once
    per interval; the next line that passes carries ``similar_since_last``, how many
    were dropped meanwhile. Debug and info records pass untouched.
    """

    def __init__(
        self,
        prefixes: tuple[str, ...],
        interval: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval = interval
        self._monotonic = monotonic
        self._last: dict[tuple[str, int, str], float] = {}
        self._suppressed: dict[tuple[str, int, str], int] = {}

    def _applies(self, name: str) -> bool:
        return any(name == prefix or name.startswith(prefix + ".") for prefix in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self._applies(record.name):
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self._monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.fields = {**_fields(record), "similar_since_last": suppressed}
        return True
