"""``render_preview`` reads a job from the real S3-compatible server and draws its boxes on the frames."""

from __future__ import annotations

import io
import logging
import uuid
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from autolabel import layout
from autolabel.contract import DetectOptions, FrameRef, FrameResult, JobManifest, JobSpec
from autolabel.detections import Detection
from autolabel.errors import InvalidInputError
from autolabel.preview import class_colour, draw_detections, render_preview, render_video
from autolabel.storage import ObjectStore
from autolabel.video import encode_jpeg

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 320, 240
CAR = Detection(box=(40, 100, 140, 200), score=0.91, class_id=2, class_name="car")
PERSON = Detection(box=(200, 20, 280, 180), score=0.55, class_id=0, class_name="person")


def frame_jpeg() -> bytes:
    """A gradient, so that 'unchanged' means something at every pixel."""
    x = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    y = np.linspace(0, 255, HEIGHT, dtype=np.uint8)
    pixels = np.stack([np.tile(x, (HEIGHT, 1)), np.tile(y[:, None], (1, WIDTH)), np.full((HEIGHT, WIDTH), 90, np.uint8)],
                      axis=-1)
    return encode_jpeg(Image.fromarray(pixels))


@pytest.fixture
def job(store: ObjectStore) -> str:
    """Three frames sharing one JPEG: 0 and 2 labeled, 1 not labeled yet."""
    job_id = f"preview-{uuid.uuid4().hex[:12]}"
    refs = []
    for number in range(3):
        frame_id = layout.video_frame_id(number)
        key = layout.frame_key(job_id, frame_id)
        store.put_bytes(key, frame_jpeg(), "image/jpeg")
        refs.append(FrameRef(frame_id=frame_id, key=key, index=number, timestamp=number / 10))
    spec = JobSpec(job_id=job_id, source="clip.mp4", options=DetectOptions(model="m"))
    store.put_json(layout.manifest_key(job_id), JobManifest(spec=spec, frames=tuple(refs)))
    for number, detections in ((0, (CAR, PERSON)), (2, (PERSON,))):
        frame_id = layout.video_frame_id(number)
        store.put_json(layout.detection_key(job_id, frame_id), FrameResult(
            job_id=job_id, frame_id=frame_id, frame_index=number, timestamp=number / 10, width=WIDTH, height=HEIGHT,
            model="m", model_version="v1", detections=detections))
    return job_id


def test_boxes_are_drawn_in_class_colours_and_the_rest_is_untouched(store: ObjectStore, job: str, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="autolabel.preview"):
        paths = render_preview(store, job, tmp_path / "out")
    assert [p.name for p in paths] == ["00000000.png", "00000002.png"]
    assert "skipped 1 frames" in caplog.text

    original = np.asarray(Image.open(io.BytesIO(frame_jpeg())).convert("RGB"))
    drawn = np.asarray(Image.open(paths[0]))
    assert drawn.shape == (HEIGHT, WIDTH, 3)
    assert class_colour(CAR.class_id) != class_colour(PERSON.class_id)
    for detection in (CAR, PERSON):
        x1, y1, x2, y2 = (round(v) for v in detection.box)
        colour = class_colour(detection.class_id)
        for y in range(y1 + 30, y2 - 10, 10):
            assert tuple(drawn[y, x1]) == colour  # left edge
            assert tuple(drawn[y, x2]) == colour  # right edge
        for x in range(x1 + 10, x2 - 10, 10):
            assert tuple(drawn[y2, x]) == colour  # bottom edge
        assert (drawn[y1 + 40, x1 + 20] == original[y1 + 40, x1 + 20]).all()  # inside the box
    for y, x in ((230, 10), (10, 10), (220, 180), (60, 170)):  # far from any box and label
        assert (drawn[y, x] == original[y, x]).all()


def test_labels_sit_on_a_tag_of_the_class_colour_with_contrasting_text(store: ObjectStore, job: str,
                                                                       tmp_path: Path) -> None:
    drawn = np.asarray(Image.open(render_preview(store, job, tmp_path, frame_ids=["00000000"])[0]))
    for detection in (CAR, PERSON):
        # The tag sits just above the box, from its left edge on: mostly class colour, partly text.
        x1, y1 = round(detection.box[0]), round(detection.box[1])
        tag = drawn[y1 - 10:y1 - 1, x1 + 1:x1 + 30].reshape(-1, 3).astype(int)
        colour = np.array(class_colour(detection.class_id))
        assert (tag == colour).all(axis=1).mean() > 0.4
        # Text is black or white, far from the tag's colour.
        assert (np.abs(tag - colour).sum(axis=1) > 250).mean() > 0.05


def test_frame_ids_and_limit_pick_frames(store: ObjectStore, job: str, tmp_path: Path) -> None:
    assert [p.name for p in render_preview(store, job, tmp_path / "a", frame_ids=["00000002"])] == ["00000002.png"]
    assert [p.name for p in render_preview(store, job, tmp_path / "b", limit=1)] == ["00000000.png"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["00000000.png"]
    with pytest.raises(InvalidInputError, match="has no frames 00000009"):
        render_preview(store, job, tmp_path / "c", frame_ids=["00000000", "00000009"])


def test_a_track_id_is_drawn_in_the_tag() -> None:
    """With tracking the tag reads "class #id score": the same box's tag grows by the id's width."""
    result = FrameResult(job_id="j", frame_id="f", frame_index=0, timestamp=0.0, width=WIDTH, height=HEIGHT,
                         model="m", model_version="v1", detections=(CAR,))
    image = Image.open(io.BytesIO(frame_jpeg()))
    colour = np.array(class_colour(CAR.class_id))
    tag_widths = []
    for detection in (CAR, CAR.model_copy(update={"track_id": 12345})):
        drawn = np.asarray(draw_detections(image, result.model_copy(update={"detections": (detection,)})))
        row = drawn[round(CAR.box[1]) - 2]  # the tag's bottom row, text-free
        tag_widths.append(int((np.abs(row.astype(int) - colour).sum(axis=1) == 0).sum()))
    assert tag_widths[1] > tag_widths[0] + 20, tag_widths


def test_the_video_preview_is_an_mp4_of_the_labeled_frames_with_their_boxes(store: ObjectStore, job: str,
                                                                             tmp_path: Path) -> None:
    mp4 = tmp_path / "preview.mp4"
    assert render_video(store, job, mp4) == 2
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 10  # the frames' timestamps are 0.1 s apart
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (HEIGHT, WIDTH, 3)
    x1, y1, _, y2 = (round(v) for v in CAR.box)
    edge = frames[0][(y1 + y2) // 2, x1 - 1:x1 + 2].astype(int)  # the car's left edge, 2 px wide, lossy
    assert np.abs(edge - np.array(class_colour(CAR.class_id))).sum(axis=1).min() < 90, edge
    assert render_video(store, job, tmp_path / "one.mp4", limit=1) == 1
