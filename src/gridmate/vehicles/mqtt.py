"""The MQTT side of the vehicles hub: one connection to Home Assistant's broker.

:class:`MqttLink` keeps the connection up (reconnecting with the runtime backoff),
announces gridmate's availability (``online``, with ``offline`` as last will), tells
the hub when Home Assistant comes online, publishes batches at QoS 1 and returns only
once the broker acknowledged every message, and reads the retained vehicle states
back when the hub needs to restore its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiomqtt

from gridmate.runtime.backoff import Backoff, reconnecting, tcp_answers
from gridmate.runtime.logs import get_logger
from gridmate.runtime.mqtt import mqtt_client
from gridmate.runtime.settings import MqttSettings
from gridmate.vehicles.homeassistant import OFFLINE, ONLINE, Topics
from gridmate.vehicles.publisher import Message

log = get_logger("vehicles.mqtt")
# aiomqtt warns about every publish beyond ten in flight; batches are that by design.
_client_log = logging.getLogger("gridmate.vehicles.mqtt.client")
_client_log.setLevel(logging.ERROR)


class MqttUnavailable(Exception):
    """The broker is not connected, or the connection was lost before the acknowledgements."""


def default_client_id(node: str) -> str:
    # Several instances may share a consumer group; each needs its own MQTT client id.
    return f"{node}-vehicles-{socket.gethostname()[:20]}-{os.getpid()}"


class MqttLink:
    def __init__(
        self,
        settings: MqttSettings,
        topics: Topics,
        *,
        stop: asyncio.Event,
        on_homeassistant_online: Callable[[], None] | None = None,
        on_reconnected: Callable[[], None] | None = None,
        publish_timeout: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.stop = stop
        self.on_homeassistant_online = on_homeassistant_online
        self.on_reconnected = on_reconnected
        self._sessions = 0
        self.publish_timeout = publish_timeout
        self.backoff = backoff or Backoff()
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Future[None] | None = None
        self._sync_waiters: dict[str, asyncio.Future[None]] = {}
        self._sync_sink: dict[str, bytes] | None = None

    def _make_client(self) -> aiomqtt.Client:
        return mqtt_client(
            self.settings,
            identifier=default_client_id(self.topics.node),
            will=aiomqtt.Will(self.topics.status, OFFLINE, qos=1, retain=True),
            max_inflight_messages=1000,
            logger=_client_log,
        )

    async def run(self) -> None:
        """Keep the connection up until ``stop``; then publish ``offline`` and leave."""
        await reconnecting(
            self._session,
            peer=f"MQTT broker {self.settings.host}:{self.settings.port}",
            stop=self.stop,
            backoff=self.backoff,
            retry_on=(aiomqtt.MqttError, OSError, TimeoutError),
            on_failure=self._failed,
            # After a long outage the backoff may be at a minute: reconnect as soon as
            # the broker answers again instead.
            probe=lambda: tcp_answers(self.settings.host, self.settings.port),
        )

    def _failed(self, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}"

    async def _session(self, backoff: Backoff) -> None:
        client = self._make_client()
        async with client:
            await client.subscribe(self.topics.homeassistant_status, qos=1)
            await client.publish(self.topics.status, ONLINE, qos=1, retain=True)
            self._client = client
            self._lost = asyncio.get_running_loop().create_future()
            self.connected.set()
            self.last_error = None
            backoff.reset()
            self._sessions += 1
            if self._sessions > 1 and self.on_reconnected is not None:
                # The broker may have restarted without its retained messages.
                self.on_reconnected()
            log.info(
                "connected to the MQTT broker", broker=f"{self.settings.host}:{self.settings.port}"
            )
            listener = asyncio.create_task(self._listen(client))
            stopping = asyncio.create_task(self.stop.wait())
            try:
                await asyncio.wait({listener, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if listener.done():
                    listener.result()  # raises the MqttError that ended the session
                    raise aiomqtt.MqttError("the message stream ended")
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(self.topics.status, OFFLINE, qos=1, retain=True, timeout=5)
            finally:
                self._disconnected()
                for task in (listener, stopping):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task

    def _disconnected(self) -> None:
        self.connected.clear()
        self._client = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        for waiter in self._sync_waiters.values():
            if not waiter.done():
                waiter.set_exception(MqttUnavailable("connection lost"))
        self._sync_waiters.clear()

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if topic == self.topics.homeassistant_status:
                if message.payload in (b"online", "online") and self.on_homeassistant_online:
                    log.info("Home Assistant came online; discovery follows")
                    self.on_homeassistant_online()
                continue
            waiter = self._sync_waiters.get(topic)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(None)
                continue
            if self._sync_sink is not None and isinstance(message.payload, bytes | bytearray):
                self._sync_sink[topic] = bytes(message.payload)

    async def announce_online(self) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.topics.status, ONLINE, qos=1, retain=True)

    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Publish at QoS 1 and wait for every PUBACK; MqttUnavailable otherwise."""
        client, lost = self._client, self._lost
        if client is None or lost is None or lost.done():
            raise MqttUnavailable("not connected")
        if not messages:
            return
        publishes: asyncio.Future[list[None]] = asyncio.gather(
            *(
                client.publish(m.topic, m.payload, qos=1, retain=m.retain, timeout=math.inf)
                for m in messages
            )
        )
        try:
            waits: set[asyncio.Future[Any]] = {publishes, lost}
            done, _ = await asyncio.wait(
                waits, timeout=self.publish_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            publishes.cancel()
            raise
        if publishes not in done:
            publishes.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await publishes
            raise MqttUnavailable(
                "connection lost" if lost.done() else "acknowledgements timed out"
            )
        try:
            publishes.result()
        except aiomqtt.MqttError as error:
            raise MqttUnavailable(str(error)) from error

    async def retained_states(self, wait: float = 30.0) -> dict[str, bytes]:
        """Every retained vehicle state document on the broker, by topic.

        Retained messages arrive right after the subscription is acknowledged; a marker
        published afterwards on a matching topic arrives after them and ends the read.
        """
        client = self._client
        if client is None:
            raise MqttUnavailable("not connected")
        marker = f"{self.topics.base}/_sync-{uuid.uuid4().hex[:12]}/state"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sync_waiters[marker] = waiter
        sink: dict[str, bytes] = {}
        self._sync_sink = sink
        try:
            await client.subscribe(self.topics.all_states, qos=1)
            await client.publish(marker, b"", qos=1, retain=False)
            await asyncio.wait_for(waiter, wait)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(self.topics.all_states)
        except (aiomqtt.MqttError, TimeoutError) as error:
            raise MqttUnavailable(f"reading retained states: {error}") from error
        finally:
            self._sync_sink = None
            self._sync_waiters.pop(marker, None)
        return sink
