# The embedded default model: a small RTMDet (mmdet core) for the synthetic shapes of
# autolabel.synth. Trained on CPU from scratch by `python -m autolabel_worker.train_shapes`;
# docs/embedded-model.md says why it is a one-stage detector and not a scaled-down DINO
# (measured: a DINO that fits 12 px objects trains at ~20 s per 2-frame step on this CPU).
# It is NOT Co-DETR: it exists so the pipeline can be checked against exact ground truth.
default_scope = "mmdet"

classes = ("circle", "square", "triangle")
metainfo = dict(classes=classes)

norm_cfg = dict(type="BN")
act_cfg = dict(type="SiLU", inplace=True)

model = dict(
    type="RTMDet",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[103.53, 116.28, 123.675],
        std=[57.375, 57.12, 58.395],
        bgr_to_rgb=False,
        pad_size_divisor=32,
    ),
    backbone=dict(
        type="CSPNeXt",
        arch="P5",
        expand_ratio=0.5,
        deepen_factor=0.167,
        widen_factor=0.25,
        channel_attention=True,
        norm_cfg=norm_cfg,
        act_cfg=act_cfg,
    ),
    neck=dict(
        type="CSPNeXtPAFPN",
        in_channels=[64, 128, 256],
        out_channels=64,
        num_csp_blocks=1,
        expand_ratio=0.5,
        norm_cfg=norm_cfg,
        act_cfg=act_cfg,
    ),
    bbox_head=dict(
        type="RTMDetSepBNHead",
        num_classes=len(classes),
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        anchor_generator=dict(type="MlvlPointGenerator", offset=0, strides=[8, 16, 32]),
        bbox_coder=dict(type="DistancePointBBoxCoder"),
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        with_objectness=False,
        exp_on_reg=False,
        share_conv=True,
        pred_kernel_size=1,
        norm_cfg=norm_cfg,
        act_cfg=act_cfg,
    ),
    train_cfg=dict(assigner=dict(type="DynamicSoftLabelAssigner", topk=13), allowed_border=-1, pos_weight=-1,
                   debug=False),
    test_cfg=dict(nms_pre=2000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                  max_per_img=100),
)

# Every frame is fitted into 1280x720 (the size the model was tuned for: objects of 12 px
# and up) and padded to exactly that canvas, so a frame's detections never depend on which
# other frames share its batch. Frames arrive decoded; the worker swaps the loading step for
# LoadImageFromNDArray.
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="FixShapeResize", width=1280, height=720, keep_ratio=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
test_dataloader = dict(dataset=dict(type="CocoDataset", metainfo=metainfo, pipeline=test_pipeline))
