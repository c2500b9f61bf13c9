"""One real embedded broker (Tansu) for the whole test session; a fresh topic/group per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionrec.stream.broker import BrokerError, EmbeddedBroker

pytestmark = pytest.mark.integration

BROKER_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    try:
        with EmbeddedBroker(port=0) as running:
            yield running
    except BrokerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"embedded broker unavailable: {exc}")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def retailrocket_model(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A model trained on the RetailRocket events (ids match the events replayed in tests)."""
    from sessionrec.models.session import SessionConfig
    from sessionrec.training.data import load_retailrocket
    from sessionrec.training.export import export
    from sessionrec.training.trainer import TrainConfig, train

    corpus = load_retailrocket(shared_data / "retailrocket-events", SessionConfig())
    trained = train(corpus, TrainConfig(epochs=2, progress=False))
    model_dir = tmp_path_factory.mktemp("models-rr")
    export(trained, model_dir, {"data": "retailrocket"})
    return model_dir


@pytest.fixture(scope="session")
def diginetica3_model(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    from sessionrec.training.data import load_diginetica_events
    from sessionrec.training.export import export
    from sessionrec.training.trainer import TrainConfig, train

    corpus = load_diginetica_events(shared_data / "diginetica-3day" / "events.tsv")
    trained = train(corpus, TrainConfig(epochs=2, progress=False))
    model_dir = tmp_path_factory.mktemp("models-dg3")
    export(trained, model_dir, {"data": "diginetica-3day"})
    return model_dir
