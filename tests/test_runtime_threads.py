"""AUTOLABEL_TORCH_THREADS: the model's forward pass runs on that many threads (docs/performance.md)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from autolabel.errors import SettingsError
from autolabel.settings import Settings, get_settings
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


def test_torch_threads_below_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "0")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="AUTOLABEL_TORCH_THREADS"):
            get_settings()
    finally:
        get_settings.cache_clear()
