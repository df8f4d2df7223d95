"""Settings of the report component (``GRIDMATE_REPORT_...``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gridmate.homeassistant.settings import NotificationDeviceSettings
from gridmate.notify import NotifySettings
from gridmate.runtime.settings import ComponentSettings, TimeZoneName


class ReportSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDMATE_REPORT_")

    energy_state_directory: Path | None = Field(
        None,
        description="State directory of the energy service, whose journal the report reads "
        "(<dir>/energy/journal/YYYY-MM-DD.jsonl); default: this component's state_directory.",
    )
    time_zone: TimeZoneName | None = Field(
        None,
        description="The site's time zone (IANA name), which decides where a day begins and "
        "ends. Default: the zone the energy service recorded with its journal, else the "
        "system's.",
    )
    retention_days: int = Field(
        400, ge=1, description="Metrics files older than this many days are removed."
    )
    recovery_target_percent: float = Field(
        50.0,
        ge=0,
        le=100,
        description="Battery charge expected at the end of the day (midnight); below it a "
        "warning is sent. Set it to what the battery reliably reaches by then: with grid "
        "charging after peak the restored reserve, with solar-only recharging lower.",
    )
    currency: str = Field("USD", description="Currency of the tariff's prices in the journal.")
    chart: bool = Field(True, description="Attach the day's chart to the email.")
    notify: NotifySettings = NotifySettings()
    ha_device: NotificationDeviceSettings = Field(
        NotificationDeviceSettings(),
        description='The report as a Home Assistant device ("gridmate report") whose '
        "Notifications event entity fires with every notification the report sends.",
    )

    @property
    def journal_state_directory(self) -> Path:
        return self.energy_state_directory or self.state_directory

    @property
    def metrics_directory(self) -> Path:
        return self.state_directory / "metrics"
