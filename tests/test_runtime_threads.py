"""AUTOLABEL_TORCH_THREADS: the model's forward pass runs on that many threads (docs/performance.md)."""

from __future__ import annotations

from functools import partial

import torch

from autolabel.settings import Settings
from autolabel_worker.batching import Batcher
from autolabel_worker.models import resolve_model
from autolabel_worker.runtime import load_detector


def test_torch_threads_caps_the_model_threads() -> None:
    before = torch.get_num_threads()
    settings = Settings(torch_threads=1)
    batcher = Batcher(partial(load_detector, settings, resolve_model(settings)), 1)
    try:
        assert batcher.call(torch.get_num_threads) == 1
    finally:
        batcher.close()
        torch.set_num_threads(before)  # process-wide: the other tests keep torch's default
