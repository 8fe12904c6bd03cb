"""Request counters and latencies with prometheus_client, exposed two ways:

- GET /metrics: Prometheus text format. With PROMETHEUS_MULTIPROC_DIR set (a directory shared by the
  gunicorn workers, emptied at start), prometheus_client sums the counters of every worker process.
- GET /status: the same counters of this process as JSON, with its pid, the versions it serves,
  embedding statistics and the training state (JSON for people and tests).
"""
from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily

PREFIX = "clip_backend"
COUNTERS = {  # name -> help; the JSON status shows them under these names
    "predict_requests": "POST /predict requests",
    "tasks": "tasks received by /predict",
    "predictions": "tasks that got a prediction",
    "tasks_failed": "tasks without a prediction (item missing, unreadable or not decodable)",
    "search_requests": "POST /search requests",
    "errors": "requests that failed with an internal error",
}


class Metrics:
    def __init__(self, stats=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = time.time()
        self.counters = {name: Counter(f"{PREFIX}_{name}", text, registry=self.registry)
                         for name, text in COUNTERS.items()}
        self.webhooks = Counter(f"{PREFIX}_webhook_events", "webhook events received", ["event"],
                                registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_request_seconds", "request latency", ["endpoint"],
                                 registry=self.registry)
        if stats is not None:  # embedding statistics of this process's models, read at scrape time
            self.registry.register(_StatsCollector(stats))

    def add(self, **counts: int) -> None:
        for name, value in counts.items():
            self.counters[name].inc(value)

    def webhook(self, event: str) -> None:
        self.webhooks.labels(event=event.lower()).inc()

    def observe(self, endpoint: str, seconds: float) -> None:
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def exposition(self) -> bytes:
        """Prometheus text format: every worker's counters when PROMETHEUS_MULTIPROC_DIR is set."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def snapshot(self, extra: dict | None = None) -> dict:
        """This process's counters and latencies as JSON."""
        counters: dict[str, float] = {}
        latency: dict[str, dict] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                name = sample.name.removeprefix(f"{PREFIX}_")
                if name.endswith("_total") and family.type == "counter":
                    key = name.removesuffix("_total")
                    if key == "webhook_events":
                        key = f"webhook_{sample.labels['event']}"
                    counters[key] = int(sample.value)
                elif name in ("request_seconds_count", "request_seconds_sum"):
                    entry = latency.setdefault(sample.labels["endpoint"], {})
                    entry["count" if name.endswith("count") else "sum_s"] = sample.value
        for entry in latency.values():
            entry["count"] = int(entry.get("count", 0))
            entry["mean_ms"] = round(1000 * entry.pop("sum_s", 0.0) / max(entry["count"], 1), 3)
        return {"uptime_s": round(time.time() - self.started, 1), "counters": {**counters, **(extra or {})},
                "latency": latency}


class _StatsCollector:
    """Embedding statistics (cached, computed, failed items; searches) summed over the process's models."""

    def __init__(self, stats):
        self.stats = stats

    def collect(self):
        for name, value in sorted(self.stats().items()):
            family = CounterMetricFamily(f"{PREFIX}_{name}", f"{name.replace('_', ' ')} (this process)")
            family.add_metric([], value)
            yield family

    def describe(self):
        return []
