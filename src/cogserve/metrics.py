"""Prometheus metrics: one registry per app, so two apps in one process (tests) never collide.

Layers below the API do not import prometheus: they call this object's small methods (the
service) or report through callbacks (the scheduler's ``on_batch``), and gauges read their values
at scrape time, so nothing is counted twice or goes stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cogserve.engine.scheduler import BatchReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The *_created series (a timestamp per label set) double the output and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Image requests take from ~0.1 s (tiny model) to minutes (hd at 2048 px behind a queue).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cogserve_requests",
            "HTTP requests answered, by route template, method, status and business code.",
            ["route", "method", "status", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "cogserve_request_duration_seconds",
            "End-to-end HTTP latency, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("cogserve_images_generated", "Images generated and stored.", registry=r)
        self.blocks = Counter(
            "cogserve_moderation_blocks",
            "Requests refused by moderation: stage=input (prompt), rewrite (enhanced prompt) or "
            "output (image).",
            ["stage"],
            registry=r,
        )
        self.batch_size = Histogram(
            "cogserve_batch_size",
            "Images per pipeline call.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )
        self.step_seconds = Histogram(
            "cogserve_step_duration_seconds",
            "Wall time of one denoising step of a pipeline call (call time / steps).",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "cogserve_queue_wait_seconds",
            "Time an image waited in the scheduler's queue before its pipeline call began.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.enhancer_calls = Histogram(
            "cogserve_prompt_enhancement_duration_seconds",
            "Time spent asking the prompt enhancer (cache misses), retries included.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.enhancer_fallbacks = Counter(
            "cogserve_prompt_enhancement_fallbacks",
            "Prompts used as sent because enhancement failed, by reason (timeout, unavailable, empty, ...).",
            ["reason"],
            registry=r,
        )
        self.enhancer_lookups = Counter(
            "cogserve_prompt_enhancement_cache",
            "Enhancement cache lookups, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        # Adapter labels are bounded: only names the registry serves reach these (checked first).
        self.lora_requests = Counter(
            "cogserve_lora_requests",
            "Requests admitted that use a LoRA adapter, by adapter.",
            ["adapter"],
            registry=r,
        )
        self.lora_events = Counter(
            "cogserve_lora_adapter_events",
            "LoRA adapters loaded into the model or evicted from it (least recently used), by event.",
            ["event"],
            registry=r,
        )
        self.lora_load_seconds = Histogram(
            "cogserve_lora_load_duration_seconds",
            "Time to read an adapter's weights and load it into the model.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.jobs = Counter(
            "cogserve_async_jobs_finished",
            "Async jobs finished, by final status (SUCCESS, FAIL).",
            ["status"],
            registry=r,
        )

    # -- what the layers report -----------------------------------------------------------------

    def request(self, route: str, method: str, status: int, code: str, seconds: float) -> None:
        self.requests.labels(route, method, str(status), code).inc()
        self.request_seconds.labels(route).observe(seconds)

    def image_generated(self) -> None:
        self.images.inc()

    def moderation_block(self, stage: str) -> None:
        self.blocks.labels(stage).inc()

    def enhancer_seconds(self, seconds: float) -> None:
        self.enhancer_calls.observe(seconds)

    def enhancer_fallback(self, reason: str) -> None:
        self.enhancer_fallbacks.labels(reason).inc()

    def enhancer_cache(self, *, hit: bool) -> None:
        self.enhancer_lookups.labels("hit" if hit else "miss").inc()

    def batch(self, report: BatchReport) -> None:
        self.batch_size.observe(report.size)
        self.step_seconds.observe(report.elapsed_s / max(1, report.steps))
        for waited in report.waited_s:
            self.queue_wait.observe(waited)

    def lora_request(self, adapter: str) -> None:
        self.lora_requests.labels(adapter).inc()

    def lora_event(self, event: str, adapter: str, seconds: float) -> None:
        """The registry's listener; called on the pipeline's worker thread (prometheus is thread-safe)."""
        self.lora_events.labels(event).inc()
        if event == "load":
            self.lora_load_seconds.observe(seconds)

    def job_finished(self, status: str) -> None:
        self.jobs.labels(status).inc()

    # -- read at scrape time ---------------------------------------------------------------------

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read from the app's state whenever /metrics is scraped."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def watch_gpu_memory(self, device: str) -> None:
        """Export the CUDA caching allocator's figures; nothing on a CPU."""
        if device.startswith("cuda"):
            self.registry.register(_CudaMemory(device))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CudaMemory(Collector):
    def __init__(self, device: str) -> None:
        self._device = device

    def collect(self) -> Iterator[Metric]:
        import torch

        family = GaugeMetricFamily(
            "cogserve_gpu_memory_bytes",
            "CUDA memory of the serving device: allocated (live tensors), reserved (allocator "
            "cache) and peak_allocated (since start).",
            labels=["kind"],
        )
        family.add_metric(["allocated"], float(torch.cuda.memory_allocated(self._device)))
        family.add_metric(["reserved"], float(torch.cuda.memory_reserved(self._device)))
        family.add_metric(["peak_allocated"], float(torch.cuda.max_memory_allocated(self._device)))
        yield family
