"""The Batcher's logic with a stand-in model (pure logic; the real model runs in test_detector and e2e)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import numpy as np
import pytest

from autolabel.detections import Detection
from autolabel_worker.batching import Batcher, Pending, _Call, _Item, take_batch


def frame(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


class Recorder:
    """A frame's output is its pixel value; one detection per frame whose score is that value / 100.
    ``calls`` holds the frames of each forward pass, ``collated`` those of each collated batch."""

    def __init__(self, gate: threading.Event | None = None, poison: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.collated: list[list[int]] = []
        self.gate, self.poison = gate, poison

    def prepare(self, image: np.ndarray) -> int:
        return int(image[0, 0, 0])

    def collate(self, prepared: Sequence[int]) -> list[int]:
        self.collated.append(list(prepared))
        return list(prepared)

    def forward(self, batch: list[int]) -> list[int]:
        self.calls.append(batch)
        if self.gate is not None:
            self.gate.wait(10)
        if self.poison in batch:
            raise RuntimeError(f"frame {self.poison} breaks the model")
        return batch

    def postprocess(self, value: int, threshold: float) -> list[Detection]:
        return [d for d in [Detection(box=(0, 0, 1, 1), score=value / 100, class_id=0, class_name="x")]
                if d.score >= threshold]


def busy_batcher(max_batch: int) -> tuple[Batcher[Recorder], Recorder, threading.Event, list[Pending]]:
    """A batcher whose first pass (frame 1) is running and holds the device until the gate is set."""
    gate = threading.Event()
    predict = Recorder(gate)
    batcher = Batcher(lambda: predict, max_batch=max_batch)
    busy = batcher.submit([frame(1)], 0.0)
    while not predict.calls:
        threading.Event().wait(0.01)
    return batcher, predict, gate, busy


def test_a_lone_frame_runs_at_once() -> None:
    predict = Recorder()
    batcher = Batcher(lambda: predict, max_batch=8)
    # result(timeout) only guards against a hang: a batcher that waited to fill would never return.
    assert batcher.submit([frame(50)], 0.0)[0].result(timeout=10)[0].score == 0.5
    assert predict.calls == [[50]]
    batcher.close()


def test_backlog_forms_full_batches_across_tasks() -> None:
    batcher, predict, gate, first = busy_batcher(max_batch=4)
    # Ten single-frame tasks arrive while the device is busy.
    waiting = [batcher.submit([frame(10 + i)], 0.0)[0] for i in range(10)]
    gate.set()
    assert [f.result(timeout=10)[0].score for f in first + waiting] == pytest.approx([0.01] + [(10 + i) / 100 for i in range(10)])
    assert [len(call) for call in predict.calls] == [1, 4, 4, 2]
    assert batcher.stats.sizes == [1, 4, 4, 2]
    batcher.close()


def test_a_failing_frame_fails_alone() -> None:
    predict = Recorder(poison=7)
    batcher = Batcher(lambda: predict, max_batch=4)
    outcome = batcher.predict([frame(5), frame(7), frame(9)], 0.0)
    assert isinstance(outcome.results[1], RuntimeError)
    assert [d.score for d in outcome.results[0]] == [0.05] and [d.score for d in outcome.results[2]] == [0.09]
    assert outcome.pass_sizes == [1, 0, 1]  # isolated one by one after the batched pass failed
    batcher.close()


def test_each_frame_keeps_its_own_threshold() -> None:
    batcher, predict, gate, busy = busy_batcher(max_batch=4)
    strict = batcher.submit([frame(40)], 0.5)
    loose = batcher.submit([frame(40)], 0.3)
    gate.set()
    busy[0].result(timeout=10)
    assert strict[0].result(timeout=10) == [] and len(loose[0].result(timeout=10)) == 1
    assert predict.calls[1] == [40, 40]
    batcher.close()


def test_predict_gives_up_at_its_time_limit_and_the_batcher_goes_on() -> None:
    # The task time limit of a threads-pool worker: the wait ends, the pass in progress does not.
    gate = threading.Event()
    batcher = Batcher(lambda: Recorder(gate), max_batch=4)
    with pytest.raises(TimeoutError):
        batcher.predict([frame(10), frame(20)], 0.0, timeout=0.2)
    gate.set()
    assert [d[0].score for d in batcher.predict([frame(30)], 0.0, timeout=10).results] == [0.3]
    batcher.close()


def test_the_model_is_loaded_and_run_on_the_batchers_own_thread() -> None:
    # Every torch op of a worker process runs on one thread (see the batching module's docstring).
    threads: dict[str, int] = {}

    class Model(Recorder):
        def forward(self, batch: list[int]) -> list[int]:
            threads["forward"] = threading.get_ident()
            return super().forward(batch)

    def load() -> Model:
        threads["load"] = threading.get_ident()
        return Model()

    batcher = Batcher(load, max_batch=4)
    batcher.predict([frame(1)], 0.0)
    threads["call"] = batcher.call(threading.get_ident)
    assert len(set(threads.values())) == 1 and threads["load"] != threading.get_ident()
    batcher.close()


def test_a_model_that_fails_to_load_raises_from_the_constructor() -> None:
    def load() -> Recorder:
        raise FileNotFoundError("no checkpoint at /nowhere.pth")

    with pytest.raises(FileNotFoundError, match="/nowhere.pth"):
        Batcher(load, max_batch=4)


def test_a_call_runs_after_the_frames_queued_before_it_and_before_those_after() -> None:
    batcher, predict, gate, busy = busy_batcher(max_batch=8)
    before = batcher.submit([frame(2), frame(3)], 0.0)
    seen: list[list[list[int]]] = []
    call = threading.Thread(target=lambda: seen.append(batcher.call(lambda: [list(c) for c in predict.calls])))
    call.start()
    # Frames 2 and 3 wait for company while the model is busy; the call queued behind them closes
    # their batch, so once it is formed the call is queued.
    while batcher._ready is None:
        threading.Event().wait(0.01)
    after = batcher.submit([frame(4), frame(5)], 0.0)
    gate.set()
    for future in busy + before + after:
        future.result(timeout=10)
    call.join(10)
    assert seen == [[[1], [2, 3]]]
    assert predict.calls == [[1], [2, 3], [4, 5]]
    batcher.close()


def test_the_models_thread_runs_only_forward_passes() -> None:
    # prepare and postprocess run on the task's thread, collate on the forming thread, forward on the model's.
    threads: dict[str, set[int]] = {"prepare": set(), "collate": set(), "forward": set(), "postprocess": set()}

    class Model(Recorder):
        def prepare(self, image: np.ndarray) -> int:
            threads["prepare"].add(threading.get_ident())
            return super().prepare(image)

        def collate(self, prepared: Sequence[int]) -> list[int]:
            threads["collate"].add(threading.get_ident())
            return super().collate(prepared)

        def forward(self, batch: list[int]) -> list[int]:
            threads["forward"].add(threading.get_ident())
            return super().forward(batch)

        def postprocess(self, value: int, threshold: float) -> list[Detection]:
            threads["postprocess"].add(threading.get_ident())
            return super().postprocess(value, threshold)

    batcher = Batcher(Model, max_batch=2)
    model_thread = batcher.call(threading.get_ident)
    task_threads: set[int] = set()
    together = threading.Barrier(3)  # three task threads alive at once, each with its own id

    def task(values: list[int]) -> None:
        task_threads.add(threading.get_ident())
        together.wait(10)
        outcome = batcher.predict([frame(v) for v in values], 0.0)
        assert [d[0].score for d in outcome.results] == pytest.approx([v / 100 for v in values])

    tasks = [threading.Thread(target=task, args=([v, v + 1, v + 2],)) for v in (10, 20, 30)]
    for thread in tasks:
        thread.start()
    for thread in tasks:
        thread.join(10)
    assert threads["forward"] == {model_thread}
    assert threads["prepare"] == threads["postprocess"] == task_threads and len(task_threads) == 3
    assert len(threads["collate"]) == 1 and not threads["collate"] & (task_threads | {model_thread})
    assert batcher.stats.frames == 9
    batcher.close()


def test_the_next_batch_is_collated_while_a_pass_runs() -> None:
    batcher, predict, gate, busy = busy_batcher(max_batch=2)
    full = batcher.submit([frame(2), frame(3)], 0.0)
    while predict.collated[-1] != [2, 3]:
        threading.Event().wait(0.01)
    # Collated and ready while the first pass still holds the model; it runs as soon as that pass ends.
    assert predict.calls == [[1]] and busy[0].pass_size == 0
    gate.set()
    assert [p.result(timeout=10)[0].score for p in busy + full] == [0.01, 0.02, 0.03]
    assert predict.calls == [[1], [2, 3]]
    batcher.close()


def test_take_batch_fills_while_the_model_is_busy() -> None:
    items = [_Item(value, 0.0) for value in range(5)]
    waiting: deque[object] = deque(items[:2])
    assert take_batch(waiting, max_batch=4, flush=False) is None and len(waiting) == 2  # left to fill
    assert take_batch(waiting, max_batch=4, flush=True) == items[:2] and not waiting  # the model is idle
    waiting.extend(items)
    assert take_batch(waiting, max_batch=4, flush=False) == items[:4]  # full
    assert list(waiting) == items[4:]


def test_take_batch_serves_calls_and_lone_frames_in_their_turn() -> None:
    first, second, lone = _Item(1, 0.0), _Item(2, 0.0), _Item(3, 0.0, alone=True)
    call = _Call(lambda: None)
    waiting: deque[object] = deque([first, call, lone, second])
    # Nothing can join a batch that a call follows: it is taken though not full and the model is busy.
    assert take_batch(waiting, max_batch=4, flush=False) == [first]
    assert take_batch(waiting, max_batch=4, flush=False) is call
    assert take_batch(waiting, max_batch=4, flush=False) == [lone]
    assert take_batch(waiting, max_batch=4, flush=False) is None and list(waiting) == [second]
    assert take_batch(deque(), max_batch=4, flush=True) is None
