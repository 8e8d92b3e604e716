"""A simulated device, for the benchmarks only: the real data path around a forward pass that waits.

What is real: the worker, its fetch and decode, the Co-DINO config's test pipeline (resize of a
1280x720 frame to 2048x1152, pad, pack), collate, the batch's frames padded into one block (the
bytes a real run copies to the card), the conversion of 300 boxes a frame into detections, the
upload and Redis. What is simulated: the forward pass. It holds the card for

    t(B) = a + b * B    seconds, a = 0.02 s, b = 0.18 s a frame (defaults)

and uses no CPU meanwhile (it sleeps, as a thread waiting on a CUDA sync does). The defaults are
Co-DINO Swin-L at 1280x720 (2048x1152 after the test pipeline) on an RTX 4090: the seed's 0.2 s a
frame at B = 1 (5 frames/s). b = 0.18 s is an assumption, not a measurement: Swin-L at 2.4
megapixels already fills the card's SMs at B = 1, so a batch saves only the per-pass part (kernel
launch latency of a few thousand kernels, the 900-query decoder and the soft-NMS that do not fill
the card): about a tenth of a pass, so B = 4 gives 5.4 frames/s, not 4 x 5. bench/codetr_gpu.py
measures the real law on a card.

Processes that share one simulated card serialize on one cross-process lock (flock on a file), as
kernels of several processes do under time-slicing: the card runs one pass at a time. Every pass
is appended to a log (one JSON line: pid, frames, when it asked for the card, start, end) that
bench/run.py reads for the device's busy share and the gaps between passes.

How a worker process gets it: never through production settings alone. bench/run.py starts its
workers with AUTOLABEL_CONFIGS_DIR=bench/configs (a config name production's configs/ does not
have), AUTOLABEL_PLUGIN_DIRS=bench (this module, which no package or image ships), a checkpoint
file it writes, and BENCH_SIM_CARD naming the card's directory, which only bench/run.py creates
(it holds card.json with a and b). The model refuses to build without that directory, so a
production worker pointed at the config by mistake stops at start-up with one line saying why.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmengine.model import BaseDataPreprocessor
from mmengine.structures import InstanceData

CARD_ENV = "BENCH_SIM_CARD"
LABEL = "simulated device"
# Co-DINO keeps this many boxes a frame after soft-NMS (test_cfg.max_per_img): what postprocessing converts.
BOXES_PER_FRAME = 300
CLASSES = 80


@dataclass(frozen=True)
class TimingLaw:
    """t(B) = fixed_s + per_frame_s * B: the card's time for one pass of B frames."""

    fixed_s: float = 0.02
    per_frame_s: float = 0.18

    def pass_seconds(self, frames: int) -> float:
        if frames < 1:
            raise ValueError(f"a pass has at least one frame, not {frames}")
        return self.fixed_s + self.per_frame_s * frames

    def frames_per_s(self, batch: int) -> float:
        """The card's throughput when it is never idle, at ``batch`` frames a pass."""
        return batch / self.pass_seconds(batch)


@dataclass(frozen=True)
class Pass:
    pid: int
    frames: int
    asked: float  # time.time() when the pass asked for the card
    start: float  # when it got the card
    end: float  # when it gave it back


class SimulatedCard:
    """One card shared by every process given the same directory (card.json, card.lock, passes-PID.jsonl)."""

    def __init__(self, directory: Path, law: TimingLaw) -> None:
        self.directory, self.law = directory, law
        self._lock_fd = os.open(directory / "card.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._log = (directory / f"passes-{os.getpid()}.jsonl").open("a", buffering=1)

    @classmethod
    def create(cls, directory: Path, law: TimingLaw) -> SimulatedCard:
        """A new card: the directory and its card.json, which the worker processes read."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "card.json").write_text(json.dumps(asdict(law)))
        return cls(directory, law)

    @classmethod
    def from_env(cls) -> SimulatedCard:
        value = os.environ.get(CARD_ENV)
        if not value or not (Path(value) / "card.json").is_file():
            raise RuntimeError(f"the simulated device is for bench/run.py only: {CARD_ENV} must name the card "
                               f"directory bench/run.py made (got {value!r})")
        directory = Path(value)
        return cls(directory, TimingLaw(**json.loads((directory / "card.json").read_text())))

    def run_pass(self, frames: int) -> Pass:
        """Hold the card for t(frames) without using CPU, after any other process's pass."""
        seconds = self.law.pass_seconds(frames)
        asked = time.time()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks without CPU, the GIL released
        try:
            start = time.time()
            deadline = start + seconds
            while (left := deadline - time.time()) > 0:
                time.sleep(left)
            end = time.time()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        done = Pass(os.getpid(), frames, asked, start, end)
        self._log.write(json.dumps(asdict(done)) + "\n")
        return done

    def close(self) -> None:
        os.close(self._lock_fd)
        self._log.close()


def read_passes(directory: Path) -> list[Pass]:
    """Every pass any process ran on the card, in the order they started."""
    passes = [Pass(**json.loads(line)) for path in directory.glob("passes-*.jsonl")
              for line in path.read_text().splitlines() if line]
    return sorted(passes, key=lambda p: p.start)


@MODELS.register_module()
class SimulatedTransfer(BaseDataPreprocessor):
    """The host's side of a card's input: the batch's frames padded (to 32) into one contiguous uint8
    block, the bytes a real run copies to the card. Normalizing them is the card's work, inside t(B)."""

    def forward(self, data: dict[str, Any], training: bool = False) -> dict[str, Any]:
        inputs: Sequence[torch.Tensor] = data["inputs"]
        height = -(-max(int(i.shape[1]) for i in inputs) // 32) * 32
        width = -(-max(int(i.shape[2]) for i in inputs) // 32) * 32
        block = torch.zeros((len(inputs), 3, height, width), dtype=torch.uint8)
        for slot, image in zip(block, inputs):
            slot[:, :image.shape[1], :image.shape[2]] = image
        return {"inputs": block, "data_samples": data["data_samples"]}


@MODELS.register_module()
class SimulatedDetector(BaseDetector):
    """A detector whose forward pass is a wait on the simulated card, with outputs shaped like Co-DINO's."""

    def __init__(self, data_preprocessor: dict[str, Any] | None = None, init_cfg: dict[str, Any] | None = None,
                 seed: int = 0) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.card = SimulatedCard.from_env()
        self._rng = np.random.default_rng(seed + os.getpid())

    def predict(self, batch_inputs: torch.Tensor, batch_data_samples: list[Any], rescale: bool = True) -> list[Any]:
        self.card.run_pass(len(batch_data_samples))
        for sample in batch_data_samples:
            sample.pred_instances = plausible_instances(self._rng, sample.metainfo["ori_shape"])
        return batch_data_samples

    def loss(self, batch_inputs: torch.Tensor, batch_data_samples: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError("the simulated device only predicts")

    def _forward(self, batch_inputs: torch.Tensor, batch_data_samples: list[Any] | None = None) -> Any:
        raise NotImplementedError("the simulated device only predicts")

    def extract_feat(self, batch_inputs: torch.Tensor) -> Any:
        raise NotImplementedError("the simulated device only predicts")


def plausible_instances(rng: np.random.Generator, shape: tuple[int, int]) -> InstanceData:
    """What Co-DINO hands back for a frame: 300 boxes in frame pixels, scores falling from about 0.9
    (a dozen above 0.3), any of 80 classes; postprocessing converts and filters all of them."""
    height, width = shape[:2]
    centre = rng.uniform((0, 0), (width, height), (BOXES_PER_FRAME, 2))
    size = np.exp(rng.uniform(np.log(8), np.log(400), (BOXES_PER_FRAME, 2)))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    scores = (0.9 * np.exp(-np.arange(BOXES_PER_FRAME) / 12)).astype(np.float32)
    instances = InstanceData()
    instances.bboxes = torch.from_numpy(boxes)
    instances.scores = torch.from_numpy(scores)
    instances.labels = torch.from_numpy(rng.integers(0, CLASSES, BOXES_PER_FRAME))
    return instances
