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


def test_a_state_read_back_unchanged_is_not_decoded_again(monkeypatch) -> None:
    import copy

    from stream import processor as processor_module

    decoded: list[object] = []
    from_json = processor_module.UserState.from_json

    def counting(data: object) -> object:
        decoded.append(data)
        return from_json(data)  # type: ignore[arg-type]

    monkeypatch.setattr(processor_module.UserState, "from_json", counting)
    proc = Processor(Settings(), None, clock=lambda: 5)
    table: dict[str, dict] = {}

    def run(events: list[Event]) -> None:
        out = proc.process(_incoming(events), table.get)
        table.update({user: state for user, (_, state) in out.states.items()})

    t0 = 1_700_000_000_000
    run([Event("u1", "a", "view", t0)])
    run([Event("u1", "b", "view", t0 + 1)])  # the state it wrote itself: no decoding
    assert decoded == [None]
    table["u1"] = copy.deepcopy(table["u1"])  # e.g. restored from the changelog: decoded
    run([Event("u1", "c", "view", t0 + 2)])
    assert len(decoded) == 2
    assert [c[2] for c in table["u1"]["current"]["clicks"]] == ["a", "b", "c"]
