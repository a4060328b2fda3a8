"""Per-version request metrics through ``ray.serve.metrics`` (Prometheus, at Ray's metrics endpoint)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from ray.serve import metrics

from rayline.serving.errors import InputError
from rayline.serving.model_watch import SwapFailure
from rayline.spec import ModelUri

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class EndpointMetrics:
    """Requests, latency, errors, rejected inputs and batch sizes, tagged with model and version; failed hot
    swaps, tagged with model, alias and (for the count) the version that failed."""

    def __init__(self, model: str) -> None:
        self.model = model
        tags = ("model", "version", "route", "status")
        self.requests = metrics.Counter("rayline_requests", "Requests answered", tag_keys=tags)
        self.latency = metrics.Histogram("rayline_request_latency_ms", "Request latency (ms)", LATENCY_MS,
                                         tag_keys=("model", "version", "route"))
        self.rejected = metrics.Counter("rayline_rejected_inputs", "Requests refused with a 4xx",
                                        tag_keys=("model", "version", "route", "status"))
        self.errors = metrics.Counter("rayline_errors", "Requests that failed with a 5xx",
                                      tag_keys=("model", "version", "route"))
        self.batch_size = metrics.Histogram("rayline_batch_rows", "Rows per model forward pass", BATCH_SIZES,
                                            tag_keys=("model", "version"))
        self.swap_failures = metrics.Counter("rayline_model_swap_failures",
                                             "Hot swaps whose new version failed to load",
                                             tag_keys=("model", "alias", "version"))
        self.swap_failing = metrics.Gauge("rayline_model_swap_failing",
                                          "1 while the alias names a version that failed to load, else 0",
                                          tag_keys=("model", "alias"))

    @contextmanager
    def measure(self, route: str, version: str) -> Iterator[None]:
        """Count and time one request on ``route`` answered by ``version``; 4xx and 5xx are counted apart."""
        def tags(**extra: str) -> dict[str, str]:
            return {"model": self.model, "version": version, "route": route, **extra}

        started = time.perf_counter()
        status = "200"
        try:
            yield
        except InputError as error:
            status = str(error.status)
            self.rejected.inc(tags=tags(status=status))
            raise
        except Exception:
            status = "500"
            self.errors.inc(tags=tags())
            raise
        finally:
            self.requests.inc(tags=tags(status=status))
            self.latency.observe((time.perf_counter() - started) * 1000, tags=tags())

    def batch(self, rows: int, version: str) -> None:
        """Record one forward pass over ``rows`` rows."""
        self.batch_size.observe(rows, tags={"model": self.model, "version": version})

    def swap(self, uri: ModelUri, failure: SwapFailure | None) -> None:
        """Record the outcome of one hot-swap attempt on ``uri``'s alias (``failure`` None: it succeeded)."""
        tags = {"model": self.model, "alias": uri.alias or ""}
        if failure is not None:
            self.swap_failures.inc(tags={**tags, "version": failure.version})
        self.swap_failing.set(0 if failure is None else 1, tags=tags)
