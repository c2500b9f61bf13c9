"""Repeats dropped, batches acknowledged in order once delivered."""

from __future__ import annotations

import asyncio

import pytest

from sessionrec.stream.delivery import Deduplicator, InOrderAcks


def test_deduplicator_drops_exact_repeats_per_partition() -> None:
    d = Deduplicator()
    seen = [(0, 5), (1, 5), (0, 6), (0, 6), (1, 6), (0, 7), (0, 5)]
    kept = [(p, o) for p, o in seen if d.fresh(p, o)]
    assert kept == [(0, 5), (1, 5), (0, 6), (1, 6), (0, 7)]
    assert d.take_dropped() == 2
    assert d.take_dropped() == 0
    assert d.take_out_of_order() == []


def test_deduplicator_keeps_an_earlier_offset_never_delivered() -> None:
    """Out of order is not a repeat: dropping it would lose the event."""
    d = Deduplicator()
    kept = [(p, o) for p, o in [(0, 10), (0, 12), (0, 11), (0, 11)] if d.fresh(p, o)]
    assert kept == [(0, 10), (0, 12), (0, 11)]
    assert d.take_out_of_order() == [(0, 11, 12)]
    assert d.take_dropped() == 1


def test_deduplicator_forgets_beyond_its_window_and_then_keeps() -> None:
    d = Deduplicator(window=3)
    assert all(d.fresh(0, o) for o in range(10))
    assert not d.fresh(0, 9)  # recent: still a repeat
    assert d.fresh(0, 0)  # forgotten: delivered again rather than dropped


class _Acked:
    """Records what is acked, as a faust stream's `ack` would take it."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    async def ack(self, event: str) -> bool:
        self.acked.append(event)
        return True


def test_batches_are_acked_in_order_once_delivered() -> None:
    async def scenario() -> list[list[str]]:
        stream = _Acked()
        acks = InOrderAcks(stream.ack, limit=4)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        await acks.add(first, ["a", "b"])
        await acks.add(second, ["c"])
        seen = []
        second.set_result(None)  # delivered first, but acked only after the earlier batch
        await asyncio.sleep(0.01)
        seen.append(list(stream.acked))
        first.set_result(None)
        await acks.drain()
        seen.append(list(stream.acked))
        acks.close()
        return seen

    assert asyncio.run(scenario()) == [[], ["a", "b", "c"]]


def test_a_failed_delivery_stops_acking_and_fails_the_agent() -> None:
    async def scenario() -> tuple[list[str], str]:
        stream = _Acked()
        acks = InOrderAcks(stream.ack, limit=1)
        loop = asyncio.get_running_loop()
        failed, later = loop.create_future(), loop.create_future()
        await acks.add(failed, ["a"])
        failed.set_exception(RuntimeError("refused 5 times"))
        later.set_result(None)
        with pytest.raises(RuntimeError, match="refused 5 times") as error:
            await acks.add(later, ["b"])
            await acks.drain()
        acks.close()
        return stream.acked, str(error.value)

    acked, message = asyncio.run(scenario())
    assert acked == []
    assert "refused" in message
