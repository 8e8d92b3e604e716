# Co-DINO, 5 scales, Swin-L backbone, pre-trained on Objects365 and fine-tuned on COCO: the model
# of the official checkpoint co_dino_5scale_swin_large_16e_o365tococo (docs/co-detr.md). The
# weights are not in the repository: AUTOLABEL_CHECKPOINT names the file or its s3:// URI.
# Inference only (the official eval_module 'detr'): backbone, neck and query head; the
# checkpoint's auxiliary heads are skipped and reported when it loads.
default_scope = "mmdet"
custom_imports = dict(imports=["autolabel_worker.codetr"], allow_failed_imports=False)

classes = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
metainfo = dict(classes=classes)

embed_dims = 256
num_levels = 5
deformable_attention = dict(type="MultiScaleDeformableAttention", embed_dims=embed_dims, num_heads=8,
                            num_levels=num_levels, num_points=4, dropout=0.0)
ffn = dict(type="FFN", embed_dims=embed_dims, feedforward_channels=2048, num_fcs=2, ffn_drop=0.0,
           act_cfg=dict(type="ReLU", inplace=True))

model = dict(
    type="CoDETR",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
    ),
    backbone=dict(
        type="SwinTransformer",
        pretrain_img_size=384,
        embed_dims=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=False,
        init_cfg=None,
    ),
    neck=dict(
        type="ChannelMapper",
        in_channels=[192, 384, 768, 1536],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        norm_cfg=dict(type="GN", num_groups=32),
        num_outs=num_levels,
    ),
    query_head=dict(
        type="CoDINOHead",
        num_classes=len(classes),
        num_query=900,
        transformer=dict(
            type="CoDinoTransformer",
            num_feature_levels=num_levels,
            encoder=dict(
                type="DetrTransformerEncoder",
                num_layers=6,
                transformerlayers=dict(
                    type="BaseTransformerLayer",
                    attn_cfgs=deformable_attention,
                    ffn_cfgs=ffn,
                    operation_order=("self_attn", "norm", "ffn", "norm"),
                ),
            ),
            decoder=dict(
                type="DinoTransformerDecoder",
                num_layers=6,
                transformerlayers=dict(
                    type="DetrTransformerDecoderLayer",
                    attn_cfgs=[
                        dict(type="MultiheadAttention", embed_dims=embed_dims, num_heads=8, attn_drop=0.0,
                             proj_drop=0.0),
                        deformable_attention,
                    ],
                    ffn_cfgs=ffn,
                    operation_order=("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
                ),
            ),
        ),
        positional_encoding=dict(type="SinePositionalEncoding", num_feats=embed_dims // 2, temperature=20,
                                 normalize=True),
        test_cfg=dict(max_per_img=300, nms=dict(type="soft_nms", iou_threshold=0.8)),
    ),
)

# The official evaluation: fit into 2048x1280 keeping the aspect ratio, no fixed-size padding
# (the model pads a mixed batch itself, with masks, and a frame's result does not depend on it).
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 1280), keep_ratio=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
test_dataloader = dict(dataset=dict(type="CocoDataset", metainfo=metainfo, pipeline=test_pipeline))
