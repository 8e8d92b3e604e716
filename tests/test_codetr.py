"""Co-DETR built in: official key names, strict loading, batch-independent results, original pixels."""

from __future__ import annotations

import logging
import sys
import uuid
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autolabel.cli import main
from autolabel.detections import Detection
from autolabel_worker.checkpoint import load_weights
from autolabel_worker.detector import Detector
from autolabel_worker.models import REPO_CONFIGS_DIR
from autolabel_worker.runtime import add_plugin_dirs
from mmdet.structures import DetDataSample

TINY = REPO_CONFIGS_DIR / "co-dino-tiny.py"
FULL = REPO_CONFIGS_DIR / "co-dino-5scale-swin-l.py"
OFFICIAL_KEYS = Path(__file__).parent / "data" / "co_dino_swin_l_keys.txt"
AUX_HEADS = ("rpn_head.", "roi_head.", "bbox_head.")


def _frame(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth BGR frame: blobs on a gradient, so resizing it changes little."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xs / width * 200, ys / height * 200, np.full_like(xs, 90)], -1)
    for _ in range(6):
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 40)
        image[(xs - cx) ** 2 + (ys - cy) ** 2 < radius**2] = rng.uniform(0, 255, 3)
    return image.clip(0, 255).astype(np.uint8)


def _official_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split()
            keys[name] = () if shape == "-" else tuple(int(v) for v in shape.split(","))
    return keys


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Detector.load(TINY, None).model
    path = tmp_path_factory.mktemp("codetr") / "tiny.pth"
    # The layout mmengine's Runner writes.
    torch.save({"state_dict": model.state_dict(), "meta": {"epoch": 1}}, path)
    return path


@pytest.fixture(scope="module")
def detector(tiny_checkpoint: Path) -> Detector:
    return Detector.load(TINY, tiny_checkpoint)


def _assert_same(together: list[Detection], alone: list[Detection]) -> None:
    assert len(together) == len(alone) > 0
    assert [d.class_id for d in together] == [d.class_id for d in alone]
    assert np.abs(np.array([d.box for d in together]) - np.array([d.box for d in alone])).max() < 1e-3
    assert np.abs(np.array([d.score for d in together]) - np.array([d.score for d in alone])).max() < 1e-4


def test_a_saved_tiny_model_loads_back_key_for_key(tiny_checkpoint: Path, detector: Detector) -> None:
    torch.manual_seed(1)
    fresh = Detector.load(TINY, None).model
    report = load_weights(fresh, tiny_checkpoint)
    assert report.clean and not report.skipped
    saved = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    assert set(saved) == set(fresh.state_dict())
    for key in ("query_head.transformer.query_embed.weight", "backbone.patch_embed.projection.weight"):
        assert torch.equal(fresh.state_dict()[key], saved[key])
    assert detector.report is not None and detector.report.clean
    assert len(detector.classes) == 80 and detector.classes[0] == "person"


def test_a_mixed_size_batch_equals_one_by_one(detector: Detector) -> None:
    # Three shapes, so the batch pads every frame differently at every feature level.
    frames = [_frame(240, 320, 1), _frame(300, 200, 2), _frame(256, 256, 3)]
    together = detector.predict(frames)
    for frame, batched in zip(frames, together, strict=True):
        _assert_same(batched, detector.predict([frame])[0])


def _predict_unresized(detector: Detector, frames: list[np.ndarray]) -> list[DetDataSample]:
    """The model's own output for frames fed at their size (no test-pipeline resize)."""
    samples = []
    for frame in frames:
        height, width = frame.shape[:2]
        samples.append(DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                                   scale_factor=(1.0, 1.0))))
    inputs = [torch.from_numpy(frame).permute(2, 0, 1).contiguous() for frame in frames]
    with torch.no_grad():
        return detector.model.test_step({"inputs": inputs, "data_samples": samples})


def test_padding_never_takes_a_frames_queries(tiny_checkpoint: Path) -> None:
    tweaked = Detector.load(TINY, tiny_checkpoint)
    transformer = tweaked.model.query_head.transformer
    selection = tweaked.model.query_head.cls_branches[transformer.decoder.num_layers]
    # Make the tokens the batch pads a frame with the best-scored ones the two-stage selection
    # sees: their encoding is LayerNorm(enc_output.bias), and a class whose weights are exactly
    # that vector scores it highest of all unit-variance encodings.
    with torch.no_grad():
        transformer.enc_output_norm.weight.fill_(1.0)
        transformer.enc_output_norm.bias.zero_()
        selection.weight.zero_()
        selection.bias.zero_()
        selection.weight[0] = torch.nn.functional.layer_norm(transformer.enc_output.bias, (transformer.embed_dims,))
    # Under 200 px both ways, no level-0 proposal of these frames falls outside (0.01, 0.99),
    # so alone, neither has a token with the padding's score.
    big, small = _frame(192, 160, 8), _frame(128, 96, 9)
    batched = _predict_unresized(tweaked, [big, small])[1].pred_instances
    alone = _predict_unresized(tweaked, [small])[0].pred_instances
    assert len(batched) == len(alone) > 0
    assert torch.equal(batched.labels, alone.labels)
    assert (batched.bboxes - alone.bboxes).abs().max() < 1e-3
    assert (batched.scores - alone.scores).abs().max() < 1e-4


def test_boxes_come_back_in_original_pixels(detector: Detector) -> None:
    small = _frame(96, 160, 4)
    # What the test pipeline makes of `small` (x2 to fit 320x192), given as a frame that needs no resizing.
    large = mmcv.imresize(small, (320, 192), interpolation="bilinear")
    boxes_small, boxes_large = detector.predict([small, large])
    assert len(boxes_small) == len(boxes_large) > 0
    assert [d.class_id for d in boxes_small] == [d.class_id for d in boxes_large]
    # The network saw the same pixels twice; only the rescale to each frame's own size differs.
    np.testing.assert_allclose(2 * np.array([d.box for d in boxes_small]), np.array([d.box for d in boxes_large]),
                               atol=1e-2)
    # Before the worker clips anything, the model's own boxes lie within each original frame.
    frames = [small, _frame(300, 200, 2)]
    batch = [detector.pipeline({"img": frame, "img_id": i}) for i, frame in enumerate(frames)]
    with torch.no_grad():
        outputs = detector.model.test_step({"inputs": [b["inputs"] for b in batch],
                                            "data_samples": [b["data_samples"] for b in batch]})
    for frame, output in zip(frames, outputs, strict=True):
        boxes = output.pred_instances.bboxes
        assert len(boxes) > 0
        assert boxes.min() >= 0
        assert boxes[:, 0::2].max() <= frame.shape[1] + 1e-3 and boxes[:, 1::2].max() <= frame.shape[0] + 1e-3


def test_the_production_model_has_the_official_checkpoint_keys() -> None:
    from mmdet.registry import MODELS
    from mmengine.config import Config

    Detector.load(TINY, None)  # registers mmdet's modules and ours
    model = MODELS.build(Config.fromfile(str(FULL)).model)
    official = _official_keys()
    skip = model.inference_skip_prefixes
    expected = {key: shape for key, shape in official.items() if not key.startswith(skip)}
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert [key for key in expected if expected[key] != ours[key]] == []
    # Every skipped prefix stands for parts of the official checkpoint, none for the model's own.
    assert all(any(key.startswith(prefix) for key in official) for prefix in skip)
    assert set(AUX_HEADS) <= set(skip)
    assert 215e6 < sum(p.numel() for p in model.parameters()) < 222e6


def test_aux_head_keys_are_skipped_and_reported(tiny_checkpoint: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    skip = Detector.load(TINY, None).model.inference_skip_prefixes
    skipped = [key for key in _official_keys() if key.startswith(skip)]
    assert {key.split(".")[0] + "." for key in skipped} >= set(AUX_HEADS)
    # Shapes do not matter for keys that are skipped, so small tensors stand in for the real ones.
    checkpoint["state_dict"].update({key: torch.zeros(1) for key in skipped})
    path = tmp_path / "with_aux.pth"
    torch.save(checkpoint, path)
    with caplog.at_level(logging.INFO, logger="autolabel_worker"):
        loaded = Detector.load(TINY, path)
    assert loaded.report is not None and loaded.report.clean
    assert sorted(loaded.report.skipped) == sorted(skipped)
    lines = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    assert len(lines) == 1 and f"skipped {len(skipped)} keys" in lines[0]
    assert all(prefix in lines[0] for prefix in AUX_HEADS)


def test_fp16_is_ignored_on_cpu_with_a_log_line(tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="autolabel_worker"):
        loaded = Detector.load(TINY, tiny_checkpoint, fp16=True)
    assert loaded.fp16 is False
    assert any("fp16" in record.getMessage() and "cpu" in record.getMessage() for record in caplog.records)
    assert loaded.predict([_frame(96, 160, 5)])[0]


def test_a_config_importing_a_user_plugin_directory_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    module = f"autolabel_test_plugin_{uuid.uuid4().hex[:8]}"
    neck = f"PluginNeck{uuid.uuid4().hex[:8]}"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{module}.py").write_text(
        "from mmdet.models.necks import ChannelMapper\n"
        "from mmdet.registry import MODELS\n\n\n"
        f"@MODELS.register_module(name={neck!r})\n"
        "class PluginNeck(ChannelMapper):\n"
        "    pass\n")
    config = tmp_path / "with-plugin.py"
    config.write_text(f"_base_ = [{str(TINY)!r}]\n"
                      f"custom_imports = dict(imports=['autolabel_worker.codetr', {module!r}], "
                      "allow_failed_imports=False)\n"
                      f"model = dict(neck=dict(type={neck!r}))\n")
    with pytest.raises(ImportError):
        Detector.load(config, None)
    monkeypatch.setenv("AUTOLABEL_PLUGIN_DIRS", str(plugins))
    from autolabel.settings import Settings

    add_plugin_dirs(Settings().plugin_dirs)
    loaded = Detector.load(config, None)
    assert type(loaded.model.neck).__name__ == "PluginNeck"
    assert loaded.predict([_frame(96, 160, 6)])[0]


def test_inspect_checkpoint_reports_each_kind_of_key(tiny_checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    clean = runner.invoke(main, ["inspect-checkpoint", str(tiny_checkpoint), "--config", str(TINY)])
    assert clean.exit_code == 0, clean.output
    assert "missing (in the model, not in the checkpoint): 0" in clean.output
    assert "shape mismatch (checkpoint vs model): 0" in clean.output

    state = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    del state["query_head.transformer.level_embeds"]
    state["query_head.cls_branches.0.bias"] = torch.zeros(3)
    state["rpn_head.rpn_conv.weight"] = torch.zeros(1)
    state["neck.something_else"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, broken)
    result = runner.invoke(main, ["inspect-checkpoint", str(broken), "--config", str(TINY)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    for header, key in [("missing (in the model, not in the checkpoint): 1", "query_head.transformer.level_embeds"),
                        ("shape mismatch (checkpoint vs model): 1", "query_head.cls_branches.0.bias: (3,) vs (80,)"),
                        ("unexpected (in the checkpoint, not in the model; ignored): 1", "neck.something_else"),
                        ("skipped (parts the model does not build for inference): 1", "rpn_head.rpn_conv.weight")]:
        assert lines[lines.index(header) + 1] == f"  {key}"


@pytest.mark.slow
def test_smoke_the_production_model_runs_a_1280x720_frame_with_random_weights() -> None:
    """A smoke test, not an accuracy test: the full Swin-L model, built with random weights (the official
    checkpoint is not available here), runs one 1280x720 frame on CPU and returns at most 300 boxes inside
    the frame. It says nothing about what the trained model detects."""
    full = Detector.load(FULL, None)
    detections = full.predict([_frame(720, 1280, 7)])[0]
    assert 0 < len(detections) <= 300
    boxes = np.array([d.box for d in detections])
    assert boxes[:, 0::2].max() <= 1280 and boxes[:, 1::2].max() <= 720
