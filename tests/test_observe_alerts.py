"""Every alert rule, with an injected clock and no sleeping, on the memory store and a real
Redis; each fires once per scope per window, across processes too."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from guardrail import (
    Alerts,
    BudgetExceeded,
    Guard,
    LoopDetected,
    ManualClock,
    MemoryStore,
    Policy,
    UsageRecord,
)
from guardrail.observe import (
    AlertEvent,
    ContextWindowRule,
    LoopRule,
    OverrunRule,
    RefusalRule,
    SpendAnomalyRule,
    SpendThresholdRule,
    StoreRule,
    default_rules,
)
from guardrail.observe.rules import window_of
from guardrail.observe.sinks import Refusal
from guardrail.stores.base import ReservationRequest, ScopeLimits, Settlement, usd_to_nanos
from tests._alert_child import fire_one_refusal
from tests._redis_helpers import REDIS_URL, cleanup, make_store, unique_prefix

STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, clock: ManualClock, tmp_path: Path) -> Any:
    made = make_store(request.param, clock, tmp_path)
    yield made
    cleanup(made)


class Inbox:
    """A destination that keeps what it gets."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def __call__(self, event: AlertEvent) -> None:
        self.events.append(event)

    def rules(self) -> list[str]:
        return [e.rule for e in self.events]


def alerts_on(store: Any, *rules: Any, refresh: float = 0.0) -> tuple[Alerts, Inbox]:
    inbox = Inbox()
    alerts = Alerts(list(rules), [inbox], refresh_seconds=refresh, backoff_seconds=0.0)
    alerts.bind(store)
    return alerts, inbox


def feed(alerts: Alerts, *records: UsageRecord) -> None:
    for record in records:
        alerts(record)
    assert alerts.flush(10)


def record(clock: ManualClock, tenant: str = "u-1", **fields: Any) -> UsageRecord:
    fields.setdefault("scopes", (tenant,))
    fields.setdefault("model", "gpt-4o")
    return UsageRecord(
        tenant=tenant,
        requested_model=fields["model"],
        outcome=fields.pop("outcome", "ok"),
        timestamp=clock(),
        **fields,
    )


def spend(store: Any, scope: str, usd: str) -> None:
    """Settle ``usd`` of spend on ``scope`` today (by the store's clock)."""
    request = ReservationRequest(
        id=f"seed-{scope}-{usd}-{store.now()}",
        scopes=(ScopeLimits(scope),),
        cost_nanos=usd_to_nanos(Decimal(usd)),
        tokens=0,
        ttl_seconds=60,
        model="gpt-4o",
    )
    reservation = store.reserve(request)
    store.settle(reservation, Settlement(usd_to_nanos(Decimal(usd)), 0, 0, "gpt-4o"))


def _guard(store: Any, alerts: Alerts, clock: ManualClock, **policy: Any) -> Guard:
    return Guard(Policy(**policy), store=store, alerts=alerts, clock=clock)


def _client(guard: Guard, server: Any) -> Any:
    return guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0))


# -- the rules production teams set first


def test_context_window_over_90_percent(store: Any, clock: ManualClock, server: Any) -> None:
    alerts, inbox = alerts_on(store, ContextWindowRule())
    client = _client(_guard(store, alerts, clock), server)
    server.prompt_tokens = lambda request: 118_000
    client.for_tenant("u-1").chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=9)
    client.for_tenant("u-1").chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=9)
    server.prompt_tokens = lambda request: 100_000  # 78%: under the share
    client.for_tenant("u-2").chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=9)
    assert alerts.flush(10)
    (event,) = inbox.events
    assert (event.rule, event.scope, event.tenant, event.model) == (
        "context_window",
        "u-1",
        "u-1",
        "gpt-4o",
    )
    assert event.figures["context_window"] == 128_000
    assert event.figures["used_tokens"] == 118_000 + 9
    assert "92%" in event.text
    assert alerts.stats.suppressed == 1 and alerts.stats.delivered == 1
    clock.advance(3600)  # the next window: it fires again
    server.prompt_tokens = lambda request: 118_000
    client.for_tenant("u-1").chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=9)
    assert alerts.flush(10)
    assert inbox.rules() == ["context_window", "context_window"]
    alerts.close()


def test_every_budget_refusal_with_its_limit_and_figures(
    store: Any, clock: ManualClock, server: Any
) -> None:
    alerts, inbox = alerts_on(store, RefusalRule())
    client = _client(_guard(store, alerts, clock, daily_spend_usd="0.0001"), server)
    for _ in range(2):
        with pytest.raises(BudgetExceeded):
            client.for_tenant("u-1").chat.completions.create(
                model="gpt-4o", messages=HELLO, max_tokens=100
            )
    assert alerts.flush(10)
    (event,) = inbox.events
    assert (event.rule, event.scope, event.window) == ("refusal", "u-1", event.window)
    assert event.figures["limit"] == "daily_spend_usd"
    assert event.figures["unit"] == "USD"
    assert Decimal(str(event.figures["cap"])) == Decimal("0.0001")
    assert Decimal(str(event.figures["requested"])) > Decimal("0.0001")
    assert event.figures["kind"] == "budget"
    assert "refused a gpt-4o call on daily_spend_usd" in event.text
    assert alerts.stats.suppressed == 1
    assert server.chat_requests == []
    alerts.close()


def test_an_organisations_refusal_alerts_once_for_the_organisation(
    store: Any, clock: ManualClock, server: Any
) -> None:
    alerts, inbox = alerts_on(store, RefusalRule())
    guard = Guard(
        Policy(),
        tenant_policies={"org-7": Policy(daily_spend_usd="0.0001")},
        store=store,
        alerts=alerts,
        clock=clock,
    )
    client = _client(guard, server)
    for user in ("u-1", "u-2", "u-3"):
        with pytest.raises(BudgetExceeded):
            client.for_tenant(user, parents=["org-7"]).chat.completions.create(
                model="gpt-4o", messages=HELLO, max_tokens=100
            )
    assert alerts.flush(10)
    (event,) = inbox.events
    assert (event.scope, event.tenant) == ("org-7", "u-1")
    assert alerts.stats.suppressed == 2
    alerts.close()


def test_daily_spend_above_twice_the_7_day_average(store: Any, clock: ManualClock) -> None:
    today = clock()
    for days_ago in range(1, 8):  # $1 a day for the 7 days before
        clock.set(today - days_ago * 86_400)
        spend(store, "u-1", "1")
        spend(store, "u-2", "1")
    clock.set(today)
    calls: list[Any] = []
    report = store.usage_report

    def counted_report(*args: Any) -> Any:
        calls.append(args)
        return report(*args)

    store.usage_report = counted_report
    alerts, inbox = alerts_on(store, SpendAnomalyRule())
    spend(store, "u-1", "2.5")  # 2.5x the average
    spend(store, "u-2", "1.5")  # 1.5x: normal
    spend(store, "u-new", "50")  # no history, no baseline: never fires
    feed(
        alerts,
        record(clock, "u-1", cost_usd=Decimal("2.5")),
        record(clock, "u-1", cost_usd=Decimal("0.01")),
        record(clock, "u-2", cost_usd=Decimal("1.5")),
        record(clock, "u-new", cost_usd=Decimal("50")),
    )
    (event,) = inbox.events
    assert (event.rule, event.scope, event.window) == ("spend_anomaly", "u-1", "2026-11-23")
    assert Decimal(str(event.figures["spent_usd"])) == Decimal("2.5")
    assert Decimal(str(event.figures["average_usd"])) == Decimal(1)
    assert event.figures["factor"] == pytest.approx(2.5)
    assert "2.5x its 7-day average of $1" in event.text
    assert alerts.stats.suppressed == 1
    # the 7-day average is read once per scope per day (u-1, u-2, u-new), then cached
    assert sorted(args[0][0] for args in calls) == ["u-1", "u-2", "u-new"]
    first, last = calls[0][1], calls[0][2]
    assert (last - first, clock.now().date() - last) == (timedelta(days=6), timedelta(days=1))
    alerts.close()


def test_the_anomaly_needs_a_minimum_spend(store: Any, clock: ManualClock) -> None:
    today = clock()
    clock.set(today - 86_400)
    spend(store, "u-1", "0.07")  # a 7-day average of $0.01
    clock.set(today)
    spend(store, "u-1", "0.5")  # 50x, but under min_usd=$1
    alerts, inbox = alerts_on(store, SpendAnomalyRule())
    feed(alerts, record(clock, "u-1", cost_usd=Decimal("0.5")))
    assert inbox.events == []
    alerts, inbox = alerts_on(store, SpendAnomalyRule(min_usd=Decimal("0.1")))
    feed(alerts, record(clock, "u-1", cost_usd=Decimal("0.5")))
    assert inbox.rules() == ["spend_anomaly"]


# -- the rest


def test_soft_thresholds_on_every_money_cap(store: Any, clock: ManualClock) -> None:
    limits = (ScopeLimits("u-1", daily_nanos=usd_to_nanos(Decimal(10))),)
    alerts, inbox = alerts_on(store, SpendThresholdRule())

    def call(cost: str) -> None:
        spend(store, "u-1", cost)
        feed(alerts, record(clock, "u-1", cost_usd=Decimal(cost), limits=limits))

    call("4")  # 40%
    assert inbox.events == []
    call("1.5")  # 55%
    call("3")  # 85%
    call("0.1")  # 86%: 80% fired already today
    assert [e.figures["threshold"] for e in inbox.events] == [0.5, 0.8]
    assert inbox.events[1].text == "u-1: spent $8.5 of its daily_spend_usd of $10 (85%, past 80%)"
    assert alerts.stats.suppressed == 1
    call("2")  # 106%
    assert [e.figures["threshold"] for e in inbox.events] == [0.5, 0.8, 1.0]
    clock.advance(86_400)  # a new day: the thresholds start again
    call("9")  # 90%: the highest crossed fires, not 50% and 80% both
    assert [e.figures["threshold"] for e in inbox.events] == [0.5, 0.8, 1.0, 0.8]
    assert inbox.events[-1].window == "2026-11-24"
    alerts.close()


def test_monthly_caps_and_reads_of_the_store_between_refreshes(
    store: Any, clock: ManualClock
) -> None:
    limits = (ScopeLimits("u-1", monthly_nanos=usd_to_nanos(Decimal(100))),)
    alerts, inbox = alerts_on(store, SpendThresholdRule(shares=(0.5,)), refresh=600)
    spend(store, "u-1", "10")
    feed(alerts, record(clock, "u-1", cost_usd=Decimal("10"), limits=limits))  # read: $10
    spend(store, "u-1", "45")  # another process spends: unseen until the next read
    feed(alerts, record(clock, "u-1", cost_usd=Decimal("0.01"), limits=limits))
    assert inbox.events == []
    spend(store, "u-1", "40")  # this process's own spend is added to the last read
    feed(alerts, record(clock, "u-1", cost_usd=Decimal("40"), limits=limits))
    (event,) = inbox.events  # $50.01 estimated; confirmed by a fresh read ($95)
    assert event.figures["limit"] == "monthly_spend_usd"
    assert Decimal(str(event.figures["spent_usd"])) == Decimal(95)
    assert event.window == "2026-11"
    alerts.close()


def test_daily_and_monthly_caps_fire_apart(store: Any, clock: ManualClock) -> None:
    """Each cap's thresholds are its own: a month already past 80% (claimed) does not hide
    a day crossing 50% of its daily cap, every day of the rest of the month."""
    caps = {"daily_nanos": usd_to_nanos(Decimal(5)), "monthly_nanos": usd_to_nanos(Decimal(100))}
    limits = (ScopeLimits("u-1", **caps),)
    alerts, inbox = alerts_on(store, SpendThresholdRule())

    def call(cost: str) -> list[tuple[Any, ...]]:
        spend(store, "u-1", cost)
        feed(alerts, record(clock, "u-1", cost_usd=Decimal(cost), limits=limits))
        fired = [(e.figures["limit"], e.figures["threshold"], e.window) for e in inbox.events]
        inbox.events.clear()
        return fired

    # One record past both caps: the day's 100% and the month's 80%, both.
    assert call("85") == [
        ("daily_spend_usd", 1.0, "2026-11-23"),
        ("monthly_spend_usd", 0.8, "2026-11"),
    ]
    clock.advance(86_400)  # a new day, the same month
    assert call("3") == [("daily_spend_usd", 0.5, "2026-11-24")]  # $3 of $5; the month's 88%
    assert call("0.5") == []  # 70% of the day: its 50% fired already, the month's 80% too
    assert call("1") == [("daily_spend_usd", 0.8, "2026-11-24")]
    assert call("11") == [  # the day past 100%, the month at $100.5
        ("daily_spend_usd", 1.0, "2026-11-24"),
        ("monthly_spend_usd", 1.0, "2026-11"),
    ]
    clock.advance(86_400)
    assert call("2.5") == [("daily_spend_usd", 0.5, "2026-11-25")]  # the month's 100%: claimed
    alerts.close()


def test_a_loop_detected(store: Any, clock: ManualClock, server: Any) -> None:
    alerts, inbox = alerts_on(store, LoopRule(), RefusalRule())
    client = _client(_guard(store, alerts, clock, loop_limit=2, max_attempts=1), server)
    for _ in range(2):  # a loop is the same request failing again and again
        server.enqueue_error(500)
        with pytest.raises(openai.InternalServerError):
            client.for_tenant("u-1").chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(LoopDetected):
        client.for_tenant("u-1").chat.completions.create(model="gpt-4o", messages=HELLO)
    assert alerts.flush(10)
    (event,) = inbox.events  # the loop rule, not the refusal rule (budget refusals only)
    assert (event.rule, event.scope) == ("loop", "u-1")
    assert event.figures == {"repeats": 2, "limit": 2, "window_seconds": 60.0}
    alerts.close()


def test_usage_above_its_reservation(store: Any, clock: ManualClock) -> None:
    alerts, inbox = alerts_on(store, OverrunRule())
    stream_overrun = Refusal("budget", "reserved output tokens", "u-2", 600, 500, "tokens")
    feed(
        alerts,
        record(clock, "u-1", cost_usd=Decimal("0.02"), reserved_usd=Decimal("0.03")),
        record(clock, "u-1", cost_usd=Decimal("0.04"), reserved_usd=Decimal("0.03")),
        record(clock, "u-2", outcome="stream_error", refusal=stream_overrun),
    )
    assert [(e.rule, e.scope) for e in inbox.events] == [("overrun", "u-1"), ("overrun", "u-2")]
    assert inbox.events[0].figures["cost_usd"] == "0.04"
    assert "ran past 500 reserved output tokens" in inbox.events[1].text
    alerts.close()


def test_an_overrun_flagged_by_the_engine(store: Any, clock: ManualClock) -> None:
    """The engine's overrun figures (a prompt larger than held, within the reserved cost)
    fire the rule too."""
    alerts, inbox = alerts_on(store, OverrunRule())
    feed(
        alerts,
        record(clock, "u-3", cost_usd=Decimal("0.02"), reserved_usd=Decimal("0.03")),
        record(
            clock,
            "u-3",
            cost_usd=Decimal("0.02"),
            reserved_usd=Decimal("0.03"),
            overrun_tokens=120,
            overrun_usd=Decimal("0"),
        ),
    )
    (event,) = inbox.events
    assert event.figures["overrun_tokens"] == 120 and "120 tokens past" in event.text
    alerts.close()


def test_a_failing_store_alerts_and_the_call_still_goes(clock: ManualClock, server: Any) -> None:
    class DownStore(MemoryStore):
        def reserve(self, request: Any) -> Any:
            raise ConnectionError("refused")

    store = DownStore(clock=clock)
    alerts, inbox = alerts_on(store, StoreRule())
    guard = Guard(Policy(), store=store, alerts=alerts, clock=clock, on_store_error="fail_open")
    client = _client(guard, server)
    for _ in range(3):
        assert client.chat.completions.create(model="gpt-4o", messages=HELLO).choices
    assert alerts.flush(10)
    (event,) = inbox.events  # reported once (a process reports a problem every 10 s at most)
    assert (event.rule, event.scope) == ("store", "_global")
    assert event.figures == {"operation": "reserve", "error": "ConnectionError: refused"}


@pytest.mark.redis
def test_redis_down_alerts_and_spooled_settlements_alert(
    clock: ManualClock, server: Any, tmp_path: Path
) -> None:
    from guardrail import RedisStore

    down = RedisStore.from_url(
        "redis://127.0.0.1:1/0", prefix=unique_prefix(), clock=clock, spool_path=tmp_path / "s"
    )
    alerts, inbox = alerts_on(down, StoreRule())
    guard = Guard(Policy(), store=down, alerts=alerts, clock=clock, on_store_error="fail_open")
    reply = _client(guard, server).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices
    assert alerts.flush(10)
    kinds = sorted(str(e.key).split(":")[1] for e in inbox.events)
    assert kinds == ["spool_pending", "store_unavailable"]  # claims fell back to this process
    assert down.spool.pending()


def test_windows_and_defaults() -> None:
    from guardrail.stores.base import Windows

    windows = Windows("UTC")
    assert window_of(windows, "day", 86_400 * 3.5) == ("1970-01-04", 172_800.0)
    assert window_of(windows, "month", 0) == ("1970-01", 32 * 86_400.0)
    assert window_of(windows, 3600, 7300) == ("1970-01-01T02:00:00Z/3600s", 3660.0)
    assert window_of(windows, 90, 7300) == ("1970-01-01T02:01:30Z/90s", 150.0)
    with pytest.raises(ValueError):
        window_of(windows, 0, 1)
    assert {r.name for r in default_rules()} == {
        "context_window",
        "spend_anomaly",
        "refusal",
        "spend_threshold",
        "loop",
        "overrun",
        "store",
    }


# -- once per window across processes


@pytest.mark.redis
def test_a_rule_fires_once_per_window_across_two_processes(clock: ManualClock) -> None:
    import redis

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    prefix = unique_prefix()
    children = [
        ctx.Process(target=fire_one_refusal, args=(REDIS_URL, prefix, clock(), barrier, results))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    try:
        outcomes = sorted(results.get(timeout=60) for _ in children)
    finally:
        for child in children:
            child.join(30)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    assert [child.exitcode for child in children] == [0, 0]
    (none, one) = outcomes
    assert none == (0, 1, [])
    assert one[:2] == (1, 0)
    assert one[2] == [f"refusal:daily_spend_usd:{clock.now():%Y-%m-%dT%H:00:00Z}/3600s"]


def test_the_alerts_example_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    example = Path(__file__).resolve().parents[1] / "examples" / "alerts.py"
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "[slack] team-search: a gpt-4o-mini call used 118017 of its 128000-token" in out
    assert "x its 7-day average of $0.0304 (alerts past 2x)" in out
    assert "(51%, past 50%)" in out and "(81%, past 80%)" in out
    assert "[slack] team-search: refused a gpt-4o call on daily_spend_usd" in out
    assert "fired 5 alerts (context_window, spend_anomaly, spend_threshold," in out
    assert "guardrail_refusals_total{" in out
