"""report.md and its plots from a benchmark's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

QCOLS = [
    "method",
    "recall_at_5",
    "mrr_at_5",
    "recall_at_10",
    "mrr_at_10",
    "recall_at_20",
    "mrr_at_20",
    "coverage_at_20",
    "popularity_bias_at_20",
    "train_seconds",
]


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def _plots(results: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made: list[str] = []
    rows = results.get("quality", []) + results.get("published", [])
    if rows:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        names = [r["method"] for r in rows]
        ax.barh(
            names,
            [r.get("recall_at_20", 0) for r in rows],
            color=["#888" if "published" in n else "#2a6" for n in names],
        )
        ax.set_xlabel("Recall@20 (%) on Diginetica (grey: published)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "quality.png", dpi=110)
        plt.close(fig)
        made.append("quality.png")
    lat = results.get("stream_latencies_ms", {})
    if lat:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for label, values in lat.items():
            if values:
                ax.hist(values, bins=60, histtype="step", label=label, log=True)
        ax.set_xlabel("event produced -> recommendation consumed (ms)")
        ax.set_ylabel("messages")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        made.append("latency.png")
    return made


def _scale(results: dict[str, Any]) -> str:
    stream = [r for r in results.get("stream", []) if r["received"]]
    index = results.get("index", [])
    if not stream or not index:
        return "Needs both the stream and index parts in the same run.\n"
    best = max(r["throughput"] for r in stream)
    big = index[-1]
    per_item_kb = 1024 * big["memory_mb"] / big["items"]
    workers = -(-10_000 // int(best))
    mem_1m = per_item_kb * 1_000_000 / 1024
    return (
        f"- One worker sustained {best:,.0f} recommendations/s here (broker, worker and load "
        f"generator on the same {results.get('machine', '')}).\n"
        f"- 10,000 events/s / {best:,.0f} per worker = {10_000 / best:.1f} -> **{workers} "
        f"workers**, so at least {workers} partitions of `events` (more leave room to grow); "
        f"each worker on its own 2 cores.\n"
        f"- Index memory measured at {big['items']:,} items: {big['memory_mb']:,} MB = "
        f"{per_item_kb:.2f} KB per item -> **{mem_1m:,.0f} MB per worker for 1M items** "
        f"(every worker holds a full replica), built in {big['build_seconds']} s.\n"
        + _sessions_line(results, workers)
    )


def _sessions_line(results: dict[str, Any], workers: int) -> str:
    mem = results.get("session_memory")
    if not mem:
        return ""
    per_million = mem["mb_per_million"]
    return (
        f"- Sessions: {mem['users']:,} active sessions of {mem['clicks_per_session']} clicks "
        f"took {mem['memory_mb']:,} MB in the worker's table -> {per_million:,} MB per 1M "
        f"active sessions, {per_million / workers:,.0f} MB on each of {workers} workers.\n"
    )


def write_report(results: dict[str, Any], out: Path) -> str:
    plots = _plots(results, out)
    parts = [
        f"# sessionrec benchmark report\n\nMachine: {results.get('machine')}. "
        f"Started {results.get('started')}, took {results.get('seconds')} s. Every "
        "figure below was measured in this run, except rows marked *published*.\n"
    ]
    summary = ""
    if "quality" in results:
        summary = _table(results["quality"] + results["published"], QCOLS)
        p = results["pipeline"]
        parts.append(
            "## Quality on Diginetica (SR-GNN split, all items ranked)\n\n"
            + summary
            + f"\nServed by the pipeline: {p['cases']} test prefixes replayed through "
            f"the embedded broker and a worker in {p['seconds']} s "
            f"({p['unanswered']} unanswered): Recall@20 "
            f"{p['served']['recall_at_20']} vs {p['offline_same_cases']['recall_at_20']}"
            f" offline on the same cases; MRR@20 {p['served']['mrr_at_20']} vs "
            f"{p['offline_same_cases']['mrr_at_20']}.\n"
        )
        t = results["training"]
        parts.append(
            f"## Training, same sessions and epochs ({t['epochs']})\n\n"
            + _table([t], list(t))
            + "\nSeconds: the median of the runs listed, the two trainers alternating (this "
            "machine's speed drifts from one minute to the next); the quality table above "
            "gives the same medians. gensim's time includes its vocabulary scan; ours is the "
            "training passes, with the setup (vocabularies, features, cases) apart.\n"
        )
    if "index" in results:
        rows = results["index"]
        parts.append("## Index (hnswlib)\n\n" + _table(rows, list(rows[0])) + "\n")
    if "stream" in results:
        rows = [
            {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}
            for r in results["stream"]
        ]
        parts.append(
            "## Stream: event produced -> recommendation consumed\n\n"
            + _table(rows, list(rows[0]))
            + "\nrate 0 = as fast as the generator could produce. worker, broker: the CPU each "
            "used while the rate ran and drained, in % of one core (the load generator and the "
            "reader run on the same machine too). partitions: of every topic, all read by the "
            "one worker; the embedded broker does more work per partition, so a single local "
            "worker runs best on one (docs/operating.md). "
            + (
                "All rates ran on one broker and worker (`--one-broker`): each rate also paid "
                "for the broker's log of the rates before it.\n"
                if results.get("stream_one_broker")
                else "Each rate ran on a freshly started broker and worker (warmed up at 200 "
                "events/s for 3 s): the embedded broker slows down as its logs fill "
                "(`sessionrec bench broker`).\n"
            )
        )
        if not summary:
            summary = _table(rows, list(rows[0]))
    if "broker" in results:
        rows = results["broker"]
        parts.append(
            "## Embedded broker: cost as the log fills with small batches\n\n"
            + _table(rows, list(rows[0]))
            + "\nOne-record produce requests over 4 partitions, read by a consumer at the head "
            "of the log. The worker keeps its own batches few and large for this reason "
            "(docs/operating.md).\n"
        )
    parts.append("## Scale on paper\n\n" + _scale(results))
    shown = sorted(set(plots) | {p.name for p in out.glob("*.png")})
    parts.extend(f"\n![{p}]({p})\n" for p in shown)
    (out / "report.md").write_text("\n".join(parts))
    return summary
