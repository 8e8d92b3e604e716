"""Train the embedded shapes detector on CPU from scratch: ``python -m autolabel_worker.train_shapes``.

Training data is drawn on the fly by ``autolabel.synth`` (seeds 1000 and up; held-out videos
use other seeds), as crops of full-resolution frames, so objects keep the pixel sizes they have
at inference (the detector is convolutional, so a crop teaches it what a whole frame would,
at a fraction of the cost). Everything is seeded: the same command gives the same checkpoint
on the same machine and library versions, unless ``--minutes`` cuts the schedule short.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

from autolabel.synth import SHAPE_CLASSES, SynthFrame, generate_video, render_frames
from autolabel_worker.evaluate import evaluate_video
from autolabel_worker.models import REPO_CONFIGS_DIR, WEIGHTS_DIR

NAME = "shapes-rtmdet-tiny"
FRAME_SIZE = (1280, 720)
HELD_OUT_SEED = 424242
MIN_KEPT_FRACTION = 0.4
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # BGR crop, boxes (x1, y1, x2, y2), labels


def data_seed(seed: int) -> int:
    """First synthetic-video seed of a training run; videos use this seed + 1, + 2, ..."""
    return seed * 1000 + 1000


def crops(frame: SynthFrame, size: int, count: int, rng: np.random.Generator) -> list[Sample]:
    """Random crops with the boxes that stay mostly inside; an object cut to a sliver is dropped."""
    height, width = frame.image.shape[:2]
    out = []
    boxes = np.array([a.box for a in frame.annotations if not a.ignore], np.float32).reshape(-1, 4)
    labels = np.array([a.class_id for a in frame.annotations if not a.ignore], np.int64)
    for _ in range(count):
        x0, y0 = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
        clipped = boxes.copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(x0, x0 + size) - x0
        clipped[:, 1::2] = clipped[:, 1::2].clip(y0, y0 + size) - y0
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = (kept_area >= MIN_KEPT_FRACTION * area) & (kept_area > 16)
        # Frames are RGB; the model, like every mmdet model here, takes BGR.
        image = np.ascontiguousarray(frame.image[y0:y0 + size, x0:x0 + size, ::-1])
        out.append((image, clipped[keep], labels[keep]))
    return out


class FrameSource:
    """Frames from several synthetic videos at once, a few frames apart, for varied batches."""

    def __init__(self, seed: int, videos: int = 8, stride: int = 3) -> None:
        self.seed, self.videos, self.stride = seed, videos, stride
        self.next_video = 0
        self.streams = [self._stream() for _ in range(videos)]
        self.turn = 0

    def _stream(self) -> Iterator[SynthFrame]:
        self.next_video += 1
        frames = render_frames(*FRAME_SIZE, count=300, seed=self.seed + self.next_video)
        return (frame for i, frame in enumerate(frames) if i % self.stride == 0)

    def next(self) -> SynthFrame:
        self.turn = (self.turn + 1) % self.videos
        try:
            return next(self.streams[self.turn])
        except StopIteration:
            self.streams[self.turn] = self._stream()
            return next(self.streams[self.turn])


def batch(samples: list[Sample]) -> dict[str, list]:
    inputs, data_samples = [], []
    for image, boxes, labels in samples:
        height, width = image.shape[:2]
        inputs.append(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        sample = DetDataSample(metainfo={"img_shape": (height, width), "ori_shape": (height, width),
                                         "scale_factor": (1.0, 1.0)})
        sample.gt_instances = InstanceData(bboxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels))
        data_samples.append(sample)
    return {"inputs": inputs, "data_samples": data_samples}


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(config: Path, steps: int, batch_size: int, crop: int, lr: float, seed: int,
          minutes: float | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every parameter
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(config))
    init_default_scope("mmdet")
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    source = FrameSource(data_seed(seed))
    crops_per_frame = 4
    started = time.monotonic()
    step = 0
    while step < steps:
        samples: list[Sample] = []
        while len(samples) < batch_size:
            samples += crops(source.next(), crop, crops_per_frame, rng)
        data = model.data_preprocessor(batch(samples[:batch_size]), training=True)
        losses = model(**data, mode="loss")
        loss, log_vars = model.parse_losses(losses)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=min(300, steps // 10))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        elapsed = time.monotonic() - started
        if minutes:
            # A time budget moves the schedule along by the clock as well: on a slow machine
            # training ends on time and still with its learning rate decayed.
            step = max(step, int(steps * elapsed / (60 * minutes)))
        if step % 50 == 0 or step >= steps - 1:
            print(f"step {step}/{steps} loss {loss.item():.3f} "
                  + " ".join(f"{k} {float(v):.3f}" for k, v in log_vars.items() if k != "loss")
                  + f" ({elapsed / 60:.1f} min)", flush=True)
        step += 1
    return model.eval()


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=REPO_CONFIGS_DIR / f"{NAME}.py")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--minutes", type=float, default=None,
                        help="time budget: the schedule also advances by the clock and ends after this long")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=384, help="side of the square training crops, in pixels")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--eval-seconds", type=float, default=6.0, help="length of the held-out 10 fps video")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    model = train(args.config, args.steps, args.batch_size, args.crop, args.lr, args.seed, args.minutes)
    minutes = (time.monotonic() - started) / 60
    name = args.config.stem
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / f"{name}.pth"
    # fp16 halves the committed file; the loader casts back to the model's fp32 parameters.
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": list(SHAPE_CLASSES)}}}, checkpoint)

    from autolabel_worker.detector import Detector

    detector = Detector.load(args.config, checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        video, truth = Path(tmp) / "heldout.mp4", Path(tmp) / "heldout.json"
        generate_video(video, truth, width=FRAME_SIZE[0], height=FRAME_SIZE[1], fps=10,
                       seconds=args.eval_seconds, seed=HELD_OUT_SEED)
        scores = evaluate_video(detector, video, truth)
    meta = {
        "name": name,
        "model": "RTMDet (mmdet core): CSPNeXt widen 0.25 / deepen 0.167, 64-channel PAFPN and head, from scratch",
        "command": "python -m autolabel_worker.train_shapes " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed,
        "data_seed": data_seed(args.seed),
        "held_out_seed": HELD_OUT_SEED,
        "steps": args.steps, "batch_size": args.batch_size, "crop": args.crop, "lr": args.lr,
        "training_minutes": round(minutes, 1),
        "classes": list(SHAPE_CLASSES),
        "class_ids": "model labels are 0-based indexes into classes; COCO ground truth category_id = label + 1",
        "code_revision": git_revision(),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "accuracy": scores,
        "torch": torch.__version__,
    }
    (args.out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
