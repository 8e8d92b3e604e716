"""The Co-DINO transformer, inference path only, under the official checkpoints' parameter names.

The official Co-DETR code builds its transformer from mmcv's generic layers
(``BaseTransformerLayer``: ``attentions.N``, ``ffns.0``, ``norms.N``), so its checkpoints name
their weights that way, while mmdet core's DINO names them differently. These classes are made
of the same mmcv layers, so a checkpoint loads key for key. Denoising queries and the queries
of the auxiliary heads exist only in training and are not built.

Tensors are batch-first throughout: (batch, tokens, channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from mmcv.cnn.bricks.transformer import BaseTransformerLayer, TransformerLayerSequence
from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

# The official head refines boxes with this clamp; the library default (1e-5) gives other boxes.
REFINE_EPS = 1e-3


@dataclass(frozen=True)
class Levels:
    """Where each feature level sits in the flattened token sequence, and which tokens are image.

    ``valid_hw`` is each image's own feature size per level, (batch, levels, 2) as (h, w);
    ``valid_ratios`` is that size over the padded size, (batch, levels, 2) as (w, h), the order
    mmcv's deformable attention expects.
    """

    spatial_shapes: Tensor
    level_start_index: Tensor
    padding: Tensor
    valid_hw: Tensor
    valid_ratios: Tensor

    @classmethod
    def of(cls, masks: list[Tensor]) -> Levels:
        shapes = torch.as_tensor([mask.shape[-2:] for mask in masks], dtype=torch.long, device=masks[0].device)
        starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        valid_h = torch.stack([(~mask[:, :, 0]).sum(1) for mask in masks], 1)
        valid_w = torch.stack([(~mask[:, 0, :]).sum(1) for mask in masks], 1)
        valid_hw = torch.stack([valid_h, valid_w], -1)
        ratios = torch.stack([valid_w / shapes[:, 1], valid_h / shapes[:, 0]], -1).float()
        return cls(shapes, starts, torch.cat([mask.flatten(1) for mask in masks], 1), valid_hw, ratios)

    def grid(self, level: int) -> tuple[Tensor, Tensor]:
        """Cell centres of one level in its own image's normalised coordinates: x, y of (batch, h*w)."""
        height, width = (int(v) for v in self.spatial_shapes[level])
        device = self.spatial_shapes.device
        ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                                torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
        valid = self.valid_hw[:, level].float()
        return xs.reshape(1, -1) / valid[:, 1:2], ys.reshape(1, -1) / valid[:, 0:1]


def _batch_first(layer_cfg: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]]:
    if isinstance(layer_cfg, list):
        return [dict(cfg, batch_first=True) for cfg in layer_cfg]
    return dict(layer_cfg, batch_first=True)


@MODELS.register_module(name="DetrTransformerEncoder")
class DetrTransformerEncoder(TransformerLayerSequence):
    """Deformable self-attention encoder over the tokens of all levels (post-norm layers)."""

    def __init__(self, transformerlayers: dict[str, Any], num_layers: int, init_cfg: dict | None = None) -> None:
        super().__init__(_batch_first(transformerlayers), num_layers, init_cfg)
        if self.pre_norm:
            raise ValueError("Co-DINO's encoder layers are post-norm; a pre-norm stack needs a final norm "
                             "the official checkpoints do not have")

    def forward(self, tokens: Tensor, pos: Tensor, levels: Levels) -> Tensor:  # type: ignore[override]
        references = []
        for level in range(len(levels.spatial_shapes)):
            xs, ys = levels.grid(level)
            references.append(torch.stack([xs, ys], -1))
        # Each token samples every level around the same place in the image, so its own
        # normalised position is mapped into each level's padded frame by that level's ratio.
        reference = torch.cat(references, 1)[:, :, None] * levels.valid_ratios[:, None]
        for layer in self.layers:
            tokens = layer(tokens, query_pos=pos, query_key_padding_mask=levels.padding, reference_points=reference,
                           spatial_shapes=levels.spatial_shapes, level_start_index=levels.level_start_index)
        return tokens


@MODELS.register_module(name="DetrTransformerDecoderLayer")
class DetrTransformerDecoderLayer(BaseTransformerLayer):
    """Self-attention among the queries, deformable cross-attention into the encoder's tokens, FFN."""

    def __init__(self, attn_cfgs: list[dict[str, Any]], ffn_cfgs: dict[str, Any], operation_order: tuple[str, ...],
                 **kwargs: Any) -> None:
        if set(operation_order) != {"self_attn", "norm", "cross_attn", "ffn"} or len(operation_order) != 6:
            raise ValueError(f"a decoder layer runs self_attn, cross_attn and ffn, each followed by a norm; "
                             f"got {operation_order}")
        super().__init__(attn_cfgs=attn_cfgs, ffn_cfgs=ffn_cfgs, operation_order=operation_order, **kwargs)


def box_sine_embedding(boxes: Tensor, feats_per_coord: int) -> Tensor:
    """Sine/cosine embedding of (cx, cy, w, h) boxes, concatenated in the order y, x, w, h."""
    dim_t = torch.arange(feats_per_coord, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / feats_per_coord)
    angles = boxes[..., None] * (2 * math.pi) / dim_t  # (batch, queries, 4, feats)
    embedded = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], -1).flatten(-2)
    cx, cy, w, h = embedded.unbind(-2)
    return torch.cat([cy, cx, w, h], -1)


@MODELS.register_module(name="DinoTransformerDecoder")
class DinoTransformerDecoder(TransformerLayerSequence):
    """DINO decoder: each layer's query position comes from its current reference box, which the
    regression branch of that layer refines for the next one."""

    def __init__(self, transformerlayers: dict[str, Any], num_layers: int, init_cfg: dict | None = None) -> None:
        super().__init__(_batch_first(transformerlayers), num_layers, init_cfg)
        dims = self.embed_dims
        # Indices 0 and 2 of a Sequential: the names the checkpoints carry.
        self.ref_point_head = nn.Sequential(nn.Linear(2 * dims, dims), nn.ReLU(), nn.Linear(dims, dims))
        self.norm = nn.LayerNorm(dims)

    def forward(self, query: Tensor, memory: Tensor, reference: Tensor, levels: Levels,  # type: ignore[override]
                reg_branches: nn.ModuleList) -> tuple[Tensor, Tensor]:
        """The last layer's normalised output and the reference box it predicts offsets from.

        ``reference`` is (batch, queries, 4), normalised to each image's own size.
        """
        box_ratios = torch.cat([levels.valid_ratios, levels.valid_ratios], -1)[:, None]
        for index, layer in enumerate(self.layers):
            # The official code embeds the reference scaled to the padded batch; with no padding
            # (how the official model was trained and evaluated, one image per GPU) the two agree,
            # and embedding the image-relative box keeps a frame's result independent of its batch.
            query_pos = self.ref_point_head(box_sine_embedding(reference, self.embed_dims // 2))
            query = layer(query, key=None, value=memory, query_pos=query_pos, key_padding_mask=levels.padding,
                          reference_points=reference[:, :, None] * box_ratios, spatial_shapes=levels.spatial_shapes,
                          level_start_index=levels.level_start_index)
            if index + 1 < len(self.layers):
                reference = (reg_branches[index](query) + inverse_sigmoid(reference, REFINE_EPS)).sigmoid()
        return self.norm(query), reference


@MODELS.register_module(name="CoDinoTransformer")
class CoDinoTransformer(BaseModule):
    """Encoder, two-stage selection of the decoder's reference boxes, decoder.

    The training-only parts of the official module (the queries built for the auxiliary heads,
    ``aux_pos_trans*``) are not built; ``CoDETR.inference_skip_prefixes`` names them.
    """

    def __init__(self, encoder: dict[str, Any], decoder: dict[str, Any], num_feature_levels: int = 5,
                 two_stage_num_proposals: int = 900, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        self.encoder = MODELS.build(encoder)
        self.decoder = MODELS.build(decoder)
        self.embed_dims = self.encoder.embed_dims
        self.num_feature_levels = num_feature_levels
        self.two_stage_num_proposals = two_stage_num_proposals
        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, self.embed_dims).normal_())
        self.enc_output = nn.Linear(self.embed_dims, self.embed_dims)
        self.enc_output_norm = nn.LayerNorm(self.embed_dims)
        # Content queries; their positions come from the selected proposals.
        self.query_embed = nn.Embedding(two_stage_num_proposals, self.embed_dims)

    def forward(self, feats: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor],
                cls_branches: nn.ModuleList, reg_branches: nn.ModuleList) -> tuple[Tensor, Tensor]:
        """Decoder output (normalised) and reference boxes of the last layer, for the head's branches."""
        if len(feats) != self.num_feature_levels:
            raise ValueError(f"{len(feats)} feature levels for a transformer built for {self.num_feature_levels}")
        levels = Levels.of(masks)
        tokens = torch.cat([feat.flatten(2).transpose(1, 2) for feat in feats], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embeds[level]
                         for level, p in enumerate(pos_embeds)], 1)
        memory = self.encoder(tokens, pos, levels)
        reference = self._select_proposals(memory, levels, cls_branches, reg_branches)
        query = self.query_embed.weight[None].expand(memory.shape[0], -1, -1)
        return self.decoder(query, memory, reference, levels, reg_branches)

    def _select_proposals(self, memory: Tensor, levels: Levels, cls_branches: nn.ModuleList,
                          reg_branches: nn.ModuleList) -> Tensor:
        """The decoder's initial reference boxes: the best-scored encoder tokens' boxes, (batch, queries, 4)."""
        proposals = []
        for level in range(len(levels.spatial_shapes)):
            xs, ys = levels.grid(level)
            size = torch.full_like(xs, 0.05 * 2.0 ** level)
            proposals.append(torch.stack([xs, ys, size, size], -1))
        proposal = torch.cat(proposals, 1)
        usable = ((proposal > 0.01) & (proposal < 0.99)).all(-1, keepdim=True)
        unused = levels.padding[..., None] | ~usable
        proposal = torch.log(proposal / (1 - proposal)).masked_fill(unused, float("inf"))
        encoded = self.enc_output_norm(self.enc_output(memory.masked_fill(unused, 0.0)))
        # The branch after the decoder's own is the encoder's (two-stage) branch.
        scores = cls_branches[self.decoder.num_layers](encoded).max(-1).values
        # Padding tokens share one constant score; the official code could pick them when a
        # batch pads a frame, so they are excluded: a frame's boxes must not depend on its batch.
        scores = scores.masked_fill(levels.padding, float("-inf"))
        top = scores.topk(self.two_stage_num_proposals, dim=1).indices
        boxes = reg_branches[self.decoder.num_layers](encoded) + proposal
        return torch.gather(boxes, 1, top[..., None].expand(-1, -1, 4)).sigmoid()
