"""The faust adapter's commit and restore items on faust's own consumer and recovery objects
(built by a faust app that never connects): what a commit may pass, and a rebalance arriving
in the middle of a table restore."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import faust
import pytest
from faust.types import TP

from sessionrec.stream import faust_adapter

EVENTS = TP("events", 0)


@pytest.fixture(scope="module")
def app() -> faust.App:
    faust_adapter.commits_follow_answers()
    faust_adapter.restarts_survive_rebalances()
    app = faust.App("commits-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.Table("sessions", default=None)
    return app


def _consumer(app: faust.App, committed: int | None) -> Any:
    consumer = app.consumer
    for book in (consumer._acked, consumer._acked_index, consumer._gap):
        book.clear()
    faust_adapter._heads(consumer).clear()
    consumer._committed_offset.clear()
    if committed is not None:
        consumer._committed_offset[EVENTS] = committed
    return consumer


def _ack(consumer: Any, *offsets: int) -> None:
    for offset in offsets:
        consumer._acked[EVENTS].append(offset)
        consumer._acked_index[EVENTS].add(offset)


def test_a_commit_never_passes_an_unanswered_head(app: faust.App) -> None:
    consumer = _consumer(app, committed=10)  # offset 10 is the next to answer
    _ack(consumer, 11, 12, 13)
    assert consumer._new_offset(EVENTS) is None  # faust itself commits 14 here
    _ack(consumer, 10)
    assert consumer._new_offset(EVENTS) == 14
    assert consumer._new_offset(EVENTS) is None  # nothing answered since


def test_commits_stop_at_the_first_unanswered_offset(app: faust.App) -> None:
    consumer = _consumer(app, committed=0)
    _ack(consumer, 0, 1, 2, 4, 5)
    assert consumer._new_offset(EVENTS) == 3
    consumer._committed_offset[EVENTS] = 3
    _ack(consumer, 3)
    assert consumer._new_offset(EVENTS) == 6


def test_an_offset_counted_twice_does_not_split_the_run(app: faust.App) -> None:
    # A hole recorded by the fetcher that also covers answered offsets: one commit, no crawl.
    consumer = _consumer(app, committed=100)
    _ack(consumer, *range(100, 150))
    consumer._gap[EVENTS].addi(120, 130)
    consumer._acked[EVENTS].extend([130, 131])  # and some counted twice
    assert consumer._new_offset(EVENTS) == 150


def test_a_hole_the_fetcher_saw_is_passed_but_not_the_record_after_it(app: faust.App) -> None:
    consumer = _consumer(app, committed=20)
    # Records 20 and 21 hold no message (say transaction markers): the fetcher reads 19, then 22.
    asyncio.run(consumer._add_gap(EVENTS, 20, 22))
    assert consumer._new_offset(EVENTS) is None  # 22 is read but not answered yet
    _ack(consumer, 22)
    assert consumer._new_offset(EVENTS) == 23


def test_without_a_committed_offset_commits_start_at_the_first_offset_read(
    app: faust.App,
) -> None:
    consumer = _consumer(app, committed=None)
    faust_adapter._heads(consumer)[EVENTS] = 5
    _ack(consumer, 6, 7)
    assert consumer._new_offset(EVENTS) is None
    _ack(consumer, 5)
    assert consumer._new_offset(EVENTS) == 8


def test_records_fetched_before_their_partition_moved_are_stale() -> None:
    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import TopicPartition

    faust_adapter.commits_follow_answers()

    async def main() -> None:
        subscriptions = SubscriptionState()
        subscriptions.subscribe({"events"})
        tp, other = TopicPartition("events", 0), TopicPartition("events", 1)
        subscriptions.assign_from_subscribed({tp, other})
        moves = faust_adapter._moves(subscriptions)
        before = faust_adapter._Fetched({tp: ["r"], other: ["r"]}, moves)
        subscriptions.seek(tp, 5)
        assert before.moved_since(EVENTS) and not before.moved_since(TP("events", 1))
        after = faust_adapter._Fetched({tp: ["r"]}, moves)
        assert not after.moved_since(EVENTS)
        subscriptions.assign_from_subscribed({tp, other})  # a rebalance moves them all
        assert after.moved_since(EVENTS) and before.moved_since(TP("events", 1))

    asyncio.run(main())


def test_a_rebalance_arriving_during_a_restore_step_restarts_the_restore() -> None:
    from faust.tables.recovery import RebalanceAgain

    faust_adapter.restarts_survive_rebalances()

    async def main() -> None:
        # Made in the running loop: faust's services keep the loop current when they are made.
        app = faust.App("restore-test", broker="kafka://127.0.0.1:1", store="memory://")
        app.Table("sessions", default=None)
        recovery = app.tables.recovery

        async def seek_meeting_a_rebalance() -> None:
            recovery.signal_recovery_start.set()  # the group rebalances under the seek
            raise ValueError("Offset must be a positive integer")

        async def failing_seek() -> None:
            raise ValueError("Offset must be a positive integer")

        with pytest.raises(RebalanceAgain):
            await recovery._wait(seek_meeting_a_rebalance())
        recovery.signal_recovery_start.clear()
        with pytest.raises(ValueError, match="positive integer"):  # no rebalance: a real error
            await recovery._wait(failing_seek())
        # A partition assigned since the offsets were built has none: no seek to None.
        recovery.signal_recovery_start.set()
        with pytest.raises(RebalanceAgain):
            await recovery._seek_offsets(None, {EVENTS}, Counter({EVENTS: None}), "active")

    asyncio.run(asyncio.wait_for(main(), timeout=30))
