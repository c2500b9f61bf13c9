"""One real embedded broker (Tansu) for the whole test session; a fresh topic/group per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from stream.broker import BrokerError, EmbeddedBroker

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
