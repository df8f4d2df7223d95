"""One connection to Home Assistant's broker, the same for every gridmate component.

:class:`HomeAssistantLink` keeps the connection up (reconnecting with the runtime
backoff), announces the component's availability (``online``, with ``offline`` as last
will), tells the component when Home Assistant comes online (its birth message, after
which discovery must be published again), publishes batches at QoS 1 and returns only
once the broker acknowledged every message, reads retained messages back, and hands
the commands that arrive on the component's command topics to it.

Commands are live messages only: a retained message on a command topic (left there
by a misconfigured client, or replayed by the broker on every reconnect) would
repeat an old command at every start, so it is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from gridmate.homeassistant.discovery import OFFLINE, ONLINE, LinkTopics
from gridmate.runtime.backoff import Backoff, reconnecting, tcp_answers
from gridmate.runtime.logs import get_logger
from gridmate.runtime.mqtt import mqtt_client
from gridmate.runtime.settings import MqttSettings

log = get_logger("homeassistant.link")
# aiomqtt warns about every publish beyond ten in flight; batches are that by design.
_client_log = logging.getLogger("gridmate.homeassistant.link.client")
_client_log.setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = True


class MqttUnavailable(Exception):
    """The broker is not connected, or the connection was lost before the acknowledgements."""


def default_client_id(node: str, component: str) -> str:
    # Several instances may run at once (a consumer group, a failover pair); each
    # needs its own MQTT client id.
    return f"{node}-{component}-{socket.gethostname()[:20]}-{os.getpid()}"


CommandHandler = Callable[[str, bytes], None]
"""Called with (topic, payload) for each live message on a command topic."""


class HomeAssistantLink:
    def __init__(
        self,
        settings: MqttSettings,
        topics: LinkTopics,
        *,
        stop: asyncio.Event,
        client_id: str,
        on_homeassistant_online: Callable[[], None] | None = None,
        on_reconnected: Callable[[], None] | None = None,
        command_topics: Sequence[str] = (),
        on_command: CommandHandler | None = None,
        publish_timeout: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.stop = stop
        self.client_id = client_id
        self.on_homeassistant_online = on_homeassistant_online
        self.on_reconnected = on_reconnected
        self.command_topics = frozenset(command_topics)
        self.on_command = on_command
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
            identifier=self.client_id,
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
            for topic in sorted(self.command_topics):
                await client.subscribe(topic, qos=1)
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
            if any(message.topic.matches(f) for f in self.command_topics):
                self._command(topic, message)
                continue
            waiter = self._sync_waiters.get(topic)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(None)
                continue
            if self._sync_sink is not None and isinstance(message.payload, bytes | bytearray):
                self._sync_sink[topic] = bytes(message.payload)

    def _command(self, topic: str, message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        if message.retain:
            log.warning(
                "ignored a retained command (commands must not be retained; clear it with an "
                "empty retained message)",
                topic=topic,
            )
            return
        if self.on_command is not None:
            self.on_command(topic, bytes(payload))

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

    async def retained(
        self, topic_filter: str, marker_topic: str, wait: float = 30.0
    ) -> dict[str, bytes]:
        """Every retained message on ``topic_filter``, by topic.

        Retained messages arrive right after the subscription is acknowledged; a marker
        published afterwards on ``marker_topic`` (which must match the filter) arrives
        after them and ends the read.
        """
        client = self._client
        if client is None:
            raise MqttUnavailable("not connected")
        marker = marker_topic
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sync_waiters[marker] = waiter
        sink: dict[str, bytes] = {}
        self._sync_sink = sink
        try:
            await client.subscribe(topic_filter, qos=1)
            await client.publish(marker, b"", qos=1, retain=False)
            await asyncio.wait_for(waiter, wait)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic_filter)
        except (aiomqtt.MqttError, TimeoutError) as error:
            raise MqttUnavailable(f"reading retained messages: {error}") from error
        finally:
            self._sync_sink = None
            self._sync_waiters.pop(marker, None)
        return sink
