"""The worker drops messages a partition hands out a second time."""

from __future__ import annotations

from stream.take import Deduplicator


def test_deduplicator_drops_offsets_already_delivered_per_partition() -> None:
    d = Deduplicator()
    seen = [(0, 5), (1, 5), (0, 6), (0, 6), (0, 4), (1, 6), (0, 7)]
    kept = [(p, o) for p, o in seen if d.fresh(p, o)]
    assert kept == [(0, 5), (1, 5), (0, 6), (1, 6), (0, 7)]
    assert d.take_dropped() == 2
    assert d.take_dropped() == 0
