from __future__ import annotations

from models.codec import encode
from models.config import Settings
from models.records import Event
from stream.processor import Incoming, Processor


def _incoming(events: list[Event]) -> list[Incoming]:
    return [Incoming(e.user_id.encode(), encode(e), 0, n) for n, e in enumerate(events)]


def test_a_prepared_batch_has_its_states_before_its_recommendations() -> None:
    proc = Processor(Settings(), None, clock=lambda: 5)
    t0 = 1_700_000_000_000
    batch = _incoming(
        [
            Event("u1", "a", "view", t0),
            Event("u2", "b", "buy", t0 + 1),
            Event("u1", "c", "cart", t0 + 2),
        ]
    )
    batch.append(Incoming(b"u3", b"{not json", 0, 3))
    pending = proc.prepare(batch, lambda _user: None)
    assert set(pending.out.states) == {"u1", "u2"} and len(pending.out.dlq) == 1
    assert pending.out.recommendations == [] and pending.search() is None  # no model: trending
    clicks = pending.out.states["u1"][1]["current"]["clicks"]
    assert [c[2] for c in clicks] == ["a", "c"]

    out = proc.complete(pending, pending.search())
    assert [user for user, _, _ in out.recommendations] == ["u1", "u1", "u2"]
    assert proc.counters["emitted"] == 3 and proc.counters["rejected"] == 1
    # The same batch handled at once gives the same messages.
    again = Processor(Settings(), None, clock=lambda: 5).process(batch, lambda _user: None)
    assert again.recommendations == out.recommendations
