"""Co-DETR at inference (the official ``eval_module='detr'``): backbone, neck, Co-DINO query head."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor


@MODELS.register_module(name="CoDETR")
class CoDETR(BaseDetector):
    """Co-DETR with only what inference runs.

    The official checkpoints also hold the auxiliary heads trained alongside the query head
    (ATSS, RPN, RoI) and the query head's training-only parts; a loader skips and reports the
    keys under ``inference_skip_prefixes`` instead of calling them unexpected.
    """

    inference_skip_prefixes = (
        "rpn_head.",
        "roi_head.",
        "bbox_head.",
        "query_head.downsample.",
        "query_head.dn_generator.",
        "query_head.transformer.aux_pos_trans",
    )

    def __init__(self, backbone: dict[str, Any], neck: dict[str, Any], query_head: dict[str, Any],
                 data_preprocessor: dict[str, Any] | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck)
        self.query_head = MODELS.build(query_head)

    def extract_feat(self, batch_inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.neck(self.backbone(batch_inputs)))

    def _features(self, batch_inputs: Tensor, samples: SampleList) -> tuple[list[Tensor], list[Tensor]]:
        """Each frame's feature maps at its own size, zero-padded into one batch, with padding masks.

        The data preprocessor pads every frame to the batch's largest. Run through the backbone
        like that, a frame's features would change with its neighbours (windowed attention and
        group norm see the padding), so frames of one size go through together, unpadded, and
        only the transformer, whose attention honours the masks, sees the padded batch.
        """
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, sample in enumerate(samples):
            by_shape[tuple(sample.metainfo["img_shape"][:2])].append(index)
        groups = [(indices, self.extract_feat(batch_inputs[indices, :, :height, :width]))
                  for (height, width), indices in by_shape.items()]
        feats, masks = [], []
        for level in range(len(groups[0][1])):
            height = max(group_feats[level].shape[-2] for _, group_feats in groups)
            width = max(group_feats[level].shape[-1] for _, group_feats in groups)
            first = groups[0][1][level]
            padded = first.new_zeros((len(samples), first.shape[1], height, width))
            mask = torch.ones((len(samples), height, width), dtype=torch.bool, device=first.device)
            for indices, group_feats in groups:
                feat = group_feats[level]
                padded[indices, :, :feat.shape[-2], :feat.shape[-1]] = feat
                mask[indices, :feat.shape[-2], :feat.shape[-1]] = False
            feats.append(padded)
            masks.append(mask)
        return feats, masks

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        feats, masks = self._features(batch_inputs, batch_data_samples)
        metas = [sample.metainfo for sample in batch_data_samples]
        results = self.query_head.predict(feats, masks, metas, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs: Tensor, batch_data_samples: SampleList | None = None) -> tuple[Tensor, Tensor]:
        """Raw class logits and normalised boxes of the query head (``mode='tensor'``)."""
        if batch_data_samples is None:
            feats = list(self.extract_feat(batch_inputs))
            masks = [feat.new_zeros((feat.shape[0], *feat.shape[-2:]), dtype=torch.bool) for feat in feats]
        else:
            feats, masks = self._features(batch_inputs, batch_data_samples)
        return self.query_head(feats, masks)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict[str, Tensor]:
        raise NotImplementedError("this Co-DETR is built for inference; train with the official projects/CO-DETR")
