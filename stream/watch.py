"""A worker's background watcher: every partition of `items`, `model-updates`, and CURRENT.

Heavy work (loading and verifying a model version, composing vectors for the whole catalog)
happens here, off the event loop; the agent only swaps finished objects in between batches.
The watcher is supervised: whatever fails inside it is logged and counted, the metric
`sessionrec_watcher_up` drops to 0, and it starts again after RESTART_S.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from ..models.artifact import ArtifactError, check_version, current_version, version_path
from ..models.codec import MAX_ID_CHARS, DecodeError, decode_item
from ..models.config import Settings
from ..models.records import Item
from ..models.serving import CatalogChange, ServingModel, load_current, load_serving
from ..models.store import RemoteStore, take
from . import metrics
from .kafka import consumer_config, ready_messages

log = logging.getLogger(__name__)
POLL_S = 0.2
CURRENT_CHECK_S = 2.0
STORE_CHECK_S = 10.0  # how often a remote store's CURRENT is read (and on every announcement)
RESTART_S = 5.0
TOPIC_CHECK_S = 5.0  # how often a missing topic is looked for
# Catalog items composed at a time, and the share of its time the watcher's thread spends
# composing (it sleeps the rest): composing is Python that takes turns with the event loop for
# the GIL, so a long run of it would leave each batch on the loop only half of it.
PREPARE_SLICE = 2048
PREPARE_DUTY = 0.25


class Watcher(threading.Thread):
    """`model_dir`: where versions are loaded from; with a remote `store`, the local cache
    the watcher copies the store's current version into (checked) before loading it."""

    def __init__(
        self,
        settings: Settings,
        model_dir: Path,
        serving: ServingModel | None,
        store: RemoteStore | None = None,
    ):
        super().__init__(name="sessionrec-watcher", daemon=True)
        self.settings = settings
        self.model_dir = model_dir
        self.store = store
        self._store_checked = 0.0
        self.catalog: dict[str, Item] = {}
        self._lock = threading.Lock()
        self._pending_changes: list[CatalogChange] = []
        self._pending_model: ServingModel | None = None
        # The model upserts are prepared for: the one served, or the one loaded to be.
        self._target = serving
        self._version = serving.version if serving is not None else None
        self._received: list[Item] = []  # upserts read and not prepared yet
        self._stop = threading.Event()
        self.refused: set[str] = set()
        self._offsets: dict[tuple[str, int], int] = {}  # where a restart goes on reading
        self._awaited: set[str] = set()  # topics said to be missing
        # While the catalog's history is read at start, refused upserts are counted and
        # reported in one line (a compacted topic keeps them: every start reads them again).
        self._catching_up = True
        self._refused_items = 0
        self._first_refusal = ""

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> tuple[ServingModel | None, list[CatalogChange]]:
        """What is ready since the last call: a loaded model (or None), and catalog changes
        prepared for the newest model (with a loaded model, the first is its whole catalog)."""
        with self._lock:
            model, changes = self._pending_model, self._pending_changes
            self._pending_model, self._pending_changes = None, []
        return model, changes

    def run(self) -> None:
        """Follow, and start again after any failure, until stopped."""
        while not self._stop.is_set():
            try:
                metrics.WATCHER_UP.set(1)
                self._follow()
            except Exception as exc:
                metrics.WATCHER_UP.set(0)
                metrics.WATCHER_ERRORS.inc()
                log.error(
                    "watcher failed (%s: %s); starting again in %.0f s",
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                    RESTART_S,
                )
                self._stop.wait(RESTART_S)

    def _follow(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        t = self.settings.topics
        # Partitions are assigned, not subscribed: the group id is never joined.
        group = f"sessionrec-watch-{id(self)}"
        consumer = Consumer(consumer_config(self.settings, group, **{"enable.auto.commit": False}))
        try:
            followed: dict[str, list[int]] = {}  # topic -> its partitions, once it exists
            last_check = last_topics = 0.0
            while not self._stop.is_set():
                if len(followed) < 2 and time.monotonic() - last_topics > TOPIC_CHECK_S:
                    last_topics = time.monotonic()
                    if self._find_topics(consumer, followed):
                        consumer.assign(
                            [
                                TopicPartition(topic, p, self._offsets.get((topic, p), 0))
                                for topic, parts in followed.items()
                                for p in parts
                            ]
                        )
                if not followed:
                    self._stop.wait(POLL_S)
                ready = ready_messages(consumer, POLL_S, 500) if followed else []
                if not ready and t.items in followed and self._catching_up:
                    self._caught_up()
                for msg in ready:
                    value = msg.value()
                    if msg.error():
                        continue
                    self._offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
                    if msg.topic() == t.items:
                        self._on_item(msg.key(), value)
                    elif value is not None:
                        self._prepare()  # upserts read before the announcement go first
                        self._on_update(value)
                self._prepare()
                if time.monotonic() - last_check > CURRENT_CHECK_S:
                    last_check = time.monotonic()
                    self._check_current()
        finally:
            consumer.close()

    def _caught_up(self) -> None:
        self._catching_up = False
        if self._refused_items:
            log.warning(
                "%d item upserts in %s refused (first: %s)",
                self._refused_items,
                self.settings.topics.items,
                self._first_refusal,
            )

    def _find_topics(self, consumer: Any, followed: dict[str, list[int]]) -> bool:
        """Add the topics that exist now to `followed`; say once that a topic is awaited, and
        when it appears. Returns whether any was added."""
        t = self.settings.topics
        added = False
        for topic in (t.items, t.model_updates):
            if topic in followed:
                continue
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                if topic not in self._awaited:
                    self._awaited.add(topic)
                    log.warning(
                        "topic %s does not exist yet: waiting for it (run 'sessionrec topics')",
                        topic,
                    )
                continue
            followed[topic] = sorted(meta.partitions)
            added = True
            if topic in self._awaited:
                log.info("topic %s exists now: following it", topic)
        return added

    def _check_current(self) -> None:
        if self.store is not None and time.monotonic() - self._store_checked > STORE_CHECK_S:
            self._fetch_from_store()
        try:
            version = current_version(self.model_dir)
        except ArtifactError as exc:
            self._refuse_once("CURRENT", str(exc))
            return
        if version and version != self._version and version not in self.refused:
            self._load(version)

    def _fetch_from_store(self) -> None:
        """Copy the version the remote store's CURRENT names into the cache, checked against
        its manifest, and point the cache's CURRENT at it (`_check_current` then loads it).
        A version that fails its check is refused; an unreachable store is tried again."""
        assert self.store is not None
        self._store_checked = time.monotonic()
        version = None
        try:
            version = self.store.current()
            if version is None or version in self.refused:
                return
            take(self.store, version, self.model_dir, self.settings.keep_versions)
        except ArtifactError as exc:
            self._refuse_once(version or "CURRENT", str(exc))
        except Exception as exc:  # the store unreachable, a network error: next time
            metrics.MODEL_FETCH_FAILED.inc()
            log.warning(
                "cannot read the model store %s (%s: %s); still serving %s",
                self.store.url,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                self._version,
            )

    def _refuse_once(self, version: str, reason: str) -> None:
        if version not in self.refused:
            self.refused.add(version)
            metrics.MODEL_REFUSED.inc()
            log.error("refused model %s, still serving %s: %s", version, self._version, reason)

    def _on_item(self, key: bytes | None, raw: bytes | None) -> None:
        """An item upsert; a record with a key and no value (a compacted topic's tombstone)
        deletes the item."""
        try:
            item = _tombstone(key) if raw is None else decode_item(raw)
        except DecodeError as exc:
            if self._catching_up:  # the topic's history: one line for all of it, at the end
                self._refused_items += 1
                self._first_refusal = self._first_refusal or str(exc)
            else:
                log.warning("refused item upsert: %s", exc)
            return
        self.catalog[item.item_id] = item
        self._received.append(item)

    def _prepare(self) -> None:
        """Compose the vectors of the upserts read since the last call, for the model they
        will be applied to, and leave them to be taken."""
        if not self._received:
            return
        items, self._received = self._received, []
        target = self._target
        # With no model yet, the pipeline only notes which items are live.
        change = self._paced(target, items) if target is not None else CatalogChange.unserved(items)
        with self._lock:
            self._pending_changes.append(change)

    def _paced(
        self, serving: ServingModel, items: list[Item], only_changed: bool = False
    ) -> CatalogChange:
        """`serving.prepare(items, only_changed)`, PREPARE_SLICE items at a time, resting
        between slices so that composing takes at most PREPARE_DUTY of this thread's time."""
        latest = list({item.item_id: item for item in items}.values())
        parts = []
        for start in range(0, max(len(latest), 1), PREPARE_SLICE):
            began = time.perf_counter()
            parts.append(serving.prepare(latest[start : start + PREPARE_SLICE], only_changed))
            if start + PREPARE_SLICE < len(latest):
                self._stop.wait((time.perf_counter() - began) * (1 / PREPARE_DUTY - 1))
        change = CatalogChange.joined(parts)
        change.received = len(items)
        return change

    def _on_update(self, raw: bytes) -> None:
        try:
            data = orjson.loads(raw)
            version = check_version(data["version"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ArtifactError) as exc:
            log.warning(
                'ignored model-updates message: not {"version": <plain name>} (%s): %r',
                str(exc)[:200],
                raw[:100],
            )
            return
        if version == self._version or version in self.refused:
            return
        if self.store is not None:  # copied into the cache first; loaded once it is current
            self._fetch_from_store()
            self._check_current()
        else:
            self._load(version)

    def _load(self, version: str) -> None:
        started = time.perf_counter()
        try:
            path = version_path(self.model_dir, version)
            serving = load_serving(path, self.settings.weights, ef=self.settings.index_ef)
        except ArtifactError as exc:
            self._refuse_once(version, str(exc))
            return
        except Exception as exc:  # anything else a bad artifact can raise: refused too
            self._refuse_once(version, f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        self._prepare()  # the catalog below holds them: none waits for the model it replaces
        catalog = list(self.catalog.values())
        change = self._paced(serving, catalog, only_changed=True)
        with self._lock:
            self._pending_model = serving
            self._pending_changes = [change]  # those before were for the model replaced
        self._target = serving
        self._version = version
        log.info(
            "model %s loaded in %.2fs (%d items); %d of the catalog's %d items go into its "
            "index before it is served",
            version,
            time.perf_counter() - started,
            len(serving.index),
            int(change.moved.sum()),
            len(catalog),
        )


def load_model(settings: Settings, model_dir: Path) -> ServingModel | None:
    """The current model version, or None (trending items are served until one loads)."""
    try:
        serving = load_current(model_dir, settings.weights, ef=settings.index_ef)
    except ArtifactError as exc:
        log.error("current model unusable, serving trending items until one loads: %s", exc)
        return None
    if serving is None:
        log.warning("no model in %s yet: answering with trending items", model_dir)
    return serving


def _tombstone(key: bytes | None) -> Item:
    try:
        item_id = (key or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("item: tombstone key is not UTF-8") from None
    if not 0 < len(item_id) <= MAX_ID_CHARS:
        raise DecodeError(f"item: tombstone key is {item_id[:60]!r}, expected an item id")
    return Item(item_id, deleted=True)
