"""A worker's background watcher: every partition of `items`, `model-updates`, and CURRENT.

Heavy work (loading a model version, composing vectors for the whole catalog) happens here, off
the event loop; the agent only swaps finished objects in between batches.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import orjson

from models.artifact import ArtifactError, current_version
from models.codec import DecodeError, decode_item
from models.config import Settings
from models.records import Item
from models.serving import ServingModel, load_serving
from stream import metrics
from stream.kafka import ready_messages

log = logging.getLogger(__name__)
POLL_S = 0.2
CURRENT_CHECK_S = 2.0


class Watcher(threading.Thread):
    def __init__(self, settings: Settings, model_dir: Path, loaded_version: str | None):
        super().__init__(name="sessionrec-watcher", daemon=True)
        self.settings = settings
        self.model_dir = model_dir
        self.catalog: dict[str, Item] = {}
        self._lock = threading.Lock()
        self._pending_items: list[Item] = []
        self._pending_model: ServingModel | None = None
        self._version = loaded_version
        self._stop = threading.Event()
        self.refused: set[str] = set()

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> tuple[ServingModel | None, list[Item]]:
        """What arrived since the last call: a loaded model (or None) and item upserts."""
        with self._lock:
            model, items = self._pending_model, self._pending_items
            self._pending_model, self._pending_items = None, []
        return model, items

    def waiting(self) -> bool:
        """Whether a loaded model or item upserts wait to be taken."""
        with self._lock:
            return self._pending_model is not None or bool(self._pending_items)

    def run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        t = self.settings.topics
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": f"sessionrec-watch-{id(self)}",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        try:
            parts = []
            for topic in (t.items, t.model_updates):
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if meta is not None and meta.error is None:
                    parts += [TopicPartition(topic, p, 0) for p in meta.partitions]
            consumer.assign(parts)
            last_check = 0.0
            while not self._stop.is_set():
                for msg in ready_messages(consumer, POLL_S, 500):
                    value = msg.value()
                    if msg.error() or value is None:
                        continue
                    if msg.topic() == t.items:
                        self._on_item(value)
                    else:
                        self._on_update(value)
                if time.monotonic() - last_check > CURRENT_CHECK_S:
                    last_check = time.monotonic()
                    version = current_version(self.model_dir)
                    if version and version != self._version and version not in self.refused:
                        self._load(version)
        except Exception:
            log.exception("watcher stopped; items and model updates are no longer followed")
        finally:
            consumer.close()

    def _on_item(self, raw: bytes) -> None:
        try:
            item = decode_item(raw)
        except DecodeError as exc:
            log.warning("refused item upsert: %s", exc)
            return
        with self._lock:
            self.catalog[item.item_id] = item
            self._pending_items.append(item)

    def _on_update(self, raw: bytes) -> None:
        try:
            data = orjson.loads(raw)
            version = str(data["version"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning('ignored model-updates message: not {"version": ...}: %r', raw[:100])
            return
        if version != self._version and version not in self.refused:
            self._load(version)

    def _load(self, version: str) -> None:
        path = self.model_dir / version
        started = time.perf_counter()
        try:
            serving = load_serving(path, self.settings.weights, ef=self.settings.index_ef)
        except ArtifactError as exc:
            self.refused.add(version)
            metrics.MODEL_REFUSED.inc()
            log.error("refused model %s, still serving %s: %s", version, self._version, exc)
            return
        with self._lock:
            catalog = list(self.catalog.values())
        serving.apply_items(catalog)
        with self._lock:
            self._pending_model = serving
        self._version = version
        log.info(
            "model %s loaded in %.2fs (%d items, %d catalog upserts applied)",
            version,
            time.perf_counter() - started,
            len(serving.index),
            len(catalog),
        )
