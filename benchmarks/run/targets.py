"""Each figure against its target: met, missed, or not measured."""

from __future__ import annotations

from typing import Any

from .insert_rate import lowest_ratio
from .overhead import overhead_ratio_at

#: The writers start each update on an absolute schedule; when they themselves run this
#: late at p99, the machine stalled during the part and its latency figures say so.
STALL_LAG_MS = 10.0


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    parts = doc["parts"]
    out: dict[str, Any] = {}

    def check(name: str, value: Any, op: str, limit: float, unit: str) -> None:
        met = None
        if isinstance(value, int | float):
            met = value <= limit if op == "<=" else value >= limit
        out[name] = {"value": value, "target": f"{op} {limit:g} {unit}".strip(), "met": met}

    def get(*path: str) -> Any:
        node: Any = parts
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    if "latency" in parts:
        check("latency_p50", get("latency", "latency_commit_to_fake", "p50_ms"), "<=", 5, "ms")
        check("latency_p99", get("latency", "latency_commit_to_fake", "p99_ms"), "<=", 15, "ms")
        lag = get("latency", "writer_start_lag", "p99_ms")
        if isinstance(lag, int | float):
            for name in ("latency_p50", "latency_p99"):
                out[name]["load_generator_lag_p99_ms"] = lag
                out[name]["machine_stalled"] = lag > STALL_LAG_MS
    if "backlog" in parts:
        check("backlog_drain", get("backlog", "messages_per_s_from_ready"), ">=", 2000, "msg/s")
    if "live" in parts:
        check("live_throughput", get("live", "messages_per_s"), ">=", 1000, "msg/s")
    if "escalation" in parts:
        p99 = get("escalation", "escalated_at_minus_deadline", "p99_ms")
        check("breach_to_escalation_p99", p99 / 1000 if p99 is not None else None, "<=", 1, "s")
        if (late := get("escalation", "not_escalated_after_wait")) and late > 0:
            out["breach_to_escalation_p99"]["met"] = False
            out["breach_to_escalation_p99"]["not_escalated_within_wait"] = late
    if "sweep" in parts:
        all_s = get("sweep", "seconds_due_to_all_escalated")
        rate = get("sweep", "escalations_per_s_from_due")
        extrapolated = all_s is None and isinstance(rate, float) and rate > 0
        if extrapolated:  # gave up waiting: what the measured rate needs for all of them
            all_s = round(get("sweep", "breached") / rate, 1)
        check("sweep_all_escalated", all_s, "<=", 10, "s")
        out["sweep_all_escalated"]["extrapolated_from_rate"] = extrapolated
        check(
            "sweep_no_seq_scan",
            0
            if get("sweep", "breach_query_plan_with_breached", "seq_scan_on_tickets") is False
            else 1,
            "<=",
            0,
            "seq scans",
        )
    if "writer_overhead" in parts:
        check(
            "writer_overhead_32_clients",
            overhead_ratio_at(parts["writer_overhead"], 32),
            ">=",
            0.7,
            "x",
        )
    if "insert_rate" in parts:
        check(
            "insert_rate_business_hours_vs_24_7",
            lowest_ratio(parts["insert_rate"]),
            ">=",
            0.8,
            "x",
        )
    peaks: list[float] = [
        p["daemon_peak_rss_mb"]
        for p in parts.values()
        if isinstance(p, dict) and isinstance(p.get("daemon_peak_rss_mb"), int | float)
    ]
    if peaks:
        check("daemon_peak_rss", max(peaks), "<=", 100, "MB")
    lost = dup = 0
    for name in ("latency", "backlog", "live"):
        lost += get(name, "delivery", "lost") or 0
        dup += get(name, "delivery", "duplicates") or 0
    for name in ("escalation", "sweep"):
        lost += get(name, "notices", "lost") or 0
        dup += get(name, "notices", "duplicates") or 0
        dup += get(name, "notices", "staff_alert_duplicates") or 0
    if any(n in parts for n in ("latency", "backlog", "live", "escalation", "sweep")):
        check("lost_messages", lost, "<=", 0, "")
        check("duplicate_messages", dup, "<=", 0, "")
    return out
