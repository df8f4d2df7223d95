"""Which node of a failover pair may write: its keepalived role and a lease on the broker.

keepalived decides which node is active, but it can be wrong in two ways that
would let both nodes write to the same Powerwall: a node goes on writing for a
moment after its own stop decision, and a network split makes both nodes
MASTER (split brain). :class:`WriteGate` is asked right before every write and
closes in both cases:

* the role: keepalived's notify script records each new state in a file
  before it starts or stops the service; anything but ``MASTER`` there means
  "do not write" from that instant on;
* the lease: each active node publishes a retained record of itself on the
  MQTT broker both nodes share (the notification ledger's, ``notify.mqtt``),
  renewed every few seconds and removed by the broker (last will) when the
  node's connection drops. Of the live records, the one acquired first holds
  the lease; a node that sees another node's live record is in a split brain:
  it reports it, and writes only if it holds the lease.

The lease holder also keeps the block's pre-peak baseline (reserve and mode
read before the peak) retained on the broker, so a node that takes over during
or just after the peak restores those settings instead of the configured
fallback.

The decision is the pure function :func:`lease_verdict`; the MQTT session is
at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import aiomqtt

from gridmate.energy.planner import Baseline, PeakMemory
from gridmate.runtime.backoff import Backoff, reconnecting
from gridmate.runtime.logs import get_logger
from gridmate.runtime.mqtt import mqtt_client
from gridmate.runtime.settings import MqttSettings

__all__ = ["LeaseRecord", "LeaseVerdict", "WriteGate", "WriterLease", "lease_verdict", "read_role"]

log = get_logger("energy.lease")


@dataclass(frozen=True)
class LeaseRecord:
    """One active node's claim, as published (retained) on the broker."""

    node: str
    token: str
    """Random per service start: a restarted node is a new claim."""
    acquired: float
    """Wall-clock seconds when this service start claimed the lease."""

    def order(self) -> tuple[float, str]:
        return (self.acquired, self.node)


@dataclass(frozen=True)
class LeaseVerdict:
    holds: bool
    """This node may write."""
    reason: str | None
    """Why not, in words; None when it holds."""
    others: tuple[str, ...] = ()
    """Other nodes with a live claim: more than one active node (split brain)."""


def lease_verdict(
    own: LeaseRecord,
    own_seen_at: float | None,
    others: Mapping[str, tuple[LeaseRecord, float]],
    now: float,
    ttl: float,
    *,
    synced: bool,
) -> LeaseVerdict:
    """Whether ``own`` holds the lease at ``now`` (all times from one monotonic clock).

    ``own_seen_at``: when the broker last echoed our own claim back (None: never);
    ``others``: other nodes' claims with when each was last received. A claim is
    live while it was received within ``ttl``. Of the live claims the earliest
    acquired holds the lease (node name breaks a tie), so both nodes of a split
    agree which of them writes.
    """
    live = {
        node: record
        for node, (record, seen) in others.items()
        if node != own.node and now - seen <= ttl
    }
    names = tuple(sorted(live))
    if not synced:
        return LeaseVerdict(False, "not in touch with the lease broker", names)
    if own_seen_at is None or now - own_seen_at > ttl:
        return LeaseVerdict(False, "own lease not confirmed by the broker lately", names)
    earlier = [r.node for r in live.values() if r.order() < own.order()]
    if earlier:
        return LeaseVerdict(
            False, f"{', '.join(sorted(earlier))} is active too and holds the lease", names
        )
    return LeaseVerdict(True, None, names)


Role = Literal["MASTER", "BACKUP", "FAULT", "STOP"]


def read_role(path: Path) -> str | None:
    """The keepalived state the notify script recorded last, or None when unreadable."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class WriterLease:
    """The MQTT side of the lease: publish our claim, follow everyone's."""

    def __init__(
        self,
        settings: MqttSettings,
        topic_prefix: str,
        node: str,
        *,
        ttl: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.prefix = f"{topic_prefix}/energy/writer"
        self.ttl = ttl
        self.own = LeaseRecord(node, secrets.token_hex(8), time.time())
        self.own_seen_at: float | None = None
        self.others: dict[str, tuple[LeaseRecord, float]] = {}
        self.synced = False
        self.carried: Baseline | None = None
        """The pre-peak baseline the lease holder last kept on the broker."""
        self._baseline_out: bytes | None = None
        self._on_change = on_change
        self._stop = asyncio.Event()
        self._confirmed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.own.node}"

    @property
    def baseline_topic(self) -> str:
        return f"{self.prefix.rsplit('/', 1)[0]}/baseline"

    def keep_baseline(self, baseline: Baseline) -> None:
        """Keep ``baseline`` on the broker for the other node (sent with the next renewal)."""
        raw = PeakMemory(baseline=baseline).to_json()["baseline"]
        self._baseline_out = json.dumps({**raw, "node": self.own.node}).encode()

    def verdict(self) -> LeaseVerdict:
        return lease_verdict(
            self.own, self.own_seen_at, self.others, time.monotonic(), self.ttl,
            synced=self.synced,
        )  # fmt: skip

    async def start(self) -> None:
        self._task = asyncio.create_task(
            reconnecting(
                self._session,
                peer=f"MQTT broker {self.settings.host}:{self.settings.port}",
                stop=self._stop,
                backoff=Backoff(initial=1.0, cap=10.0),
                retry_on=(aiomqtt.MqttError, OSError),
            ),
            name="energy.lease",
        )

    async def wait_decided(self, seconds: float) -> LeaseVerdict:
        """Wait up to ``seconds`` for the first confirmation of our claim."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._confirmed.wait(), seconds)
        return self.verdict()

    async def close(self) -> None:
        """Give the lease up: the claim is removed from the broker before we leave."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5.0)

    def _payload(self) -> bytes:
        return json.dumps(asdict(self.own)).encode()

    async def _session(self, backoff: Backoff) -> None:
        # The broker removes the claim when the connection drops without a goodbye
        # (a crash, a dead host): the last will is an empty retained message.
        will = aiomqtt.Will(self.topic, b"", qos=1, retain=True)
        # A dead connection is noticed (and the will published) within the lease time.
        keepalive = min(self.settings.keepalive, max(2, int(self.ttl / 3)))
        settings = self.settings.model_copy(update={"keepalive": keepalive})
        async with mqtt_client(settings, identifier=None, will=will) as client:
            sync_topic = f"{self.prefix}-sync/{self.own.token}"
            await client.subscribe(f"{self.prefix}/+", qos=1)
            await client.subscribe(self.baseline_topic, qos=1)
            await client.subscribe(sync_topic, qos=1)
            await client.publish(sync_topic, b"sync", qos=1)
            reader = asyncio.create_task(self._read(client, sync_topic, backoff))
            try:
                while not self._stop.is_set():
                    await client.publish(self.topic, self._payload(), qos=1, retain=True)
                    baseline = self._baseline_out
                    if baseline is not None and self.verdict().holds:
                        await client.publish(self.baseline_topic, baseline, qos=1, retain=True)
                        if self._baseline_out is baseline:
                            self._baseline_out = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self._stop.wait()), self.ttl / 3)
                    if reader.done():
                        reader.result()
                        return
                await client.publish(self.topic, b"", qos=1, retain=True)
            finally:
                self.synced = False
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                self._changed()

    async def _read(self, client: aiomqtt.Client, sync_topic: str, backoff: Backoff) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            now = time.monotonic()
            if topic == self.baseline_topic:
                self.carried = _baseline(payload)
            elif topic == sync_topic:
                # Retained claims arrive before our marker: everyone's claim is known now.
                self.synced = True
                backoff.reset()
            else:
                node = topic.rsplit("/", 1)[1]
                record = _record(payload)
                if node == self.own.node:
                    if record is not None and record.token == self.own.token:
                        self.own_seen_at = now
                        self._confirmed.set()
                elif record is None:
                    self.others.pop(node, None)
                else:
                    self.others[node] = (record, now)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _baseline(payload: bytes) -> Baseline | None:
    if not payload:
        return None
    try:
        return PeakMemory.from_json({"baseline": json.loads(payload)}).baseline
    except (ValueError, TypeError, KeyError):
        log.warning("ignored unreadable carried-over baseline")
        return None


def _record(payload: bytes) -> LeaseRecord | None:
    if not payload:
        return None
    try:
        data = json.loads(payload)
        return LeaseRecord(str(data["node"]), str(data["token"]), float(data["acquired"]))
    except (ValueError, TypeError, KeyError):
        log.warning("ignored unreadable lease record")
        return None


@dataclass
class WriteGate:
    """Asked right before every write: None to go ahead, or why not."""

    role_file: Path | None = None
    lease: WriterLease | None = None

    def refusal(self) -> str | None:
        if self.role_file is not None:
            role = read_role(self.role_file)
            if role != "MASTER":
                return f"this node is not the active one (keepalived: {role or 'unknown'})"
        if self.lease is not None:
            verdict = self.lease.verdict()
            if not verdict.holds:
                return verdict.reason
        return None
