"""Loading any MMDetection model and running it on a batch of frames in ONE forward pass.

mmdet's ``inference_detector`` runs one image per forward pass; here every frame of a batch
goes through the config's test pipeline, the results are collated, and the model runs once:
the data preprocessor pads the batch, and mmdet rescales the boxes back to each frame's
original size.

It is ``model.test_step`` cut into the four stages the Batcher runs on different threads
(``batching.BatchModel``): ``prepare`` (the test pipeline of one frame), ``collate`` (the
batch and the model's data preprocessor: the copy to the device, normalization, padding to
the batch's largest frame), ``forward`` (the network and the copy of its outputs to the
host) and ``postprocess`` (clipping, thresholding, ``Detection`` objects). ``predict`` runs
them in a row; either way the same operations run in the same order, so the results are the same.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.model.utils import revert_sync_batchnorm
from mmengine.registry import init_default_scope

from autolabel.detections import Detection
from autolabel.errors import CheckpointError, ConfigError
from autolabel_worker.checkpoint import LoadReport, load_weights

log = logging.getLogger(__name__)


def _test_pipeline(cfg: Config) -> Compose:
    from mmdet.utils import get_test_pipeline_cfg

    steps = [step for step in get_test_pipeline_cfg(cfg) if "LoadAnnotations" not in step["type"]]
    if not steps or "LoadImage" not in steps[0]["type"]:
        raise ConfigError("the config's test pipeline must start with an image-loading transform")
    # Frames arrive decoded; the prefix keeps the type resolvable from any registry scope.
    steps[0] = {"type": "mmdet.LoadImageFromNDArray"}
    return Compose(steps)


def _classes(cfg: Config, meta: dict[str, Any]) -> tuple[str, ...]:
    from mmdet.registry import DATASETS

    dataset = cfg.get("test_dataloader", {}).get("dataset", {})
    dataset_cls = DATASETS.get(dataset.get("type", "")) if dataset.get("type") else None
    # In order: what the checkpoint was trained on, the config's override, the dataset's default.
    for source in (meta.get("dataset_meta"), cfg.get("metainfo"), dataset.get("metainfo"),
                   getattr(dataset_cls, "METAINFO", None)):
        if source and source.get("classes"):
            return tuple(source["classes"])
    raise ConfigError("neither the checkpoint's dataset_meta nor the config's metainfo names the classes")


def build_model(config: str | Path) -> tuple[torch.nn.Module, Config]:
    """The config's model with its initial weights (honouring ``custom_imports``), and the config."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.get("default_scope", "mmdet"))
    return revert_sync_batchnorm(MODELS.build(cfg.model)), cfg


@dataclass(frozen=True)
class HostInstances:
    """One frame's raw output on the host: boxes (N x 4, in the frame's pixels, unclipped), scores
    and labels, and the frame's height and width."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    height: int
    width: int


class Detector:
    """An mmdet model in eval mode with its test pipeline and class names."""

    def __init__(self, model: torch.nn.Module, cfg: Config, classes: tuple[str, ...], device: str,
                 fp16: bool = False, report: LoadReport | None = None) -> None:
        self.model, self.cfg, self.classes, self.device = model, cfg, classes, device
        self.fp16 = fp16
        self.report = report
        self.pipeline = _test_pipeline(cfg)

    @classmethod
    def load(cls, config: str | Path, checkpoint: str | Path | None, *, device: str = "cpu",
             fp16: bool = False) -> Detector:
        """Build the config's model and load the checkpoint.

        A checkpoint that leaves weights missing or of the wrong shape is refused: serving a
        half-loaded model would label every frame wrongly. ``checkpoint=None`` keeps the
        random initial weights (tests and benchmarks only).
        """
        model, cfg = build_model(config)
        report = None
        meta: dict[str, Any] = {}
        if checkpoint is not None:
            report = load_weights(model, checkpoint)
            if report.missing or report.shape_mismatch:
                raise CheckpointError(
                    f"{checkpoint} does not fit {config}: {len(report.missing)} missing keys "
                    f"(e.g. {report.missing[:3]}), {len(report.shape_mismatch)} shape mismatches "
                    f"(e.g. {report.shape_mismatch[:2]}); check it with `autolabel inspect-checkpoint`")
            if report.unexpected:
                log.warning("%s: %d unexpected keys ignored (e.g. %s)", checkpoint, len(report.unexpected),
                            report.unexpected[:3])
            meta = report.meta
        if fp16 and not device.startswith("cuda"):
            log.info("fp16 autocast is for CUDA only; running in fp32 on %s", device)
            fp16 = False
        model.to(device).eval()
        model.cfg = cfg
        return cls(model, cfg, _classes(cfg, meta), device, fp16, report)

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        # fp16, not bf16: mmcv's deformable-attention CUDA kernel has no bf16 version.
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            yield

    def predict(self, images: Sequence[np.ndarray], score_threshold: float = 0.0) -> list[list[Detection]]:
        """Detections per image (BGR uint8 HxWx3, any sizes), boxes in each image's own pixels."""
        if not images:
            return []
        outputs = self.forward(self.collate([self.prepare(image) for image in images]))
        return [self.postprocess(output, score_threshold) for output in outputs]

    def prepare(self, image: np.ndarray) -> dict[str, Any]:
        """The config's test pipeline on one frame (resize, pad, pack)."""
        return self.pipeline({"img": image})

    def collate(self, prepared: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One batch of prepared frames through the data preprocessor, on the model's device."""
        with torch.no_grad(), self._autocast():
            return self.model.data_preprocessor(pseudo_collate(list(prepared)), False)

    def forward(self, batch: dict[str, Any]) -> list[HostInstances]:
        """The forward pass of a collated batch and its outputs copied to the host, one per frame."""
        with torch.no_grad(), self._autocast():
            samples = self.model(**batch, mode="predict")
        outputs = []
        for sample in samples:
            instances = sample.pred_instances
            height, width = sample.metainfo["ori_shape"][:2]
            outputs.append(HostInstances(instances.bboxes.float().cpu().numpy(), instances.scores.float().cpu().numpy(),
                                         instances.labels.cpu().numpy(), height, width))
        return outputs

    def postprocess(self, output: HostInstances, threshold: float) -> list[Detection]:
        """The frame's detections at ``threshold``, boxes clipped to the frame."""
        boxes = output.boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, output.width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, output.height)
        # A box wholly in the batch padding (beyond the frame) clips to nothing: it is not in the frame.
        keep = (output.scores >= threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return [Detection(box=tuple(float(v) for v in box), score=float(score), class_id=int(label),
                          class_name=self.classes[int(label)])
                for box, score, label in zip(boxes[keep], output.scores[keep], output.labels[keep])]
