# The Co-DINO architecture of co-dino-5scale-swin-l with tiny widths and depths, for tests and
# for checking the pipeline on CPU; it ships no weights (random weights are all it is for).
_base_ = ["./co-dino-5scale-swin-l.py"]

embed_dims = 64
num_levels = 5
deformable_attention = dict(type="MultiScaleDeformableAttention", embed_dims=embed_dims, num_heads=4,
                            num_levels=num_levels, num_points=2, dropout=0.0)
ffn = dict(type="FFN", embed_dims=embed_dims, feedforward_channels=128, num_fcs=2, ffn_drop=0.0,
           act_cfg=dict(type="ReLU", inplace=True))

model = dict(
    backbone=dict(pretrain_img_size=224, embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=7,
                  drop_path_rate=0.0),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=embed_dims, norm_cfg=dict(type="GN", num_groups=8)),
    query_head=dict(
        num_query=50,
        transformer=dict(
            encoder=dict(num_layers=1, transformerlayers=dict(attn_cfgs=deformable_attention, ffn_cfgs=ffn)),
            decoder=dict(
                num_layers=1,
                transformerlayers=dict(
                    attn_cfgs=[dict(type="MultiheadAttention", embed_dims=embed_dims, num_heads=4, attn_drop=0.0,
                                    proj_drop=0.0),
                               deformable_attention],
                    ffn_cfgs=ffn,
                ),
            ),
        ),
        positional_encoding=dict(num_feats=embed_dims // 2),
        test_cfg=dict(max_per_img=100),
    ),
)

test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(320, 192), keep_ratio=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
