from __future__ import annotations

from pathlib import Path

from benchmarks.report import write_report


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
