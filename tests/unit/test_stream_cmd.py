"""What `sessionrec replay` shows while it produces."""

from __future__ import annotations

import io

from tqdm import tqdm

from sessionrec.stream_cmd import progress


def test_the_replay_bar_counts_events_not_reports() -> None:
    bar = tqdm(total=250, file=io.StringIO())  # a real bar, drawn nowhere
    sent = progress(bar, 250)
    for n in range(1, 251):
        sent(n)
        if n == 150:
            assert bar.n == 100  # moved every 100 events, by 100
    assert bar.n == 250  # and to the end at the last one
