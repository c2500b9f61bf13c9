"""The faust floor: what the worker costs when its pipeline does nothing with the events.

`python -m sessionrec.benchmarks.floor SETTINGS` runs the real worker
(`stream.app.run_worker`: faust app, session table, `take_batches`, Outbox, acks once delivered)
with `EchoPipeline`, which answers each event with its `event_ts` only: no sessions, no model,
no state written. The
stream benchmark runs it next to the worker at the same rate, so the report shows how much of
the worker's CPU and latency is faust's, the client libraries' and the broker's, whatever the
pipeline does. SETTINGS: a pickled `Settings` written by `command`.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from sessionrec.models.config import Settings
from sessionrec.stream.app import run_worker
from sessionrec.stream.kafka import OutMessage
from sessionrec.stream.pipeline import Incoming, Pipeline


class EchoPipeline(Pipeline):
    async def run(
        self,
        batches: AsyncIterator[tuple[list[Incoming], list[Any]]],
        acknowledge: Callable[[Any], Awaitable[Any]],
    ) -> None:
        assert self.outbox is not None  # connected by build_app
        topic = self.topics.recommendations
        async for incoming, handles in batches:
            messages: list[OutMessage] = [
                (topic, m.key, orjson.dumps({"event_ts": orjson.loads(m.value)["ts"]}), None)
                for m in incoming
                if m.value is not None
            ]
            await self.outbox.send(messages)
            for handle in handles:
                await acknowledge(handle)


def command(settings: Settings, path: Path) -> list[str]:
    """The command line that runs the floor with `settings` (written to `path`)."""
    path.write_bytes(pickle.dumps(settings))
    return [sys.executable, "-m", "sessionrec.benchmarks.floor", str(path)]


def main(path: str) -> None:
    settings: Settings = pickle.loads(Path(path).read_bytes())
    run_worker(settings, Path(settings.model_dir), pipeline_type=EchoPipeline)


if __name__ == "__main__":
    main(sys.argv[1])
