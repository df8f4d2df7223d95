"""What the notifier keeps on disk: the outgoing queue and the sent-ledger.

Layout under ``<state directory>/notify/``:

* ``queue/<idempotency key>.json`` — one file per undelivered message, written
  atomically (temporary file, fsync, rename) before ``send`` returns, with its
  delivery on each channel (email, each Apprise target); rewritten when a channel
  took it, removed once every channel did. A restart picks them up again.
* ``ledger.json`` — idempotency keys already delivered (with time, kind and
  subject) and the state of open conditions, rewritten atomically. The same
  records are mirrored to MQTT (see :mod:`gridmate.notify.mirror`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gridmate.notify.events import Event, EventKind, InlineImage, Level
from gridmate.notify.render import Item
from gridmate.runtime.files import make_private_directory, write_atomically
from gridmate.runtime.logs import get_logger

log = get_logger("notify.store")


def event_to_json(event: Event) -> dict[str, Any]:
    return {
        "kind": event.kind.value,
        "subject": event.subject,
        "what_happened": event.what_happened,
        "what_gridmate_did": event.what_gridmate_did,
        "what_you_can_do": event.what_you_can_do,
        "key": event.key,
        "level": event.level.value if event.level else None,
        "occurrence": event.occurrence,
        "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
        "details": [list(pair) for pair in event.details],
        "images": [
            {
                "content_id": image.content_id,
                "description": image.description,
                "png": base64.b64encode(image.png).decode("ascii"),
            }
            for image in event.images
        ],
    }


def event_from_json(data: dict[str, Any]) -> Event:
    return Event(
        kind=EventKind(data["kind"]),
        subject=data["subject"],
        what_happened=data["what_happened"],
        what_gridmate_did=data["what_gridmate_did"],
        what_you_can_do=data.get("what_you_can_do"),
        key=data.get("key"),
        level=Level(data["level"]) if data.get("level") else None,
        occurrence=data.get("occurrence"),
        occurred_at=datetime.fromisoformat(data["occurred_at"])
        if data.get("occurred_at")
        else None,
        details=tuple((str(a), str(b)) for a, b in data.get("details", [])),
        images=tuple(
            InlineImage(i["content_id"], base64.b64decode(i["png"]), i.get("description", ""))
            for i in data.get("images", [])
        ),
    )


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class Delivery:
    """One channel's progress with one queued message."""

    not_before: datetime
    attempts: int = 0
    last_error: str | None = None
    message_key: str | None = None
    """Set (with ``message_date``) before the first attempt to hand this item to the
    channel: the key (an email's Message-ID) of the message carrying it. Every re-send
    is composed the same way, so a copy taken before a crash folds with the re-sent
    one, and a digest goes again with the same events."""
    message_date: datetime | None = None
    delivered_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.delivered_at is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "not_before": self.not_before.isoformat(),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "message_key": self.message_key,
            "message_date": self.message_date.isoformat() if self.message_date else None,
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivery:
        return cls(
            not_before=datetime.fromisoformat(data["not_before"]),
            attempts=int(data.get("attempts", 0)),
            last_error=data.get("last_error"),
            message_key=data.get("message_key"),
            message_date=_time(data.get("message_date")),
            delivered_at=_time(data.get("delivered_at")),
        )


EMAIL = "email"
"""The email channel's name in queue files."""


@dataclass
class Queued:
    """A message waiting for delivery on one or more channels (by channel name)."""

    item: Item
    deliveries: dict[str, Delivery]

    @property
    def pending(self) -> dict[str, Delivery]:
        """The channels that have not taken it yet."""
        return {name: d for name, d in self.deliveries.items() if not d.done}

    def to_json(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.item.idempotency_key,
            "level": self.item.level.value,
            "accepted_at": self.item.accepted_at.isoformat(),
            "deliveries": {name: d.to_json() for name, d in self.deliveries.items()},
            "event": event_to_json(self.item.event),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Queued:
        item = Item(
            event=event_from_json(data["event"]),
            level=Level(data["level"]),
            idempotency_key=data["idempotency_key"],
            accepted_at=datetime.fromisoformat(data["accepted_at"]),
        )
        if "deliveries" in data:
            deliveries = {
                str(name): Delivery.from_json(value) for name, value in data["deliveries"].items()
            }
        else:  # written by a gridmate that only sent email
            deliveries = {EMAIL: Delivery.from_json(data)}
        return cls(item=item, deliveries=deliveries)


@dataclass
class SentRecord:
    kind: str
    key: str | None
    subject: str
    sent_at: str
    node: str
    occurrence: bool = False
    """True when keyed by an explicit occurrence: never sent again, whatever the time."""

    @property
    def sent_time(self) -> datetime:
        return datetime.fromisoformat(self.sent_at)


@dataclass
class ConditionState:
    """One open condition (a kind and key), from its first report until resolved."""

    kind: str
    key: str | None
    episode_key: str
    """Idempotency key of the message that reported the start."""
    opened_at: str
    updated_at: str
    resolving_since: str | None = None
    """Set while a resolve is waiting out the settle time; None while active."""
    subject: str = ""
    level: str = "warning"
    repeats: int = 0
    resolve_note: str | None = None

    @property
    def updated_time(self) -> datetime:
        return datetime.fromisoformat(self.updated_at)


def condition_id(kind: EventKind | str, key: str | None) -> str:
    kind_value = kind.value if isinstance(kind, EventKind) else kind
    return f"{kind_value}|{key or ''}"


def _write_atomically(path: Path, data: Any) -> None:
    write_atomically(path, json.dumps(data, ensure_ascii=False))


@dataclass
class Ledger:
    sent: dict[str, SentRecord] = field(default_factory=dict)
    conditions: dict[str, ConditionState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "sent": {k: asdict(v) for k, v in self.sent.items()},
            "conditions": {k: asdict(v) for k, v in self.conditions.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        return cls(
            sent={k: SentRecord(**v) for k, v in data.get("sent", {}).items()},
            conditions={k: ConditionState(**v) for k, v in data.get("conditions", {}).items()},
        )


class Store:
    """The notifier's files; every method is synchronous and quick."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.queue_directory = directory / "queue"
        self.ledger_path = directory / "ledger.json"
        self.lock_path = directory / "delivery.lock"
        make_private_directory(self.queue_directory)

    # -- delivery lock (between processes sharing this directory)

    @contextlib.contextmanager
    def delivery_lock(self) -> Iterator[bool]:
        """Hold the directory's delivery lock if no other process does; yields whether held.

        Two processes may share a notifier directory (the energy service and a
        ``failover-notify`` run); only the holder delivers, so a queued message is
        sent once.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- queue

    def enqueue(self, queued: Queued) -> None:
        _write_atomically(
            self.queue_directory / f"{queued.item.idempotency_key}.json", queued.to_json()
        )

    def update(self, queued: Queued) -> None:
        self.enqueue(queued)

    def remove(self, idempotency_key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.queue_directory / f"{idempotency_key}.json").unlink()

    def load_queue(self) -> list[Queued]:
        """Every queued message; unreadable files are moved aside, not lost."""
        queued = []
        for path in sorted(self.queue_directory.glob("*.json")):
            try:
                queued.append(Queued.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError) as error:
                aside = path.with_suffix(".broken")
                log.error(
                    "queued message unreadable; moved aside",
                    file=str(path),
                    moved_to=str(aside),
                    error=f"{type(error).__name__}: {error}",
                )
                with contextlib.suppress(OSError):
                    path.rename(aside)
        return sorted(queued, key=lambda q: q.item.accepted_at)

    # -- ledger

    def load_ledger(self) -> Ledger:
        try:
            return Ledger.from_json(json.loads(self.ledger_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return Ledger()
        except (OSError, ValueError, KeyError, TypeError) as error:
            aside = self.ledger_path.with_suffix(".broken")
            log.error(
                "sent-ledger unreadable; starting a new one (the MQTT mirror, if any, fills it)",
                file=str(self.ledger_path),
                moved_to=str(aside),
                error=f"{type(error).__name__}: {error}",
            )
            with contextlib.suppress(OSError):
                self.ledger_path.rename(aside)
            return Ledger()

    def save_ledger(self, ledger: Ledger) -> None:
        _write_atomically(self.ledger_path, ledger.to_json())
