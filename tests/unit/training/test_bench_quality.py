"""The quality benchmark's measurements beyond the main table: each dataset over seeds on its
validation split and test set, and items held out of training then added from metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sessionrec.benchmarks.training import across_seeds, cold_start
from sessionrec.training.data import load_srgnn
from sessionrec.training.evaluate import trained_recommender
from sessionrec.training.trainer import TrainConfig, train

CONFIG = TrainConfig(
    epochs=12, batch_size=64, negatives=64, batch_negatives=32, lr=0.01, progress=False
)
ITEMS, BLOCK = 200, 10


def _ring(directory: Path) -> None:
    """Sessions that walk up a ring of ITEMS items (ids 1 to ITEMS), each run of BLOCK items
    one category; test cases whose next item is the one after."""
    rng = np.random.default_rng(0)
    sessions = [[(s + j) % ITEMS for j in range(int(rng.integers(2, 6)))] for s in range(3 * ITEMS)]
    (directory / "train_sessions.txt").write_text(
        "\n".join(" ".join(str(i + 1) for i in s) for s in sessions) + "\n"
    )
    tests = [f"{s + 1} {(s + 1) % ITEMS + 1}\t{(s + 2) % ITEMS + 1}" for s in range(ITEMS)]
    (directory / "test.tsv").write_text("\n".join(tests) + "\n")
    (directory / "item_category.tsv").write_text(
        "".join(f"{i + 1}\tc{i // BLOCK}\n" for i in range(ITEMS))
    )


def test_each_split_is_scored_over_the_seeds_with_their_spread(tmp_path: Path) -> None:
    _ring(tmp_path)
    rows = across_seeds(tmp_path, CONFIG, 2)
    assert [(r["data"], r["split"]) for r in rows] == [
        (tmp_path.name, "validation"),
        (tmp_path.name, "test"),
    ]
    validation, test = rows
    # The last 10 % of the 600 training sessions, every prefix of each; and test.tsv's lines.
    assert test["cases"] == ITEMS and 0 < validation["cases"] < 4 * 60
    for row in rows:
        assert row["seeds"] == [0, 1]
        for k in ("recall_at_20", "mrr_at_20"):
            low, high = row[f"{k}_spread"]
            assert low <= row[k] <= high
        assert row["recall_at_5"] <= row["recall_at_10"] <= row["recall_at_20"]
    assert test["recall_at_20"] > 90  # the ring is learnt


def test_items_held_out_of_training_are_added_from_their_metadata_and_found(
    tmp_path: Path,
) -> None:
    _ring(tmp_path)
    warm = trained_recommender(train(load_srgnn(tmp_path), CONFIG), CONFIG.weights)
    c = cold_start(tmp_path, CONFIG, warm)
    assert c["held_out_items"] == ITEMS // 10 and c["of_items"] == ITEMS
    # Every test case whose next item was held out, and no other.
    assert c["cases"] == ITEMS // 10
    assert c["random_recall_at_20"] == 10.0  # 20 of the 200 items
    # Held out, a next item is known only by its category: the lists find it far more often
    # than chance does, and less often than when it was trained.
    assert c["cold_recall_at_20"] > 2 * c["random_recall_at_20"]
    assert c["warm_recall_at_20"] >= c["cold_recall_at_20"]
