"""The notifier every component uses.

``send`` decides at once whether an event deserves a message and, if so,
writes it to the on-disk queue before returning; a background task delivers
the queue, batching what arrives together into digests and retrying with
backoff while the SMTP server is unreachable. See docs/notifications.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Gauge

from gridmate.notify.events import Event, EventKind, Level
from gridmate.notify.render import Envelope, Item, render_digest, render_single
from gridmate.notify.settings import NotifySettings
from gridmate.notify.smtp import DeliveryFailed, deliver
from gridmate.notify.store import (
    ConditionState,
    Ledger,
    Queued,
    SentRecord,
    Store,
    condition_id,
)
from gridmate.runtime.backoff import Backoff
from gridmate.runtime.clock import Clock, SystemClock, sleep_or_wake
from gridmate.runtime.logs import get_logger

log = get_logger("notify")

_LOG_METHOD = {Level.INFO: "info", Level.WARNING: "warning", Level.CRITICAL: "error"}


def _local_zone(name: str | None) -> tzinfo:
    if name:
        return ZoneInfo(name)
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


class Notifier:
    """Email notifications with deduplication, digests and a durable queue.

    ``state_directory`` is the component's state directory; the notifier keeps
    its files in ``<state_directory>/notify``. Call :meth:`start` before
    :meth:`send` and :meth:`close` at the end (it tries to deliver what is due).
    """

    def __init__(
        self,
        settings: NotifySettings,
        state_directory: Path,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        source: str = "gridmate",
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.source = source
        self.node = settings.node_name or socket.gethostname()
        self.tz = _local_zone(settings.time_zone)
        self._store = Store(Path(state_directory) / "notify") if settings.enabled else None
        self._ledger = Ledger()
        self._queue: dict[str, Queued] = {}
        self._wake = asyncio.Event()
        self._busy_until: datetime | None = None
        # One delivery pass at a time: flush() and the background loop must not both
        # hand the same queued message to the SMTP server.
        self._delivering = asyncio.Lock()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(
            initial=settings.retry_initial_seconds, cap=settings.retry_max_seconds
        )
        self._last_error: str | None = None
        self._mirror: LedgerMirrorLike | None = None
        self._listeners: list[Callable[[Event], None]] = []
        registry = registry if registry is not None else CollectorRegistry()
        self._events_total = Counter(
            "gridmate_notify_events_total",
            "Events handed to the notifier, by kind and what became of them.",
            ["kind", "outcome"],
            registry=registry,
        )
        self._emails_total = Counter(
            "gridmate_notify_emails_total",
            "Emails the SMTP server accepted or refused, by level.",
            ["level", "outcome"],
            registry=registry,
        )
        queue_gauge = Gauge(
            "gridmate_notify_queue_messages",
            "Messages waiting for delivery.",
            registry=registry,
        )
        queue_gauge.set_function(lambda: float(len(self._queue)))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._store is None:
            log.info("email notifications disabled (no notify.smtp_host); events are only logged")
            return
        self._ledger = self._store.load_ledger()
        for queued in self._store.load_queue():
            self._queue[queued.item.idempotency_key] = queued
        if self._queue:
            log.info("undelivered messages found; delivering", count=len(self._queue))
        if self.settings.mqtt is not None:
            from gridmate.notify.mirror import LedgerMirror

            mirror = LedgerMirror(
                self.settings.mqtt,
                f"{self.settings.mqtt_topic}/{self.source}",
                on_sent=self._remote_sent,
                on_condition=self._remote_condition,
                local=lambda: self._ledger,
            )
            self._mirror = mirror
            await mirror.start()
            if not await mirror.wait_synced(self.settings.mqtt_sync_timeout_seconds):
                log.warning(
                    "notification ledger mirror not reachable; a node taking over may repeat "
                    "messages until it is",
                    broker=f"{self.settings.mqtt.host}:{self.settings.mqtt.port}",
                )
        self._prune(self.clock.now())
        self._task = asyncio.create_task(self._deliver_loop(), name=f"notify.{self.source}")

    async def close(self, grace_seconds: float = 10.0) -> None:
        """Deliver what is due (for at most ``grace_seconds``) and stop; the rest stays on disk."""
        if self._store is None:
            return
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._mirror is not None:
            await self._mirror.close()
            self._mirror = None
        if self._queue:
            log.warning(
                "undelivered messages kept on disk for the next start", count=len(self._queue)
            )

    async def flush(self, within_seconds: float = 30.0) -> bool:
        """Deliver everything queued now, without waiting for the digest window.

        Returns True when the queue is empty afterwards. For one-shot commands.
        """
        if self._store is None:
            return True
        now = self.clock.now()
        for queued in self._queue.values():
            queued.not_before = min(queued.not_before, now)
        self._backoff.reset()

        async def drained() -> None:
            while True:
                await self._deliver_due(self.clock.now())
                if not self._queue:
                    return
                await self.clock.sleep(min(1.0, self.settings.retry_initial_seconds))

        try:
            await asyncio.wait_for(drained(), within_seconds)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ reporting

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def health(self) -> str | None:
        """For ``daemon.add_health_check``: trouble delivering mail, or None."""
        if self._last_error and self._queue:
            return f"{len(self._queue)} notification(s) undelivered: {self._last_error}"
        return None

    def open_conditions(self) -> list[tuple[EventKind, str | None]]:
        return [
            (EventKind(c.kind), c.key) for c in self._ledger.conditions.values() if c.episode_key
        ]

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Also hand every new event to ``listener`` (Home Assistant's event entity).

        Called once per happening, like the log line: an open condition's repeats are
        not new. A listener's failure is logged and does not stop the notifier.
        """
        self._listeners.append(listener)

    def _tell_listeners(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as error:
                log.warning(
                    "notification listener failed", error=f"{type(error).__name__}: {error}"
                )

    def _recipients(self, level: Level) -> list[str]:
        return list(getattr(self.settings.recipients, level.value))

    # ------------------------------------------------------------------ accepting events

    async def send(self, event: Event) -> str | None:
        """Report ``event``; returns its idempotency key if a message was queued."""
        level = event.effective_level
        if not self._is_repeat(event):
            getattr(log, _LOG_METHOD[level])(
                event.subject, kind=event.kind.value, key=event.key or "-", severity=level.value
            )
            self._tell_listeners(event)
        if self._store is None or not self._recipients(level):
            self._events_total.labels(event.kind.value, "logged").inc()
            return None
        now = self.clock.now()
        if event.kind.is_condition:
            return self._accept_condition(event, level, now)
        key = event.idempotency_key()
        if key in self._queue or self._recently_sent(key, now):
            self._events_total.labels(event.kind.value, "duplicate").inc()
            log.debug("duplicate event not sent again", kind=event.kind.value, ref=key[:12])
            return None
        self._enqueue(Item(event, level, key, now), now)
        return key

    async def resolve(
        self, kind: EventKind, key: str | None = None, note: str | None = None
    ) -> None:
        """The condition ``kind``/``key`` has cleared.

        "Resolved" is sent once it has stayed clear for ``resolve_after_seconds``;
        if it comes back before that, nothing is sent at all (a flap).
        """
        state = self._ledger.conditions.get(condition_id(kind, key))
        if state is None or state.resolving_since is not None:
            return
        now = self.clock.now()
        state.resolving_since = now.isoformat()
        state.updated_at = now.isoformat()
        state.resolve_note = note
        self._save_condition(state)
        log.info("condition clearing", kind=kind.value, key=key or "-")
        self._wake.set()

    def _is_repeat(self, event: Event) -> bool:
        state = self._ledger.conditions.get(condition_id(event.kind, event.key))
        return event.kind.is_condition and state is not None and bool(state.episode_key)

    def _accept_condition(self, event: Event, level: Level, now: datetime) -> str | None:
        cid = condition_id(event.kind, event.key)
        state = self._ledger.conditions.get(cid)
        if state is not None and state.episode_key:
            state.repeats += 1
            if state.resolving_since is not None:
                # Back before "resolved" went out: one episode, nothing new to say.
                state.resolving_since = None
                state.updated_at = now.isoformat()
                self._save_condition(state)
                log.info("condition flapped; still one episode", kind=event.kind.value)
            self._events_total.labels(event.kind.value, "duplicate").inc()
            return None
        key = event.idempotency_key(episode=now.isoformat())
        state = ConditionState(
            kind=event.kind.value,
            key=event.key,
            episode_key=key,
            opened_at=(event.occurred_at or now).isoformat(),
            updated_at=now.isoformat(),
            subject=event.subject,
            level=level.value,
        )
        self._ledger.conditions[cid] = state
        self._save_condition(state)
        if key in self._queue or key in self._ledger.sent:
            self._events_total.labels(event.kind.value, "duplicate").inc()
            return None
        self._enqueue(Item(event, level, key, now), now)
        return key

    def _recently_sent(self, key: str, now: datetime) -> bool:
        record = self._ledger.sent.get(key)
        if record is None:
            return False
        window = timedelta(seconds=self.settings.repeat_window_seconds)
        # An explicit occurrence never repeats; text-keyed events may after the window.
        return now - record.sent_time < window or record.occurrence

    def _enqueue(self, item: Item, now: datetime) -> None:
        assert self._store is not None
        not_before = now + timedelta(seconds=self.settings.digest_window_seconds)
        held_until = self._rate_limited_until(item.event.kind, now)
        if held_until is not None and held_until > not_before:
            log.info(
                "rate limit for this kind reached; message held for a digest",
                kind=item.event.kind.value,
                until=held_until.astimezone(self.tz).strftime("%H:%M"),
            )
            not_before = held_until
        queued = Queued(item=item, not_before=not_before)
        self._store.enqueue(queued)
        self._queue[item.idempotency_key] = queued
        self._events_total.labels(item.event.kind.value, "queued").inc()
        self._wake.set()

    def _rate_limited_until(self, kind: EventKind, now: datetime) -> datetime | None:
        hour_ago = now - timedelta(hours=1)
        times = sorted(
            record.sent_time
            for record in self._ledger.sent.values()
            if record.kind == kind.value and record.sent_time > hour_ago
        )
        pending = sum(1 for q in self._queue.values() if q.item.event.kind == kind)
        if len(times) + pending < self.settings.max_per_kind_per_hour:
            return None
        if not times:
            return None
        return times[0] + timedelta(hours=1)

    # ------------------------------------------------------------------ ledger and mirror

    def _save_condition(self, state: ConditionState) -> None:
        if self._store is not None:
            self._store.save_ledger(self._ledger)
        if self._mirror is not None:
            self._mirror.publish_condition(condition_id(state.kind, state.key), state)

    def _close_condition(self, cid: str, now: datetime) -> None:
        state = self._ledger.conditions.pop(cid, None)
        if state is None:
            return
        if self._store is not None:
            self._store.save_ledger(self._ledger)
        if self._mirror is not None:
            tombstone = ConditionState(
                kind=state.kind,
                key=state.key,
                episode_key="",
                opened_at=state.opened_at,
                updated_at=now.isoformat(),
            )
            self._mirror.publish_condition(cid, tombstone)

    def _remote_sent(self, key: str, record: SentRecord) -> None:
        if key not in self._ledger.sent:
            self._ledger.sent[key] = record
            if key in self._queue and self._store is not None:
                # The other node delivered it while this one had it queued.
                del self._queue[key]
                self._store.remove(key)
                log.info("message already sent by the other node; dropped here", ref=key[:12])
            if self._store is not None:
                self._store.save_ledger(self._ledger)

    def _remote_condition(self, cid: str, state: ConditionState) -> None:
        local = self._ledger.conditions.get(cid)
        if local is not None and local.updated_time >= state.updated_time:
            return
        if not state.episode_key:
            if local is not None:
                self._ledger.conditions.pop(cid)
        else:
            self._ledger.conditions[cid] = state
        if self._store is not None:
            self._store.save_ledger(self._ledger)

    def _prune(self, now: datetime) -> None:
        keep = timedelta(days=self.settings.ledger_retention_days)
        old = [k for k, r in self._ledger.sent.items() if now - r.sent_time > keep]
        stale = [k for k, c in self._ledger.conditions.items() if now - c.updated_time > keep]
        for key in old:
            del self._ledger.sent[key]
            if self._mirror is not None:
                self._mirror.forget_sent(key)
        for cid in stale:
            del self._ledger.conditions[cid]
            if self._mirror is not None:
                self._mirror.forget_condition(cid)
        if (old or stale) and self._store is not None:
            self._store.save_ledger(self._ledger)

    # ------------------------------------------------------------------ delivery

    def _next_due(self, now: datetime) -> float:
        moments = [q.not_before for q in self._queue.values()]
        settle = timedelta(seconds=self.settings.resolve_after_seconds)
        moments += [
            datetime.fromisoformat(c.resolving_since) + settle
            for c in self._ledger.conditions.values()
            if c.resolving_since is not None and c.episode_key
        ]
        if self._busy_until is not None:
            moments = [max(m, self._busy_until) for m in moments]
        if not moments:
            return 3600.0
        return max(0.0, (min(moments) - now).total_seconds())

    async def _deliver_loop(self) -> None:
        last_prune = self.clock.now()
        while True:
            now = self.clock.now()
            await self._deliver_due(now)
            if self._closing.is_set():
                return
            if now - last_prune > timedelta(hours=1):
                self._prune(now)
                last_prune = now
            self._wake.clear()
            delay = self._next_due(self.clock.now())
            await sleep_or_wake(self.clock, delay, self._wake)

    def _settle_resolutions(self, now: datetime) -> None:
        settle = timedelta(seconds=self.settings.resolve_after_seconds)
        for cid, state in list(self._ledger.conditions.items()):
            if state.resolving_since is None or not state.episode_key:
                continue
            cleared_at = datetime.fromisoformat(state.resolving_since)
            if now < cleared_at + settle:
                continue
            kind = EventKind(state.kind)
            opened = datetime.fromisoformat(state.opened_at).astimezone(self.tz)
            what = state.resolve_note or (
                f"This is over: “{state.subject}”. It started {opened:%a %H:%M} and has been "
                f"fine since {cleared_at.astimezone(self.tz):%H:%M}."
            )
            if state.repeats:
                what += (
                    f" It was reported {state.repeats + 1} times in between; you got one message."
                )
            event = Event(
                kind=kind,
                subject=f"Resolved: {state.subject}",
                what_happened=what,
                what_gridmate_did="Back to normal operation; gridmate keeps watching.",
                what_you_can_do=None,
                key=state.key,
                level=Level(state.level),
                occurred_at=cleared_at,
            )
            key = hashlib.sha256(f"{state.episode_key}:resolved".encode()).hexdigest()[:32]
            self._close_condition(cid, now)
            if key not in self._ledger.sent and key not in self._queue:
                self._enqueue(Item(event, Level(state.level), key, now), now)

    async def _deliver_due(self, now: datetime) -> None:
        assert self._store is not None
        async with self._delivering:
            self._settle_resolutions(now)
            if not any(q.not_before <= now for q in self._queue.values()):
                return
            with self._store.delivery_lock() as held:
                if not held:
                    # Another process on this node is delivering from this directory.
                    self._busy_until = now + timedelta(seconds=1)
                    return
                self._busy_until = None
                self._reload_from_disk()
                await self._deliver_due_locked(now)

    def _reload_from_disk(self) -> None:
        """Take in what another process sharing the directory queued or sent."""
        assert self._store is not None
        on_disk = {q.item.idempotency_key: q for q in self._store.load_queue()}
        for key, record in self._store.load_ledger().sent.items():
            self._ledger.sent.setdefault(key, record)
        for key in [k for k in self._queue if k not in on_disk]:
            del self._queue[key]  # delivered (or dropped) by the other process
        for key, queued in on_disk.items():
            self._queue.setdefault(key, queued)

    async def _deliver_due_locked(self, now: datetime) -> None:
        assert self._store is not None
        self._settle_resolutions(now)
        max_age = timedelta(hours=self.settings.max_queue_age_hours)
        for key, queued in list(self._queue.items()):
            if key in self._ledger.sent:
                del self._queue[key]
                self._store.remove(key)
            elif now - queued.item.accepted_at > max_age:
                log.error(
                    "notification dropped after failing too long",
                    subject=queued.item.event.subject,
                    queued_since=queued.item.accepted_at.isoformat(),
                    last_error=queued.last_error or "-",
                )
                del self._queue[key]
                self._store.remove(key)
                self._emails_total.labels(queued.item.level.value, "dropped").inc()
        if not any(q.not_before <= now for q in self._queue.values()):
            return
        # An email already handed to the server (perhaps delivered before a crash or a
        # lost reply) goes again exactly as composed then: same events, Message-ID, Date.
        attempted: dict[str, list[Queued]] = {}
        for queued in sorted(self._queue.values(), key=lambda q: q.item.accepted_at):
            if queued.message_key is not None and queued.not_before <= now:
                attempted.setdefault(queued.message_key, []).append(queued)
        for parts in attempted.values():
            if not await self._deliver(parts, parts[0].item.level, now):
                return
        # Once something is due, everything that arrived with it goes along.
        horizon = now + timedelta(seconds=self.settings.digest_window_seconds)
        batch = sorted(
            (q for q in self._queue.values() if q.not_before <= horizon and q.message_key is None),
            key=lambda q: q.item.accepted_at,
        )
        for level in Level:
            group = [q for q in batch if q.item.level == level]
            if not group:
                continue
            alone = [
                q
                for q in group
                if q.item.event.images or q.item.event.kind is EventKind.daily_report
            ]
            together = [q for q in group if q not in alone]
            messages: list[list[Queued]] = [[q] for q in alone]
            if len(together) >= self.settings.digest_min_events:
                messages.append(together)
            else:
                messages += [[q] for q in together]
            for parts in messages:
                if not await self._deliver(parts, level, now):
                    return

    def _compose(self, parts: Sequence[Queued], now: datetime) -> tuple[str, datetime]:
        """The Message-ID key and Date of the email carrying ``parts``: those recorded at
        its first attempt, or new ones, written to the queue files before anything is
        sent (delivery is at-least-once; a repeat must be recognisable as one)."""
        first = parts[0]
        if first.message_key is not None and first.message_date is not None:
            return first.message_key, first.message_date
        assert self._store is not None
        if len(parts) == 1:
            message_key = first.item.idempotency_key
        else:
            message_key = hashlib.sha256(
                ",".join(sorted(q.item.idempotency_key for q in parts)).encode()
            ).hexdigest()[:32]
        for queued in parts:
            queued.message_key, queued.message_date = message_key, now
            self._store.update(queued)
        return message_key, now

    async def _deliver(self, parts: Sequence[Queued], level: Level, now: datetime) -> bool:
        assert self._store is not None
        recipients = self._recipients(level)
        envelope = Envelope(self.settings.sender, recipients, self.source, self.node, self.tz)
        items = [q.item for q in parts]
        message_key, date = self._compose(parts, now)
        if len(items) == 1:
            message = render_single(items[0], envelope, date)
        else:
            message = render_digest(items, level, envelope, message_key, date)
        try:
            await deliver(self.settings, message, recipients)
        except DeliveryFailed as error:
            delay = self._backoff.next_delay()
            self._last_error = str(error)
            self._emails_total.labels(level.value, "failed").inc()
            retry_at = now + timedelta(seconds=delay)
            for queued in self._queue.values():
                queued.attempts += queued in parts
                queued.last_error = str(error) if queued in parts else queued.last_error
                queued.not_before = max(queued.not_before, retry_at)
                self._store.update(queued)
            log.warning(
                "email not delivered; kept in the queue",
                server=f"{self.settings.smtp_host}:{self.settings.port}",
                error=str(error),
                retry_in=f"{delay:.0f}s",
                queued=len(self._queue),
            )
            return False
        self._backoff.reset()
        self._last_error = None
        self._emails_total.labels(level.value, "sent").inc()
        sent_at = self.clock.now().isoformat()
        for item in items:
            record = SentRecord(
                kind=item.event.kind.value,
                key=item.event.key,
                subject=item.event.subject,
                sent_at=sent_at,
                node=self.node,
                occurrence=item.event.occurrence is not None,
            )
            self._ledger.sent[item.idempotency_key] = record
            if self._mirror is not None:
                self._mirror.publish_sent(item.idempotency_key, record)
        # Ledger first, then the queue files: a crash in between repeats nothing.
        self._store.save_ledger(self._ledger)
        for item in items:
            self._queue.pop(item.idempotency_key, None)
            self._store.remove(item.idempotency_key)
        log.info(
            "email sent",
            subject=message["Subject"],
            recipients=len(recipients),
            events=len(items),
        )
        return True


class LedgerMirrorLike(Protocol):
    """What the notifier needs from the MQTT mirror (see :mod:`gridmate.notify.mirror`)."""

    async def close(self) -> None: ...
    def publish_sent(self, key: str, record: SentRecord) -> None: ...
    def publish_condition(self, cid: str, state: ConditionState) -> None: ...
    def forget_sent(self, key: str) -> None: ...
    def forget_condition(self, cid: str) -> None: ...
