"""The worker drops messages a partition hands out a second time."""

from __future__ import annotations

from stream.take import Deduplicator


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
