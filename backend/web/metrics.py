"""Request counters and latencies with prometheus_client, exposed two ways:

- GET /metrics: Prometheus text format. With PROMETHEUS_MULTIPROC_DIR set (a directory shared by the
  gunicorn workers, emptied at start), prometheus_client sums the request counters of every worker
  process; embedding statistics and background pre-annotation are those of the worker that answers.
- GET /status: the same counters of this process as JSON, with its pid, the versions it serves,
  embedding statistics and the training state (JSON for people and tests).
"""
from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "clip_backend"
# from a cached /predict (milliseconds) to a "Retrieve predictions" batch (PREDICT_TIMEOUT, 80 s)
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
COUNTERS = {  # name -> help; the JSON status shows them under these names
    "predict_requests": "POST /predict requests",
    "tasks": "tasks received by /predict",
    "predictions": "tasks that got a prediction",
    "tasks_failed": "tasks without a prediction (item missing, unreadable or not decodable)",
    "search_requests": "POST /search requests",
    "errors": "requests that failed with an internal error",
}


class Metrics:
    def __init__(self, stats=None, preannotation=None, training=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = time.time()
        self.counters = {name: Counter(f"{PREFIX}_{name}", text, registry=self.registry)
                         for name, text in COUNTERS.items()}
        self.webhooks = Counter(f"{PREFIX}_webhook_events", "webhook events received", ["event"],
                                registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_request_seconds", "request latency", ["endpoint"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS_S)
        # figures of this process read at scrape time (never summed over workers): embedding
        # statistics of its models, its background pre-annotation per project
        self.process_registry = CollectorRegistry(auto_describe=True)
        if stats is not None:
            self.process_registry.register(_StatsCollector(stats))
        if preannotation is not None:
            self.process_registry.register(_PreannotationCollector(preannotation))
        if training is not None:  # with REDIS_URL the cluster's state (from Redis)
            self.process_registry.register(_TrainingCollector(training))

    def add(self, **counts: int) -> None:
        for name, value in counts.items():
            self.counters[name].inc(value)

    def webhook(self, event: str) -> None:
        self.webhooks.labels(event=event.lower()).inc()

    def observe(self, endpoint: str, seconds: float) -> None:
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def exposition(self) -> bytes:
        """Prometheus text format: every worker's counters when PROMETHEUS_MULTIPROC_DIR is set."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + generate_latest(self.process_registry)

    def snapshot(self, extra: dict | None = None) -> dict:
        """This process's counters and latencies as JSON."""
        counters: dict[str, float] = {}
        latency: dict[str, dict] = {}
        for family in [*self.registry.collect(), *self.process_registry.collect()]:
            for sample in family.samples:
                name = sample.name.removeprefix(f"{PREFIX}_")
                if name.startswith("preannotation"):
                    continue  # per project: /status shows it as "preannotation"
                if name.endswith("_total") and family.type == "counter":
                    key = name.removesuffix("_total")
                    if key == "webhook_events":
                        key = f"webhook_{sample.labels['event']}"
                    counters[key] = int(sample.value)
                elif name in ("request_seconds_count", "request_seconds_sum"):
                    entry = latency.setdefault(sample.labels["endpoint"], {})
                    entry["count" if name.endswith("count") else "sum_s"] = sample.value
        for endpoint, entry in latency.items():
            entry["count"] = int(entry.get("count", 0))
            entry["mean_ms"] = round(1000 * entry.pop("sum_s", 0.0) / max(entry["count"], 1), 3)
            buckets = self._buckets(endpoint)
            entry["p50_ms"], entry["p95_ms"] = (_quantile_ms(buckets, q) for q in (0.5, 0.95))
        return {"uptime_s": round(time.time() - self.started, 1), "counters": {**counters, **(extra or {})},
                "latency": latency}


    def _buckets(self, endpoint: str) -> list[tuple[float, float]]:
        """(upper bound in seconds, cumulative count) of the endpoint's latency histogram."""
        return [(float(sample.labels["le"]), sample.value) for family in self.latency.collect()
                for sample in family.samples
                if sample.name.endswith("_bucket") and sample.labels.get("endpoint") == endpoint]


def _quantile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile from cumulative histogram buckets, linear within a bucket (as PromQL's
    histogram_quantile); the largest finite bound when it falls in the +Inf bucket."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return round(1000 * lower, 3)
            inside = (rank - below) / (cumulative - below) if cumulative > below else 1.0
            return round(1000 * (lower + (upper - lower) * inside), 3)
        lower, below = upper, cumulative
    return round(1000 * lower, 3)


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


class _PreannotationCollector:
    """Tasks of background pre-annotation per project: queued, embedded, predicted, pushed, failed, pending."""

    def __init__(self, status):
        self.status = status

    def collect(self):
        status = self.status()
        pending = GaugeMetricFamily(f"{PREFIX}_preannotation_pending", "tasks waiting for background "
                                    "pre-annotation", labels=["project"])
        done = CounterMetricFamily(f"{PREFIX}_preannotation_tasks", "tasks through background pre-annotation",
                                   labels=["project", "stage"])
        for project, counts in sorted(status.items()):
            pending.add_metric([project], counts.get("pending", 0))
            for stage in ("queued", "embedded", "predicted", "pushed", "failed"):
                done.add_metric([project, stage], counts.get(stage, 0))
        yield pending
        yield done

    def describe(self):
        return []


class _TrainingCollector:
    """Per project: seconds of each phase of the last training run, and what its queue re-ranking
    wrote to Label Studio (ranked = the batch imported, audit = audit items in it, replaced = the previous
batch's predictions removed, deleted = superseded predictions of earlier versions)."""

    def __init__(self, status):
        self.status = status

    def collect(self):
        status = self.status()
        phases = GaugeMetricFamily(f"{PREFIX}_last_run_seconds", "seconds per phase of the last training run",
                                   labels=["project", "phase"])
        ranking = GaugeMetricFamily(f"{PREFIX}_last_ranking_predictions", "predictions the last queue batch "
                                    "imported (ranked, of them audit), replaced or deleted", labels=["project", "kind"])
        for project, run in sorted((status.get("last_run") or {}).items()):
            for phase, seconds in sorted((run.get("phases") or {}).items()):
                phases.add_metric([project, phase], seconds)
        for project, summary in sorted((status.get("last_ranking") or {}).items()):
            for kind in ("ranked", "audit", "replaced", "deleted"):
                ranking.add_metric([project, kind], summary.get(kind) or 0)
        yield phases
        yield ranking

    def describe(self):
        return []
