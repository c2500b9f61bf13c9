"""The seeded sample shop of the demo and of tests."""

from __future__ import annotations

import numpy as np

from sessionrec.models.shop import make_catalog, make_shop


def test_the_sample_shop_names_every_item_differently() -> None:
    items = make_catalog(np.random.default_rng(7))
    assert len(items) == 320 and len({i.name for i in items}) == 320


def test_the_sample_shop_is_the_same_for_a_seed() -> None:
    assert make_shop(seed=3, users=20) == make_shop(seed=3, users=20)
