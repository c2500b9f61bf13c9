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
