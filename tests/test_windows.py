"""``Windows.keys`` keeps the day's keys: the same answers as computing them every time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from guardrail.stores.base import Windows


def direct(windows: Windows, now: float) -> tuple[str, str]:
    local = datetime.fromtimestamp(now, tz=windows.tz)
    return local.strftime("%Y-%m-%d"), local.strftime("%Y-%m")


# Zones with DST at midnight (Havana, Santiago), a skipped day (Apia, 2011-12-30), and UTC.
@pytest.mark.parametrize(
    "zone", ["UTC", "America/New_York", "America/Havana", "America/Santiago", "Pacific/Apia"]
)
def test_the_kept_keys_are_the_keys_of_the_moment(zone: str) -> None:
    windows = Windows(zone)
    rng = random.Random(14)
    start = datetime(2011, 1, 1, tzinfo=UTC).timestamp()
    span = (datetime(2027, 1, 1, tzinfo=UTC).timestamp() - start) / 3_000
    moments = [start + i * span for i in range(3_000)]  # in order
    step = timedelta(minutes=7).total_seconds()
    for day in range(0, 16 * 366, 5):  # every fifth day's midnights, minute by minute
        base = start + day * 86_400.0
        moments += [base + k * step for k in range(0, 220, 3)]
    moments += [rng.uniform(start, start + 16 * 366 * 86_400.0) for _ in range(3_000)]
    for now in moments:
        assert windows.keys(now) == direct(windows, now), (zone, now)
