"""The Co-DINO query head at inference: transformer, class and box branches, soft-NMS."""

from __future__ import annotations

from typing import Any

import torch
from mmcv.ops import batched_nms
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn

from autolabel_worker.codetr.transformer import REFINE_EPS


def _regression_branch(dims: int, hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(dims, dims), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims, 4))


@MODELS.register_module(name="CoDINOHead")
class CoDINOHead(BaseModule):
    """One class and one box branch per decoder layer plus one for the encoder's proposals,
    as in the official checkpoints; inference reads the last decoder layer's.

    Not built, because only training uses them: the denoising label embedding
    (``dn_generator``) and the down-sampling that feeds the auxiliary heads (``downsample``).
    """

    def __init__(self, num_classes: int, transformer: dict[str, Any], positional_encoding: dict[str, Any],
                 num_query: int = 900, num_reg_fcs: int = 2, test_cfg: dict[str, Any] | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        self.num_classes = num_classes
        self.num_query = num_query
        self.test_cfg = dict(test_cfg or {})
        self.transformer = MODELS.build(dict(transformer, two_stage_num_proposals=num_query))
        self.positional_encoding = MODELS.build(positional_encoding)
        dims = self.transformer.embed_dims
        if 2 * self.positional_encoding.num_feats != dims:
            raise ValueError(f"the positional encoding has {2 * self.positional_encoding.num_feats} channels, "
                             f"the transformer {dims}")
        branches = self.transformer.decoder.num_layers + 1
        self.cls_branches = nn.ModuleList(nn.Linear(dims, num_classes) for _ in range(branches))
        self.reg_branches = nn.ModuleList(_regression_branch(dims, num_reg_fcs) for _ in range(branches))

    def forward(self, feats: list[Tensor], masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits (batch, queries, classes) and boxes (batch, queries, 4) as normalised cx, cy, w, h.

        ``masks`` are True on padding, one (batch, h, w) per level.
        """
        pos = [self.positional_encoding(mask) for mask in masks]
        hidden, reference = self.transformer(feats, masks, pos, self.cls_branches, self.reg_branches)
        last = self.transformer.decoder.num_layers - 1
        logits = self.cls_branches[last](hidden)
        boxes = (self.reg_branches[last](hidden) + inverse_sigmoid(reference, REFINE_EPS)).sigmoid()
        return logits, boxes

    def predict(self, feats: list[Tensor], masks: list[Tensor], metas: list[dict[str, Any]],
                rescale: bool = True) -> list[InstanceData]:
        logits, boxes = self.forward(feats, masks)
        return [self._detections(logit, box, meta, rescale) for logit, box, meta in zip(logits, boxes, metas)]

    def _detections(self, logits: Tensor, boxes: Tensor, meta: dict[str, Any], rescale: bool) -> InstanceData:
        """Best (query, class) pairs of one image, in input pixels, or original pixels with ``rescale``."""
        max_per_img = int(self.test_cfg.get("max_per_img", self.num_query))
        scores, index = logits.sigmoid().flatten().topk(min(max_per_img, logits.numel()))
        labels = index % self.num_classes
        xyxy = bbox_cxcywh_to_xyxy(boxes[index // self.num_classes])
        height, width = meta["img_shape"][:2]
        xyxy = xyxy * xyxy.new_tensor([width, height, width, height])
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        if rescale:
            xyxy = xyxy / xyxy.new_tensor(meta["scale_factor"]).repeat(2)
        results = InstanceData(bboxes=xyxy, scores=scores, labels=labels)
        nms = self.test_cfg.get("nms")
        if nms and len(results):
            # Class-aware: boxes of different classes never suppress each other. Soft-NMS
            # lowers scores instead of dropping boxes, so the scores are taken from its output.
            kept, keep = batched_nms(results.bboxes.float(), results.scores.float(), results.labels, nms)
            results = results[keep][:max_per_img]
            results.scores = kept[:max_per_img, -1].to(scores.dtype)
        return results
