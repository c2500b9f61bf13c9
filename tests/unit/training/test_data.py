from __future__ import annotations

from pathlib import Path

import pytest

from sessionrec.models.session import SessionConfig
from sessionrec.training.data import DataError, load_corpus, load_srgnn, read_events
from sessionrec.training.job import parse_every


def test_srgnn_bad_rows_are_counted(tmp_path: Path) -> None:
    (tmp_path / "train_sessions.txt").write_text("1 2 3\n4\nx y\n\n5 6\n")
    (tmp_path / "item_category.tsv").write_text("1\t9\nbroken\n2\t9\n")
    corpus = load_srgnn(tmp_path)
    assert [s.items for s in corpus.sessions] == [("1", "2", "3"), ("5", "6")]
    assert corpus.rejected == {
        "session of one item": 1,
        "non-numeric item id": 1,
        "malformed category line": 1,
    }


def test_jsonl_bad_events_are_counted_by_reason(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"user_id":"u","item_id":"a","type":"view","ts":1700000000000}\n'
        '{"user_id":"u","item_id":"b","type":"cart","ts":1700000060000}\n'
        '{"user_id":"u","item_id":"b","type":"like","ts":1700000060000}\n'
        "not json\n"
        "\xff\n"
    )
    corpus = load_corpus("jsonl", str(events), None, SessionConfig())
    assert len(corpus.sessions) == 1
    assert sum(corpus.rejected.values()) == 3
    assert (
        corpus.rejected["event: field 'type', expected one of view, cart, remove_from_cart, buy"]
        == 1
    )


def test_missing_files_and_unknown_formats_say_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_corpus("diginetica", str(tmp_path / "nope.tsv"), None, SessionConfig())
    with pytest.raises(DataError, match="unknown format"):
        load_corpus("parquet", str(tmp_path), None, SessionConfig())
    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(DataError, match="lacks columns"):
        load_corpus("retailrocket", str(tmp_path / "x.tsv"), None, SessionConfig())


def test_retailrocket_types_map_to_events(tmp_path: Path) -> None:
    f = tmp_path / "e.tsv"
    f.write_text(
        "Time\tUserId\tType\tItemId\tSessionId\tCatId\n"
        "1442004589\t0\tview\t1\t1\t7\n1442004600\t0\taddtocart\t1\t1\t7\n"
        "1442004700\t0\ttransaction\t1\t1\t7\n1442004800\t0\tclick\t2\t1\t7\n"
    )
    events, items, rejected = read_events("retailrocket", f)
    assert [e.type for e in events] == ["view", "cart", "buy"]
    assert items[0].category == "7"
    assert rejected == {"unknown event type 'click'": 1}


@pytest.mark.parametrize("text", ["24h", "30m", "90s", "2d", "0 3 * * *"])
def test_schedules_parse(text: str) -> None:
    parse_every(text)


@pytest.mark.parametrize("text", ["24", "h", "-1h", "soon", "61 * * * *"])
def test_bad_schedules_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="--every"):
        parse_every(text)
