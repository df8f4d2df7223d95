"""The sent-ledger mirrored as retained MQTT messages.

Two nodes in active/passive failover share no disk but do share the MQTT
broker. Each delivered message is published retained at
``<prefix>/sent/<idempotency key>`` and each open condition at
``<prefix>/condition/<id hash>``; a node that starts (or takes over) reads
them all before it sends anything, so it neither repeats what the other node
delivered nor reports a condition the other node already reported. Records
past the ledger retention are deleted by publishing an empty retained payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import aiomqtt

from gridmate.notify.store import ConditionState, Ledger, SentRecord
from gridmate.runtime.backoff import Backoff, reconnecting
from gridmate.runtime.logs import get_logger
from gridmate.runtime.mqtt import mqtt_client
from gridmate.runtime.settings import MqttSettings

log = get_logger("notify.mirror")


def _condition_topic_id(cid: str) -> str:
    return hashlib.sha256(cid.encode()).hexdigest()[:24]


class LedgerMirror:
    def __init__(
        self,
        settings: MqttSettings,
        prefix: str,
        *,
        on_sent: Callable[[str, SentRecord], None],
        on_condition: Callable[[str, ConditionState], None],
        local: Callable[[], Ledger],
    ) -> None:
        self.settings = settings
        self.prefix = prefix
        self._on_sent = on_sent
        self._on_condition = on_condition
        self._local = local
        self._outbox: dict[str, bytes] = {}
        """Topic → payload not yet confirmed by the broker (last write per topic wins)."""
        self._outbox_ready = asyncio.Event()
        self._synced = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._remote_topics: set[str] = set()

    # -- interface used by the notifier

    async def start(self) -> None:
        self._task = asyncio.create_task(
            reconnecting(
                self._session,
                peer=f"MQTT broker {self.settings.host}:{self.settings.port}",
                stop=self._stop,
                backoff=Backoff(initial=1.0, cap=60.0),
                retry_on=(aiomqtt.MqttError, OSError),
            ),
            name="notify.mirror",
        )

    async def wait_synced(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._synced.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        # Give pending publishes a moment to reach the broker before leaving.
        for _ in range(20):
            if not self._outbox or not self._synced.is_set():
                break
            await asyncio.sleep(0.05)
        self._stop.set()
        self._outbox_ready.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5.0)

    def publish_sent(self, key: str, record: SentRecord) -> None:
        self._queue(f"{self.prefix}/sent/{key}", json.dumps(asdict(record)).encode())

    def publish_condition(self, cid: str, state: ConditionState) -> None:
        payload = {"id": cid, **asdict(state)}
        self._queue(
            f"{self.prefix}/condition/{_condition_topic_id(cid)}", json.dumps(payload).encode()
        )

    def forget_sent(self, key: str) -> None:
        self._queue(f"{self.prefix}/sent/{key}", b"")

    def forget_condition(self, cid: str) -> None:
        self._queue(f"{self.prefix}/condition/{_condition_topic_id(cid)}", b"")

    # -- internals

    def _queue(self, topic: str, payload: bytes) -> None:
        self._outbox[topic] = payload
        self._outbox_ready.set()

    def _client(self) -> aiomqtt.Client:
        # No default id: the same client id on both failover nodes would evict each other.
        return mqtt_client(self.settings, identifier=None)

    def _handle(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            data: dict[str, Any] = json.loads(payload)
            if topic.startswith(f"{self.prefix}/sent/"):
                self._on_sent(topic.rsplit("/", 1)[1], SentRecord(**data))
            elif topic.startswith(f"{self.prefix}/condition/"):
                cid = data.pop("id")
                self._on_condition(cid, ConditionState(**data))
        except (ValueError, TypeError, KeyError) as error:
            log.warning("ignored unreadable ledger record", topic=topic, error=str(error))

    async def _session(self, backoff: Backoff) -> None:
        async with self._client() as client:
            sync_topic = f"{self.prefix}/sync/{uuid.uuid4().hex}"
            await client.subscribe(f"{self.prefix}/#", qos=1)
            # Retained messages come before anything published after the subscription,
            # so seeing our own marker come back means the broker's ledger has been read.
            await client.publish(sync_topic, b"sync", qos=1)
            reader = asyncio.create_task(self._read(client, sync_topic, backoff))
            try:
                while True:
                    while self._outbox:
                        topic, payload = next(iter(self._outbox.items()))
                        await client.publish(topic, payload, qos=1, retain=True)
                        if self._outbox.get(topic) == payload:
                            del self._outbox[topic]
                        self._remote_topics.add(topic)
                    if self._stop.is_set():
                        return
                    self._outbox_ready.clear()
                    waiter = asyncio.create_task(self._outbox_ready.wait())
                    await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if reader.done():
                        reader.result()  # the connection failed: reconnect
                        return
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self, client: aiomqtt.Client, sync_topic: str, backoff: Backoff) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic == sync_topic:
                if not self._synced.is_set():
                    log.info("notification ledger mirror in sync", broker=self.settings.host)
                self._synced.set()
                backoff.reset()
                self._republish_local()
            elif "/sync/" not in topic:
                self._remote_topics.add(topic)
                self._handle(topic, payload)

    def _republish_local(self) -> None:
        """After (re)connecting, publish what the broker does not have yet."""
        ledger = self._local()
        for key, record in ledger.sent.items():
            if f"{self.prefix}/sent/{key}" not in self._remote_topics:
                self.publish_sent(key, record)
        for cid, state in ledger.conditions.items():
            topic = f"{self.prefix}/condition/{_condition_topic_id(cid)}"
            if topic not in self._remote_topics:
                self.publish_condition(cid, state)
