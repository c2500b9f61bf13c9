"""Data sources: native JSONL, SR-GNN text, Diginetica events TSV, RetailRocket TSV, and topics.

Every loader returns a `Corpus` and counts the rows it refused, by reason; a bad row is never
used silently and never crashes a run.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..models.codec import DecodeError, decode_event, decode_item
from ..models.config import Settings
from ..models.records import Event, Item
from ..models.session import SessionConfig, sessionize

FORMATS = ("jsonl", "srgnn", "diginetica", "retailrocket", "topic")
TOPIC_TIMEOUT_S = 30.0  # to reach the broker, and the longest a topic's read may stall


class DataError(ValueError):
    """A data file cannot be used at all (missing, wrong format); one line says why."""


@dataclass(frozen=True, slots=True)
class TrainSession:
    items: tuple[str, ...]
    types: tuple[str, ...]
    start_ts: int | None = None


@dataclass
class Corpus:
    """Sessions (item ids in time order with event types) and the catalog."""

    sessions: list[TrainSession]
    items: list[Item]
    rejected: Counter[str] = field(default_factory=Counter)
    first_ts: int | None = None
    last_ts: int | None = None
    read: list[str] = field(default_factory=list)  # what was read of each topic, one line each

    def report(self) -> str:
        bad = ", ".join(f"{n} {reason}" for reason, n in self.rejected.most_common()) or "none"
        return (
            f"{len(self.sessions)} sessions, {sum(len(s.items) for s in self.sessions)} "
            f"events, {len(self.items)} catalog items; rejected rows: {bad}"
            + "".join(f"; {line}" for line in self.read)
        )


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist")
    return path


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    with _need(path).open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield number, "\x00invalid-utf8"


def load_srgnn_sessions(path: Path, rejected: Counter[str]) -> list[TrainSession]:
    sessions: list[TrainSession] = []
    for _, line in _read_lines(path):
        parts = line.split()
        if not parts:
            continue
        if not all(p.isdigit() for p in parts):
            rejected["non-numeric item id"] += 1
            continue
        if len(parts) < 2:
            rejected["session of one item"] += 1
            continue
        sessions.append(TrainSession(tuple(parts), ("view",) * len(parts)))
    return sessions


def load_srgnn_test(path: Path, rejected: Counter[str]) -> list[tuple[list[str], str]]:
    """SR-GNN test lines: `prefix ids (spaces) TAB next id`."""
    cases: list[tuple[list[str], str]] = []
    for _, line in _read_lines(path):
        if not line.strip():
            continue
        prefix, sep, target = line.partition("\t")
        if not sep or not prefix.split() or not target.strip().isdigit():
            rejected["malformed test line"] += 1
            continue
        cases.append((prefix.split(), target.strip()))
    return cases


def load_srgnn(directory: Path) -> Corpus:
    rejected: Counter[str] = Counter()
    if not directory.is_dir():
        raise DataError(f"'{directory}' is not a directory (expected train_sessions.txt inside)")
    sessions = load_srgnn_sessions(directory / "train_sessions.txt", rejected)
    items: list[Item] = []
    cat_file = directory / "item_category.tsv"
    if cat_file.exists():
        for _, line in _read_lines(cat_file):
            item, sep, cat = line.partition("\t")
            if not sep or not item.strip():
                rejected["malformed category line"] += 1
                continue
            items.append(Item(item.strip(), category=cat.strip() or None))
    return Corpus(sessions, items, rejected)


def load_jsonl(events_path: Path, catalog: Path | None, gap: SessionConfig) -> Corpus:
    rejected: Counter[str] = Counter()
    events: list[Event] = []
    for _, line in _read_lines(events_path):
        if not line.strip():
            continue
        try:
            events.append(decode_event(line))
        except DecodeError as exc:
            rejected[_reason(str(exc))] += 1
    items = load_catalog(catalog, rejected) if catalog else []
    return corpus_from_events(events, items, gap, rejected)


def _reason(message: str) -> str:
    """Group decode errors by what was wrong, without the offending value: "event: field
    'type' is 'like', expected one of ..." -> "event: field 'type', expected one of ..."."""
    head, sep, rest = message.partition(" is ")
    if sep and "field '" in head and ", expected" in rest:
        return head + ", expected" + rest.split(", expected", 1)[1]
    return message.split(" (", 1)[0]


def load_catalog(path: Path, rejected: Counter[str]) -> list[Item]:
    items: dict[str, Item] = {}
    for _, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            item = decode_item(line)
        except DecodeError as exc:
            rejected[_reason(str(exc))] += 1
            continue
        items[item.item_id] = item
    return [i for i in items.values() if not i.deleted]


def corpus_from_events(
    events: list[Event], items: list[Item], gap: SessionConfig, rejected: Counter[str]
) -> Corpus:
    events.sort(key=lambda e: e.ts)
    sessions, late = sessionize(events, gap)
    if late:
        rejected["late event"] += len(late)
    out = [
        TrainSession(tuple(c.item_id for c in s.clicks), tuple(c.type for c in s.clicks), s.start)
        for s in sessions
        if len(s.clicks) >= 2
    ]
    short = sum(1 for s in sessions if len(s.clicks) < 2)
    if short:
        rejected["session of one event"] += short
    return Corpus(
        out, items, rejected, events[0].ts if events else None, events[-1].ts if events else None
    )


def _tsv_rows(path: Path, required: Iterable[str]) -> Iterator[dict[str, str]]:
    with _need(path).open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = set(required) - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"'{path}' lacks columns {sorted(missing)} (has {reader.fieldnames})")
        yield from reader


def load_diginetica_events(path: Path) -> Corpus:
    """Diginetica events TSV: SessionId ItemId Time CatId Price Name [SearchTokens]."""
    rejected: Counter[str] = Counter()
    by_session: dict[str, list[tuple[float, str]]] = {}
    items: dict[str, Item] = {}
    for row in _tsv_rows(path, ["SessionId", "ItemId", "Time", "CatId", "Price", "Name"]):
        try:
            ts = float(row["Time"])
            bucket = float(row["Price"]) if row["Price"] else None
        except ValueError:
            rejected["non-numeric time or price"] += 1
            continue
        if not math.isfinite(ts) or not row["ItemId"]:
            rejected["missing item or time"] += 1
            continue
        item_id = row["ItemId"]
        by_session.setdefault(row["SessionId"], []).append((ts, item_id))
        if item_id not in items:
            # Price is a log2 bucket in this export: 2**bucket restores the scale.
            price = 2.0**bucket if bucket is not None and 0 <= bucket < 60 else None
            name = row["Name"].replace(",", " ") if row["Name"] else None
            items[item_id] = Item(item_id, name=name, category=row["CatId"] or None, price=price)
    sessions = []
    first = last = None
    for clicks in by_session.values():
        clicks.sort()
        if len(clicks) < 2:
            rejected["session of one event"] += 1
            continue
        start = int(clicks[0][0] * 1000)
        first = start if first is None else min(first, start)
        last = int(clicks[-1][0] * 1000) if last is None else max(last, int(clicks[-1][0] * 1000))
        sessions.append(TrainSession(tuple(i for _, i in clicks), ("view",) * len(clicks), start))
    return Corpus(sessions, list(items.values()), rejected, first, last)


RETAILROCKET_TYPES = {"view": "view", "addtocart": "cart", "transaction": "buy"}


def retailrocket_events(
    paths: list[Path], rejected: Counter[str]
) -> tuple[list[Event], list[Item]]:
    """RetailRocket TSV rows (Time UserId Type ItemId SessionId CatId) as events and items."""
    events: list[Event] = []
    items: dict[str, Item] = {}
    for path in paths:
        for row in _tsv_rows(path, ["Time", "UserId", "Type", "ItemId", "CatId"]):
            kind = RETAILROCKET_TYPES.get(row["Type"])
            if kind is None:
                rejected[f"unknown event type {row['Type'][:20]!r}"] += 1
                continue
            try:
                ts = int(float(row["Time"]) * 1000)
            except ValueError:
                rejected["non-numeric time"] += 1
                continue
            try:
                events.append(Event(row["UserId"], row["ItemId"], kind, ts))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                rejected["malformed row"] += 1
                continue
            items.setdefault(row["ItemId"], Item(row["ItemId"], category=row["CatId"] or None))
    return events, list(items.values())


def load_retailrocket(path: Path, gap: SessionConfig) -> Corpus:
    rejected: Counter[str] = Counter()
    paths = sorted(path.glob("*.tsv")) if path.is_dir() else [path]
    if not paths:
        raise DataError(f"no .tsv files in '{path}'")
    events, items = retailrocket_events(paths, rejected)
    return corpus_from_events(events, items, gap, rejected)


def load_topic(
    settings: Settings,
    sessions_topic: str,
    items_topic: str,
    timeout_s: float | None = None,
    catalog_file: Path | None = None,
) -> Corpus:
    """Replay the `sessions` topic (and the `items` catalog) from the beginning to its end;
    with `catalog_file`, its items first (the topic's records of an item are newer)."""
    from ..models.codec import decode_session
    from .replay import TopicRead, read_topic

    timeout_s = TOPIC_TIMEOUT_S if timeout_s is None else timeout_s
    rejected: Counter[str] = Counter()
    sessions: list[TrainSession] = []
    read_sessions, read_items = TopicRead(sessions_topic), TopicRead(items_topic)
    for _, raw in read_topic(settings, sessions_topic, timeout_s, read_sessions):
        if raw is None:
            continue
        try:
            _, items, types, start = decode_session(raw)
        except DecodeError as exc:
            rejected[_reason(str(exc))] += 1
            continue
        if len(items) >= 2:
            sessions.append(TrainSession(tuple(items), tuple(types), start))
    catalog: dict[str, Item] = {}
    if catalog_file is not None:
        catalog.update((item.item_id, item) for item in load_catalog(catalog_file, rejected))
    from_file = len(catalog)
    for key, raw in read_topic(settings, items_topic, timeout_s, read_items):
        if raw is None:  # a tombstone: the item keyed so is deleted
            catalog.pop((key or b"").decode("utf-8", errors="replace"), None)
            continue
        try:
            item = decode_item(raw)
        except DecodeError as exc:
            rejected[_reason(str(exc))] += 1
            continue
        catalog[item.item_id] = item
    starts = [s.start_ts for s in sessions if s.start_ts is not None]
    return Corpus(
        sessions,
        [i for i in catalog.values() if not i.deleted],
        rejected,
        min(starts, default=None),
        max(starts, default=None),
        [read_sessions.line(), read_items.line()]
        + ([f"{catalog_file}: {from_file:,} catalog items"] if catalog_file is not None else []),
    )


def load_corpus(
    fmt: str,
    data: str | None,
    catalog: str | None,
    gap: SessionConfig,
    settings: Settings | None = None,
    sessions_topic: str = "sessions",
    items_topic: str = "items",
) -> Corpus:
    """Dispatch on `--format`; raise `DataError` with one line for unusable input."""
    if fmt == "topic":
        if settings is None:
            raise DataError("--format topic needs the Kafka settings (bootstrap, [kafka])")
        return load_topic(
            settings,
            data or sessions_topic,
            items_topic,
            catalog_file=Path(catalog) if catalog else None,
        )
    if data is None:
        raise DataError(f"--data is required for --format {fmt}")
    path = Path(data)
    if fmt == "srgnn":
        return load_srgnn(path)
    if fmt == "jsonl":
        return load_jsonl(path, Path(catalog) if catalog else None, gap)
    if fmt == "diginetica":
        return load_diginetica_events(path)
    if fmt == "retailrocket":
        return load_retailrocket(path, gap)
    raise DataError(f"unknown format {fmt!r}, expected one of {', '.join(FORMATS)}")


def diginetica_events(path: Path, rejected: Counter[str]) -> tuple[list[Event], list[Item]]:
    """Diginetica rows as view events (user = SessionId) and items with name/category/price."""
    corpus = load_diginetica_events(path)
    rejected.update(corpus.rejected)
    events: list[Event] = []
    for row in _tsv_rows(path, ["SessionId", "ItemId", "Time"]):
        try:
            events.append(
                Event(row["SessionId"], row["ItemId"], "view", int(float(row["Time"]) * 1000))
            )
        except (ValueError, TypeError):
            continue  # counted by load_diginetica_events
    return events, corpus.items


def read_events(
    fmt: str, path: Path, catalog: Path | None = None
) -> tuple[list[Event], list[Item], Counter[str]]:
    """Events (sorted by time) and catalog items of a file, for replay into Kafka."""
    rejected: Counter[str] = Counter()
    if fmt == "jsonl":
        events: list[Event] = []
        for _, line in _read_lines(path):
            if line.strip():
                try:
                    events.append(decode_event(line))
                except DecodeError as exc:
                    rejected[_reason(str(exc))] += 1
        items = load_catalog(catalog, rejected) if catalog else []
    elif fmt == "diginetica":
        events, items = diginetica_events(path, rejected)
    elif fmt == "retailrocket":
        paths = sorted(path.glob("*.tsv")) if path.is_dir() else [path]
        events, items = retailrocket_events(paths, rejected)
    else:
        raise DataError(f"replay reads jsonl, diginetica or retailrocket, not {fmt!r}")
    events.sort(key=lambda e: e.ts)
    return events, items, rejected
