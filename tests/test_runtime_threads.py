"""AUTOLABEL_TORCH_THREADS: the model's forward pass runs on that many threads (docs/performance.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch

from autolabel.settings import Settings
from autolabel_worker.batching import Batcher
from autolabel_worker.models import resolve_model
from autolabel_worker.runtime import load_detector


def test_torch_threads_caps_every_thread_that_runs_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap is set on the model's thread only, but torch gives a thread its count when it first
    runs a torch op, from the count last set: the task threads (the test pipeline) and the
    batch-forming thread (collate) run theirs capped too, so on CPU none of them brings an OpenMP
    team of a thread per core beside the model's."""
    before = torch.get_num_threads()
    settings = Settings(torch_threads=1)
    batcher = Batcher(partial(load_detector, settings, resolve_model(settings)), 1)
    counts: dict[str, int] = {}

    def counted(stage: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(arg: Any) -> Any:
            counts[stage] = torch.get_num_threads()
            return fn(arg)
        return run

    monkeypatch.setattr(batcher.model, "prepare", counted("prepare", batcher.model.prepare))
    monkeypatch.setattr(batcher.model, "collate", counted("collate", batcher.model.collate))
    try:
        # A thread of its own, as a Celery pool thread is: the one that prepares its frames.
        task = threading.Thread(target=batcher.predict, args=([np.zeros((72, 128, 3), np.uint8)], 0.3))
        task.start()
        task.join()
        assert batcher.call(torch.get_num_threads) == 1
        assert counts == {"prepare": 1, "collate": 1}
    finally:
        batcher.close()
        torch.set_num_threads(before)  # process-wide: the other tests keep torch's default
