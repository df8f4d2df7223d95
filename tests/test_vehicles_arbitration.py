"""The arbitration's decisions: how each source is judged, which one is chosen, and
which observation of a field wins. Pure functions, no services."""

from __future__ import annotations

from gridmate.vehicles.arbitration import (
    FLEET_TELEMETRY,
    NO_SOURCE,
    TESLA_API,
    TESLAMATE,
    Activity,
    Health,
    RankedArbiter,
    SourceBook,
    SourceFacts,
    Switch,
    Verdict,
    choose_source,
    describe_switch,
    field_accepts,
    judge_fallback,
    judge_source,
)
from gridmate.vehicles.sources.polling import poll_delay
from gridmate.vehicles.state import FieldValue

NOW = 1_800_000_000.0


def facts(heard_ago: float | None, activity: Activity = Activity.IDLE, **extra) -> SourceFacts:
    heard = None if heard_ago is None else NOW - heard_ago
    return SourceFacts(last_heard=heard, activity=activity, activity_at=heard, **extra)


def judge(name: str, f: SourceFacts | None, others=(), stale_after: float = 300.0) -> Verdict:
    return judge_source(name, f, now=NOW, stale_after=stale_after, others=others)


# ---------------------------------------------------------------- staleness by state


def test_silence_while_driving_or_charging_is_stale_after_the_limit():
    assert judge(TESLAMATE, facts(299, Activity.ACTIVE)).health is Health.FRESH
    verdict = judge(TESLAMATE, facts(301, Activity.ACTIVE))
    assert verdict.health is Health.STALE
    assert "5 minutes while the car is driving or charging" in verdict.reason


def test_silence_while_asleep_or_parked_is_normal_however_long():
    assert judge(TESLAMATE, facts(86_400, Activity.SLEEPING)).health is Health.QUIET
    assert judge(TESLAMATE, facts(86_400, Activity.IDLE)).health is Health.FRESH
    assert judge(TESLAMATE, facts(86_400, Activity.UNKNOWN)).health is Health.FRESH
    assert Health.QUIET.trusted and Health.FRESH.trusted


def test_never_heard_is_absent_and_not_trusted():
    assert judge(TESLAMATE, None).health is Health.ABSENT
    assert judge(TESLAMATE, facts(None)).health is Health.ABSENT
    assert not Health.ABSENT.trusted


def test_a_dead_link_is_stale_even_while_the_car_sleeps():
    verdict = judge(TESLAMATE, facts(10, Activity.SLEEPING, link_problem="broker gone"))
    assert verdict == Verdict(Health.STALE, "broker gone")


def test_unhealthy_teslamate_is_not_trusted_and_a_missing_flag_is_fine():
    assert judge(TESLAMATE, facts(5, healthy=False)).health is Health.UNHEALTHY
    assert judge(TESLAMATE, facts(5, healthy=None)).health is Health.FRESH
    assert judge(TESLAMATE, facts(5, healthy=True)).health is Health.FRESH


def test_another_source_seeing_activity_convicts_a_silent_one():
    quiet_ft = facts(1_000, Activity.SLEEPING)
    tm_charging = facts(10, Activity.ACTIVE)
    verdict = judge(FLEET_TELEMETRY, quiet_ft, others=[(TESLAMATE, tm_charging)])
    assert verdict.health is Health.STALE
    assert verdict.reason.startswith("TeslaMate saw the car driving or charging")
    # Within the grace period, or when the other source only saw it parked: no conviction.
    assert judge(
        FLEET_TELEMETRY, facts(60, Activity.SLEEPING), others=[(TESLAMATE, tm_charging)]
    ).trusted
    tm_parked = facts(10, Activity.IDLE)
    assert judge(FLEET_TELEMETRY, quiet_ft, others=[(TESLAMATE, tm_parked)]).trusted


def test_polling_is_judged_by_whether_it_can_poll():
    assert judge_fallback(None).health is Health.ABSENT
    assert judge_fallback(SourceFacts()).health is Health.FRESH
    assert judge_fallback(SourceFacts(link_problem="budget used up")).health is Health.STALE


# ---------------------------------------------------------------- choice


def test_the_best_trusted_source_is_chosen():
    fresh, stale = Verdict(Health.FRESH, ""), Verdict(Health.STALE, "x")
    quiet, unhealthy = Verdict(Health.QUIET, ""), Verdict(Health.UNHEALTHY, "y")
    everything = {TESLA_API: fresh, TESLAMATE: fresh, FLEET_TELEMETRY: fresh}
    assert choose_source(everything) == FLEET_TELEMETRY
    assert choose_source({**everything, FLEET_TELEMETRY: stale}) == TESLAMATE
    assert choose_source({**everything, FLEET_TELEMETRY: stale, TESLAMATE: unhealthy}) == TESLA_API
    assert choose_source({FLEET_TELEMETRY: quiet, TESLAMATE: fresh}) == FLEET_TELEMETRY
    assert choose_source({TESLAMATE: stale}) == NO_SOURCE
    assert choose_source({}) == NO_SOURCE


# ---------------------------------------------------------------- fields


def fv(value, at, source) -> FieldValue:
    return FieldValue(value, NOW + at, source)


ALL = {FLEET_TELEMETRY, TESLAMATE, TESLA_API}


def test_same_source_newest_wins():
    assert field_accepts(fv(1, 0, TESLAMATE), fv(2, 1, TESLAMATE), trusted=ALL, field_max_age=900)
    assert not field_accepts(
        fv(1, 0, TESLAMATE), fv(2, -1, TESLAMATE), trusted=ALL, field_max_age=900
    )


def test_a_lower_source_does_not_overwrite_a_trusted_better_one():
    current = fv(60, 0, FLEET_TELEMETRY)
    assert not field_accepts(current, fv(61, 30, TESLAMATE), trusted=ALL, field_max_age=900)
    assert not field_accepts(current, fv(61, 30, TESLA_API), trusted=ALL, field_max_age=900)
    # ... unless the better source stopped sending this field long ago.
    assert field_accepts(current, fv(61, 901, TESLAMATE), trusted=ALL, field_max_age=900)


def test_a_lower_source_takes_over_at_once_when_the_better_one_is_not_trusted():
    current = fv(60, 0, FLEET_TELEMETRY)
    trusted = {TESLAMATE, TESLA_API}
    assert field_accepts(current, fv(61, 1, TESLAMATE), trusted=trusted, field_max_age=900)
    assert not field_accepts(current, fv(61, -1, TESLAMATE), trusted=trusted, field_max_age=900)


def test_an_untrusted_source_never_overwrites_a_trusted_one():
    polled = fv(60, 0, TESLA_API)
    unhealthy_tm = fv(61, 10, TESLAMATE)
    assert not field_accepts(polled, unhealthy_tm, trusted={TESLA_API}, field_max_age=900)


def test_a_better_source_may_lag_by_the_clock_skew():
    # Fleet Telemetry stamps with the car's clock, TeslaMate with ours.
    current = fv(60, 0, TESLAMATE)
    assert field_accepts(current, fv(61, -30, FLEET_TELEMETRY), trusted=ALL, field_max_age=900)
    assert not field_accepts(current, fv(59, -600, FLEET_TELEMETRY), trusted=ALL, field_max_age=900)
    arbiter = RankedArbiter(skew=120)
    assert arbiter.accepts(current, fv(61, -30, FLEET_TELEMETRY), resend=False)
    assert not arbiter.accepts(current, fv(61, -600, FLEET_TELEMETRY), resend=False)
    assert not arbiter.accepts(fv(1, 0, FLEET_TELEMETRY), fv(1, 0, FLEET_TELEMETRY), resend=True)


# ---------------------------------------------------------------- the book


def test_book_reports_switches_once_with_their_reasons():
    book = SourceBook([FLEET_TELEMETRY, TESLAMATE, TESLA_API], stale_after={TESLAMATE: 300})
    vin = "5YJ3E1EA7KF000001"
    tm = book.facts(vin, TESLAMATE)
    tm.last_heard, tm.activity, tm.activity_at = NOW, Activity.ACTIVE, NOW
    book.facts(vin, TESLA_API)
    [first] = book.evaluate(NOW)
    assert (first.previous, first.current, first.reason) == (NO_SOURCE, TESLAMATE, "")
    assert book.evaluate(NOW + 10) == []
    [stale] = book.evaluate(NOW + 301)
    assert (stale.previous, stale.current) == (TESLAMATE, TESLA_API)
    assert stale.stale == (TESLAMATE,)
    assert "while the car is driving or charging" in stale.reason
    assert book.evaluate(NOW + 400) == []
    tm.last_heard = tm.activity_at = NOW + 401
    [back] = book.evaluate(NOW + 402)
    assert (back.previous, back.current, back.recovered) == (TESLA_API, TESLAMATE, (TESLAMATE,))


def test_switches_are_described_in_plain_words():
    assert (
        describe_switch(Switch("V", NO_SOURCE, TESLAMATE, ""), "Red")
        == "telemetry for Red is now provided by TeslaMate"
    )
    words = describe_switch(Switch("V", TESLAMATE, TESLA_API, "no data for 5 minutes"), "Red")
    assert words.startswith("data from TeslaMate for Red is stale; switching to Tesla API polling")
    assert "no data for 5 minutes" in words


# ---------------------------------------------------------------- polling pace


def test_poll_delay_follows_activity_and_spreads_the_budget():
    kw = dict(active_interval=120, idle_interval=600, asleep_interval=900)
    assert poll_delay(Activity.ACTIVE, used=0, budget=None, seconds_left_today=3600, **kw) == 120
    assert poll_delay(Activity.SLEEPING, used=0, budget=None, seconds_left_today=3600, **kw) == 900
    # 120 polls left for about 20 hours: one every 10 minutes, even while charging.
    assert poll_delay(Activity.ACTIVE, used=80, budget=200, seconds_left_today=72_600, **kw) == 600
    # Used up: wait for the new day.
    assert poll_delay(Activity.ACTIVE, used=200, budget=200, seconds_left_today=5000, **kw) == 5000
