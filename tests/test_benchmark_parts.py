"""The benchmark's parts: the insert-rate comparison (issue 12) is one of them, runs
under --quick, and is judged against its target (the lowest ratio over client counts)."""

from __future__ import annotations

from benchmarks.run.common import Sizes
from benchmarks.run.main import CHILD_PARTS, parse_args
from benchmarks.run.targets import targets


def test_quick_runs_the_insert_rate_comparison() -> None:
    assert "insert_rate" in parse_args(["--quick"]).parts
    run, sizes_field = CHILD_PARTS["insert_rate"]
    assert run.__module__ == "benchmarks.run.insert_rate"
    assert "--seconds" in getattr(Sizes.quick(), sizes_field)


def test_the_insert_rate_target_is_the_lowest_ratio() -> None:
    doc = {"parts": {"insert_rate": {"ratios": {"1": {"ratio": 0.91}, "8": {"ratio": 0.79}}}}}
    assert targets(doc)["insert_rate_business_hours_vs_24_7"] == {
        "value": 0.79,
        "target": ">= 0.8 x",
        "met": False,
    }
    failed = targets({"parts": {"insert_rate": {"error": "exit code 1"}}})
    assert failed["insert_rate_business_hours_vs_24_7"]["met"] is None


def test_a_latency_miss_while_the_load_generator_lagged_is_flagged_not_hidden() -> None:
    """A machine stall shows in the writers' own start lag: the latency targets say so
    (the miss stays a miss), so a reader knows to rerun rather than to hunt a regression."""
    stalled = {
        "latency_commit_to_fake": {"p50_ms": 1.9, "p99_ms": 19.9},
        "writer_start_lag": {"p99_ms": 117.6},
    }
    got = targets({"parts": {"latency": stalled}})
    assert got["latency_p99"]["met"] is False
    assert got["latency_p99"]["load_generator_lag_p99_ms"] == 117.6
    assert got["latency_p99"]["machine_stalled"] is True
    steady = {**stalled, "writer_start_lag": {"p99_ms": 1.0}}
    assert targets({"parts": {"latency": steady}})["latency_p99"]["machine_stalled"] is False
