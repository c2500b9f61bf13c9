"""A small, seeded, realistic shop: a catalog and user sessions with several intents.

Used by the demo and by tests that need known structure (items of one category and brand
are co-viewed), so nothing outside the repository is needed to try sessionrec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .records import Event, EventType, Item

_CATEGORIES: dict[str, tuple[list[str], float]] = {
    "running shoes": (["trail", "road", "racing", "cushioned", "light"], 110.0),
    "headphones": (["wireless", "noise-cancelling", "studio", "sport", "earbuds"], 90.0),
    "coffee": (["espresso", "arabica", "decaf", "dark roast", "single origin"], 14.0),
    "tents": (["2-person", "ultralight", "family", "dome", "tunnel"], 220.0),
    "smartphones": (["5g", "compact", "camera", "budget", "flagship"], 520.0),
    "yoga": (["mat", "block", "strap", "towel", "wheel"], 30.0),
    "board games": (["strategy", "party", "family", "cooperative", "card"], 35.0),
    "cookware": (["skillet", "saucepan", "wok", "dutch oven", "nonstick"], 60.0),
}
_BRANDS = ["Acme", "Nordkap", "Zephyr", "Lumo", "Orbit", "Kestrel", "Vanta", "Tidal"]
_COLOURS = ["black", "blue", "red", "green", "grey", "white"]


@dataclass(frozen=True, slots=True)
class Shop:
    items: list[Item]
    events: list[Event]


def make_catalog(rng: np.random.Generator, per_category: int = 40) -> list[Item]:
    items: list[Item] = []
    for c, (category, (kinds, base_price)) in enumerate(_CATEGORIES.items()):
        brands = rng.choice(_BRANDS, size=4, replace=False)
        for i in range(per_category):
            kind = kinds[i % len(kinds)]
            brand = str(brands[(i // len(kinds)) % len(brands)])
            # Items of one kind and brand come round every 20: each round its own colour, so
            # that no two items share a name.
            colour = _COLOURS[(i // (len(kinds) * len(brands)) + c) % len(_COLOURS)]
            price = round(float(base_price * rng.lognormal(0.0, 0.35)), 2)
            items.append(
                Item(
                    item_id=f"i{c:02d}{i:03d}",
                    name=f"{brand} {kind} {category.rstrip('s')} {colour}",
                    category=category,
                    brand=brand,
                    price=price,
                )
            )
    return items


def _session_events(
    rng: np.random.Generator, user: str, start_ms: int, by_category: list[list[Item]]
) -> list[Event]:
    events: list[Event] = []
    ts = start_ms
    n_intents = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    for c in rng.choice(len(by_category), size=n_intents, replace=False):
        pool = by_category[int(c)]
        focus = pool[int(rng.integers(len(pool)))]
        kind_word = str(focus.name).split()[1]
        near = [it for it in pool if it.brand == focus.brand or kind_word in str(it.name)]
        for _ in range(int(rng.integers(2, 7))):
            item = (
                near[int(rng.integers(len(near)))]
                if rng.random() < 0.8
                else pool[int(rng.integers(len(pool)))]
            )
            ts += int(rng.integers(5_000, 90_000))
            kind: EventType = "view"
            roll = rng.random()
            if roll < 0.12:
                kind = "cart"
            elif roll < 0.16:
                kind = "buy"
            elif roll < 0.18:
                kind = "remove_from_cart"
            events.append(Event(user_id=user, item_id=item.item_id, type=kind, ts=ts))
    return events


def make_shop(
    seed: int = 7, users: int = 300, sessions_per_user: int = 3, start_ms: int = 1_767_225_600_000
) -> Shop:
    """A catalog of 320 items and the events of `users` users, sorted by event time."""
    rng = np.random.default_rng(seed)
    items = make_catalog(rng)
    by_category: list[list[Item]] = [
        [it for it in items if it.category == cat] for cat in _CATEGORIES
    ]
    events: list[Event] = []
    for u in range(users):
        ts = start_ms + int(rng.integers(0, 3_600_000))
        for _ in range(sessions_per_user):
            session = _session_events(rng, f"u{u:04d}", ts, by_category)
            events.extend(session)
            ts = session[-1].ts + int(rng.integers(25 * 60_000, 6 * 3_600_000))
    events.sort(key=lambda e: (e.ts, e.user_id))
    return Shop(items, events)
