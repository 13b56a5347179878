"""What the prediction service exposes at ``GET /metrics`` (Prometheus text format).

One registry per service (not the process-wide default), so two services in one process -- the
tests, the benchmark's two services -- never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "drywall_serve_request_seconds", "Time to answer a request.", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.requests = Counter(
            "drywall_serve_requests", "Requests answered, by route and status.", ["route", "status"], registry=r
        )
        self.refused = Counter(
            "drywall_serve_refused_requests",
            "Requests refused, by class (auth, rate, size, input, ...).",
            ["reason"],
            registry=r,
        )
        self.batch = Histogram(
            "drywall_serve_batch_size", "Photos per forward pass.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue = Gauge("drywall_serve_queue_depth", "Photos waiting for the model.", registry=r)
        self.model = Gauge(
            "drywall_serve_model_info",
            "The model version serving (1) and those loaded before (0).",
            ["version"],
            registry=r,
        )
        self.swaps = Counter("drywall_serve_swaps", "Model versions swapped in.", registry=r)
        self.refused_versions = Counter(
            "drywall_serve_refused_versions",
            "Model versions not swapped in, by class (warmup, checksum, load).",
            ["kind"],
            registry=r,
        )
        self.follow_errors = Counter(
            "drywall_serve_follow_errors", "Failed reads of the alias or a version.", registry=r
        )

        self.captured = Counter("drywall_serve_captured", "Photos stored under the field-images prefix.", registry=r)
        self.shadow = Histogram(
            "drywall_serve_shadow_agreement",
            "Challenger vs champion mask IoU per prompt.",
            ["prompt"],
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 1.0),
            registry=r,
        )

    def serving(self, version: str, before: str | None) -> None:
        if before:
            self.model.labels(before).set(0)
        self.model.labels(version).set(1)
        self.swaps.inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
