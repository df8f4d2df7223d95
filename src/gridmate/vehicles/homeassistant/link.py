"""The vehicles hub's connection to Home Assistant's broker.

The shared :class:`~gridmate.homeassistant.link.HomeAssistantLink` plus what only the
hub needs: reading the retained vehicle states back when it restores its state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

from gridmate.homeassistant.link import HomeAssistantLink, Message, MqttUnavailable
from gridmate.homeassistant.link import default_client_id as _client_id
from gridmate.runtime.backoff import Backoff
from gridmate.runtime.settings import MqttSettings
from gridmate.vehicles.homeassistant.discovery import Topics

__all__ = ["Message", "MqttLink", "MqttUnavailable", "default_client_id"]


def default_client_id(node: str) -> str:
    return _client_id(node, "vehicles")


class MqttLink(HomeAssistantLink):
    topics: Topics

    def __init__(
        self,
        settings: MqttSettings,
        topics: Topics,
        *,
        stop: asyncio.Event,
        on_homeassistant_online: Callable[[], None] | None = None,
        on_reconnected: Callable[[], None] | None = None,
        command_topics: Sequence[str] = (),
        on_command: Callable[[str, bytes], None] | None = None,
        publish_timeout: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(
            settings,
            topics,
            stop=stop,
            client_id=default_client_id(topics.node),
            on_homeassistant_online=on_homeassistant_online,
            on_reconnected=on_reconnected,
            command_topics=command_topics,
            on_command=on_command,
            publish_timeout=publish_timeout,
            backoff=backoff,
        )

    async def retained_states(self, wait: float = 30.0) -> dict[str, bytes]:
        """Every retained vehicle state document on the broker, by topic."""
        marker = f"{self.topics.base}/_sync-{uuid.uuid4().hex[:12]}/state"
        return await self.retained(self.topics.all_states, marker, wait)
