"""report.md and its plots from a benchmark's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sessionrec.benchmarks.stream import COST_ROUNDS
from sessionrec.training.evaluate import SCORES, VALIDATION

QCOLS = [
    "method",
    *SCORES,
    "coverage_at_20",
    "popularity_bias_at_20",
    "train_seconds",
]


def _rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their floats to one decimal place."""
    return [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def _section(title: str, rows: list[dict[str, Any]]) -> str:
    """A titled table of result rows, its columns those of the first row."""
    return f"## {title}\n\n" + _table(rows, list(rows[0]))


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


def _seeds(results: dict[str, Any]) -> str:
    """Ours on each dataset's validation split and test set (median of the seeds, with their
    spread), beside the published test scores."""
    rows: list[dict[str, Any]] = []
    published = results.get("published_by_data", {})
    for data in dict.fromkeys(r["data"] for r in results["seeds"]):
        for r in results["seeds"]:
            if r["data"] == data:
                seeds = r["seeds"]
                rows.append(
                    {
                        "data": data,
                        "method": "sessionrec, HNSW index",
                        **{k: v for k, v in r.items() if k not in ("data", "seeds")},
                    }
                )
        rows.extend(
            {**p, "data": data, "method": f"{p['method']} (published)", "split": "test"}
            for p in published.get(data, [])
        )
    cols = [
        "data",
        "method",
        "split",
        "cases",
        *SCORES,
    ]
    cols += ["recall_at_20_spread", "mrr_at_20_spread", "train_seconds"]
    return (
        f"## Quality on each dataset: validation and test, median of {len(seeds)} seeds\n\n"
        + _table(rows, cols)
        + f"\nSeeds {', '.join(map(str, seeds))}; each score is the median of their runs, "
        "and the spread is the lowest and the highest of them. validation: the last "
        f"{VALIDATION:.0%} of the training sessions, held out of training, every prefix of "
        "them (the defaults were chosen there); test: test.tsv, never used to choose a "
        "setting. Served from the HNSW index with the default query parameters. As in the "
        "published protocol, every item is a candidate, the prefix's last item included "
        "(`query.exclude_current = false`; the default leaves the item in hand out of pushed "
        "lists). train_seconds: the median training time of the runs.\n"
    )


def _cold_start(c: dict[str, Any]) -> str:
    rows = [
        {
            "model": "items held out, then added from metadata",
            "recall_at_20": c["cold_recall_at_20"],
            "mrr_at_20": c["cold_mrr_at_20"],
        },
        {
            "model": "every item trained (the model above)",
            "recall_at_20": c["warm_recall_at_20"],
            "mrr_at_20": c["warm_mrr_at_20"],
        },
        {
            "model": "20 items at random (expected)",
            "recall_at_20": c["random_recall_at_20"],
            "mrr_at_20": "",
        },
    ]
    return (
        f"## New items: composed from metadata ({c['data']})\n\n"
        + _table(rows, ["model", "recall_at_20", "mrr_at_20"])
        + f"\n{c['held_out_items']:,} of the {c['of_items']:,} catalog items, drawn at random, "
        "were held out of training: their clicks left the training sessions. The trained "
        "model then took them as a catalog update does (`ServingModel.apply_items`): each "
        "vector composed from the item's metadata (here its category), with no learned "
        "identity and no transitions. Scored on the "
        f"{c['cases']:,} test cases whose next item is one of them, each ranked among all "
        "items.\n"
    )


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


def _ten_workers(scale: list[dict[str, Any]], target: float = 10_000.0) -> str:
    """Ten workers on machines of their own, from the CPU the 1- and 3-worker runs used."""
    by_workers = {r["workers"]: r for r in scale if r["received"]}
    if 1 not in by_workers or 3 not in by_workers:
        return ""
    one, three = by_workers[1], by_workers[3]
    rate = one["rate"]
    fixed = (three["worker_cpu_pct"] - one["worker_cpu_pct"]) / 2 / 100  # cores per worker
    per_event_us = (one["worker_cpu_pct"] / 100 - fixed) * 1e6 / rate
    each = target / 10
    cores = each * per_event_us / 1e6 + fixed
    ceiling = 10 * (1 - fixed) / (per_event_us / 1e6)
    idle = ""
    if one.get("idle_worker_cpu_pct") and three.get("idle_worker_cpu_pct"):
        idle = (
            f" With no events at all, 1 worker used {one['idle_worker_cpu_pct']:.0f}% of a "
            f"core and 3 workers {three['idle_worker_cpu_pct']:.0f}% together (fetching, "
            "heartbeats, timers, the watcher); the rest of the fixed cost comes with the load."
        )
    return (
        f"Ten workers, by the same arithmetic: at {rate:,.0f} events/s, 1 worker used "
        f"{one['worker_cpu_pct']:.0f}% of a core and 3 workers {three['worker_cpu_pct']:.0f}%, "
        f"so each worker costs about {fixed:.2f} of a core whatever its share, and an event "
        f"about {per_event_us:,.0f} us.{idle} "
        f"{target:,.0f} events/s over 10 workers is {each:,.0f} events/s each: "
        f"{each:,.0f} x {per_event_us:,.0f} us + {fixed:.2f} = **{cores:.2f} of a core per "
        f"worker**, 10 partitions of `events` at least. A worker's events go through one "
        f"Python thread, so one core each caps the ten at about "
        f"10 x (1 - {fixed:.2f}) / {per_event_us:,.0f} us = **{ceiling:,.0f} events/s** on "
        "cores like these; more partitions than workers leave room to add workers later.\n"
    )


def _handover(runs: list[dict[str, Any]]) -> str:
    listed = ("partitions", "unanswered")  # kept in results.json
    rows = [{k: v for k, v in r.items() if k not in listed} for r in _rounded(runs)]
    first = runs[0]
    return (
        _section("Hand-over: one of three workers killed -9 under load", rows)
        + f"\n3 workers in one group on 6 partitions. First {first['live_sessions']:,} "
        "users each send one event (every session then open in the table and in its "
        f"changelog), then {first['rate']:,.0f} events/s for {first['seconds']:.0f} s, and "
        "one worker is killed -9 halfway. Each event's wait is the time from its produce to "
        "its recommendation being read; p50/p99/longest are over all events of the load; "
        "handover_s is the longest wait of an event sent in the 10 s after the kill (the "
        "killed worker's partitions wait longest). A fresh embedded broker for each run. "
        "The killed worker is noticed after the session timeout; the group then joins again "
        "(the embedded broker holds every join for about 3 s; Apache Kafka answers once all "
        "members have rejoined, not measured here); the new owner of a partition restores its "
        "sessions from the changelog, from the start without a standby, or only the last "
        "records when it "
        "held a standby copy; then it works off the backlog. worker_us_per_event: the CPU of "
        "all workers during the load (restores and standby reading included) per event.\n"
    )


def _api(results: dict[str, Any]) -> str:
    from statistics import median

    from sessionrec.benchmarks.api import GORSE_ITEM_MEAN_MS

    rows = [
        {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
        for r in results["api"]
    ]
    runs = results.get("api_events", [])
    events = [
        {
            "alongside": e["alongside"],
            "events/s": round(e["rate"]),
            "answered": f"{e['received']}/{e['sent']}",
            "p50_ms": round(e["p50_ms"], 1),
            "p99_ms": round(e["p99_ms"], 1),
            "max_ms": round(e["max_ms"], 1),
            "worker_cpu_pct": round(e.get("worker_cpu_pct", 0.0)),
        }
        for e in runs
    ]
    p99: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for e in runs:
        p99.setdefault(e["alongside"], []).append(e["p99_ms"])
        cpu.setdefault(e["alongside"], []).append(e.get("worker_cpu_pct", 0.0))
    base, base_cpu = median(p99.get("none", [0.0])), median(cpu.get("none", [0.0]))
    rate = rows[0]["rate"]
    rises = ", ".join(
        f"{kind} {median(values):.0f} ms ({100 * (median(values) / base - 1):+.0f}%)"
        for kind, values in p99.items()
        if kind != "none" and base
    )
    costs = ", ".join(
        f"{kind} {1e4 * (median(values) - base_cpu) / rate:.0f} us"
        for kind, values in cpu.items()
        if kind != "none" and not kind.endswith("@serve")
    )
    return (
        _section("Query API: requests over HTTP while the worker takes events", rows)
        + f"\nRun {results.get('api_started', results.get('started'))}. One worker, "
        f"{rows[0]['rate']:,.0f} requests/s of one kind at a time from an aiohttp client in "
        "its own process, on a fixed schedule; latency from when a request was due to its "
        "answer read; client_cpu_pct: the client's own CPU. health is /healthz, the HTTP "
        "server's floor. user asks for users of the event load, without parameters "
        "(from_session: how many were answered from a session, the stream's latest answer "
        "kept for the user; the rest are users the load has not reached yet, answered with "
        "trending items). item asks for "
        "10 items like a random item of the catalog; session posts 4 random items. "
        "item@serve and session@serve: the same requests to a `sessionrec serve` process "
        "beside the worker (same broker, models and catalog, no consumer group), as "
        "docs/operating.md advises to deploy them; the worker then takes events only, and "
        "the serve process's own CPU is not counted in the worker's. For "
        "comparison, Gorse's documentation publishes a mean of "
        f"{GORSE_ITEM_MEAN_MS} ms for its item-based neighbours (/10), on its own machine and "
        "load. Each run on a fresh broker and worker; the events' latency and the worker's "
        "CPU in each run:\n\n"
        + _table(events, list(events[0]))
        + f"\nEvent p99, median over runs, against the runs with events alone ({base:.0f} ms): "
        f"{rises}. The worker's CPU per request, its median CPU with the requests less that "
        f"with events alone: {costs}. The broker, the worker, the event generator and the "
        f"HTTP client share {results.get('cores')} cores.\n"
    )


def _budget(results: dict[str, Any], target: float = 5000.0) -> str:
    """What a rate of `target` events/s leaves per event on this machine, against what the
    fastest fixed rate measured cost per event."""
    import os

    fixed = [r for r in results.get("stream", []) if r["rate"] > 0 and r["received"]]
    if not fixed:
        return ""
    r = max(fixed, key=lambda x: x["rate"])
    if not r.get("worker_us_per_event"):
        return ""
    # The cores of the machine that ran the benchmark (results before they were recorded:
    # this one's).
    cores = results.get("cores") or os.cpu_count() or 1
    budget = cores * 1e6 / target
    own = results["worker_cost"][0]["total_us"]
    spent = r["worker_us_per_event"] + r["broker_us_per_event"]
    return (
        f"\nAt {target:,.0f} events/s, {cores} cores give {budget:,.0f} us of CPU per event "
        f"for everything on the machine. At {r['rate']:,.0f} events/s ({r['partitions']} "
        f"partitions) the worker used {r['worker_us_per_event']:,.0f} us per event (its own "
        f"code {own:,.0f} us of that, by the table above) and the broker "
        f"{r['broker_us_per_event']:,.0f} us: {spent:,.0f} us together, before the load "
        "generator and the reader.\n"
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
    rerun = results.get("rerun", {})
    later = "; ".join(f"{part} (started {when})" for part, when in rerun.items())
    parts = [
        f"# sessionrec benchmark report\n\nMachine: {results.get('machine')}. "
        f"Started {results.get('started')}, took {results.get('seconds')} s. Every "
        "figure below was measured in this run, except rows marked *published*"
        + (
            f" and the parts run again later on the same machine (`--merge`): {later}"
            if later
            else ""
        )
        + ".\n"
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
            f"{p['offline_same_cases']['mrr_at_20']}. The protocol counts every item as a "
            "candidate, the prefix's last item included: the worker here runs with "
            "`query.exclude_current = false` (its default leaves the item in hand out of the "
            "lists it pushes).\n"
        )
        if results.get("seeds"):
            parts.append(_seeds(results))
        if results.get("cold_start"):
            parts.append(_cold_start(results["cold_start"]))
        timing = results["training"]
        parts.append(
            _section("Training: the same sessions, gensim at the same epochs", timing)
            + "\nSeconds: the median of the runs listed, gensim and ours alternating (this "
            "machine's speed drifts from one minute to the next); the quality table above "
            "gives the same medians. gensim's time includes its vocabulary scan; ours is the "
            "training passes, with the setup (vocabularies, features, cases) apart. default: "
            "the settings the quality figures are for; --fast: `sessionrec train --fast` "
            "(128 + 128 negatives, batches of 8,192, lr 0.012, 3 epochs); earlier: the default "
            "settings with the epochs they had before (training may take twice their time). "
            "vs_default: the time over the default's. Scores on the HNSW index.\n"
        )
        if results.get("training_curve"):
            parts.append(
                _section("Training at other settings", results["training_curve"])
                + "\nThe first row is the default. Each row was trained right after a gensim "
                "run of the same epochs on the same sessions (`gensim_seconds`): the two of a "
                "row share a minute of this machine, whose speed drifts. Scored on the HNSW "
                "index. Fewer negatives make the bfloat16 product of a step cheaper, but a step "
                "also has costs that do not shrink with them (composing the rows it uses, the "
                "optimiser); larger batches share those, at a lower score for the same epochs.\n"
            )
    if "index" in results:
        rows = results["index"]
        parts.append(_section("Index (hnswlib)", rows) + "\n")
    if "stream" in results:
        rows = _rounded(results["stream"])
        parts.append(
            _section("Stream: event produced -> recommendation consumed", rows)
            + "\nrate 0 = as fast as the generator could produce. worker, broker: the CPU each "
            "used while the rate ran and drained, in % of one core (the load generator and the "
            "reader run on the same machine too); worker_us_per_event, broker_us_per_event: "
            "the same CPU per recommendation received, in microseconds (at low rates it "
            "includes what each spends idle). partitions: of every topic, all read by the "
            "one worker; the embedded broker does more work per partition "
            "(docs/development.md). "
            + (
                "pipeline echo: the faust floor (`benchmarks/floor.py`), the same worker whose "
                "pipeline only echoes each event's time, with no sessions, model or state: what "
                "faust, the Kafka clients and the broker cost whatever the pipeline does. "
                if any(r.get("pipeline") == "echo" for r in results["stream"])
                else ""
            )
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
    if results.get("scale"):
        rows = _rounded(results["scale"])
        parts.append(
            _section("Scale out: one load, 1 to 3 workers in one consumer group", rows)
            + f"\nRun {results.get('scale_started', results.get('started'))}. "
            "The same offered load on a fresh broker each time, its topics on "
            f"{rows[0]['partitions']} partitions shared by the workers. worker: the CPU of all "
            f"workers together. On {results.get('cores')} cores the workers and the broker "
            "compete for the same CPU, so throughput cannot grow here. What the table shows "
            "is the cost of sharing: the CPU per event that each added worker brings (its "
            "own fetching, heartbeats, timers and watcher, paid whatever its share of the "
            "load), and that every event was answered.\n\n" + _ten_workers(results["scale"])
        )
    if results.get("handover"):
        parts.append(_handover(results["handover"]))
    if results.get("api"):
        parts.append(_api(results))
    if results.get("burst"):
        parts.append(_burst(results["burst"]))
    if results.get("worker_cost"):
        rows = _rounded(results["worker_cost"])
        parts.append(
            _section("Stream: the worker's own code per event", rows)
            + "\nMicroseconds of CPU per event in `Pipeline.prepare` (admit, sessionize, "
            "plan), the index search (one thread, as in the worker) and "
            "`Pipeline.finish` (merge, explain, encode), on the same model and the events "
            "the load generator sends, in batches of the size given, with no broker and no "
            "faust around them. query: the default parameters, or the same without re-scoring "
            "(`transition_weight` and `return_weight` 0, so no transitions, no returns, and a "
            "search only as deep as the list); each row is the median of "
            f"{COST_ROUNDS} runs, the two settings alternating.\n" + _budget(results)
        )
    if "broker" in results:
        rows = results["broker"]
        parts.append(
            _section("Embedded broker: cost as the log fills with small batches", rows)
            + "\nOne-record produce requests over 4 partitions, read by a consumer at the head "
            "of the log. The worker keeps its own batches few and large for this reason "
            "(docs/development.md).\n"
        )
    if "reliability" in results:
        parts.append(_reliability(results["reliability"]))
    parts.append("## Scale on paper\n\n" + _scale(results))
    shown = sorted(set(plots) | {p.name for p in out.glob("*.png")})
    parts.extend(f"\n![{p}]({p})\n" for p in shown)
    (out / "report.md").write_text("\n".join(parts))
    return summary


def _burst(b: dict[str, Any]) -> str:
    """The catalog burst and the model swap: each window beside the same window of the quiet
    run."""
    busy, quiet = b["busy"], b["quiet"]
    rows = []
    for w, q in zip(busy["windows"], quiet["windows"], strict=True):
        rows.append(
            {
                "window": w["name"],
                "from_s": w["start_s"],
                "to_s": w["end_s"],
                "events": w["events"],
                "p50_ms": round(w["p50_ms"], 1),
                "p99_ms": round(w["p99_ms"], 1),
                "quiet_p99_ms": round(q["p99_ms"], 1),
                "loop_lag_max_ms": round(w["loop_lag_max_ms"], 1),
                "quiet_loop_lag_max_ms": round(q["loop_lag_max_ms"], 1),
                "healthz_max_ms": round(w["health_max_ms"], 1),
            }
        )
    return (
        _section("Catalog burst and model swap while events flow", rows)
        + f"\n{b['rate']:,.0f} events/s for {b['seconds']:.0f} s to one worker; "
        f"{b['burst_items']:,} new items produced to `items` at once 10 s in (in "
        f"{busy['burst_produce_s']:.1f} s), all in the served index "
        f"{busy['burst_applied_s']:.1f} s later; 3 s after that a new model version made "
        "current, which took the whole catalog into its index and was swapped in "
        f"{busy['swap_s']:.1f} s later. Then the "
        "same run on a fresh broker and worker with neither (`quiet_*`: the same windows of "
        "it; the embedded broker slows as its log fills, so the later windows are slower in "
        "both). Windows by when the events were produced. loop_lag_max_ms: the worker's "
        "`sessionrec_event_loop_lag_max_seconds` at its highest in the window (how late the "
        "event loop woke a task sleeping 50 ms); healthz_max_ms: the slowest of the `/healthz` "
        f"requests asked every 0.1 s. Unanswered events: {busy['unanswered']} of "
        f"{busy['sent']} (quiet run: {quiet['unanswered']} of {quiet['sent']}); `/healthz` "
        f"unanswered: {busy['health_failed']}.\n"
    )


def _reliability(r: dict[str, Any]) -> str:
    """Records fuzzed, crashes, DLQ count, events answered, memory per user, kill -9 runs."""
    f, m = r["fuzz"], r["memory"]
    rows = [
        {
            "measure": "event records sent (hostile)",
            "value": f"{f['events']:,} ({f['bad_events']:,})",
        },
        {
            "measure": "catalog and model-updates records sent",
            "value": f"{f['items']:,} + {f['updates']:,}",
        },
        {"measure": "worker exits", "value": f["worker_exits"]},
        {"measure": "DLQ records (distinct offsets)", "value": f"{f['dlq']:,}"},
        {"measure": "DLQ records without a reason", "value": f["dlq_missing_reason"]},
        {"measure": "good events answered", "value": f"{f['good_answered']:,} of {f['good']:,}"},
        {
            "measure": "memory per live user",
            "value": f"{m['bytes_per_user']:,} bytes ({m['users']:,} users)",
        },
    ]
    for n, run in enumerate(r["kill9"], 1):
        rows.append(
            {
                "measure": f"kill -9 run {n}: events lost, users with a split session",
                "value": f"{run['lost']} of {run['events']:,}, {run['users_with_split_sessions']}",
            }
        )
    flood = r.get("flood", [])
    return (
        "## Reliability\n\n"
        + _table(rows, ["measure", "value"])
        + "\nHostile records of many kinds (any bytes, records up to 900 KB, JSON of the wrong "
        "shape, params beyond the limits, keys that are not the user) between good events, "
        "through a live worker on the embedded broker (`benchmarks/reliability.py`). Memory per "
        "user: the worker's resident memory before and after that many new users sent one "
        "event each.\n\n"
        + (
            "Resident memory of a worker with `state_ttl_days` = 0.02 under rounds of one-event "
            "users, each round an hour of event time after the last:\n\n"
            + _table(flood, ["round", "users_sent", "rss_mb"])
            if flood
            else ""
        )
    )
