"""The notifier every component uses.

``send`` decides at once whether an event deserves a message and, if so,
writes it to the on-disk queue before returning; a background task delivers
the queue on each channel (email, each Apprise target), batching what arrives
together into digests and retrying a channel that is down with backoff while the
others go on. A message leaves the queue once every channel took it.
See docs/notifications.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Gauge

from gridmate.notify.channels import Channel, build_channels
from gridmate.notify.events import Event, EventKind, Level
from gridmate.notify.render import Item
from gridmate.notify.settings import NotifySettings
from gridmate.notify.smtp import DeliveryFailed
from gridmate.notify.store import (
    EMAIL,
    ConditionState,
    Delivery,
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
    """Notifications by email and Apprise with deduplication, digests and a durable queue.

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
        self._channels: dict[str, Channel] = {
            channel.name: channel
            for channel in build_channels(settings, source=source, node=self.node, tz=self.tz)
        }
        self._backoffs = {
            name: Backoff(initial=settings.retry_initial_seconds, cap=settings.retry_max_seconds)
            for name in self._channels
        }
        self._errors: dict[str, str] = {}
        """Channel name -> why its last attempt failed (cleared by a success)."""
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
        self._apprise_total = Counter(
            "gridmate_notify_apprise_messages_total",
            "Messages Apprise targets took or refused, by level.",
            ["level", "outcome"],
            registry=registry,
        )
        queue_gauge = Gauge(
            "gridmate_notify_queue_messages",
            "Messages waiting for delivery.",
            registry=registry,
        )
        queue_gauge.set_function(lambda: float(len(self._queue)))
        oldest_gauge = Gauge(
            "gridmate_notify_oldest_undelivered_seconds",
            "Age of the oldest message a channel of this kind has not taken yet (0: none).",
            ["channel"],
            registry=registry,
        )
        for kind in sorted({channel.kind for channel in self._channels.values()}):
            oldest_gauge.labels(kind.lower()).set_function(
                functools.partial(self.oldest_undelivered_seconds, kind)
            )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._store is None:
            log.info(
                "notifications disabled (no notify.smtp_host or notify.apprise_urls_file); "
                "events are only logged"
            )
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
            for delivery in queued.pending.values():
                delivery.not_before = min(delivery.not_before, now)
            self._store.update(queued)  # the delivery pass reads the queue from disk
        for backoff in self._backoffs.values():
            backoff.reset()

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

    def oldest_undelivered_seconds(self, kind: str) -> float:
        """How long the oldest message some channel of ``kind`` ("email", "Apprise") still
        lacks has waited; 0 when none waits. One dead channel shows here even while the
        others deliver (the queue keeps a message until every channel took it)."""
        waiting = [
            queued.item.accepted_at
            for queued in self._queue.values()
            if any(
                name in self._channels and self._channels[name].kind == kind
                for name in queued.pending
            )
        ]
        if not waiting:
            return 0.0
        return max(0.0, (self.clock.now() - min(waiting)).total_seconds())

    def health(self) -> str | None:
        """For ``daemon.add_health_check``: trouble delivering on some channel, or None."""
        troubles = []
        for name, error in self._errors.items():
            waiting = sum(1 for q in self._queue.values() if name in q.pending)
            if waiting:
                troubles.append(
                    f"{waiting} notification(s) undelivered on {self._label(name)}: {error}"
                )
        return "; ".join(troubles) or None

    def channels_for(self, level: Level) -> list[str]:
        """What the channels that take ``level`` are called (for a command's summary)."""
        return [c.label for c in self._channels.values() if c.wants(level)]

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

    # ------------------------------------------------------------------ accepting events

    async def send(self, event: Event) -> str | None:
        """Report ``event``; returns its idempotency key if a message was queued."""
        level = event.effective_level
        if not self._is_repeat(event):
            getattr(log, _LOG_METHOD[level])(
                event.subject, kind=event.kind.value, key=event.key or "-", severity=level.value
            )
            self._tell_listeners(event)
        if self._store is None or not self.channels_for(level):
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
        queued = Queued(
            item=item,
            deliveries={
                name: Delivery(not_before=not_before)
                for name, channel in self._channels.items()
                if channel.wants(item.level)
            },
        )
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
        moments = [d.not_before for q in self._queue.values() for d in q.pending.values()]
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

    def _due(self, now: datetime) -> bool:
        return any(d.not_before <= now for q in self._queue.values() for d in q.pending.values())

    async def _deliver_due(self, now: datetime) -> None:
        assert self._store is not None
        async with self._delivering:
            self._settle_resolutions(now)
            if not self._due(now):
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
        """Take in what another process sharing the directory queued, delivered or sent.

        Called with the delivery lock held: every change is written before the lock
        is let go, so the files are the truth (a channel another process delivered
        on is marked there, not here).
        """
        assert self._store is not None
        for key, record in self._store.load_ledger().sent.items():
            self._ledger.sent.setdefault(key, record)
        self._queue = {q.item.idempotency_key: q for q in self._store.load_queue()}

    def _drop_stale(self, now: datetime) -> None:
        """Queued messages already sent, too old, or left only for channels that are
        no longer configured."""
        assert self._store is not None
        max_age = timedelta(hours=self.settings.max_queue_age_hours)
        for key, queued in list(self._queue.items()):
            if key in self._ledger.sent:
                del self._queue[key]
                self._store.remove(key)
                continue
            if now - queued.item.accepted_at > max_age:
                for name, delivery in queued.pending.items():
                    log.error(
                        "notification dropped after failing too long",
                        subject=queued.item.event.subject,
                        channel=self._label(name),
                        queued_since=queued.item.accepted_at.isoformat(),
                        last_error=delivery.last_error or "-",
                    )
                    self._count(name, queued.item.level, "dropped")
                del self._queue[key]
                self._store.remove(key)
                continue
            gone = [name for name in queued.pending if name not in self._channels]
            if not gone:
                continue
            log.warning(
                "notification no longer has the channel it was queued for; dropped there",
                subject=queued.item.event.subject,
                channels=len(gone),
            )
            for name in gone:
                del queued.deliveries[name]
            if queued.pending:
                self._store.update(queued)
            else:
                self._finish([queued])

    async def _deliver_due_locked(self, now: datetime) -> None:
        assert self._store is not None
        self._settle_resolutions(now)
        self._drop_stale(now)
        for channel in self._channels.values():
            await self._deliver_channel(channel, now)

    async def _deliver_channel(self, channel: Channel, now: datetime) -> None:
        """What is due on ``channel``; stops at its first failure (the others go on)."""
        name = channel.name
        waiting = sorted(
            (q for q in self._queue.values() if name in q.pending),
            key=lambda q: q.item.accepted_at,
        )
        if not any(q.deliveries[name].not_before <= now for q in waiting):
            return
        # A message already handed to the channel (perhaps delivered before a crash or
        # a lost reply) goes again exactly as composed then: same events, key and date.
        attempted: dict[str, list[Queued]] = {}
        for queued in waiting:
            delivery = queued.deliveries[name]
            if delivery.message_key is not None and delivery.not_before <= now:
                attempted.setdefault(delivery.message_key, []).append(queued)
        for parts in attempted.values():
            if not await self._deliver(channel, parts, parts[0].item.level, now):
                return
        # Once something is due, everything that arrived with it goes along.
        horizon = now + timedelta(seconds=self.settings.digest_window_seconds)
        batch = [
            q
            for q in waiting
            if name in q.pending
            and q.deliveries[name].not_before <= horizon
            and q.deliveries[name].message_key is None
        ]
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
                if not await self._deliver(channel, parts, level, now):
                    return

    def _compose(self, name: str, parts: Sequence[Queued], now: datetime) -> tuple[str, datetime]:
        """The key (an email's Message-ID) and date of the message carrying ``parts`` on
        channel ``name``: those recorded at its first attempt, or new ones, written to
        the queue files before anything is sent (delivery is at-least-once; a repeat
        must be recognisable as one)."""
        first = parts[0].deliveries[name]
        if first.message_key is not None and first.message_date is not None:
            return first.message_key, first.message_date
        assert self._store is not None
        if len(parts) == 1:
            message_key = parts[0].item.idempotency_key
        else:
            message_key = hashlib.sha256(
                ",".join(sorted(q.item.idempotency_key for q in parts)).encode()
            ).hexdigest()[:32]
        for queued in parts:
            delivery = queued.deliveries[name]
            delivery.message_key, delivery.message_date = message_key, now
            self._store.update(queued)
        return message_key, now

    def _label(self, name: str) -> str:
        channel = self._channels.get(name)
        return channel.label if channel is not None else "a channel no longer configured"

    def _count(self, name: str, level: Level, outcome: str) -> None:
        counter = self._emails_total if name == EMAIL else self._apprise_total
        counter.labels(level.value, outcome).inc()

    async def _deliver(
        self, channel: Channel, parts: Sequence[Queued], level: Level, now: datetime
    ) -> bool:
        assert self._store is not None
        name = channel.name
        message_key, date = self._compose(name, parts, now)
        try:
            await channel.deliver([q.item for q in parts], level, message_key, date)
        except DeliveryFailed as error:
            delay = self._backoffs[name].next_delay()
            self._errors[name] = str(error)
            self._count(name, level, "failed")
            retry_at = now + timedelta(seconds=delay)
            for queued in self._queue.values():
                delivery = queued.pending.get(name)
                if delivery is None:
                    continue
                if queued in parts:
                    delivery.attempts += 1
                    delivery.last_error = str(error)
                delivery.not_before = max(delivery.not_before, retry_at)
                self._store.update(queued)
            log.warning(
                f"{channel.kind} message not delivered; kept in the queue",
                channel=channel.label,
                error=str(error),
                retry_in=f"{delay:.0f}s",
                queued=sum(1 for q in self._queue.values() if name in q.pending),
            )
            return False
        self._backoffs[name].reset()
        self._errors.pop(name, None)
        self._count(name, level, "sent")
        delivered_at = self.clock.now()
        for queued in parts:
            queued.deliveries[name].delivered_at = delivered_at
        finished = [q for q in parts if not q.pending]
        for queued in parts:
            if queued not in finished:
                self._store.update(queued)  # still waiting for another channel
        self._finish(finished)
        return True

    def _finish(self, finished: Sequence[Queued]) -> None:
        """Record messages every channel took as sent and take them off the queue."""
        assert self._store is not None
        if not finished:
            return
        sent_at = self.clock.now().isoformat()
        for queued in finished:
            item = queued.item
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
        for queued in finished:
            self._queue.pop(queued.item.idempotency_key, None)
            self._store.remove(queued.item.idempotency_key)


class LedgerMirrorLike(Protocol):
    """What the notifier needs from the MQTT mirror (see :mod:`gridmate.notify.mirror`)."""

    async def close(self) -> None: ...
    def publish_sent(self, key: str, record: SentRecord) -> None: ...
    def publish_condition(self, cid: str, state: ConditionState) -> None: ...
    def forget_sent(self, key: str) -> None: ...
    def forget_condition(self, cid: str) -> None: ...
