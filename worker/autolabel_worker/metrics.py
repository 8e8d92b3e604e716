"""Every Prometheus metric a worker process exports, named once (docs/operations.md lists them).

The launcher (``autolabel_worker.pool``) gives its children a private PROMETHEUS_MULTIPROC_DIR, so
prometheus_client keeps each process's values in files there; the launcher's ``/metrics`` sums
them. A dead child's counter and histogram files stay, so totals keep adding across restarts
(neither vanishing nor counted twice); its ``live*`` gauge files are removed when the launcher
sees it die. Each series carries the process's model, device and slot (``process``): the slot
is stable across restarts, a pid is not.

Gauge modes: a per-process reading (memory, load time, the info metric) is ``livemostrecent``:
one series per slot, the value its latest process set, gone while no process holds the slot
(a dead process's memory is not in use any more; summed or kept, it would mislead sizing).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from autolabel.logs import POOL_DEVICE_ENV, POOL_SLOT_ENV
from autolabel.settings import get_settings

LABELS = ("model", "device", "process")
# From a 20 ms pass of a small model on a GPU to minutes of a large one on CPU.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
INFO_LABELS = ("model_version", "torch", "mmcv", "mmdet", "cuda")

FRAMES_LABELED = Counter("autolabel_frames_labeled_total", "Frames whose result was written", LABELS)
FRAMES_FAILED = Counter("autolabel_frames_failed_total",
                        "Frames that failed, by reason: fetch, decode, inference, time_limit, invalid, retries, "
                        "dead_letter", (*LABELS, "reason"))
FRAMES_SKIPPED = Counter("autolabel_frames_skipped_total",
                         "Frames already labeled with the same stamp, not run again", LABELS)
FORWARD_SECONDS = Histogram("autolabel_forward_seconds", "One forward pass", LABELS, buckets=SECONDS_BUCKETS)
BATCH_FRAMES = Histogram("autolabel_batch_frames", "Frames per forward pass", LABELS, buckets=BATCH_BUCKETS)
BATCH_WAIT_SECONDS = Histogram("autolabel_batch_wait_seconds", "Seconds a frame waits in the batcher before its "
                               "pass starts", LABELS, buckets=SECONDS_BUCKETS)
STAGE_SECONDS = Histogram("autolabel_stage_seconds", "fetch and decode: one frame; upload: a task's results",
                          (*LABELS, "stage"), buckets=SECONDS_BUCKETS)
DEVICE_BUSY_SECONDS = Counter("autolabel_device_busy_seconds_total", "Seconds the model was running", LABELS)
MEMORY_PEAK_RESERVED = Gauge("autolabel_device_memory_peak_reserved_bytes", "CUDA: peak memory reserved by "
                             "torch's allocator", LABELS, multiprocess_mode="livemostrecent")
MEMORY_PEAK_ALLOCATED = Gauge("autolabel_device_memory_peak_allocated_bytes", "CUDA: peak memory allocated to "
                              "tensors", LABELS, multiprocess_mode="livemostrecent")
MEMORY_TOTAL = Gauge("autolabel_device_memory_total_bytes", "CUDA: the card's memory; CPU: the machine's RAM",
                     LABELS, multiprocess_mode="livemostrecent")
RESIDENT = Gauge("autolabel_process_resident_bytes", "Resident memory (RSS) of the worker process", LABELS,
                 multiprocess_mode="livemostrecent")
DELIVERIES_LOST = Counter("autolabel_deliveries_lost_total",
                          "Messages put back on their queue from a worker process that died", LABELS)
DEAD_LETTERS = Counter("autolabel_dead_letters_total", "Tasks given up after their deliveries kept dying", LABELS)
RETRIES = Counter("autolabel_retries_total", "Task retries after a transient failure", LABELS)
LEASE_CONFLICTS = Counter("autolabel_lease_conflicts_total",
                          "Writes refused because another delivery took the task's lease again", LABELS)
MODEL_LOAD_SECONDS = Gauge("autolabel_model_load_seconds", "Seconds the model took to load", LABELS,
                           multiprocess_mode="livemostrecent")
MODEL_WARMUP_SECONDS = Gauge("autolabel_model_warmup_seconds", "Seconds of the warm-up batch", LABELS,
                             multiprocess_mode="livemostrecent")
MODEL_INFO = Gauge("autolabel_model_info", "The model and library versions this process runs (value 1)",
                   (*LABELS, *INFO_LABELS), multiprocess_mode="livemostrecent")


@cache
def process_labels() -> dict[str, str]:
    """This process's model, device and slot; outside the launcher, the settings' device and slot 0."""
    settings = get_settings()
    return {"model": settings.model, "device": os.environ.get(POOL_DEVICE_ENV, settings.device),
            "process": os.environ.get(POOL_SLOT_ENV, "0")}


def here(metric: Any, **extra: str) -> Any:
    """``metric`` for this process (and ``extra`` labels, such as a failure's reason)."""
    return metric.labels(**process_labels(), **extra)


def observe_pass(frames: int, seconds: float) -> None:
    """One forward pass of ``frames`` frames that ran ``seconds``."""
    here(FORWARD_SECONDS).observe(seconds)
    here(BATCH_FRAMES).observe(frames)
    here(DEVICE_BUSY_SECONDS).inc(seconds)


def observe_waits(queued_at: list[float], now: float) -> None:
    """Frames queued at ``queued_at`` (time.monotonic) whose pass starts ``now``."""
    wait = here(BATCH_WAIT_SECONDS)
    for at in queued_at:
        wait.observe(now - at)


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; ru_maxrss is the peak, not the current)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def record_memory() -> None:
    """Memory gauges after a pass: CUDA peaks since the process started, RSS, the device's total."""
    import torch

    here(RESIDENT).set(resident_bytes())
    if torch.cuda.is_available() and get_settings().device.startswith("cuda"):
        here(MEMORY_PEAK_RESERVED).set(torch.cuda.max_memory_reserved())
        here(MEMORY_PEAK_ALLOCATED).set(torch.cuda.max_memory_allocated())
        here(MEMORY_TOTAL).set(torch.cuda.get_device_properties(torch.device(get_settings().device)).total_memory)
    else:
        here(MEMORY_TOTAL).set(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def record_model(model_version: str, load_seconds: float, warmup_seconds: float) -> None:
    import mmcv
    import mmdet
    import torch

    here(MODEL_LOAD_SECONDS).set(load_seconds)
    here(MODEL_WARMUP_SECONDS).set(warmup_seconds)
    here(MODEL_INFO, model_version=model_version, torch=torch.__version__, mmcv=mmcv.__version__,
         mmdet=mmdet.__version__, cuda=torch.version.cuda or "none").set(1)
    record_memory()
