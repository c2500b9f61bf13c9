from __future__ import annotations

from pathlib import Path

from sessionrec.benchmarks.report import write_report


def _rate(rate: float, worker_us: float, broker_us: float) -> dict[str, float]:
    return {
        "rate": rate,
        "sent": 100,
        "received": 100,
        "throughput": rate,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
        "p99_ms": 3.0,
        "max_ms": 4.0,
        "worker_cpu_pct": 50.0,
        "broker_cpu_pct": 40.0,
        "partitions": 4,
        "worker_us_per_event": worker_us,
        "broker_us_per_event": broker_us,
    }


def test_the_report_weighs_the_fastest_fixed_rate_against_the_cpu_budget(tmp_path: Path) -> None:
    cost = {"batch": 40, "events": 100, "prepare_us": 50.0, "search_us": 30.0}
    results = {
        "machine": "test",
        "cores": 3,
        "stream": [_rate(500, 900, 800), _rate(2000, 300, 200), _rate(0, 100, 50)],
        "worker_cost": [{**cost, "finish_us": 40.0, "total_us": 120.0}],
    }
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    # The cores the benchmark ran on, not those of the machine that writes the report.
    assert "3 cores give 600 us of CPU per event" in text
    assert "At 2,000 events/s (4 partitions) the worker used 300 us per event" in text
    assert "(its own code 120 us of that" in text and "500 us together" in text


def test_the_report_has_a_reliability_section_from_the_measured_run(tmp_path: Path) -> None:
    import json

    results = json.loads(
        """{"machine": "test", "cores": 2, "reliability": {
        "fuzz": {"events": 50000, "bad_events": 34852, "items": 2000, "updates": 500,
                 "dlq": 34852, "dlq_missing_reason": 0, "good": 15148, "good_answered": 15148,
                 "seconds": 18.6, "worker_exits": 0},
        "memory": {"users": 20000, "rss_before_mb": 252.5, "rss_after_mb": 333.9,
                   "bytes_per_user": 4265},
        "flood": [{"round": 1, "users_sent": 5000, "rss_mb": 167.5}],
        "kill9": [{"events": 6000, "lost": 0, "users_with_split_sessions": 0}]}}"""
    )
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| event records sent (hostile) | 50,000 (34,852) |" in text
    assert "| worker exits | 0 |" in text and "| good events answered | 15,148 of 15,148 |" in text
    assert "| memory per live user | 4,265 bytes (20,000 users) |" in text
    assert "| kill -9 run 1: events lost, users with a split session | 0 of 6,000, 0 |" in text
    assert "| 1 | 5000 | 167.5 |" in text


def test_the_report_has_the_scale_out_and_echo_rows(tmp_path: Path) -> None:
    scale = [
        {**_rate(1000, us, 700), "partitions": 6, "workers": n} for n, us in ((1, 650), (3, 900))
    ]
    echo = {**_rate(2000, 250, 400), "pipeline": "echo"}
    worker = {**_rate(2000, 470, 300), "pipeline": "sessionrec"}
    results = {"machine": "test", "cores": 2, "stream": [worker, echo]}
    write_report({**results, "scale": scale}, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Scale out: one load, 1 to 3 workers in one consumer group" in text
    assert "its topics on 6 partitions shared by the workers" in text
    assert "| 6 | 650 | 700 | 1 |" in text and "| 6 | 900 | 700 | 3 |" in text
    assert "| echo |" in text and "pipeline echo: the faust floor" in text


def test_the_report_works_out_ten_workers_and_shows_the_hand_over_runs(tmp_path: Path) -> None:
    scale = [
        {**_rate(1000, 0, 0), "worker_cpu_pct": pct, "workers": n, "idle_worker_cpu_pct": idle}
        for n, pct, idle in ((1, 70.0, 11.0), (2, 90.0, 20.0), (3, 110.0, 29.0))
    ]
    handover = {
        "standby_replicas": 2,
        "session_timeout_s": 3.0,
        "live_sessions": 200_000,
        "rate": 600.0,
        "seconds": 40.0,
        "sent": 24_000,
        "answered": 24_000,
        "p50_ms": 171.0,
        "p99_ms": 6136.0,
        "longest_ms": 7462.0,
        "handover_s": 7.4,
        "worker_us_per_event": 1371.0,
        "partitions": [[0, 6.2], [1, 7.4]],
    }
    write_report({"machine": "test", "cores": 2, "scale": scale, "handover": [handover]}, tmp_path)
    text = (tmp_path / "report.md").read_text()
    # 3 workers cost 0.4 of a core more than 1: 0.2 each; an event (0.7 - 0.2) / 1000 s.
    assert "each worker costs about 0.20 of a core whatever its share" in text
    assert "With no events at all, 1 worker used 11% of a core and 3 workers 29% together" in text
    assert "1,000 x 500 us + 0.20 = **0.70 of a core per worker**" in text
    assert "10 x (1 - 0.20) / 500 us = **16,000 events/s**" in text
    assert "## Hand-over: one of three workers killed -9 under load" in text
    assert "| 2 | 3.0 | 200000 | 600.0 | 40.0 | 24000 | 24000 | 171.0 | 6136.0 |" in text
    assert "[0, 6.2]" not in text  # the per-partition waits stay in results.json


def test_the_report_sets_the_api_runs_against_the_events_alone(tmp_path: Path) -> None:
    asked = {
        "rate": 500.0,
        "sent": 7500,
        "ok": 7500,
        "failed": 0,
        "from_session": 2000,
        "answered_per_s": 500.0,
        "mean_ms": 4.0,
        "p50_ms": 3.0,
        "p99_ms": 12.5,
        "max_ms": 40.0,
        "client_cpu_pct": 20.0,
    }
    runs = [
        {**_rate(1000, 500, 400), "p99_ms": p99, "alongside": kind}
        for kind, p99 in (("none", 100.0), ("user", 150.0), ("none", 120.0), ("user", 130.0))
    ]
    results = {
        "machine": "test",
        "cores": 2,
        "api": [{**asked, "endpoint": "user"}, {**asked, "endpoint": "user"}],
        "api_events": runs,
    }
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Query API: requests over HTTP while the worker takes events" in text
    # Medians: alone (100 + 120) / 2 = 110 ms; with user requests (150 + 130) / 2 = 140 ms.
    assert "against the runs with events alone (110 ms): user 140 ms (+27%)" in text
    assert "Gorse's documentation publishes a mean of 2.21 ms" in text


def test_the_report_gives_each_dataset_over_seeds_and_the_cold_start_measurement(
    tmp_path: Path,
) -> None:
    def row(data: str, split: str, r20: float) -> dict[str, object]:
        scores = {"recall_at_5": 10.0, "mrr_at_5": 5.0, "recall_at_10": 15.0, "mrr_at_10": 6.0}
        return {
            "data": data,
            "split": split,
            "cases": 100.0,
            **scores,
            "recall_at_20": r20,
            "mrr_at_20": 7.0,
            "recall_at_20_spread": [r20 - 0.1, r20 + 0.2],
            "mrr_at_20_spread": [6.9, 7.1],
            "seeds": [0, 1, 2],
            "train_seconds": 30.0,
        }

    results = {
        "machine": "test",
        "quality": [{"method": "sessionrec, HNSW index", "recall_at_20": 50.0}],
        "published": [],
        "pipeline": {
            "cases": 10,
            "seconds": 1.0,
            "unanswered": 0,
            "served": {"recall_at_20": 50.0, "mrr_at_20": 18.0},
            "offline_same_cases": {"recall_at_20": 50.0, "mrr_at_20": 18.0},
        },
        "training": [{"setting": "default", "epochs": 3}],
        "seeds": [row("diginetica", "validation", 51.0), row("nowplaying", "test", 21.5)],
        "published_by_data": {
            "nowplaying": [{"method": "GCE-GNN", "recall_at_20": 22.37, "mrr_at_20": 8.4}]
        },
        "cold_start": {
            "data": "diginetica",
            "held_out_items": 4310,
            "of_items": 43097,
            "cases": 5000,
            "cold_recall_at_20": 20.5,
            "cold_mrr_at_20": 6.1,
            "warm_recall_at_20": 50.2,
            "warm_mrr_at_20": 17.9,
            "random_recall_at_20": 0.046,
        },
    }
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Quality on each dataset: validation and test, median of 3 seeds" in text
    assert (
        "| diginetica | sessionrec, HNSW index | validation | 100.0 | 10.0 | 5.0 | 15.0 | 6.0 "
        "| 51.0 | 7.0 | [50.9, 51.2] | [6.9, 7.1] | 30.0 |" in text
    )
    assert "| nowplaying | GCE-GNN (published) | test |  |" in text and "| 22.37 | 8.4 |" in text
    assert "## New items: composed from metadata (diginetica)" in text
    assert "| items held out, then added from metadata | 20.5 | 6.1 |" in text
    assert "4,310 of the 43,097 catalog items" in text and "5,000 test cases" in text


def test_the_report_sets_the_burst_and_swap_beside_the_quiet_run(tmp_path: Path) -> None:
    def window(name: str, p99: float, lag: float) -> dict[str, object]:
        return {
            "name": name,
            "start_s": 1.0,
            "end_s": 2.0,
            "events": 10,
            "p50_ms": 1.0,
            "p99_ms": p99,
            "max_ms": 9.0,
            "loop_lag_max_ms": lag,
            "health_max_ms": 7.0,
        }

    run = {"sent": 100, "received": 100, "unanswered": 0, "health_max_ms": 7.0}
    busy = {
        **run,
        "health_failed": 0,
        "burst_produce_s": 0.6,
        "burst_applied_s": 21.9,
        "swap_s": 27.6,
        "windows": [window("before", 66.0, 18.9), window("burst", 185.4, 25.9)],
    }
    quiet = {
        **run,
        "health_failed": 0,
        "windows": [window("before", 62.3, 7.5), window("burst", 123.1, 13.4)],
    }
    results = {
        "machine": "test",
        "burst": {
            "burst_items": 40000,
            "rate": 1000.0,
            "seconds": 60.0,
            "busy": busy,
            "quiet": quiet,
        },
        "rerun": {"burst": "2026-12-07 22:30:00"},
    }
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "re-run" not in text and "run again later on the same machine (`--merge`): burst" in text
    assert "| burst | 1.0 | 2.0 | 10 | 1.0 | 185.4 | 123.1 | 25.9 | 13.4 | 7.0 |" in text
    assert "40,000 new items" in text and "swapped in 27.6 s later" in text
