"""The service's Prometheus metrics (GET /metrics, prometheus_client) and its JSON access log.

One `Metrics` per app, in its own registry (tests build several apps in one process). With several
worker processes (`affectus serve --workers N`) the parent sets PROMETHEUS_MULTIPROC_DIR before the
workers start: each worker's values go to files there and every scrape, whichever worker answers it,
adds up all of them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

_access = logging.getLogger("affectus.access")

# latency buckets (seconds): a batched features request takes milliseconds, a clip seconds
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# the routes requests are counted under (a path outside them is "other": labels stay few)
_ROUTES = ("/", "/health", "/predict", "/metrics", "/docs", "/openapi.json", "/v2", "/v2/health/live",
           "/v2/health/ready")


def route_of(path: str) -> str:
    if path in _ROUTES:
        return path
    if path.startswith("/v2/models/"):
        if path.endswith("/infer"):
            return "/v2/models/{name}/infer"
        if path.endswith("/ready"):
            return "/v2/models/{name}/ready"
        return "/v2/models/{name}"
    return "other"


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # multiprocess mode: values live in files, collected at scrape time; no per-app registry
        self.registry = None if self.multiprocess else CollectorRegistry()
        reg = {"registry": self.registry}
        live = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        self.requests = Counter("affectus_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], **reg)
        self.errors = Counter("affectus_errors", "HTTP answers with a 4xx / 5xx status, by status", ["status"], **reg)
        self.latency = Histogram("affectus_request_duration_seconds", "Time from request to the end of the answer",
                                 ["route"], buckets=_LATENCY, **reg)
        self.batch_size = Histogram("affectus_batch_size", "Samples in each forward of the dynamic batcher",
                                    buckets=_BATCH, **reg)
        self.queue_depth = Gauge("affectus_queue_samples", "Samples waiting for a forward", **reg, **live)
        self.in_flight = Gauge("affectus_requests_in_flight", "Requests being answered now", **reg, **live)
        self.clip_busy = Gauge("affectus_clip_slots_busy", "Clip extractions running (worker processes busy)",
                               **reg, **live)
        self.clip_slots = Gauge("affectus_clip_slots", "Clip extraction slots (--max-concurrent)", **reg, **live)
        self.npz_busy = Gauge("affectus_npz_slots_busy", "Features uploads being parsed and checked", **reg, **live)
        self.npz_slots = Gauge("affectus_npz_slots", "Features upload slots (--max-npz-concurrent)", **reg, **live)
        # each label set's children, looked up once (`labels()` checks and locks on every call)
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe(self, scope: dict[str, Any], status: int, seconds: float, size: int) -> None:
        """Count one answered request and write its access-log line."""
        route = route_of(scope.get("path", ""))
        method = scope.get("method", "")
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route),
                        self.errors.labels(str(status)) if status >= 400 else None)
            if len(self._children) < 1024:  # the method is the client's: the cache stays bounded
                self._children[key] = children
        count, latency, errors = children
        count.inc()
        latency.observe(seconds)
        if errors is not None:
            errors.inc()
        if _access.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("", 0)
            _access.info(json.dumps({
                "ts": round(time.time(), 3), "client": f"{client[0]}:{client[1]}", "method": method,
                "path": scope.get("path", "")[:200], "status": status, "ms": round(1000 * seconds, 2),
                "bytes": size, "worker": os.getpid()}))
