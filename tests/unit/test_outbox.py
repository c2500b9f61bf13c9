from __future__ import annotations

import asyncio

import pytest

from sessionrec.models.config import Settings
from sessionrec.stream.kafka import Outbox, producer_config


def test_a_batch_no_broker_takes_fails_with_the_reason_after_its_attempts() -> None:
    # Nothing listens on port 1: librdkafka gives up on each message after its timeout.
    outbox = Outbox(
        producer_config(Settings(bootstrap="127.0.0.1:1"), **{"message.timeout.ms": 300}),
        attempts=2,
        poll_s=0.01,
    )

    async def send() -> None:
        await asyncio.wait_for(outbox.send([("recs", b"u1", b"{}", None)]), 20)

    with pytest.raises(RuntimeError, match="refused 2 times"):
        asyncio.run(send())
    assert outbox.take_retried() == 1
    assert outbox.close(0.1) == 0


def test_a_message_too_large_to_produce_fails_alone_not_its_batch() -> None:
    outbox = Outbox(producer_config(Settings(bootstrap="127.0.0.1:1")), attempts=2, poll_s=0.01)

    async def send() -> None:
        await asyncio.wait_for(outbox.send([("events.dlq", b"u1", b"x" * 2_000_000, None)]), 5)

    asyncio.run(send())  # resolves: the one message is dropped, not retried
    assert outbox.take_dropped() == {"events.dlq": 1}
    assert outbox.take_dropped() == {} and outbox.take_retried() == 0
    assert outbox.close(0.1) == 0
