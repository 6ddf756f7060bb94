"""Prometheus metrics of one app: requests, latency, queue depth, batch sizes, spans changed by harm.

Each app has its own registry, so several apps in one process (tests, a guard beside an API)
never share or double-register counters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mbias_requests", "HTTP requests by path and status", ["path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mbias_request_seconds",
            "Request latency",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Gauge("mbias_queue_depth", "Texts waiting or in the model", registry=self.registry)
        self.batch_sizes = Histogram(
            "mbias_batch_size", "Texts per model batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.changed = Counter(
            "mbias_spans_changed",
            "Sentences rewritten or flagged, by harm category",
            ["category", "action"],
            registry=self.registry,
        )

    def batch(self, size: int) -> None:
        self.batch_sizes.observe(size)

    def spans(self, spans: list[dict[str, Any]]) -> None:
        for span in spans:
            self.changed.labels(category=span.get("category") or "unknown", action=span["action"]).inc()

    def middleware(self, depth: Callable[[], int]) -> Callable[..., Awaitable[Any]]:
        """An HTTP middleware that counts and times every request and samples the queue depth."""

        async def measure(request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
            start = time.perf_counter()
            status = "500"  # what the server answers when a handler raises past every handler
            try:
                response = await call_next(request)
                status = str(response.status_code)
                return response
            finally:
                route = request.scope.get("route")
                path = getattr(route, "path", "unmatched")
                self.requests.labels(path=path, status=status).inc()
                self.latency.labels(path=path).observe(time.perf_counter() - start)
                self.queue.set(depth())

        return measure

    def render(self) -> bytes:
        return generate_latest(self.registry)
