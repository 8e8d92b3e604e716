"""``autolabel preview``: a job's frames with their detections drawn, as PNG files or a short MP4 to look at."""

from __future__ import annotations

import colorsys
import io
import logging
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageDraw, ImageFont

from autolabel import layout
from autolabel.contract import FrameRef, FrameResult, JobManifest
from autolabel.errors import InvalidInputError, ObjectNotFoundError
from autolabel.storage import ObjectStore

log = logging.getLogger(__name__)

# Hues a golden-ratio step apart: neighbouring class ids get far-apart colours, for any number of classes.
_GOLDEN_RATIO = 0.618033988749895


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The RGB colour of a class, the same in every frame and every run."""
    red, green, blue = colorsys.hsv_to_rgb((class_id * _GOLDEN_RATIO) % 1.0, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def draw_detections(image: Image.Image, result: FrameResult) -> Image.Image:
    """An RGB copy of ``image`` with each box in its class colour, labelled "class score" (with tracking
    "class #track score") on a tag of that colour."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    short_side = min(canvas.size)
    line = max(2, round(short_side / 300))
    font = ImageFont.load_default(size=max(12, round(short_side / 40)))
    for detection in result.detections:
        colour = class_colour(detection.class_id)
        x1, y1, x2, y2 = detection.box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        track = "" if detection.track_id is None else f" #{detection.track_id}"
        label = f"{detection.class_name}{track} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tag_w, tag_h = right - left + 2 * line, bottom - top + 2 * line
        # Above the box where there is room, else inside its top edge; never off the right side.
        tag_x = max(0.0, min(x1, canvas.width - tag_w))
        tag_y = y1 - tag_h if y1 >= tag_h else y1
        draw.rectangle((tag_x, tag_y, tag_x + tag_w, tag_y + tag_h), fill=colour)
        # The text sits on the tag, never on the frame, so it reads on any background.
        draw.text((tag_x + line - left, tag_y + line - top), label, fill=_text_colour(colour), font=font)
    return canvas


def render_preview(store: ObjectStore, job_id: str, out_dir: Path, *, limit: int | None = None,
                   frame_ids: Sequence[str] | None = None) -> list[Path]:
    """Write ``out_dir/FRAME_ID.png`` for the job's labeled frames, in manifest order, at most ``limit``.

    ``frame_ids`` picks frames; an id the job does not have is refused. Frames whose result is not
    written yet are skipped, and how many is logged. Returns the written paths.
    """
    manifest = JobManifest.model_validate(store.get_json(layout.manifest_key(job_id)))
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for frame, _, drawn in _drawn_frames(store, manifest, _chosen_frames(manifest, frame_ids), limit):
        path = out_dir / f"{frame.frame_id}.png"
        drawn.save(path)
        written.append(path)
    return written


def render_video(store: ObjectStore, job_id: str, out_mp4: Path, *, limit: int | None = None) -> int:
    """Write ``out_mp4``: the job's labeled frames (at most ``limit``) in order with their boxes, at the
    rate they were sampled at (from their timestamps; the video's rate without them). H.264 where
    PyAV's FFmpeg has libx264, else MPEG-4 part 2. Returns the frames written."""
    manifest = JobManifest.model_validate(store.get_json(layout.manifest_key(job_id)))
    drawn = _drawn_frames(store, manifest, list(manifest.frames), limit)
    first = next(drawn, None)
    if first is None:
        raise InvalidInputError(f"job {job_id} has no labeled frame to put in a video yet")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    out_mp4.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with av.open(str(out_mp4), "w") as container:
        stream = container.add_stream(codec, rate=_frame_rate(manifest))
        # yuv420p halves the chroma resolution: both sides must be even (an odd side loses a pixel row/column).
        width, height = first[2].width // 2 * 2, first[2].height // 2 * 2
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _, _, image in (first, *drawn):
            if image.size != (width, height):
                image = image.resize((width, height))
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
            written += 1
        container.mux(stream.encode())
    return written


def _frame_rate(manifest: JobManifest) -> Fraction:
    stamps = [frame.timestamp for frame in manifest.frames if frame.timestamp is not None]
    if len(stamps) == len(manifest.frames) >= 2 and stamps[-1] > stamps[0]:
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    else:
        rate = manifest.video.fps if manifest.video is not None and manifest.video.fps > 0 else 10.0
    return Fraction(rate).limit_denominator(1001)


def _drawn_frames(store: ObjectStore, manifest: JobManifest, frames: Sequence[FrameRef],
                  limit: int | None) -> Iterator[tuple[FrameRef, FrameResult, Image.Image]]:
    """Each labeled frame of ``frames`` (at most ``limit``) with its result and its boxes drawn; frames
    whose result is not written yet are skipped, and how many is logged."""
    job_id, count, unlabeled = manifest.spec.job_id, 0, 0
    for frame in frames:
        if limit is not None and count >= limit:
            break
        try:
            result = FrameResult.model_validate(store.get_json(layout.detection_key(job_id, frame.frame_id)))
        except ObjectNotFoundError:
            unlabeled += 1
            continue
        with Image.open(io.BytesIO(store.get_bytes(frame.key))) as image:
            drawn = draw_detections(image, result)
        count += 1
        yield frame, result, drawn
    if unlabeled:
        log.warning("job %s: skipped %d frames that have no detections yet", job_id, unlabeled)


def _chosen_frames(manifest: JobManifest, frame_ids: Sequence[str] | None) -> list[FrameRef]:
    if frame_ids is None:
        return list(manifest.frames)
    wanted = set(frame_ids)
    unknown = wanted - {frame.frame_id for frame in manifest.frames}
    if unknown:
        raise InvalidInputError(f"job {manifest.spec.job_id} has no frames {', '.join(sorted(unknown))}")
    return [frame for frame in manifest.frames if frame.frame_id in wanted]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with the background (ITU-R BT.601 luma)."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)
