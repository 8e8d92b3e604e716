"""`autolabel preview` draws a job's boxes on its frames, read from the real S3 server."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autolabel import layout
from autolabel.contract import DetectOptions, FrameRef, FrameResult, JobManifest, JobSpec
from autolabel.detections import Detection
from autolabel.preview import class_colour, render_preview
from autolabel.storage import ObjectStore

pytestmark = pytest.mark.integration


def test_preview_draws_boxes_in_class_colours(store: ObjectStore, tmp_path: Path) -> None:
    job = "preview-job"
    frame = Image.new("RGB", (320, 200), (128, 128, 128))
    buffer = io.BytesIO()
    frame.save(buffer, "PNG")
    key = layout.frame_key(job, "00000000")
    store.put_bytes(key, buffer.getvalue(), "image/png")
    refs = (FrameRef(frame_id="00000000", key=key, index=0), FrameRef(frame_id="00000001", key=key, index=1))
    spec = JobSpec(job_id=job, source="v.mp4", options=DetectOptions(model="m"))
    store.put_json(layout.manifest_key(job), JobManifest(spec=spec, frames=refs))
    box = Detection(box=(100, 60, 200, 160), score=0.9, class_id=2, class_name="triangle")
    store.put_json(layout.detection_key(job, "00000000"), FrameResult(
        job_id=job, frame_id="00000000", frame_index=0, timestamp=0.0, width=320, height=200, model="m",
        model_version="v", detections=(box,)))

    paths = render_preview(store, job, tmp_path)
    assert [p.name for p in paths] == ["00000000.png"]  # the frame without a result is skipped
    pixels = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert pixels.shape == (200, 320, 3)
    assert tuple(pixels[110, 100]) == class_colour(2)  # left edge of the box
    assert tuple(pixels[159, 150]) == class_colour(2)  # bottom edge
    assert tuple(pixels[110, 150]) == (128, 128, 128)  # inside, untouched
    assert tuple(pixels[5, 300]) == (128, 128, 128)  # far away, untouched
