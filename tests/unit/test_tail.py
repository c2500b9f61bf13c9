"""`sessionrec tail`'s readable line."""

from __future__ import annotations

from sessionrec.models.records import Recommendation, RecommendedItem
from sessionrec.stream.tail import pretty


def _answer(event_ts: int, emitted_ts: int) -> Recommendation:
    items = [RecommendedItem(item_id="i2", score=0.9, intent=0)]
    return Recommendation("u1", "s1", items, [], "v1", event_ts, emitted_ts, "i1", "view")


def test_a_live_answer_shows_how_long_it_took() -> None:
    line = pretty(_answer(1_767_225_600_000, 1_767_225_600_041))
    assert "event time to answer 41 ms" in line and "historical" not in line


def test_replayed_history_is_said_to_be_historical_not_slow() -> None:
    line = pretty(_answer(1_441_963_500_000, 1_767_225_600_041))  # a 2015 event answered now
    assert "event time 2015-09-11 09:25 UTC, historical" in line and " ms]" not in line
