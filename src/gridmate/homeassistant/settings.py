"""Settings every component that shows devices in Home Assistant shares."""

from __future__ import annotations

from pydantic import Field

from gridmate.runtime.settings import Section

_URL = r"^https?://"


class DeviceLinks(Section):
    """Links Home Assistant shows with gridmate's devices; none unless configured."""

    configuration_url: str | None = Field(
        None,
        pattern=_URL,
        description="Shown as the devices' 'Visit' link in Home Assistant (e.g. gridmate's "
        "Grafana or TeslaMate).",
    )
    support_url: str | None = Field(
        None,
        pattern=_URL,
        description="A page where the people using this gridmate get help (an issue tracker, "
        "say): the support URL of the origin in every discovery document.",
    )
