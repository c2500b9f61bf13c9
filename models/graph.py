"""Every link of a saved hnswlib graph checked, in one linear pass over the file.

hnswlib trusts its file: a neighbour id past the last element, a link count past the
element's room, or a link at a level its target does not reach makes a search read outside
its memory, and the process crashes when a query first walks there (a sampled search passes
such a graph). `check_graph` reads the file as hnswlib 0.8 writes it (`saveIndex` in
hnswalg.h) and refuses it, naming the first fault, before any process loads it.

Layout: a header, then each element's level-0 block (a link count, `maxM0` neighbour ids,
the vector, the label), then for each element a byte size and its upper-level blocks (a link
count and `maxM` ids per level).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset, offsetData
# (size_t each), maxlevel (int), enterpoint (uint32), maxM, maxM0, M (size_t), mult (double),
# ef_construction (size_t)
_HEADER = np.dtype(
    [
        ("offset_level0", "<u8"),
        ("max_elements", "<u8"),
        ("count", "<u8"),
        ("size_per_element", "<u8"),
        ("label_offset", "<u8"),
        ("offset_data", "<u8"),
        ("max_level", "<i4"),
        ("entry", "<u4"),
        ("max_m", "<u8"),
        ("max_m0", "<u8"),
        ("m", "<u8"),
        ("mult", "<f8"),
        ("ef_construction", "<u8"),
    ]
)
MAX_LEVEL = 64  # hnswlib draws levels as -ln(U) * mult: a few, never dozens
CHUNK = 65_536  # level-0 elements checked at a time


class GraphError(ValueError):
    """The graph file is not one hnswlib can search safely; the message names the fault."""


def check_graph(file: Path, dim: int, n: int) -> None:
    """Check every link of `file`, a saved graph of `n` vectors of `dim` float32, whose labels
    must be 0..n-1. Raises `GraphError` naming the first fault."""
    raw = np.fromfile(file, dtype=np.uint8)
    if len(raw) < _HEADER.itemsize:
        raise GraphError(f"the file has {len(raw)} bytes, less than a header")
    h = raw[: _HEADER.itemsize].view(_HEADER)[0]
    count, max_m, max_m0 = int(h["count"]), int(h["max_m"]), int(h["max_m0"])
    per_element = 4 + 4 * max_m0 + 4 * dim + 8
    _expect(count == n, f"it holds {count} elements, expected {n}")
    _expect(int(h["offset_level0"]) == 0, "level 0 does not start its elements")
    _expect(0 < max_m <= max_m0 <= 4096, f"link room {max_m}/{max_m0} is not plausible")
    _expect(int(h["size_per_element"]) == per_element, "the element size does not fit the dim")
    _expect(int(h["offset_data"]) == 4 + 4 * max_m0, "the vector offset is wrong")
    _expect(int(h["label_offset"]) == 4 + 4 * max_m0 + 4 * dim, "the label offset is wrong")
    _expect(0 <= int(h["max_level"]) < MAX_LEVEL, f"top level {int(h['max_level'])}")
    _expect(n == 0 or int(h["entry"]) < n, f"entry point {int(h['entry'])} is not an element")
    start = _HEADER.itemsize
    end = start + n * per_element
    _expect(len(raw) >= end, "the file ends inside level 0")
    level0 = raw[start:end].reshape(n, per_element)
    labels = np.zeros(n, dtype=bool)
    for first in range(0, n, CHUNK):  # a chunk at a time: a 1M graph is about 700 MB
        _check_level0(level0[first : first + CHUNK], first, n, max_m0, dim, labels)
    _expect(bool(labels.all()), "the labels are not the item rows 0..n-1, each once")
    levels = _check_upper(raw[end:], n, max_m, int(h["max_level"]))
    if n:
        entry = int(h["entry"])
        _expect(levels[entry] == int(h["max_level"]), "the entry point is not on the top level")


def _expect(ok: bool, fault: str) -> None:
    if not ok:
        raise GraphError(fault)


def _check_level0(
    level0: np.ndarray, first: int, n: int, max_m0: int, dim: int, seen: np.ndarray
) -> None:
    """Elements `first`.. of level 0: link counts, neighbour ids, vectors; their labels are
    marked in `seen` (each must be a row 0..n-1, and new)."""
    counts = level0[:, :2].copy().view("<u2")[:, 0].astype(np.int64)
    bad = np.flatnonzero(counts > max_m0)
    _expect(
        not len(bad), f"element {first + int(bad[0]) if len(bad) else 0} has more links than room"
    )
    links = level0[:, 4 : 4 + 4 * max_m0].copy().view("<u4")
    outside = (np.arange(max_m0)[None, :] < counts[:, None]) & (links >= n)
    if outside.any():
        row = first + int(np.flatnonzero(outside.any(axis=1))[0])
        raise GraphError(f"element {row} links to an element that does not exist (level 0)")
    data = level0[:, 4 + 4 * max_m0 : 4 + 4 * max_m0 + 4 * dim].copy().view("<f4")
    _expect(bool(np.isfinite(data).all()), "a vector holds a value that is not finite")
    labels = level0[:, 4 + 4 * max_m0 + 4 * dim :].copy().view("<u8")[:, 0]
    _expect(bool((labels < n).all()), "a label is not an item row")
    _expect(not seen[labels].any() and len(np.unique(labels)) == len(labels), "a label repeats")
    seen[labels] = True


def _check_upper(rest: np.ndarray, n: int, max_m: int, top: int) -> np.ndarray:
    """Each element's upper levels: sizes, counts, ids, and that every link at level l
    reaches an element that has level l. Returns each element's level."""
    block = 4 + 4 * max_m
    levels = np.zeros(n, dtype=np.int64)
    lists: list[tuple[int, np.ndarray]] = []  # (element, its upper blocks as uint32 rows)
    at = 0
    for element in range(n):
        _expect(at + 4 <= len(rest), f"the file ends before element {element}'s upper levels")
        size = int(rest[at : at + 4].view("<u4")[0])
        at += 4
        if not size:
            continue
        _expect(size % block == 0, f"element {element}'s upper levels have a broken size")
        _expect(size // block <= top, f"element {element} is above the top level")
        _expect(at + size <= len(rest), f"the file ends inside element {element}'s levels")
        levels[element] = size // block
        lists.append((element, rest[at : at + size].copy().view("<u4").reshape(-1, 1 + max_m)))
        at += size
    _expect(at == len(rest), "the file has bytes after the last element")
    for element, rows in lists:
        counts = rows[:, 0] & 0xFFFF
        _expect(bool((counts <= max_m).all()), f"element {element} has more links than room")
        for level, (k, row) in enumerate(zip(counts.tolist(), rows, strict=True), start=1):
            targets = row[1 : 1 + k].astype(np.int64)
            _expect(
                bool((targets < n).all()) and bool((levels[targets] >= level).all()),
                f"element {element} links to an element missing from level {level}",
            )
    return levels
