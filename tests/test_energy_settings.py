"""Energy configuration errors name their keys; the plan command prints a day."""

from __future__ import annotations

from datetime import date

import pytest

from gridmate.cli import main
from gridmate.energy.adapters.gateway import app_from_raw
from gridmate.energy.settings import EnergySettings
from gridmate.runtime.settings import ConfigError, load_settings
from gridmate.sim.house import raw_from_app


def load(tmp_path, text: str) -> EnergySettings:
    path = tmp_path / "energy.toml"
    path.write_text(text)
    return load_settings(EnergySettings, path)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[reserve]\npeak_reserve_percent = 90\n", "reserve.peak_reserve_percent", "0-80"),
        ('[tariff]\npreset = "edison"\n', "tariff.preset", "unknown preset"),
        (
            '[tariff]\npreset = "original"\n[[tariff.schedules]]\neffective_from = 2027-01-01\n'
            '[[tariff.schedules.seasons]]\nname = "all"\nstart = "01-01"\nend = "12-31"\n'
            '[[tariff.schedules.seasons.windows]]\nperiod = "peak"\nstart = "17:00"\n'
            'end = "07:00"\n',
            "tariff.schedules.0.seasons.0.windows.0.end",
            "wraps = true",
        ),
        (
            '[tariff]\npreset = "original"\n[[tariff.schedules]]\neffective_from = 2027-01-01\n'
            '[[tariff.schedules.seasons]]\nname = "most"\nstart = "01-01"\nend = "11-30"\n',
            "tariff.schedules.0.seasons",
            "12-01",
        ),
        (
            '[[thermostats]]\nid = "a"\nkind = "honeywell"\n',
            "thermostats.0.device_id",
            "location_id",
        ),
        ('[weather]\nuser_agent = "curl"\n', "weather.user_agent", "contact"),
        ("[honeywell]\npoll_seconds = 30\n", "honeywell.poll_seconds", "120"),
        (
            "[tariff.prices.sumer]\npeak = 0.42\n",
            "tariff.prices.sumer",
            "seasons: summer, winter",
        ),
        ("[tariff.prices.summer]\npeek = 0.42\n", "tariff.prices.summer.peek", "unknown period"),
        (
            "[tariff.prices.summer]\nsuper_off_peak = 0.05\n",
            "tariff.prices.summer.super_off_peak",
            "has no super_off_peak hours; it has peak, off_peak",
        ),
        ('[tariff.prices.summer]\npeak = "a lot"\n', "tariff.prices.summer.peak", "number"),
        # The Home Assistant device's topics are checked as the vehicles hub's are.
        ('[ha_device]\nbase_topic = "home/#"\n', "ha_device.base_topic", "no '#'"),
        ('[ha_device]\nnode_name = "my hub"\n', "ha_device.node_name", "letters, digits"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, key, words):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    (problem,) = info.value.problems
    assert problem.startswith(f"{key}:"), problem
    assert words in problem


def test_gateway_soc_is_converted_to_the_app_scale():
    assert app_from_raw(5.0) == 0.0
    assert app_from_raw(100.0) == 100.0
    for app in (0.0, 20.0, 57.3, 80.0, 100.0):
        assert app_from_raw(raw_from_app(app)) == pytest.approx(app)
    # A raw 24 % is 20 % on the app's scale: below a 20.5 % reserve, not above it.
    assert app_from_raw(24.0) == pytest.approx(20.0)


def test_plan_command_prints_the_day(tmp_path, capsys):
    path = tmp_path / "energy.toml"
    path.write_text('[tariff]\npreset = "aps-tou-4pm-7pm"\n')
    assert main(["energy", "plan", "-c", str(path), "--date", "2026-07-01",
                 "--forecast-high", "101"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "16:00-19:00  peak" in out
    assert "15:30  save the baseline; precool" in out
    assert "19:00  restore" in out
    assert main(["energy", "plan", "-c", str(path), "--date", "2026-07-03"]) == 0
    holiday = capsys.readouterr().out
    assert "holiday: independence day (observed)" in holiday
    assert "no controlled period today" in holiday


def test_prices_on_a_preset_keep_its_schedule(tmp_path, capsys):
    path = tmp_path / "energy.toml"
    path.write_text(
        '[tariff]\npreset = "aps-tou-4pm-7pm"\n'
        "[tariff.prices.summer]\npeak = 0.32\noff_peak = 0.12\n"
        "[tariff.prices.winter]\npeak = 0.28\noff_peak = 0.11\nsuper_off_peak = 0.04\n"
    )
    settings = load_settings(EnergySettings, path)
    schedule = settings.tariff.build()
    summer = schedule.day_plan(date(2026, 7, 1))
    assert [(s.period, s.price_per_kwh) for s in summer.segments] == [
        ("off_peak", 0.12),
        ("peak", 0.32),
        ("off_peak", 0.12),
    ]
    winter = schedule.day_plan(date(2026, 1, 14))
    assert {s.period: s.price_per_kwh for s in winter.segments} == {
        "off_peak": 0.11,
        "super_off_peak": 0.04,
        "peak": 0.28,
    }
    # A holiday is off-peak all day and priced as such.
    holiday = schedule.day_plan(date(2026, 7, 3))
    assert [(s.period, s.price_per_kwh) for s in holiday.segments] == [("off_peak", 0.12)]
    assert main(["energy", "plan", "-c", str(path), "--date", "2026-07-01"]) == 0
    assert "16:00-19:00  peak            summer peak  $0.3200/kWh" in capsys.readouterr().out


def test_a_seasons_own_prices_win_over_the_price_table():
    settings = EnergySettings.model_validate(
        {
            "tariff": {
                "preset": "original",
                "prices": {"summer": {"peak": 0.40, "off_peak": 0.10}},
                "schedules": [
                    {
                        "effective_from": "2027-01-01",
                        "seasons": [
                            {
                                "name": "summer",
                                "start": "01-01",
                                "end": "12-31",
                                "windows": [{"period": "peak", "start": "16:00", "end": "19:00"}],
                                "prices": {"peak": 0.50},
                            }
                        ],
                    }
                ],
            }
        }
    )
    schedule = settings.tariff.build()
    before = {s.period: s.price_per_kwh for s in schedule.day_plan(date(2026, 7, 1)).segments}
    after = {s.period: s.price_per_kwh for s in schedule.day_plan(date(2027, 7, 1)).segments}
    assert before == {"off_peak": 0.10, "peak": 0.40}
    assert after == {"off_peak": 0.10, "peak": 0.50}


def test_configured_prices_replace_a_presets_published_prices(tmp_path):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    settings = load(
        tmp_path,
        '[tariff]\npreset = "srp-tou"\n[tariff.prices."summer peak"]\npeak = 0.30\n',
    )
    schedule = settings.tariff.build()
    phoenix = ZoneInfo("America/Phoenix")
    assert schedule.segment_at(datetime(2026, 7, 15, 15, tzinfo=phoenix)).price_per_kwh == 0.30
    # The preset's other published prices stay.
    assert schedule.segment_at(datetime(2026, 7, 15, 22, tzinfo=phoenix)).price_per_kwh == 0.0931


def test_prices_written_in_a_schedule_still_win_over_tariff_prices(tmp_path):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    settings = load(
        tmp_path,
        '[tariff]\npreset = "original"\n[tariff.prices.all]\npeak = 0.10\n'
        "[[tariff.schedules]]\neffective_from = 2027-01-01\n"
        '[[tariff.schedules.seasons]]\nname = "all"\nstart = "01-01"\nend = "12-31"\n'
        "prices = { peak = 0.55 }\n"
        '[[tariff.schedules.seasons.windows]]\nperiod = "peak"\nstart = "17:00"\n'
        'end = "20:00"\n',
    )
    schedule = settings.tariff.build()
    when = datetime(2027, 3, 3, 18, tzinfo=ZoneInfo("America/Phoenix"))
    assert schedule.segment_at(when).price_per_kwh == 0.55
