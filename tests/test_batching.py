"""The Batcher's logic with a stand-in predict function (pure logic; the real model runs in e2e)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np
import pytest

from autolabel.detections import Detection
from autolabel_worker.batching import Batcher


def frame(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


class Recorder:
    """Returns one detection per frame whose score is the frame's pixel value / 100."""

    def __init__(self, gate: threading.Event | None = None, poison: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.gate, self.poison = gate, poison

    def predict(self, images: Sequence[np.ndarray], threshold: float) -> list[list[Detection]]:
        values = [int(image[0, 0, 0]) for image in images]
        self.calls.append(values)
        if self.gate is not None:
            self.gate.wait(10)
        if self.poison in values:
            raise RuntimeError(f"frame {self.poison} breaks the model")
        return [[Detection(box=(0, 0, 1, 1), score=v / 100, class_id=0, class_name="x")] for v in values]


def busy_batcher(max_batch: int) -> tuple[Batcher[Recorder], Recorder, threading.Event, list[Future[list[Detection]]]]:
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
        def predict(self, images: Sequence[np.ndarray], threshold: float) -> list[list[Detection]]:
            threads["predict"] = threading.get_ident()
            return super().predict(images, threshold)

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
    while batcher._queue.qsize() < 3:  # the call is queued behind the two frames
        threading.Event().wait(0.01)
    after = batcher.submit([frame(4), frame(5)], 0.0)
    gate.set()
    for future in busy + before + after:
        future.result(timeout=10)
    call.join(10)
    assert seen == [[[1], [2, 3]]]
    assert predict.calls == [[1], [2, 3], [4, 5]]
    batcher.close()
