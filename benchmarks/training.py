"""Quality, training and index benchmarks, each measured in the same run as its peers."""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sessionrec.benchmarks.baselines import (
    Popularity,
    VSkNN,
    coverage_and_popularity,
    gensim_item2vec,
    metrics_from_lists,
    score_ranker,
)
from sessionrec.models.config import EventWeights
from sessionrec.models.index import IndexConfig, ItemIndex
from sessionrec.models.ranking import Recommender
from sessionrec.training.data import Corpus, load_srgnn, load_srgnn_test
from sessionrec.training.evaluate import (
    SCORES,
    VALIDATION,
    Case,
    cases_from_srgnn,
    evaluate,
    median_of_seeds,
    recommender_for,
    trained_recommender,
    validation_split,
)
from sessionrec.training.trainer import FAST, TrainConfig, TrainedModel, train

log = logging.getLogger(__name__)

GENSIM_TUNED_EPOCHS = 20  # window 3, 10 negatives, ns_exponent -0.5, sample 1e-5
TIMING_RUNS = 3
EARLIER_EPOCHS = 3  # the default before: timed beside today's (training may take twice as long)
PUBLISHED = [  # ../shared/data/README.md: SR-GNN (AAAI 2019) Table 2, GCE-GNN (SIGIR 2020)
    ("POP", 0.89, 0.20),
    ("Item-KNN", 35.75, 11.57),
    ("GRU4Rec", 29.45, 8.33),
    ("STAMP", 45.64, 14.32),
    ("NARM", 49.70, 16.17),
    ("SR-GNN", 50.73, 17.59),
    ("GCE-GNN", 54.22, 19.04),
]
# Published rows of the other datasets (../shared/data/README.md), by directory name.
PUBLISHED_BY_DATA = {
    "diginetica": PUBLISHED,
    "nowplaying": [("SR-GNN", 18.87, 7.47), ("GCE-GNN", 22.37, 8.40)],
}
COLD_SHARE = 0.1  # of the catalog's items, held out of training for the cold-start measurement


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * 4096 / 2**20


def _recommender_lists(rec: Any, cases: list[Case], k: int = 20) -> list[list[str]]:
    from sessionrec.models.config import QueryDefaults
    from sessionrec.models.ranking import Request

    lists: list[list[str]] = []
    params = QueryDefaults(k=k)
    for start in range(0, len(cases), 2000):
        chunk = cases[start : start + 2000]
        results = rec.recommend([Request(c.prefix, params=params) for c in chunk])
        lists.extend([i["item_id"] for i in r.items] for r in results)
    return lists


def quality(
    data: Path, config: TrainConfig, sknn_cases: int | None = None
) -> tuple[list[dict[str, Any]], TrainedModel, list[Case], list[dict[str, Any]]]:
    """Every method on the same split; ours exact and through HNSW, and with `--fast`;
    training times of both next to gensim's."""
    corpus = load_srgnn(data)
    cases = cases_from_srgnn(load_srgnn_test(data / "test.tsv", Counter()))
    n_items = len({i for s in corpus.sessions for i in s.items} | {c.target for c in cases})
    rows: list[dict[str, Any]] = []

    def add(name: str, lists: list[list[str]], on: list[Case], **extra: Any) -> None:
        row = {
            "method": name,
            **metrics_from_lists(lists, on),
            **coverage_and_popularity(lists, corpus.sessions, n_items),
            **extra,
        }
        rows.append(row)
        log.info("%s: R@20 %.2f MRR@20 %.2f", name, row["recall_at_20"], row["mrr_at_20"])

    pop = Popularity(corpus.sessions)
    add("popularity", score_ranker(pop, cases)[1], cases)
    started = time.perf_counter()
    sknn = VSkNN(corpus.sessions)
    sk_cases = cases if sknn_cases is None else cases[:: max(1, len(cases) // sknn_cases)]
    sk_lists = score_ranker(sknn, sk_cases)[1]
    add(
        "V-SkNN",
        sk_lists,
        sk_cases,
        seconds=round(time.perf_counter() - started, 1),
        note="" if sk_cases is cases else f"every {len(cases) // len(sk_cases)}th case",
    )
    logging.getLogger("gensim").setLevel(logging.WARNING)
    g_seconds = 0.0
    # The peer at our epoch count (the training comparison), and at its own tuned best.
    for epochs in dict.fromkeys((config.epochs, GENSIM_TUNED_EPOCHS)):
        ids, vectors, seconds = gensim_item2vec(corpus.sessions, epochs)
        g_seconds = g_seconds or seconds
        g_rec = recommender_for(
            ids,
            vectors,
            config.dims,
            np.ones(config.max_len, np.float32),
            EventWeights(),
            exact=True,
        )
        add(
            f"gensim skip-gram ({epochs} epochs, tuned)",
            _recommender_lists(g_rec, cases),
            cases,
            train_seconds=round(seconds, 2),
        )
    trained = train(corpus, config)
    approx = trained_recommender(trained, EventWeights())
    exact = trained_recommender(trained, EventWeights(), index=approx.index, exact=True)
    ours_s = trained.stats["train_seconds"]
    add(
        "sessionrec, exact search",
        _recommender_lists(exact, cases),
        cases,
        train_seconds=round(ours_s, 2),
    )
    add(
        "sessionrec, HNSW index",
        _recommender_lists(approx, cases),
        cases,
        train_seconds=round(ours_s, 2),
    )
    # Peers of the default in time: `--fast`, and the default before it trained 5 epochs.
    settings = {"default": config, "--fast": replace(config, **FAST)}
    if config.epochs != EARLIER_EPOCHS:
        settings[f"earlier: {EARLIER_EPOCHS} epochs"] = replace(config, epochs=EARLIER_EPOCHS)
    scored_as = {"default": "sessionrec, HNSW index"}
    runs: dict[str, list[dict[str, float]]] = {"default": [trained.stats]}
    for name, c in list(settings.items())[1:]:
        peer = train(corpus, c)
        scored_as[name] = f"sessionrec ({name}), HNSW index"
        add(
            scored_as[name],
            _recommender_lists(trained_recommender(peer, EventWeights()), cases),
            cases,
            train_seconds=round(peer.stats["train_seconds"], 2),
        )
        runs[name] = [peer.stats]
    # This machine's speed drifts by tens of percent from one minute to the next, so the
    # training time of each is the median of TIMING_RUNS runs, gensim and ours alternating
    # (the runs above are the first). gensim trains as many epochs as each setting.
    gensim_runs = {config.epochs: [g_seconds]}
    for epochs in {c.epochs for c in settings.values()} - {config.epochs}:
        gensim_runs[epochs] = [gensim_item2vec(corpus.sessions, epochs)[2]]
    for run in range(2, TIMING_RUNS + 1):
        log.info("training time, run %d of %d: gensim, then ours", run, TIMING_RUNS)
        for epochs, times in gensim_runs.items():
            times.append(gensim_item2vec(corpus.sessions, epochs)[2])
        for name, c in settings.items():
            runs[name].append(train(corpus, c).stats)
    gensim = {epochs: float(np.median(times)) for epochs, times in gensim_runs.items()}
    medians = {
        name: float(np.median([r["train_seconds"] for r in rs])) for name, rs in runs.items()
    }
    timed = {f"gensim skip-gram ({config.epochs} epochs, tuned)": gensim[config.epochs]}
    timed["sessionrec, exact search"] = medians["default"]
    timed |= {scored_as[name]: seconds for name, seconds in medians.items()}
    scores = {}
    for row in rows:
        if row["method"] in timed:
            row["train_seconds"] = round(timed[row["method"]], 2)
        scores[row["method"]] = (row["recall_at_20"], row["mrr_at_20"])
    training = []
    for name, rs in runs.items():
        seconds, epochs = medians[name], settings[name].epochs
        training.append(
            {
                "setting": name,
                "epochs": epochs,
                "sessions": len(corpus.sessions),
                "recall_at_20": scores[scored_as[name]][0],
                "mrr_at_20": scores[scored_as[name]][1],
                "ours_seconds": round(seconds, 2),
                "ours_runs": " / ".join(f"{r['train_seconds']:.2f}" for r in rs),
                "ours_setup_seconds": round(float(np.median([r["setup_seconds"] for r in rs])), 2),
                "ours_pairs_per_second": round(rs[0]["pairs"] / seconds),
                "vs_default": round(seconds / medians["default"], 2),
                # Word2Vec(sentences): the vocabulary scan and the training passes.
                "gensim_seconds": round(gensim[epochs], 2),
                "gensim_runs": " / ".join(f"{t:.2f}" for t in gensim_runs[epochs]),
                "ours_vs_gensim": round(seconds / gensim[epochs], 2),
            }
        )
    return rows, trained, cases, training


def across_seeds(data: Path, config: TrainConfig, seeds: int) -> list[dict[str, Any]]:
    """Ours on one dataset, served from the HNSW index: on the validation split (the last
    VALIDATION of the training sessions, held out of training) and on the test set, each
    trained with `seeds` seeds; the median of each score and the seeds' spread."""
    corpus = load_srgnn(data)
    test = cases_from_srgnn(load_srgnn_test(data / "test.tsv", Counter()))
    splits = {"validation": validation_split(corpus, VALIDATION), "test": (corpus, test)}
    rows = []
    for split, (sessions, cases) in splits.items():
        runs = []
        for seed in range(config.seed, config.seed + seeds):
            log.info("%s, %s: training with seed %d", data.name, split, seed)
            trained = train(sessions, replace(config, seed=seed))
            scored = evaluate(trained_recommender(trained, config.weights), cases)
            runs.append({**scored, "seed": seed, "train_seconds": trained.stats["train_seconds"]})
        summary = median_of_seeds(runs)
        rows.append(
            {
                "data": data.name,
                "split": split,
                **{k: summary[k] for k in SEED_COLUMNS},
                "train_seconds": round(float(np.median([r["train_seconds"] for r in runs])), 1),
            }
        )
        log.info("%s", rows[-1])
    return rows


SEED_COLUMNS = (
    "cases",
    *SCORES,
    "recall_at_20_spread",
    "mrr_at_20_spread",
    "seeds",
)


def cold_start(data: Path, config: TrainConfig, warm: Recommender) -> dict[str, Any]:
    """New items from metadata alone: COLD_SHARE of the catalog's items are held out of
    training (their clicks leave the training sessions), then added to the served model as a
    catalog update adds a new item (`ServingModel.apply_items`: composed from their metadata,
    no learned identity). Scored on the test cases whose next item is one of them, beside
    `warm`, the model trained with every item, on the same cases."""
    from sessionrec.models.serving import load_serving
    from sessionrec.training.export import export

    corpus = load_srgnn(data)
    catalog = {item.item_id: item for item in corpus.items}
    if not catalog:
        raise ValueError(f"{data} has no item metadata (item_category.tsv) to compose items from")
    rng = np.random.default_rng(config.seed)
    ids = sorted(catalog)
    held = set(rng.choice(ids, round(len(ids) * COLD_SHARE), replace=False).tolist())
    sessions = []
    for s in corpus.sessions:
        kept = [(i, t) for i, t in zip(s.items, s.types, strict=True) if i not in held]
        if len(kept) >= 2:
            sessions.append(
                replace(s, items=tuple(i for i, _ in kept), types=tuple(t for _, t in kept))
            )
    items = [item for item in corpus.items if item.item_id not in held]
    cases = [
        c
        for c in cases_from_srgnn(load_srgnn_test(data / "test.tsv", Counter()))
        if c.target in held
    ]
    trained = train(Corpus(sessions, items), config)
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export(trained, Path(tmp), {"data": str(data), "held_out": len(held)})
        served = load_serving(path, config.weights)
        served.apply_items([catalog[i] for i in sorted(held)])
        cold = evaluate(served.recommender, cases)
    same = evaluate(warm, cases)
    n_items = len(served.recommender.index)
    return {
        "data": data.name,
        "held_out_items": len(held),
        "of_items": len(catalog),
        "cases": len(cases),
        "cold_recall_at_20": cold["recall_at_20"],
        "cold_mrr_at_20": cold["mrr_at_20"],
        "warm_recall_at_20": same["recall_at_20"],
        "warm_mrr_at_20": same["mrr_at_20"],
        # A list of 20 drawn at random from the index holds the next item this often.
        "random_recall_at_20": round(100 * 20 / n_items, 3),
    }


# Settings between the default and `--fast` (FAST), each timed next to gensim: fewer negatives,
# and other batch sizes (more cases per step share its fixed costs; fewer make more, smaller
# updates).
CURVE: tuple[dict[str, Any], ...] = (
    {},
    {"negatives": 256, "batch_negatives": 256, "lr": 0.012},
    {"negatives": 128, "batch_negatives": 128},
    {"negatives": 256, "batch_negatives": 256, "batch_size": 2048, "lr": 0.006},
    {"negatives": 256, "batch_negatives": 256, "batch_size": 8192, "lr": 0.016},
)


def training_curve(
    data: Path, config: TrainConfig, variants: tuple[dict[str, Any], ...] = CURVE
) -> list[dict[str, Any]]:
    """Training time and quality at other settings, each timed right after a gensim run of the
    same epochs (this machine's speed drifts from one minute to the next: a pair shares one),
    scored on the HNSW index as the stream serves it."""
    corpus = load_srgnn(data)
    cases = cases_from_srgnn(load_srgnn_test(data / "test.tsv", Counter()))
    logging.getLogger("gensim").setLevel(logging.WARNING)
    rows: list[dict[str, Any]] = []
    for n, changes in enumerate(variants, 1):
        c = replace(config, **changes)
        log.info("training curve %d/%d: gensim, then ours with %s", n, len(variants), changes)
        g_seconds = gensim_item2vec(corpus.sessions, c.epochs)[2]
        trained = train(corpus, c)
        rec = trained_recommender(trained, c.weights)
        scored = evaluate(rec, cases)
        ours = trained.stats["train_seconds"]
        steps = c.epochs * -(-int(trained.stats["cases"]) // c.batch_size)
        rows.append(
            {
                "negatives": c.negatives,
                "batch_negatives": c.batch_negatives,
                "batch_size": c.batch_size,
                "lr": c.lr,
                "recall_at_20": float(scored["recall_at_20"]),
                "mrr_at_20": float(scored["mrr_at_20"]),
                "ours_seconds": round(ours, 2),
                "gensim_seconds": round(g_seconds, 2),
                "ours_vs_gensim": round(ours / g_seconds, 2),
                "ms_per_step": round(1000 * ours / steps, 1),
            }
        )
        log.info("%s", rows[-1])
    return rows


def index_bench(
    vectors: np.ndarray, label: str, config: IndexConfig, queries: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Build time and memory, recall@20 against exact search, queries/s at 1 and 2 threads."""
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in range(len(vectors))]
    before = rss_mb()
    started = time.perf_counter()
    index = ItemIndex.build(ids, vectors, config)
    build_s = time.perf_counter() - started
    # Growth of the process's resident memory; it can read low (down to 0) when the build reuses
    # memory freed earlier in the process, so the size of the saved graph is given beside it.
    memory = rss_mb() - before
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "index.bin")
        file_mb = (Path(tmp) / "index.bin").stat().st_size / 2**20
    q = vectors[rng.integers(len(vectors), size=queries)] + 0.1 * rng.normal(
        size=(queries, vectors.shape[1])
    ).astype(np.float32)
    exact_labels, _ = index.exact_twin().search(q.astype(np.float32), 20)
    out: dict[str, Any] = {
        "index": label,
        "items": len(vectors),
        "m": config.m,
        "ef_construction": config.ef_construction,
        "build_seconds": round(build_s, 1),
        "memory_mb": round(memory),
        "index_file_mb": round(file_mb),
    }
    for ef in (config.ef, 4 * config.ef):
        for threads in (1, 2):
            index.config = replace(config, threads=threads, ef=ef)
            started = time.perf_counter()
            labels, _ = index.search(q.astype(np.float32), 20)
            out[f"ef{ef}_qps_{threads}_thread"] = round(queries / (time.perf_counter() - started))
        out[f"ef{ef}_recall_at_20_vs_exact"] = round(
            float(
                np.mean(
                    [len(set(a) & set(b)) / 20 for a, b in zip(labels, exact_labels, strict=True)]
                )
            ),
            4,
        )
    return out


def synthetic_vectors(n: int, dim: int = 100, clusters: int = 2000, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors, shaped like a trained catalog."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start : start + m] = centres[rng.integers(clusters, size=m)] + 0.6 * rng.normal(
            size=(m, dim)
        ).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def session_memory(users: int = 200_000, clicks: int = 5) -> dict[str, Any]:
    """Memory of `users` active sessions as a worker holds them: each state encoded as the
    table stores it, and its entry in the idle timer's index (session end, partition).

    Counted by tracemalloc (the bytes Python allocated for them and still holds), not by the
    growth of resident memory, which reads low in a process that freed memory before (the
    index part runs first)."""
    import gc
    import tracemalloc

    from sessionrec.models.config import Settings
    from sessionrec.models.records import Event
    from sessionrec.models.session import SessionConfig, SessionState, advance
    from sessionrec.models.state import UserState
    from sessionrec.stream.pipeline import Output, Pipeline

    config = SessionConfig()
    gc.collect()
    tracemalloc.start()
    table: dict[str, bytes] = {}
    pipeline = Pipeline(Settings(), None, table)
    t0 = 1_700_000_000_000
    for u in range(users):
        state = SessionState()
        for j in range(clicks):
            event = Event(f"user-{u}", f"{100_000 + (u + j) % 43_000}", "view", t0 + j * 1000)
            state = advance(state, event, config).state
        pipeline.put_state(event.user_id, UserState(state), u % 4, Output())
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    return {
        "users": users,
        "clicks_per_session": clicks,
        "memory_mb": round(used),
        "mb_per_million": round(used * 1_000_000 / users),
    }
