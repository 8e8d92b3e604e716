"""``autolabel preview``: frames with their boxes and class names drawn, as PNG files."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from autolabel import layout
from autolabel.contract import FrameResult, JobManifest
from autolabel.errors import ObjectNotFoundError
from autolabel.storage import ObjectStore

# Distinct, saturated colours; class i gets COLOURS[i % len(COLOURS)].
COLOURS = ((255, 56, 56), (72, 249, 10), (0, 194, 255), (255, 178, 29), (207, 210, 49), (146, 204, 23),
           (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (52, 69, 147), (100, 115, 255),
           (132, 56, 255), (203, 56, 255), (255, 149, 200), (255, 55, 199))


def class_colour(class_id: int) -> tuple[int, int, int]:
    return COLOURS[class_id % len(COLOURS)]


def draw_detections(image: Image.Image, result: FrameResult) -> Image.Image:
    """A copy of ``image`` with each box outlined in its class colour and labelled on a filled tag."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(2, round(min(canvas.size) / 300))
    for det in result.detections:
        colour = class_colour(det.class_id)
        x1, y1, x2, y2 = det.box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = f"{det.class_name} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tag_y = y1 - (bottom - top) - 4 if y1 >= (bottom - top) + 4 else y2
        draw.rectangle((x1, tag_y, x1 + (right - left) + 4, tag_y + (bottom - top) + 4), fill=colour)
        # Black or white text, whichever reads better on the class colour.
        text = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((x1 + 2, tag_y + 2 - top), label, fill=text, font=font)
    return canvas


def render_preview(store: ObjectStore, job_id: str, out_dir: Path, *, limit: int | None = None,
                   frame_ids: Sequence[str] | None = None) -> list[Path]:
    """Write ``out_dir/FRAME_ID.png`` for each labeled frame (up to ``limit``); unlabeled frames are skipped."""
    manifest = JobManifest.model_validate(store.get_json(layout.manifest_key(job_id)))
    wanted = set(frame_ids) if frame_ids is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for frame in manifest.frames:
        if limit is not None and len(written) >= limit:
            break
        if wanted is not None and frame.frame_id not in wanted:
            continue
        try:
            result = FrameResult.model_validate(store.get_json(layout.detection_key(job_id, frame.frame_id)))
        except ObjectNotFoundError:
            continue
        image = Image.open(io.BytesIO(store.get_bytes(frame.key)))
        path = out_dir / f"{frame.frame_id}.png"
        draw_detections(image, result).save(path)
        written.append(path)
    return written
