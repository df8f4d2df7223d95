"""The shared Home Assistant link and command validation, against Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging

import aiomqtt
import pytest

from gridmate.homeassistant.commands import (
    CommandRejected,
    button,
    number,
    parse_command,
    switch,
)
from gridmate.homeassistant.discovery import device_document, homeassistant_status
from gridmate.homeassistant.link import HomeAssistantLink
from gridmate.runtime.logs import configure_logging
from gridmate.runtime.settings import MqttSettings


class _Topics:
    def __init__(self, prefix: str) -> None:
        self.status = f"{prefix}/status"
        self.homeassistant_status = homeassistant_status(f"{prefix}-ha")


def test_switch_button_and_number_payloads_are_validated():
    assert parse_command(switch("dry_run"), b"ON") is True
    assert parse_command(switch("dry_run"), b"OFF") is False
    assert parse_command(button("skip"), b"PRESS") is None
    reserve = number(
        "peak_reserve", 0, 100, check=lambda v: "81-99 % is refused" if 80 < v < 100 else None
    )
    assert parse_command(reserve, b"40") == 40.0
    assert parse_command(reserve, b"100") == 100.0
    for payload, reason in (
        (b"on", "neither ON nor OFF"),
        (b"90", "81-99 % is refused"),
        (b"101", "outside 0..100"),
        (b"4.5", "not a multiple of 1"),
        (b"nan", "outside"),
        (b"\xff", "not UTF-8"),
        (b"x" * 65, "longer than 64"),
    ):
        spec = switch("dry_run") if payload == b"on" else reserve
        with pytest.raises(CommandRejected, match=reason):
            parse_command(spec, payload)
    with pytest.raises(CommandRejected, match="is not PRESS"):
        parse_command(button("skip"), b"ON")


def test_device_document_shares_origin_availability_and_qos():
    document = device_document(
        {"ids": ["x"], "name": "X"}, {"a": {"p": "sensor"}}, availability="b/status"
    )
    assert document["avty"] == [{"t": "b/status"}]
    assert document["o"]["name"] == "gridmate"
    assert document["qos"] == 1
    assert document["cmps"] == {"a": {"p": "sensor"}}
    # No support URL unless one is configured: gridmate names no home page of its own.
    assert "url" not in document["o"]
    linked = device_document(
        {"ids": ["x"], "name": "X"},
        {},
        availability="b/status",
        support_url="https://git.example/gridmate/issues",
    )
    assert linked["o"]["url"] == "https://git.example/gridmate/issues"


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    try:
        yield stream
    finally:
        logging.getLogger().handlers.clear()


async def test_live_commands_arrive_retained_ones_are_ignored_and_the_will_says_offline(
    mqtt_broker, log_stream
):
    prefix = mqtt_broker.topic_prefix()
    topics = _Topics(prefix)
    command_topic = f"{prefix}/set/dry_run"
    settings = MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port)
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as other:
        # A command someone left retained before gridmate connected.
        await other.publish(command_topic, b"ON", qos=1, retain=True)
        received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        births: asyncio.Queue[None] = asyncio.Queue()
        stop = asyncio.Event()
        link = HomeAssistantLink(
            settings,
            topics,
            stop=stop,
            client_id=f"{prefix}-link",
            command_topics=[command_topic],
            on_command=lambda topic, payload: received.put_nowait((topic, payload)),
            on_homeassistant_online=lambda: births.put_nowait(None),
        )
        await other.subscribe(topics.status, qos=1)
        task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.connected.wait(), 10)
            await other.publish(command_topic, b"OFF", qos=1)
            assert await asyncio.wait_for(received.get(), 10) == (command_topic, b"OFF")
            assert received.empty()  # the retained ON never reached the component
            assert "ignored a retained command" in log_stream.getvalue()
            await other.publish(topics.homeassistant_status, b"online", qos=1)
            await asyncio.wait_for(births.get(), 10)
            stop.set()
            await asyncio.wait_for(task, 10)
            async with asyncio.timeout(10):
                async for message in other.messages:
                    if message.topic.matches(topics.status) and message.payload == b"offline":
                        break
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await other.publish(command_topic, b"", qos=1, retain=True)
            await other.publish(topics.status, b"", qos=1, retain=True)
