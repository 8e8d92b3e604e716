"""Adaptive batching across tasks: one model-owning thread per process, fed by task threads.

The model is loaded, warmed up and run on that one thread only. Measured with the embedded
model on 2 CPU cores: once any other thread of the process has run a parallel torch op, the
forward pass on a second thread is about 20 % slower (two OpenMP thread teams share the
cores); with every op on one thread it runs as fast as on the main thread.

Each Celery task (running on a thread of the worker's pool) hands its decoded frames to the
Batcher and blocks on a future. The Batcher's thread takes whatever frames are waiting, up to
``max_batch``, and runs one forward pass at once: under a backlog, frames of several tasks share
a pass; with a single frame waiting, it runs alone without waiting for company. While a pass
runs, other task threads fetch, decode and upload, so I/O overlaps compute.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from autolabel.detections import Detection
from autolabel_worker import metrics

log = logging.getLogger(__name__)


class Predictor(Protocol):
    def predict(self, images: Sequence[np.ndarray], score_threshold: float) -> list[list[Detection]]: ...


M = TypeVar("M", bound=Predictor)
T = TypeVar("T")


@dataclass
class _Item:
    image: np.ndarray
    threshold: float
    future: Future[list[Detection]] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)
    # Set before the future resolves: this frame's share of its pass, and the pass's size.
    device_seconds: float = 0.0
    pass_size: int = 0


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass
class Outcome:
    """Per frame its detections or its own exception, and what the frames cost on the device."""

    results: list[list[Detection] | BaseException]
    device_seconds: float
    pass_sizes: list[int]


@dataclass
class BatchStats:
    passes: int = 0
    frames: int = 0
    sizes: list[int] = field(default_factory=list)


class Batcher(Generic[M]):
    """Owns the model: ``load`` builds it on the batcher's thread; the constructor re-raises its error."""

    def __init__(self, load: Callable[[], M], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | _Call | None] = queue.SimpleQueue()
        # An item taken while filling a batch that does not belong in it; it is served next.
        self._held: _Call | None = None
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()
        try:
            self.model: M = self.call(load)
        except BaseException:
            self.close()
            raise

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model's thread, after the frames already queued, and return its result."""
        work = _Call(fn)
        self._queue.put(work)
        return work.future.result()

    def _enqueue(self, images: Sequence[np.ndarray], threshold: float) -> list[_Item]:
        items = [_Item(image, threshold) for image in images]
        for item in items:
            self._queue.put(item)
        return items

    def submit(self, images: Sequence[np.ndarray], threshold: float) -> list[Future[list[Detection]]]:
        """Queue frames; each future holds one frame's detections or that frame's own exception."""
        return [item.future for item in self._enqueue(images, threshold)]

    def predict(self, images: Sequence[np.ndarray], threshold: float, timeout: float | None = None) -> Outcome:
        """Blocking form of ``submit``, with the frames' share of device time.

        Raises TimeoutError when the frames are not all done within ``timeout`` seconds. This is
        the task time limit of a threads-pool worker, where Celery's own limits do not apply; the
        abandoned frames still run when their turn comes, as a pass cannot be taken back.
        """
        items = self._enqueue(images, threshold)
        deadline = None if timeout is None else time.monotonic() + timeout
        results: list[list[Detection] | BaseException] = []
        for item in items:
            exc = item.future.exception(None if deadline is None else max(0.0, deadline - time.monotonic()))
            results.append(exc if exc is not None else item.future.result())
        return Outcome(results, sum(i.device_seconds for i in items), [i.pass_size for i in items])

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _take(self) -> list[_Item] | _Call | None:
        if self._held is not None:
            first, self._held = self._held, None
        else:
            first = self._queue.get()
        if not isinstance(first, _Item):
            return first
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            if isinstance(item, _Call):
                self._held = item
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if isinstance(batch, _Call):
                try:
                    batch.future.set_result(batch.fn())
                except BaseException as exc:
                    batch.future.set_exception(exc)
                continue
            self.stats.passes += 1
            self.stats.frames += len(batch)
            self.stats.sizes.append(len(batch))
            metrics.observe_waits([item.queued_at for item in batch], time.monotonic())
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Item]) -> None:
        # One pass at the lowest threshold asked for; each frame keeps its own threshold's boxes.
        threshold = min(item.threshold for item in batch)
        started = time.perf_counter()
        try:
            outputs = self.model.predict([item.image for item in batch], threshold)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # Find the frame that breaks the pass, so only it fails.
            log.exception("batched forward pass of %d frames failed; running them one by one", len(batch))
            for item in batch:
                self._run_batch([item])
            return
        seconds = time.perf_counter() - started
        metrics.observe_pass(len(batch), seconds)
        share = seconds / len(batch)
        for item, detections in zip(batch, outputs):
            item.device_seconds, item.pass_size = share, len(batch)
            item.future.set_result([d for d in detections if d.score >= item.threshold])
