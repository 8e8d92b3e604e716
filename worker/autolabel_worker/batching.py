"""Adaptive batching across tasks: the model's thread runs forward passes and nothing else.

Each Celery task (running on a thread of the worker's pool) hands its decoded frames to the
Batcher. A frame goes through four stages of the model (``BatchModel``), on three kinds of thread:

    task thread      prepare: the test pipeline (resize, pad, pack) of each of its frames
    forming thread   collate: a batch of prepared frames, through the data preprocessor
    model thread     forward: the forward pass, and the outputs copied to the host
    task thread      postprocess: the outputs of its frames turned into detections

so the model's thread never waits on CPU work between passes: while pass N runs, the task
threads prepare the frames that will follow, and the forming thread collates batch N+1 as
soon as it is full; when pass N ends, batch N+1 is ready (double buffering). A batch is formed
from the frames waiting, up to ``max_batch``: at once when it is full or when the model is idle
(a lone frame runs at once, without waiting for company), otherwise when the model becomes
idle, so frames that arrive during a pass join the next batch. Which frames form a batch is
decided by ``take_batch``, a pure function. Under a backlog, frames of several tasks share a pass.

The model is loaded and warmed up on the model's thread too, and ``call`` runs any other work
there (between passes). On a CPU device the torch operations of the test pipeline and the
data preprocessor run on those other threads in OpenMP thread teams of their own beside the
model's, each as large as the model's: torch gives a thread the count last set (by the model's
thread, in load) when it first runs a torch op. AUTOLABEL_TORCH_THREADS below the cores thus
leaves the I/O a core.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from autolabel.detections import Detection
from autolabel_worker import metrics

log = logging.getLogger(__name__)


class BatchModel(Protocol):
    """A detector cut into the stages the Batcher runs on different threads (see the module's docstring).

    ``prepare`` returns one frame's input, ``collate`` one batch's, ``forward`` one output per
    frame of the batch, in order, already on the host; ``postprocess`` keeps a frame's detections
    at or above ``threshold``. The Batcher passes what each stage returns to the next unopened.
    """

    def prepare(self, image: np.ndarray) -> Any: ...

    def collate(self, prepared: Sequence[Any]) -> Any: ...

    def forward(self, batch: Any) -> Sequence[Any]: ...

    def postprocess(self, output: Any, threshold: float) -> list[Detection]: ...


M = TypeVar("M", bound=BatchModel)
T = TypeVar("T")


@dataclass
class _Item:
    prepared: Any
    threshold: float
    # Set when a batched pass of it failed: it runs in a pass of its own, to find the frame at fault.
    alone: bool = False
    # The frame's output on the host, or its own exception.
    future: Future[Any] = field(default_factory=Future)
    # Set before the future resolves: this frame's share of its pass, and the pass's size.
    device_seconds: float = 0.0
    pass_size: int = 0
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass
class _Batch:
    items: list[_Item]
    collated: Any


# What the forming thread hands the model's thread when the Batcher closes.
_STOP = object()


def take_batch(waiting: deque[Any], max_batch: int, flush: bool) -> list[_Item] | Any | None:
    """Take the next unit of work from the head of ``waiting``, or None to wait for more.

    A frame marked ``alone`` is a batch of its own; anything that is not a frame (a call) is
    taken by itself, in its turn. Otherwise the batch is the frames at the head, up to
    ``max_batch``: taken when full, when ``flush`` (the model is idle, or the Batcher closes)
    or when something that cannot join it follows; else left to fill while the model is busy.
    """
    if not waiting:
        return None
    head = waiting[0]
    if not isinstance(head, _Item):
        return waiting.popleft()
    if head.alone:
        return [waiting.popleft()]
    size = 0
    while size < min(max_batch, len(waiting)) and isinstance(waiting[size], _Item) and not waiting[size].alone:
        size += 1
    if size < max_batch and size == len(waiting) and not flush:
        return None
    return [waiting.popleft() for _ in range(size)]


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


class Pending:
    """A submitted frame. ``result`` waits for its pass and turns the output into detections on the
    calling thread, so postprocessing never holds up the model's thread."""

    def __init__(self, item: _Item, postprocess: Callable[[Any, float], list[Detection]]) -> None:
        self._item, self._postprocess = item, postprocess

    def wait(self, timeout: float | None = None) -> None:
        """Raises TimeoutError when the frame's pass has not ended within ``timeout`` seconds."""
        self._item.future.exception(timeout)

    def result(self, timeout: float | None = None) -> list[Detection]:
        """The frame's detections, or its own exception raised."""
        return self._postprocess(self._item.future.result(timeout), self._item.threshold)

    @property
    def device_seconds(self) -> float:
        """The frame's share of its pass's time on the model's thread (0 until the pass ends)."""
        return self._item.device_seconds

    @property
    def pass_size(self) -> int:
        """The frames of its pass (0 until a pass of it ends)."""
        return self._item.pass_size


class Batcher(Generic[M]):
    """Owns the model: ``load`` builds it on the model's thread; the constructor re-raises its error."""

    def __init__(self, load: Callable[[], M], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.max_batch = max_batch
        self.stats = BatchStats()
        # Guards what the two threads share: the frames and calls waiting, the formed batch that
        # waits for the model (at most one: the second buffer), and whether the model is idle.
        self._state = threading.Condition()
        self._waiting: deque[_Item | _Call] = deque()
        self._ready: _Batch | _Call | object | None = None
        self._model_idle = False
        self._closing = False
        self._former = threading.Thread(target=self._form_batches, name="batcher-forming", daemon=True)
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._former.start()
        self._thread.start()
        try:
            self.model: M = self.call(load)
        except BaseException:
            self.close()
            raise

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model's thread, after the frames already queued, and return its result."""
        work = _Call(fn)
        with self._state:
            self._waiting.append(work)
            self._state.notify_all()
        return work.future.result()

    def submit(self, images: Sequence[np.ndarray], threshold: float) -> list[Pending]:
        """Prepare the frames on this thread and queue them together; each ``Pending`` gives one
        frame's detections or that frame's own exception."""
        items = []
        for image in images:
            item = _Item(None, threshold)
            try:
                item.prepared = self.model.prepare(image)
            except Exception as exc:
                item.future.set_exception(exc)
            items.append(item)
        with self._state:
            self._waiting.extend(item for item in items if not item.future.done())
            self._state.notify_all()
        return [Pending(item, self.model.postprocess) for item in items]

    def predict(self, images: Sequence[np.ndarray], threshold: float, timeout: float | None = None) -> Outcome:
        """Blocking form of ``submit``, with the frames' share of device time.

        Raises TimeoutError when the frames are not all done within ``timeout`` seconds. This is
        the task time limit of a threads-pool worker, where Celery's own limits do not apply; the
        abandoned frames still run when their turn comes, as a pass cannot be taken back.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = self.submit(images, threshold)
        for frame in pending:
            frame.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        results: list[list[Detection] | BaseException] = []
        for frame in pending:
            try:
                results.append(frame.result())
            except Exception as exc:
                results.append(exc)
        return Outcome(results, sum(frame.device_seconds for frame in pending), [frame.pass_size for frame in pending])

    def close(self) -> None:
        """Run what is queued, then stop both threads."""
        with self._state:
            self._closing = True
            self._state.notify_all()
        self._former.join()
        self._thread.join()

    def _form_batches(self) -> None:
        """The forming thread: takes the next batch while the model runs the current one, and collates it."""
        while True:
            with self._state:
                while (work := self._next_work()) is None:
                    self._state.wait()
            if isinstance(work, list):
                try:
                    work = _Batch(work, self.model.collate([item.prepared for item in work]))
                except Exception as exc:
                    self._failed(work, exc, "collating")
                    continue
            with self._state:
                self._ready = work
                self._state.notify_all()
            if work is _STOP:
                return

    def _next_work(self) -> list[_Item] | _Call | object | None:
        """Called under the lock: what to hand the model next, once the second buffer is free."""
        if self._ready is not None:
            return None
        work = take_batch(self._waiting, self.max_batch, flush=self._model_idle or self._closing)
        # Once the model is idle too: a pass that fails puts its frames back to run one by one.
        if work is None and self._closing and not self._waiting and self._model_idle:
            return _STOP
        return work

    def _run(self) -> None:
        """The model's thread: forward passes (and calls), each as soon as the previous one ends."""
        while True:
            with self._state:
                self._model_idle = True
                self._state.notify_all()
                while self._ready is None:
                    self._state.wait()
                work, self._ready = self._ready, None
                self._model_idle = False
                self._state.notify_all()
            if work is _STOP:
                return
            if isinstance(work, _Call):
                try:
                    work.future.set_result(work.fn())
                except BaseException as exc:
                    work.future.set_exception(exc)
                continue
            assert isinstance(work, _Batch)
            self._run_pass(work)

    def _run_pass(self, batch: _Batch) -> None:
        """One forward pass: the only place the model runs on frames."""
        items = batch.items
        self.stats.passes += 1
        self.stats.frames += len(items)
        self.stats.sizes.append(len(items))
        metrics.observe_waits([item.queued_at for item in items if not item.alone], time.monotonic())
        started = time.perf_counter()
        try:
            outputs = self.model.forward(batch.collated)
            if len(outputs) != len(items):
                raise RuntimeError(f"the model returned {len(outputs)} outputs for a batch of {len(items)} frames")
        except Exception as exc:
            self._failed(items, exc, "forward pass")
            return
        seconds = time.perf_counter() - started
        metrics.observe_pass(len(items), seconds)
        share = seconds / len(items)
        for item, output in zip(items, outputs):
            item.device_seconds, item.pass_size = share, len(items)
            item.future.set_result(output)

    def _failed(self, items: list[_Item], exc: Exception, stage: str) -> None:
        if len(items) == 1:
            items[0].future.set_exception(exc)
            return
        # Find the frame that breaks the batch, so only it fails: each runs again in a pass of its own, first.
        log.error("batched %s of %d frames failed; running them one by one", stage, len(items), exc_info=exc)
        for item in items:
            item.alone = True
        with self._state:
            self._waiting.extendleft(reversed(items))
            self._state.notify_all()
