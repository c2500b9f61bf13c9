"""What a query may filter on (category, brand, price, named items), and the catalog metadata
the filters read.

A filtered query searches the index among the items that pass (`ItemIndex.search`'s
`allowed`), and may return fewer than k items when few pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_FILTER_VALUES = 100  # values of one filter (categories, brands or excluded items)
MAX_VALUE_CHARS = 256


@dataclass
class ItemMetadata:
    """Index label -> category, brand and price (absent: unknown), kept up to date with the
    catalog's upserts by `models.serving.ServingModel`."""

    categories: dict[int, str | None] = field(default_factory=dict)
    brands: dict[int, str | None] = field(default_factory=dict)
    prices: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Filters:
    """Which items an answer may hold. Empty sets and None bounds filter nothing; an item of
    unknown price passes no price bound."""

    categories: frozenset[str] = frozenset()  # only these categories
    not_categories: frozenset[str] = frozenset()
    brands: frozenset[str] = frozenset()  # only these brands
    not_brands: frozenset[str] = frozenset()
    min_price: float | None = None
    max_price: float | None = None
    exclude: frozenset[str] = frozenset()  # these items never

    def narrows(self) -> bool:
        """Whether anything besides `exclude` is filtered (the search must go deeper)."""
        return bool(
            self.categories
            or self.not_categories
            or self.brands
            or self.not_brands
            or self.min_price is not None
            or self.max_price is not None
        )

    def passes(self, label: int, m: ItemMetadata) -> bool:
        """Whether the item of index `label` passes the category, brand and price filters."""
        category, brand = m.categories.get(label), m.brands.get(label)
        if self.categories and category not in self.categories:
            return False
        if category is not None and category in self.not_categories:
            return False
        if self.brands and brand not in self.brands:
            return False
        if brand is not None and brand in self.not_brands:
            return False
        if self.min_price is None and self.max_price is None:
            return True
        price = m.prices.get(label)
        if price is None:
            return False
        low = self.min_price if self.min_price is not None else -math.inf
        high = self.max_price if self.max_price is not None else math.inf
        return low <= price <= high


NO_FILTERS = Filters()
LIST_FILTERS = ("categories", "not_categories", "brands", "not_brands", "exclude")
NUMBER_FILTERS = ("min_price", "max_price")


def filters_from(values: dict[str, Any] | None) -> Filters:
    """Filters from a request's fields: the sets as lists of strings, the prices as numbers
    >= 0. Unknown, malformed or out-of-range values raise ValueError naming the filter."""
    if not values:
        return NO_FILTERS
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in LIST_FILTERS:
            out[name] = _strings(name, value)
        elif name in NUMBER_FILTERS:
            out[name] = _price(name, value)
        else:
            raise ValueError(f"filters: unknown filter {str(name)[:40]!r}")
    filters = Filters(**out)
    low, high = filters.min_price, filters.max_price
    if low is not None and high is not None and low > high:
        raise ValueError(f"filters: min_price {low:g} is above max_price {high:g}")
    return filters


def _strings(name: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"filters: {name} is {str(value)[:40]!r}, expected a list of strings")
    if len(value) > MAX_FILTER_VALUES:
        raise ValueError(f"filters: {name} has {len(value)} values, at most {MAX_FILTER_VALUES}")
    if any(len(v) > MAX_VALUE_CHARS for v in value):
        raise ValueError(f"filters: a value of {name} is over {MAX_VALUE_CHARS} characters")
    return frozenset(value)


def _price(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"filters: {name} is {str(value)[:40]!r}, expected a number")
    if value < 0:
        raise ValueError(f"filters: {name} is {value!r}, expected a number >= 0")
    return float(value)
