"""`make demo`: the real pipeline (broker -> worker -> topic) on a seeded sample shop.

Start the embedded broker, create topics, train a model on the shop's history, start a worker
process, replay live sessions at a visible pace, and print the recommendations the worker
publishes as they arrive. Stops on its own (or on Ctrl-C) and prints what it measured.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from sessionrec.models.codec import DecodeError, decode_recommendation, encode
from sessionrec.models.config import Settings
from sessionrec.models.records import Event, Item, Recommendation
from sessionrec.models.session import SessionConfig
from sessionrec.models.shop import Shop, make_shop
from sessionrec.stream.broker import EmbeddedBroker
from sessionrec.stream.kafka import consumer_config, producer_config, ready_messages
from sessionrec.stream.launch import WorkerProcess, on_local_broker
from sessionrec.stream.replay import produce_items

DEMO_DIR = Path("var/demo")
API_TIMEOUT_S = 5.0
LIVE_USERS = 12
LIVE_RATE = 6.0  # events per second: slow enough to read
READER_JOIN_S = 60.0
NEW_ITEM = Item(
    "i99000",
    name="Kestrel ultralight trail running shoe green",
    category="running shoes",
    brand="Kestrel",
    price=129.0,
)


def _train(shop: Shop, history: list[Event], settings: Settings, model_dir: Path) -> str:
    from sessionrec.training.data import corpus_from_events
    from sessionrec.training.export import export
    from sessionrec.training.trainer import TrainConfig, train

    corpus = corpus_from_events(
        list(history),
        shop.items,
        SessionConfig(settings.session_gap_ms, settings.max_session_len),
        Counter(),
    )
    trained = train(
        corpus,
        TrainConfig(
            epochs=30,
            batch_size=256,
            negatives=128,
            batch_negatives=64,
            lr=0.01,
            progress=True,
            weights=settings.weights,
        ),
    )
    path, _ = export(
        trained, model_dir, {"data": {"source": "demo shop", "sessions": len(corpus.sessions)}}
    )
    return path.name


class Live:
    """Consumes recommendations in a thread; the main thread prints them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.sent_at: dict[tuple[str, int], float] = {}
        self.latencies: list[float] = []
        self.received: list[Recommendation] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.assigned = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(
            consumer_config(self.settings, f"demo-{time.time_ns()}", **{"fetch.wait.max.ms": 10})
        )
        consumer.subscribe(
            [self.settings.topics.recommendations], on_assign=lambda _c, _p: self.assigned.set()
        )
        while not self._stop.is_set():
            for msg in ready_messages(consumer, 0.1):
                value = msg.value()
                if msg.error() or value is None:
                    continue
                try:
                    rec = decode_recommendation(value)
                except DecodeError:
                    continue
                now = time.perf_counter()
                with self._lock:
                    sent = self.sent_at.pop((rec.user_id, rec.event_ts), None)
                    if sent is not None:
                        self.latencies.append(1000 * (now - sent))
                    self.received.append(rec)
        consumer.close()

    def drain(self) -> list[Recommendation]:
        with self._lock:
            out, self.received = self.received, []
        return out


def _line(rec: Recommendation, items: dict[str, Item]) -> str:
    def name(item_id: str) -> str:
        item = items.get(item_id)
        return f"{item.name} ({item.category})" if item and item.name else item_id

    top = "; ".join(f"#{r['intent']} {name(r['item_id'])}" for r in rec.items[:3])
    intents = ", ".join(
        f"{i.category or '?'}{' (past)' if i.past else ''}" for i in rec.intents[:3]
    )
    return (
        f"{rec.user_id:<6} {rec.type or '':<16} {name(rec.item_id or '')[:40]:<40}\n"
        f"       intents: {intents or 'none yet'} [{rec.reason}, model {rec.model_version}]\n"
        f"       -> {top}"
    )


def run_demo(settings: Settings, seconds: float, seed: int) -> int:
    shop = make_shop(seed=seed, users=400)
    items = {i.item_id: i for i in [*shop.items, NEW_ITEM]}
    # A handful of users replayed live (all their sessions), so their sessions, intents and
    # past intents visibly build up; the model learns from everyone else.
    live_users = set(list(dict.fromkeys(e.user_id for e in shop.events))[:LIVE_USERS])
    history = [e for e in shop.events if e.user_id not in live_users]
    live_events = [e for e in shop.events if e.user_id in live_users]
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    model_dir = DEMO_DIR / "models"
    print(
        f"sample shop: {len(shop.items)} items in 8 categories, {len(shop.events)} events "
        f"({len(history)} history, {len(live_events)} to replay live)"
    )
    with EmbeddedBroker(port=0, log_path=None) as broker:
        settings = on_local_broker(settings, broker.bootstrap, model_dir, "sessionrec-demo")
        print(f"1. embedded broker (Tansu) at {broker.bootstrap}")
        print("2. topics created; training a model on the shop's history ...")
        version = _train(shop, history, settings, model_dir)
        print(f"3. model {version} written to {model_dir}")
        produce_items(settings, settings.topics.items, shop.items)
        worker = WorkerProcess(settings, DEMO_DIR / "worker.log").start()
        try:
            worker.wait_ready()
            print("4. worker ready; replaying live sessions (Ctrl-C stops)\n")
            live = Live(settings)
            live.start()
            if not live.assigned.wait(READER_JOIN_S):
                raise RuntimeError(f"the demo's reader got no partitions in {READER_JOIN_S:.0f}s")
            summary = _replay(settings, live, live_events, items, seconds)
            live.stop()
            _ask_api(worker.api_url(), live_events[0].user_id, live_events[0].item_id, items)
        finally:
            worker.stop()
    _print_summary(summary, live, settings)
    return 0


def _replay(
    settings: Settings, live: Live, events: list[Event], items: dict[str, Item], seconds: float
) -> dict[str, int]:
    from confluent_kafka import Producer

    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    # Keep the users' real event-time gaps (sessions are cut by event time), shifted to now.
    shift = int(time.time() * 1000) - events[0].ts
    rate = LIVE_RATE
    started = time.perf_counter()
    sent = shown = 0
    new_item_at = len(events) // 2
    rng = np.random.default_rng(0)
    try:
        for n, event in enumerate(events):
            if time.perf_counter() - started > seconds - 6.0:
                break
            if n == new_item_at:
                producer.produce(
                    settings.topics.items, key=NEW_ITEM.item_id.encode(), value=encode(NEW_ITEM)
                )
                print(
                    f"** catalog upsert: new item {NEW_ITEM.item_id} '{NEW_ITEM.name}' "
                    "(no history: its vector comes from name, category, brand and price)\n"
                )
            if n > new_item_at and rng.random() < 0.05:
                event = dataclasses.replace(event, item_id=NEW_ITEM.item_id)
            event = dataclasses.replace(event, ts=event.ts + shift)
            with live._lock:
                live.sent_at[(event.user_id, event.ts)] = time.perf_counter()
            producer.produce(
                settings.topics.events, key=event.user_id.encode(), value=encode(event)
            )
            producer.poll(0)
            sent += 1
            for rec in live.drain():
                print(_line(rec, items))
                shown += 1
            delay = started + (n + 1) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        producer.flush(10)
        time.sleep(3.0)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the worker and the broker ...")
    return {"sent": sent}


def _ask_api(url: str, user: str, item: str, items: dict[str, Item]) -> None:
    """What the worker's query API answers for a live user and for one of the user's items."""
    from sessionrec.stream_cmd import ask_api

    print(f"\n5. the worker's query API ({url}) asked directly:")
    for path in (f"/v1/users/{user}/recommendations?k=3", f"/v1/items/{item}/similar?k=3"):
        try:
            answer = ask_api(url + path, None, "", API_TIMEOUT_S)
        except ValueError as exc:
            print(f"   GET {path}: no answer ({exc})")
            continue
        names = "; ".join(
            (items[i["item_id"]].name or i["item_id"]) if i["item_id"] in items else i["item_id"]
            for i in answer["items"]
        )
        print(f"   GET {path}\n       -> {names} [{answer['reason']}]")


def _print_summary(summary: dict[str, int], live: Live, settings: Settings) -> None:
    lat = np.array(live.latencies) if live.latencies else np.zeros(1)
    print("\n--- demo summary ---")
    print(f"events produced:          {summary['sent']}")
    print(f"recommendations received: {len(live.latencies)} matched to their event")
    print(
        f"latency produce -> consume: p50 {np.percentile(lat, 50):.1f} ms, "
        f"p99 {np.percentile(lat, 99):.1f} ms (broker, worker and demo share this machine)"
    )
    print("\nrun each piece by hand:")
    print("  .venv/bin/sessionrec broker --port 9092          # terminal 1")
    print("  .venv/bin/sessionrec topics")
    print("  .venv/bin/sessionrec train --format retailrocket --data DIR --out var/models")
    print("  .venv/bin/sessionrec worker --model-dir var/models  # terminal 2")
    print("  .venv/bin/sessionrec replay FILE --format retailrocket --rate 50")
    print("  .venv/bin/sessionrec tail                          # terminal 3")
    print("  .venv/bin/sessionrec recommend --user USER         # the query API (port 8080)")
