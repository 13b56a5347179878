"""Concurrent requests coalesced into one forward pass.

Each request puts its decoded photo and prompts on a queue and waits on a future. One model thread
takes the first waiting photo, then whatever else arrives within ``max_wait_ms``, up to
``max_batch``, and runs them through :func:`~drywall_core.model.runtime.probabilities_each` on the
model serving at that moment: each photo encoded once, each prompt decoded against the photos that
asked for it. The batch keeps its model to the end, so a swap never changes a batch halfway.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from drywall_core.base.errors import InputError
from drywall_core.model.runtime import ProbabilityMaps, probabilities_each, text_embeddings_cached
from drywall_core.serve.follow import Serving

log = logging.getLogger(__name__)


class NotReady(RuntimeError):
    """No warmed model serves yet (503)."""


@dataclass(frozen=True)
class Answered:
    """A photo's maps, the model that made them and how long it waited and ran."""

    serving: Serving
    maps: ProbabilityMaps
    queued_ms: float
    model_ms: float
    batch_size: int


@dataclass
class _Job:
    image: Image.Image
    prompts: list[str]
    future: Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        current: Callable[[], Serving | None],
        max_batch: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.current, self.max_batch, self.max_wait = current, max_batch, max_wait_ms / 1000.0
        self.on_batch, self.on_depth = on_batch, on_depth
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="drywall-serve-model", daemon=True)
        self._thread.start()

    def submit(self, image: Image.Image, prompts: Sequence[str]) -> Future:
        """A future of :class:`Answered` for one photo and its prompts."""
        job = _Job(image, list(prompts), Future())
        self._queue.put(job)
        if self.on_depth:
            self.on_depth(self._queue.qsize())
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _take(self) -> list[_Job] | None:
        """The first waiting job, every job already queued behind it, then whatever arrives within
        ``max_wait`` (requests that arrive while a batch runs queue up and join the next one)."""
        first = self._queue.get()
        if first is None:
            return None
        jobs, deadline = [first], time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            if self.on_depth:
                self.on_depth(self._queue.qsize())
            serving = self.current()
            if serving is None:
                for job in jobs:
                    job.future.set_exception(NotReady("no model loaded yet"))
                continue
            jobs = [j for j in jobs if self._prompts_ok(serving, j)]
            if not jobs:
                continue
            started = time.perf_counter()
            try:
                maps = probabilities_each(
                    serving.loaded, [j.image for j in jobs], [j.prompts for j in jobs], batch_size=len(jobs)
                )
            except Exception as exc:  # noqa: BLE001 - every waiting request hears of it; the thread goes on
                log.exception("forward pass failed on a batch of %d", len(jobs))
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            done = time.perf_counter()
            if self.on_batch:
                self.on_batch(len(jobs))
            for job, m in zip(jobs, maps, strict=True):
                queued = (started - job.queued_at) * 1000
                job.future.set_result(Answered(serving, m, queued, (done - started) * 1000, len(jobs)))

    @staticmethod
    def _prompts_ok(serving: Serving, job: _Job) -> bool:
        """A prompt the model cannot take fails its own request, not the batch it would have joined."""
        try:
            text_embeddings_cached(serving.loaded, job.prompts)
        except InputError as exc:
            job.future.set_exception(exc)
            return False
        return True
