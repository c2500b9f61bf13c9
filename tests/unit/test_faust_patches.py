"""The worker's eager message delivery keeps faust's rules: a delivery that has to wait is
finished later, and abandoned when the consumer suspends its flow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from stream.faust_patches import deliver


class _Consumer(Service):
    """What `deliver` uses of faust's consumer: mode's `wait_first` and a `suspend_flow`."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


def test_a_delivery_that_need_not_wait_runs_in_place() -> None:
    async def main() -> tuple[list[str], int]:
        consumer, got = _Consumer(), []

        async def callback(message: str) -> None:
            got.append(message)

        tasks = len(asyncio.all_tasks())
        await deliver(callback, "m1", consumer)
        return got, len(asyncio.all_tasks()) - tasks

    got, new_tasks = asyncio.run(main())
    assert got == ["m1"] and new_tasks == 0


def test_a_delivery_that_waits_is_finished_with_its_result_or_error() -> None:
    async def main() -> list[Any]:
        consumer, got = _Consumer(), []
        room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def callback(message: str) -> None:
            await asyncio.sleep(0)  # a bare yield first
            got.append((message, await room))

        later = asyncio.get_running_loop().call_later(0.01, room.set_result, "room")
        await deliver(callback, "m2", consumer)
        later.cancel()

        failing: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def broken(message: str) -> None:
            await failing

        asyncio.get_running_loop().call_later(0.01, failing.set_exception, KeyError("bad"))
        with pytest.raises(KeyError):
            await deliver(broken, "m3", consumer)
        return got

    assert asyncio.run(main()) == [("m2", "room")]


def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended() -> None:
    async def main() -> list[str]:
        consumer, seen = _Consumer(), []
        never = asyncio.Event()

        async def callback(message: str) -> None:
            try:
                await never.wait()
            except asyncio.CancelledError:
                seen.append(f"{message} cancelled")
                raise

        asyncio.get_running_loop().call_later(0.01, consumer.suspend_flow.set)
        await asyncio.wait_for(deliver(callback, "m4", consumer), 5)
        await asyncio.sleep(0.01)  # the abandoned delivery's cancellation runs
        return seen

    assert asyncio.run(main()) == ["m4 cancelled"]
