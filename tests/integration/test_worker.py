"""The stream worker against the real embedded broker, replaying real event data."""

from __future__ import annotations

import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from sessionrec.models.artifact import current_version, set_current
from sessionrec.models.codec import decode_recommendation
from sessionrec.models.config import Settings
from sessionrec.models.records import Event, Item
from sessionrec.models.session import SessionConfig, sessionize
from sessionrec.stream.broker import EmbeddedBroker
from sessionrec.stream.launch import WorkerProcess
from sessionrec.stream.topics import changelog_topic, create_topics, topic_specs
from sessionrec.training.data import read_events
from tests.integration.kafka_io import consume, produce, produce_items, unique_settings
from tests.integration.model_io import renamed_version

READY_S = 60.0


@pytest.fixture
def worker_factory(tmp_path: Path):
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log").start()
        started.append(worker)
        worker.wait_ready(READY_S)
        return worker

    yield start
    for w in started:
        w.stop()


def _setup(broker: EmbeddedBroker, unique: str, model_dir: Path) -> Settings:
    settings = unique_settings(broker.bootstrap, unique, str(model_dir))
    create_topics(settings, topic_specs(settings))
    return settings


def _key(user: str, item: str | None, ts: int, kind: str | None) -> tuple:
    return (user, item, ts, kind)


def _replay_and_check(settings: Settings, events: list[Event], worker_factory) -> list:
    worker_factory(settings)
    produce(settings, events)
    raw = consume(
        settings.bootstrap,
        settings.topics.recommendations,
        lambda v: len(v) >= len(events),
        idle_s=60,
    )
    recs = [decode_recommendation(r) for r in raw]
    sent = Counter(_key(e.user_id, e.item_id, e.ts, e.type) for e in events)
    got = Counter(_key(r.user_id, r.item_id, r.event_ts, r.type) for r in recs)
    missing = sent - got
    assert not missing, f"{sum(missing.values())} events got no recommendation"
    return recs


def _check_bought_never_return(events: list[Event], recs: list) -> int:
    bought_at: dict[str, dict[str, int]] = defaultdict(dict)
    for e in events:
        if e.type == "buy":
            bought_at[e.user_id].setdefault(e.item_id, e.ts)
    checked = 0
    for r in recs:
        for item in r.items:
            when = bought_at.get(r.user_id, {}).get(item["item_id"])
            # Several purchases can share a timestamp; only a strictly earlier one must be gone.
            assert when is None or when >= r.event_ts, f"{r.user_id} got back {item['item_id']}"
        checked += bool(bought_at.get(r.user_id))
    return checked


def _check_sessions_match_offline(settings: Settings, events: list[Event]) -> int:
    offline, _ = sessionize(
        list(events), SessionConfig(settings.session_gap_ms, settings.max_session_len)
    )
    expected = {s.session_id: [c.item_id for c in s.clicks] for s in offline}
    raw = consume(settings.bootstrap, settings.topics.sessions, lambda v: False, idle_s=8)
    assert raw, "no session was closed"
    for value in raw:
        data = orjson.loads(value)
        assert data["session_id"] in expected, "a session was cut where the data has no gap"
        assert data["items"] == expected[data["session_id"]]
    return len(raw)


@pytest.mark.slow
def test_retailrocket_replay(broker, unique, retailrocket_model, shared_data, worker_factory):
    settings = _setup(broker, unique, retailrocket_model)
    events, _, _ = read_events("retailrocket", shared_data / "retailrocket-events")
    recs = _replay_and_check(settings, events, worker_factory)
    assert _check_bought_never_return(events, recs) > 0
    assert _check_sessions_match_offline(settings, events) > 1000
    assert Counter(r.reason for r in recs)["session"] > len(recs) // 2


@pytest.mark.slow
def test_diginetica_3day_replay(broker, unique, diginetica3_model, shared_data, worker_factory):
    settings = _setup(broker, unique, diginetica3_model)
    events, _, _ = read_events("diginetica", shared_data / "diginetica-3day" / "events.tsv")
    _replay_and_check(settings, events, worker_factory)
    assert _check_sessions_match_offline(settings, events) > 100


def test_bad_events_go_to_dlq_and_the_worker_keeps_going(
    broker, unique, retailrocket_model, worker_factory
):
    settings = _setup(broker, unique, retailrocket_model)
    worker_factory(settings)
    good = [Event(f"u{i}", "285930", "view", 1_700_000_000_000 + i) for i in range(30)]
    garbage = [b"\xff\xfe", b"[1,2]", b'{"user_id":"u","item_id":"i","type":"like","ts":1}']
    # Too large to be events, and each, escaped whole, too large for a DLQ message.
    huge = [
        b'{"user_id":"x","item_id":"' + b"\x01" * 200_000 + b'","type":"view"}',
        b"\xff" * 800_000,
        b'"' + b"\xc3\xa9" * 450_000 + b'"',
    ]
    produce(settings, good[:10], raw=garbage)
    produce(settings, good[10:20], raw=huge)
    produce(settings, good[20:])
    dlq = consume(settings.bootstrap, settings.topics.dlq, lambda v: len(v) >= 6)
    records = [orjson.loads(v) for v in dlq]
    reasons = sorted(r["reason"] for r in records)
    assert any("not valid UTF-8" in r for r in reasons)
    assert any("expected an object" in r for r in reasons)
    assert any("field 'type' is 'like'" in r for r in reasons)
    assert sorted(r["size"] for r in records if r["truncated"]) == sorted(map(len, huge))
    recs = consume(settings.bootstrap, settings.topics.recommendations, lambda v: len(v) >= 30)
    assert len(recs) == 30


def test_kill_9_loses_nothing_and_sessions_continue(
    broker, unique, retailrocket_model, worker_factory, tmp_path
):
    settings = _setup(broker, unique, retailrocket_model)
    first = worker_factory(settings)
    t0 = 1_700_000_000_000
    before = [Event(f"u{i % 25}", "285930", "view", t0 + i * 1000) for i in range(200)]
    # Keyed by another user, these would land on another partition than their user's events.
    miskeyed = [Event(f"u{i % 12}", "285930", "view", t0 + i * 1000 + 500) for i in range(24)]
    produce(settings, before, keyed=[(f"not-u{i}".encode(), e) for i, e in enumerate(miskeyed)])
    seen = consume(settings.bootstrap, settings.topics.recommendations, lambda v: len(v) >= 50)
    first.kill9()
    worker_factory(settings)  # restarted: restores sessions from the changelog
    after = [Event(f"u{i % 25}", "357564", "cart", t0 + 300_000 + i * 1000) for i in range(100)]
    produce(settings, after, keyed=[(None, e) for e in miskeyed[:6]])
    wanted = {(e.user_id, e.ts) for e in before + after}

    def all_answered(values: list[bytes]) -> bool:
        # At-least-once: replays after the kill repeat messages, so count distinct events.
        got = {(m["user_id"], m["event_ts"]) for m in map(orjson.loads, values)}
        return wanted <= got

    raw = consume(settings.bootstrap, settings.topics.recommendations, all_answered, idle_s=60)
    recs = [decode_recommendation(r) for r in raw]
    answered = {(r.user_id, r.event_ts) for r in recs}
    missing = wanted - answered
    assert not missing, f"{len(missing)} events never answered"
    assert len(seen) >= 50
    # Sessions in progress continue: one session id per user across the restart.
    ids = defaultdict(set)
    for r in recs:
        ids[r.user_id].add(r.session_id)
    assert all(len(v) == 1 for v in ids.values()), "a session restarted after kill -9"
    assert not {(e.user_id, e.ts) for e in miskeyed} & answered, "a mis-keyed event was answered"
    refused = consume(settings.bootstrap, settings.topics.dlq, lambda v: len(v) >= 30)
    reasons = [orjson.loads(v)["reason"] for v in refused]
    assert sum("message key is b'not-u" in r for r in reasons) >= 24
    assert sum("message key is none" in r for r in reasons) >= 6


def test_backlog_produced_while_no_worker_runs_is_answered(
    broker, unique, retailrocket_model, worker_factory
):
    settings = _setup(broker, unique, retailrocket_model)
    first = worker_factory(settings)
    t0 = 1_700_000_000_000
    before = [Event(f"u{i % 25}", "285930", "view", t0 + i * 1000) for i in range(100)]
    produce(settings, before)
    consume(settings.bootstrap, settings.topics.recommendations, lambda v: len(v) >= 100)
    first.kill9()
    # Produced while no worker runs: the restarted worker finds it as a backlog.
    backlog = [Event(f"u{i % 25}", "357564", "cart", t0 + 300_000 + i * 1000) for i in range(300)]
    delivered: list[tuple[int, int, bytes]] = []
    produce(settings, backlog, delivered=delivered)
    worker_factory(settings)
    wanted = {(e.user_id, e.ts) for e in before + backlog}

    def all_answered(values: list[bytes]) -> bool:
        got = {(m["user_id"], m["event_ts"]) for m in map(orjson.loads, values)}
        return wanted <= got

    raw = consume(settings.bootstrap, settings.topics.recommendations, all_answered, idle_s=60)
    answered = {(r.user_id, r.event_ts) for r in map(decode_recommendation, raw)}
    missing = sorted(wanted - answered)
    assert not missing, (
        f"{len(missing)} of {len(wanted)} events never answered: {missing[:5]}; "
        + _where(settings, missing[:5], delivered)
    )


def _where(
    settings: Settings, missing: list[tuple[str, int]], delivered: list[tuple[int, int, bytes]]
) -> str:
    """Where unanswered events are: their partition and offset in `events`, whether the
    worker's stored session holds them, and whether a fresh reader finds their answers."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    def read(topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
        """Every partition of `topic` from its start, without a group (no join to wait for)."""
        c = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"where-{topic}"})
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
        out, idle = [], 0
        while idle < 5:
            got = c.consume(1000, 1.0)
            idle = 0 if got else idle + 1
            out += [(m.partition(), m.offset(), m.key(), m.value()) for m in got if not m.error()]
        c.close()
        return out

    group = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": settings.worker_group})
    parts = [TopicPartition(settings.topics.events, p) for p in range(settings.partitions)]
    committed = {tp.partition: tp.offset for tp in group.committed(parts, timeout=10)}
    group.close()
    events = read(settings.topics.events)
    states = read(changelog_topic(settings))
    answers = read(settings.topics.recommendations)
    per_event = Counter(
        (m["user_id"], m["event_ts"]) for m in (orjson.loads(v) for *_, v in answers if v)
    )
    twice = [key for key, n in per_event.items() if n > 1]
    lines = []
    for user, ts in missing:
        at = [(p, o) for p, o, _, v in events if v and orjson.loads(v).get("ts") == ts]
        acked = [(p, o) for p, o, v in delivered if orjson.loads(v).get("ts") == ts]
        last = [v for _, _, k, v in states if k and orjson.loads(k) == user and v]
        current = orjson.loads(last[-1])["current"] if last else None
        stored = current is not None and any(c[0] == ts for c in current["clicks"])
        found = any(v and orjson.loads(v)["event_ts"] == ts for _, _, _, v in answers)
        lines.append(
            f"{user}@{ts}: acknowledged at (partition, offset) {acked}, read back from events "
            f"at {at}, in the last stored session: "
            f"{stored}, answer found by a fresh reader: {found}; the worker group's committed "
            f"offsets {committed}; events answered more than once {twice[:10]}"
        )
    return "; ".join(lines)


def test_cold_start_item_and_unknown_user(broker, unique, retailrocket_model, worker_factory):
    settings = _setup(broker, unique, retailrocket_model)
    worker_factory(settings)
    produce_items(
        settings, [Item("brand-new-1", name="trail running shoe", category="1188", price=80.0)]
    )
    t0 = 1_700_000_000_000
    produce(settings, [Event("cold-user", "never-seen-item", "view", t0)])
    first = consume(settings.bootstrap, settings.topics.recommendations, lambda v: len(v) >= 1)
    assert decode_recommendation(first[0]).reason == "trending"
    produce(settings, [Event("new-user", "brand-new-1", "view", t0 + 2000)])
    raw = consume(settings.bootstrap, settings.topics.recommendations, lambda v: len(v) >= 2)
    rec = next(decode_recommendation(r) for r in raw if b"new-user" in r)
    assert rec.reason == "session" and rec.items
    assert rec.intents[0].members == ["brand-new-1"]


def test_a_worker_started_before_its_topics_waits_for_them_and_follows(
    broker, unique, retailrocket_model, worker_factory
):
    settings = unique_settings(broker.bootstrap, unique, str(retailrocket_model))
    worker = worker_factory(settings)  # no topics yet but those faust declares itself
    deadline = time.monotonic() + 30
    while "does not exist yet" not in worker.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"topic {settings.topics.items} does not exist yet" in worker.log_path.read_text()
    create_topics(settings, topic_specs(settings))
    produce_items(settings, [Item("late-item", name="trail running shoe", category="1188")])
    t0 = 1_700_000_000_000
    for i in range(30):  # until the upsert is followed: the item then has neighbours
        produce(settings, [Event(f"late-user-{i}", "late-item", "view", t0 + i)])
        raw = consume(
            settings.bootstrap, settings.topics.recommendations, lambda v, n=i + 1: len(v) >= n
        )
        if any(decode_recommendation(r).reason == "session" for r in raw):
            break
    assert any(decode_recommendation(r).reason == "session" for r in raw)
    assert f"topic {settings.topics.items} exists now: following it" in worker.log_path.read_text()


def test_hot_swap_and_corrupt_model_refused(
    broker, unique, retailrocket_model, worker_factory, tmp_path
):
    model_dir = tmp_path / "models"
    shutil.copytree(retailrocket_model, model_dir)
    old = current_version(model_dir)
    settings = _setup(broker, unique, model_dir)
    worker = worker_factory(settings)
    broken = model_dir / "v-broken"
    shutil.copytree(model_dir / old, broken)
    (broken / "vectors.npy").write_bytes(b"not an array")
    set_current(model_dir, "v-broken")
    produce(settings, [Event("u1", "285930", "view", 1_700_000_000_000)])
    consume(settings.bootstrap, settings.topics.recommendations, lambda v: len(v) >= 1)
    renamed_version(model_dir / old, "v-fresh", model_dir)
    set_current(model_dir, "v-fresh")
    t0 = 1_700_000_000_000
    versions: set[str] = set()
    for i in range(30):  # keep events flowing while the new model loads
        produce(settings, [Event("u1", "285930", "view", t0 + (i + 1) * 1000)])
        raw = consume(
            settings.bootstrap, settings.topics.recommendations, lambda v, n=i + 2: len(v) >= n
        )
        versions = {decode_recommendation(r).model_version for r in raw}
        if "v-fresh" in versions:
            break
    assert "v-fresh" in versions and old in versions and "v-broken" not in versions
    log = worker.log_path.read_text()
    assert "refused model v-broken" in log


def test_hostile_model_updates_are_refused_and_the_watcher_keeps_following(
    broker, unique, retailrocket_model, worker_factory, tmp_path
):
    """Versions outside the model directory, a corrupt graph, a manifest of the wrong shape:
    each is refused with the reason, the served model stays, and a good version still loads."""
    from confluent_kafka import Producer

    model_dir = tmp_path / "models"
    shutil.copytree(retailrocket_model, model_dir)
    old = current_version(model_dir)
    assert old is not None
    shutil.copytree(model_dir / old, tmp_path / "evil")  # a model outside the directory
    settings = _setup(broker, unique, model_dir)
    worker = worker_factory(settings)
    graph = model_dir / "v-graph"
    shutil.copytree(model_dir / old, graph)
    data = bytearray((graph / "index.hnsw").read_bytes())
    data[100:4000] = b"\xff" * 3900
    (graph / "index.hnsw").write_bytes(bytes(data))
    shape = model_dir / "v-shape"
    shutil.copytree(model_dir / old, shape)
    (shape / "manifest.json").write_text('{"format": 1}')
    renamed_version(model_dir / old, "v-good", model_dir)
    p = Producer({"bootstrap.servers": settings.bootstrap})
    for version in ("../evil", str(tmp_path / "evil"), "v-graph", "v-shape"):
        p.produce(settings.topics.model_updates, value=orjson.dumps({"version": version}))
    p.produce(settings.topics.items, key=b"i-gone", value=None)  # a tombstone: a delete
    assert p.flush(10) == 0
    set_current(model_dir, "v-good")  # as the training job does, then announces it
    p.produce(settings.topics.model_updates, value=orjson.dumps({"version": "v-good"}))
    assert p.flush(10) == 0
    t0 = 1_700_000_000_000
    versions: set[str] = set()
    for i in range(40):  # keep events flowing while the versions are tried
        produce(settings, [Event("u1", "285930", "view", t0 + i * 1000)])
        raw = consume(
            settings.bootstrap, settings.topics.recommendations, lambda v, n=i + 1: len(v) >= n
        )
        versions = {decode_recommendation(r).model_version for r in raw}
        if "v-good" in versions:
            break
    assert "v-good" in versions and versions <= {old, "v-good"}
    assert worker.proc is not None and worker.proc.poll() is None
    log = worker.log_path.read_text()
    assert log.count("is not a plain name") >= 2
    assert "refused model v-graph" in log and "index.hnsw" in log
    assert "refused model v-shape" in log and "manifest 'version' is None" in log


def test_metrics_port_serves_the_named_metrics(broker, unique, retailrocket_model, worker_factory):
    import dataclasses
    import urllib.request

    from sessionrec.stream.broker import free_port

    port = free_port()
    settings = dataclasses.replace(_setup(broker, unique, retailrocket_model), metrics_port=port)
    worker = worker_factory(settings)
    t0 = 1_700_000_000_000
    events = [Event(f"m{i}", "285930", "view", t0 + i) for i in range(30)]
    late = Event("m0", "285930", "view", t0 - 30 * 60_000)  # before m0's session by over 20 min
    produce(settings, [*events, late], raw=[b"not json"])
    consume(settings.bootstrap, settings.topics.recommendations, lambda v: len(v) >= 31)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for name in (
        'sessionrec_events_total{outcome="accepted"} 31.0',
        'sessionrec_events_total{outcome="rejected"} 1.0',
        'sessionrec_dlq_total{reason="not_json"} 1.0',
        "sessionrec_recommendations_emitted_total 31.0",
        'sessionrec_oddities_total{kind="late"} 1.0',
        'sessionrec_oddities_total{kind="bad_state"} 0.0',
        "sessionrec_consumer_lag{partition=",
        "sessionrec_end_to_end_latency_seconds_bucket",
        "sessionrec_batch_size_count",
        "sessionrec_model_info{version=",
        "sessionrec_index_items",
    ):
        assert name in text, name
    created = next(x for x in text.splitlines() if x.startswith("sessionrec_model_created_"))
    assert 1.7e9 < float(created.split()[-1]) < time.time()  # the served version's making
    # The query API counts its requests per route and status.
    api = worker.api_url()
    urllib.request.urlopen(f"{api}/v1/items/285930/similar", timeout=10).read()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert (
        'sessionrec_api_requests_total{route="/v1/items/{item_id}/similar",status="200"} 1.0'
        in text
    )
    assert 'sessionrec_api_request_seconds_count{route="/v1/items/{item_id}/similar"} 1.0' in text
