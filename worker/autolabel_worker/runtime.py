"""What a worker process holds for its whole life: settings, clients and the loaded model."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch

from autolabel.progress import ProgressStore
from autolabel.settings import Settings, get_settings
from autolabel.storage import ObjectStore
from autolabel_worker.batching import Batcher
from autolabel_worker.detector import Detector
from autolabel_worker.models import ModelFiles, resolve_model

log = logging.getLogger(__name__)

WARMUP_FRAME = (720, 1280, 3)


@dataclass(frozen=True)
class WarmupReport:
    """What the warm-up batch cost; the pool launcher sizes processes per card from it."""

    pid: int
    device: str
    model: str
    model_version: str
    batch_size: int
    seconds: float
    peak_memory_bytes: int


@dataclass
class Runtime:
    settings: Settings
    store: ObjectStore
    progress: ProgressStore
    model: ModelFiles
    batcher: Batcher[Detector]
    warmup: WarmupReport | None = None

    @property
    def detector(self) -> Detector:
        return self.batcher.model

    def warm_up(self) -> WarmupReport:
        """One full batch at 1280x720, so the first real batch pays no start-up cost and the
        peak device memory at the configured batch size is known."""
        self.warmup = self.batcher.call(self._warm_up_batch)
        return self.warmup

    def _warm_up_batch(self) -> WarmupReport:
        images = [np.zeros(WARMUP_FRAME, np.uint8)] * self.settings.batch_size
        cuda = self.settings.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        self.detector.predict(images, score_threshold=1.0)
        seconds = time.perf_counter() - started
        if cuda:
            peak = int(torch.cuda.max_memory_reserved())
        else:
            peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return WarmupReport(os.getpid(), self.settings.device, self.model.name, self.model.version,
                            self.settings.batch_size, round(seconds, 3), peak)


def write_ready_file(path: Path, report: WarmupReport) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(report)))
    partial.rename(path)  # atomic: a probe never reads half a file


def add_plugin_dirs(plugin_dirs: str) -> None:
    """Put the os.pathsep-separated directories first on sys.path, for a config's ``custom_imports``."""
    for directory in reversed([d for d in plugin_dirs.split(os.pathsep) if d]):
        if directory not in sys.path:
            sys.path.insert(0, directory)


def load_detector(settings: Settings, model: ModelFiles) -> Detector:
    """Load the model; run on the model's own thread (the Batcher's), which sets its thread count
    and, as torch takes the count last set on a thread's first torch op, that of the task and
    batch-forming threads too (tests/test_runtime_threads.py)."""
    if settings.torch_threads is not None:
        # On CPU the forward pass's OpenMP threads otherwise take every core, and the fetch,
        # decode and upload threads of the same process (and Redis beside it) wait behind them.
        torch.set_num_threads(settings.torch_threads)
    return Detector.load(model.config, model.checkpoint, device=settings.device, fp16=settings.fp16)


@cache
def runtime() -> Runtime:
    """Built on first use in each worker process, so the model is loaded once per process."""
    settings = get_settings()
    model = resolve_model(settings)
    log.info("loading model %s (%s, checkpoint %s, version %s) on %s",
             model.name, model.config, model.checkpoint, model.version, settings.device)
    add_plugin_dirs(settings.plugin_dirs)
    load = partial(load_detector, settings, model)
    return Runtime(
        settings=settings,
        # Each task in flight fetches its frames and checks for existing results at once.
        store=ObjectStore.from_settings(settings, max_pool=settings.worker_threads * settings.frame_fetch_threads * 2),
        progress=ProgressStore.from_url(settings.broker_url),
        model=model,
        batcher=Batcher(load, settings.batch_size),
    )
