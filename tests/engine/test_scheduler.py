"""The batching scheduler on the real tiny pipeline: batches, order, limits, deadlines, cancel, faults."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch

from cogserve.engine import BatchItem, Engine, GenerationOutput, GenerationParams, ProgressEvent
from cogserve.engine.runner import PipelineEngine
from cogserve.engine.scheduler import Scheduler, batch_size_for
from cogserve.errors import GenerationFailed, OutOfMemory, QueueFull, RequestTimeout
from cogserve.settings import ModelSettings, SchedulerSettings
from tests.helpers import DelegatingEngine, FaultyPipeline

T = TypeVar("T")

SQUARE = GenerationParams("a red fox in snow", 512, 512, 2, 3.5, 1)
WIDE = GenerationParams("a red fox in snow", 768, 512, 2, 3.5, 1)


def like(params: GenerationParams, **changes: Any) -> GenerationParams:
    return GenerationParams(**{**params.__dict__, **changes})


class Recorder(DelegatingEngine):
    """The real engine, recording each call's prompts; optionally paused or failing on demand."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Callable[[Sequence[BatchItem]], Exception | None] = lambda items: None

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        self.gate.wait(30)
        self.calls.append([item.params.prompt for item in items])
        error = self.fail(items)
        if error is not None:
            raise error
        return self.inner.generate_batch(items)


def run(
    scheduler_settings: SchedulerSettings, engine: Engine, body: Callable[[Scheduler], Coroutine[Any, Any, T]]
) -> T:
    async def main() -> T:
        scheduler = Scheduler(engine, scheduler_settings, device="cpu")
        scheduler.start()
        try:
            return await body(scheduler)
        finally:
            await scheduler.stop()

    return asyncio.run(main())


def pixels(output: GenerationOutput) -> np.ndarray:
    return np.asarray(output.image).astype(np.int16)


@pytest.fixture
def recorder(shared_engine: Engine) -> Recorder:
    return Recorder(shared_engine)


async def _until(condition: Callable[[], bool], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_same_key_requests_share_one_call_and_match_their_solo_images(recorder: Recorder) -> None:
    prompts = [f"fox number {i}" for i in range(4)]

    async def body(scheduler: Scheduler) -> list[GenerationOutput]:
        recorder.gate.clear()  # hold the engine until all four are queued
        tasks = [
            asyncio.create_task(scheduler.submit(like(SQUARE, prompt=p, seed=i), f"r{i}"))
            for i, p in enumerate(prompts)
        ]
        await _until(lambda: scheduler.stats.queued + scheduler.stats.running == 4)
        recorder.gate.set()
        return await asyncio.gather(*tasks)

    batched = run(SchedulerSettings(max_batch_size=4, max_batch_wait_ms=200), recorder, body)
    assert recorder.calls == [prompts]
    assert [output.batch_size for output in batched] == [4, 4, 4, 4]
    # Each image equals the same request run alone, within 1 level of 255 (fp32 batched matmuls
    # differ from single ones by ~1e-5, which can flip a rounding).
    for i, output in enumerate(batched):
        alone = recorder.inner.generate_batch([BatchItem(like(SQUARE, prompt=prompts[i], seed=i))])[0]
        assert np.abs(pixels(output) - pixels(alone)).max() <= 1
    assert not np.array_equal(pixels(batched[0]), pixels(batched[1]))  # seeds kept per image


def test_oldest_request_goes_first_and_no_key_starves(recorder: Recorder) -> None:
    order = ["s1", "w1", "s2", "s3", "s4", "s5", "s6"]

    async def body(scheduler: Scheduler) -> None:
        recorder.gate.clear()
        blocker = asyncio.create_task(scheduler.submit(like(WIDE, prompt="blocker"), "b"))
        await _until(lambda: scheduler.stats.running == 1)
        tasks = []
        for name in order:
            params = like(WIDE if name.startswith("w") else SQUARE, prompt=name)
            tasks.append(asyncio.create_task(scheduler.submit(params, name)))
            await asyncio.sleep(0.002)
        await _until(lambda: scheduler.stats.queued == len(order))
        recorder.gate.set()
        await asyncio.gather(blocker, *tasks)

    run(SchedulerSettings(max_batch_size=2, max_batch_wait_ms=0), recorder, body)
    # s1 is oldest: it takes s2 along (batch of 2); then w1, now the oldest, runs before s3..s6.
    assert recorder.calls == [["blocker"], ["s1", "s2"], ["w1"], ["s3", "s4"], ["s5", "s6"]]


def test_full_queue_refuses_at_once_with_retry_after(recorder: Recorder) -> None:
    async def body(scheduler: Scheduler) -> QueueFull:
        recorder.gate.clear()
        running = asyncio.create_task(scheduler.submit(SQUARE, "running"))
        await _until(lambda: scheduler.stats.running == 1)
        queued = [asyncio.create_task(scheduler.submit(WIDE, f"q{i}")) for i in range(2)]
        await _until(lambda: scheduler.stats.queued == 2)
        started = time.monotonic()
        with pytest.raises(QueueFull) as refused:
            await scheduler.submit(WIDE, "one-too-many")
        assert time.monotonic() - started < 0.1
        recorder.gate.set()
        await asyncio.gather(running, *queued)
        return refused.value

    error = run(SchedulerSettings(max_queue=2, max_batch_size=1), recorder, body)
    assert error.status == 429 and error.code == "1305"
    assert int(error.headers["Retry-After"]) >= 1


def test_request_still_queued_at_its_deadline_is_dropped_unstarted(recorder: Recorder) -> None:
    async def body(scheduler: Scheduler) -> None:
        recorder.gate.clear()
        first = asyncio.create_task(scheduler.submit(like(SQUARE, prompt="first"), "first"))
        await _until(lambda: scheduler.stats.running == 1)
        with pytest.raises(RequestTimeout, match="queued"):
            await scheduler.submit(like(WIDE, prompt="late"), "late")
        recorder.gate.set()
        with pytest.raises(RequestTimeout, match="running"):  # held at the gate past its deadline too
            await first
        await _until(lambda: scheduler.stats.running == 0)

    run(SchedulerSettings(request_timeout_s=0.3), recorder, body)
    assert recorder.calls == [["first"]]


def test_running_request_past_its_deadline_is_interrupted(recorder: Recorder) -> None:
    long = like(SQUARE, steps=400)
    events: list[ProgressEvent] = []

    async def body(scheduler: Scheduler) -> float:
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="running"):
            await scheduler.submit(long, "slow", on_progress=events.append)
        # The pipeline stops at its next step, so the next request runs at once.
        await scheduler.submit(SQUARE, "next")
        return time.monotonic() - started

    elapsed = run(SchedulerSettings(request_timeout_s=1.0), recorder, body)
    assert 0 < len(events) < 400
    assert elapsed < 8  # 400 steps would take ~12 s on this CPU


def test_cancelled_queued_request_never_reaches_the_pipeline(recorder: Recorder) -> None:
    async def body(scheduler: Scheduler) -> None:
        recorder.gate.clear()
        first = asyncio.create_task(scheduler.submit(like(SQUARE, prompt="first"), "first"))
        await _until(lambda: scheduler.stats.running == 1)
        doomed = asyncio.create_task(scheduler.submit(like(WIDE, prompt="doomed"), "doomed"))
        await _until(lambda: scheduler.stats.queued == 1)
        doomed.cancel()
        await _until(lambda: scheduler.stats.queued == 0)
        recorder.gate.set()
        await first
        await scheduler.submit(like(WIDE, prompt="after"), "after")

    run(SchedulerSettings(), recorder, body)
    assert recorder.calls == [["first"], ["after"]]


def test_cancelled_lone_request_stops_the_pipeline_at_the_next_step(recorder: Recorder) -> None:
    events: list[ProgressEvent] = []

    async def body(scheduler: Scheduler) -> None:
        task = asyncio.create_task(
            scheduler.submit(like(SQUARE, steps=400), "gone", on_progress=events.append)
        )
        await _until(lambda: len(events) >= 2)
        task.cancel()
        await _until(lambda: scheduler.stats.running == 0, within_s=5)

    run(SchedulerSettings(), recorder, body)
    assert 2 <= len(events) < 400


def test_cancelled_request_in_a_batch_is_discarded_and_the_rest_finish(recorder: Recorder) -> None:
    seen: dict[str, list[int]] = {"keep": [], "drop": []}

    async def body(scheduler: Scheduler) -> GenerationOutput:
        recorder.gate.clear()
        keep = asyncio.create_task(
            scheduler.submit(
                like(SQUARE, prompt="keep", steps=20), "keep", lambda e: seen["keep"].append(e.step)
            )
        )
        drop = asyncio.create_task(
            scheduler.submit(
                like(SQUARE, prompt="drop", steps=20), "drop", lambda e: seen["drop"].append(e.step)
            )
        )
        await _until(lambda: scheduler.stats.queued + scheduler.stats.running == 2)
        recorder.gate.set()
        await _until(lambda: len(seen["drop"]) >= 1)
        drop.cancel()
        return await keep

    kept = run(SchedulerSettings(max_batch_size=2, max_batch_wait_ms=200), recorder, body)
    assert recorder.calls == [["keep", "drop"]]
    assert kept.batch_size == 2 and seen["keep"][-1] == 20
    assert seen["drop"][-1] < 20  # events stop once it is cancelled


def test_progress_events_name_the_request_and_count_every_step(recorder: Recorder) -> None:
    heard: list[ProgressEvent] = []

    async def body(scheduler: Scheduler) -> None:
        scheduler.subscribe(heard.append)
        await scheduler.submit(like(SQUARE, steps=3), "req-progress")

    run(SchedulerSettings(), recorder, body)
    assert heard == [ProgressEvent("req-progress", step, 3) for step in (1, 2, 3)]


def test_batch_size_defaults_to_4_on_cuda_and_1_on_cpu() -> None:
    assert batch_size_for(SchedulerSettings(), "cuda:0") == 4
    assert batch_size_for(SchedulerSettings(), "cpu") == 1
    assert batch_size_for(SchedulerSettings(max_batch_size=3), "cpu") == 3


def test_lone_client_never_waits_for_company(recorder: Recorder) -> None:
    async def body(scheduler: Scheduler) -> float:
        await scheduler.submit(SQUARE, "warm")
        started = time.monotonic()
        for i in range(3):
            await scheduler.submit(like(SQUARE, seed=i), f"r{i}")
        return (time.monotonic() - started) / 3

    per_request = run(SchedulerSettings(max_batch_size=4, max_batch_wait_ms=5000), recorder, body)
    assert per_request < 2.5  # waiting for company would cost 5 s each


# -- faults, injected in front of the real pipeline -------------------------------------------


@pytest.fixture
def own_engine(models_dir: Path) -> PipelineEngine:
    engine = PipelineEngine(ModelSettings(builtin_dir=models_dir, builtin="tiny-random"), models_dir)
    engine.load()
    return engine


def _inject(engine: PipelineEngine, fault: Callable[[list[str]], Exception | None]) -> Recorder:
    engine._pipe = FaultyPipeline(engine._pipe, fault)
    return Recorder(engine)


def _queue_then_release(
    recorder: Recorder, prompts: list[str]
) -> Callable[[Scheduler], Coroutine[Any, Any, list[GenerationOutput | BaseException]]]:
    async def body(scheduler: Scheduler) -> list[GenerationOutput | BaseException]:
        recorder.gate.clear()
        tasks = [asyncio.create_task(scheduler.submit(like(SQUARE, prompt=p), p)) for p in prompts]
        await _until(lambda: scheduler.stats.queued + scheduler.stats.running == len(prompts))
        recorder.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    return body


def test_out_of_memory_in_a_batch_reruns_its_images_one_at_a_time(own_engine: PipelineEngine) -> None:
    def oom_when_batched(prompts: list[str]) -> Exception | None:
        if len(prompts) > 1 or prompts == ["huge"]:
            return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return None

    recorder = _inject(own_engine, oom_when_batched)
    results = run(
        SchedulerSettings(max_batch_size=4, max_batch_wait_ms=500),
        recorder,
        _queue_then_release(recorder, ["a", "huge", "c"]),
    )
    assert recorder.calls == [["a", "huge", "c"], ["a"], ["huge"], ["c"]]
    assert isinstance(results[0], GenerationOutput) and isinstance(results[2], GenerationOutput)
    assert isinstance(results[1], OutOfMemory) and results[1].status == 500
    assert "out of GPU memory" in results[1].message


def test_pipeline_error_in_a_batch_fails_only_the_image_that_raises(own_engine: PipelineEngine) -> None:
    def broken_once(prompts: list[str]) -> Exception | None:
        return RuntimeError("CUDA error: an illegal memory access") if "bad" in prompts else None

    recorder = _inject(own_engine, broken_once)

    async def body(scheduler: Scheduler) -> list[GenerationOutput | BaseException]:
        recorder.gate.clear()
        tasks = [
            asyncio.create_task(scheduler.submit(like(SQUARE, prompt="bad"), "bad")),
            asyncio.create_task(scheduler.submit(like(SQUARE, prompt="mate"), "mate")),
            asyncio.create_task(scheduler.submit(like(WIDE, prompt="other"), "other")),
        ]
        await _until(lambda: scheduler.stats.queued + scheduler.stats.running == 3)
        recorder.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    bad, mate, other = run(SchedulerSettings(max_batch_size=4, max_batch_wait_ms=500), recorder, body)
    assert isinstance(bad, GenerationFailed) and "illegal memory access" in bad.message
    # Its batch-mate is re-run alone and succeeds; the other size was never in the failed call.
    assert isinstance(mate, GenerationOutput) and mate.image.size == (512, 512)
    assert recorder.calls[:3] == [["bad", "mate"], ["bad"], ["mate"]]
    assert isinstance(other, GenerationOutput) and other.image.size == (768, 512)


def test_reserved_places_count_against_the_queue_until_used_or_released(recorder: Recorder) -> None:
    async def body(scheduler: Scheduler) -> None:
        places = scheduler.reserve(2)  # admitted requests still being moderated
        with pytest.raises(QueueFull):
            scheduler.reserve(1)
        with pytest.raises(QueueFull):
            await scheduler.submit(WIDE, "no-place")
        output = await scheduler.submit(WIDE, "with-place", reservation=places)  # uses one of its own
        assert output.image is not None and places.held == 1
        with pytest.raises(QueueFull):
            scheduler.reserve(2)
        places.release()
        places.release()  # idempotent
        scheduler.reserve(2).release()

    run(SchedulerSettings(max_queue=2, max_batch_size=1), recorder, body)
