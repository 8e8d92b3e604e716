"""Track exports of a job submitted with tracking: CVAT for video 1.1, Label Studio video, MOTChallenge.

Each is built from the manifest and the per-frame results, whose detections carry ``track_id``.
The facts of each format these follow (CVAT's XML format page and importer, Label Studio's
VideoRectangle results, the MOTChallenge text layout) are listed in docs/results.md.

Frame numbers are the source video's (``frame_index``) when every labeled frame has one, else
the frame's position among the job's labeled frames. A track that is missing from a labeled
frame between two of its boxes is broken there (CVAT: an ``outside`` keyframe; Label Studio:
``enabled: false`` on its last box before the gap); between labeled frames that are not
adjacent in the video (sampling, dropped near-duplicates) both tools interpolate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree

from pydantic import BaseModel, Field

from autolabel.contract import FrameResult, JobManifest
from autolabel.detections import Detection
from autolabel.exports import in_frame_order

@dataclass(frozen=True)
class TrackBox:
    position: int  # among the job's labeled frames, in frame order
    frame: int  # 0-based frame number (see the module docstring)
    detection: Detection


@dataclass(frozen=True)
class Track:
    track_id: int
    class_name: str
    boxes: tuple[TrackBox, ...]  # in frame order

    def breaks_after(self, index: int, positions: int) -> bool:
        """Whether the track is absent from the labeled frame after its ``index``-th box."""
        position = self.boxes[index].position
        if index + 1 < len(self.boxes):
            return self.boxes[index + 1].position != position + 1
        return position + 1 < positions


@dataclass(frozen=True)
class TrackedFrames:
    """The labeled frames in order with their frame numbers, and the tracks over them."""

    results: tuple[FrameResult, ...]
    frames: tuple[int, ...]
    tracks: tuple[Track, ...]
    size: int  # frames of the video the exports refer to: the source video's, or the labeled frames'


def tracked_frames(manifest: JobManifest, results: Sequence[FrameResult]) -> TrackedFrames:
    """Group the detections on a track by ``track_id``."""
    ordered = in_frame_order(manifest, results)
    if ordered and all(result.frame_index is not None for result in ordered):
        frames = tuple(result.frame_index for result in ordered if result.frame_index is not None)
        size = max(manifest.video.frame_count if manifest.video else 0, frames[-1] + 1)
    else:
        frames = tuple(range(len(ordered)))
        size = len(frames)
    boxes: dict[int, list[TrackBox]] = {}
    for position, (frame, result) in enumerate(zip(frames, ordered)):
        for det in result.detections:
            if det.track_id is not None:  # a box on no track is in COCO only
                boxes.setdefault(det.track_id, []).append(TrackBox(position, frame, det))
    tracks = tuple(Track(track_id, found[0].detection.class_name, tuple(found))
                   for track_id, found in sorted(boxes.items()))
    return TrackedFrames(tuple(ordered), frames, tracks, size)


def _text(parent: ElementTree.Element, tag: str, text: str) -> ElementTree.Element:
    element = ElementTree.SubElement(parent, tag)
    element.text = text
    return element


def build_cvat_video(manifest: JobManifest, results: Sequence[FrameResult], classes: Sequence[str]) -> bytes:
    """CVAT for video 1.1 XML ("interpolation" mode): one ``<track>`` per track, a keyframe ``<box>``
    on each labeled frame it is on, and an ``outside="1"`` keyframe on the labeled frame after it
    ends or breaks (none past the video's last frame)."""
    tracked = tracked_frames(manifest, results)
    size = tracked.size
    width, height = ((manifest.video.width, manifest.video.height) if manifest.video is not None
                     else (tracked.results[0].width, tracked.results[0].height) if tracked.results else (0, 0))
    root = ElementTree.Element("annotations")
    _text(root, "version", "1.1")
    task = ElementTree.SubElement(ElementTree.SubElement(root, "meta"), "task")
    _text(task, "name", f"autolabel job {manifest.spec.job_id}")
    _text(task, "size", str(size))
    _text(task, "mode", "interpolation")
    _text(task, "overlap", "0")
    _text(task, "start_frame", "0")
    _text(task, "stop_frame", str(max(size - 1, 0)))
    labels = ElementTree.SubElement(task, "labels")
    for name in classes:
        label = ElementTree.SubElement(labels, "label")
        _text(label, "name", name)
        _text(label, "type", "any")
        ElementTree.SubElement(label, "attributes")
    original = ElementTree.SubElement(task, "original_size")
    _text(original, "width", str(width))
    _text(original, "height", str(height))
    _text(task, "source", manifest.spec.source)
    for track in tracked.tracks:
        element = ElementTree.SubElement(root, "track", {"id": str(track.track_id), "label": track.class_name,
                                                         "source": "auto"})
        for index, box in enumerate(track.boxes):
            _cvat_box(element, box.frame, box.detection.box, outside=False)
            if track.breaks_after(index, len(tracked.frames)):
                _cvat_box(element, tracked.frames[box.position + 1], box.detection.box, outside=True)
            elif index + 1 == len(track.boxes) and box.frame + 1 < size:
                # Last labeled frame of the job: the object is taken out on the next video frame.
                _cvat_box(element, box.frame + 1, box.detection.box, outside=True)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _cvat_box(track: ElementTree.Element, frame: int, box: tuple[float, float, float, float], *, outside: bool) -> None:
    x1, y1, x2, y2 = box
    ElementTree.SubElement(track, "box", {
        "frame": str(frame), "keyframe": "1", "outside": str(int(outside)), "occluded": "0",
        "xtl": f"{x1:.2f}", "ytl": f"{y1:.2f}", "xbr": f"{x2:.2f}", "ybr": f"{y2:.2f}", "z_order": "0"})


class LabelStudioVideoBox(BaseModel):
    frame: int = Field(ge=1, description="1-based frame number in the video")
    enabled: bool = Field(description="false: the object leaves after this frame (until its next box)")
    rotation: float = 0.0
    x: float = Field(description="left edge, percent of the frame width")
    y: float = Field(description="top edge, percent of the frame height")
    width: float
    height: float
    time: float = Field(description="seconds: frame / fps")


class LabelStudioVideoValue(BaseModel):
    framesCount: int  # noqa: N815 -- Label Studio's key
    duration: float
    sequence: list[LabelStudioVideoBox]
    labels: list[str]


class LabelStudioVideoRegion(BaseModel):
    id: str
    type: str = "videorectangle"
    from_name: str = "box"
    to_name: str = "video"
    origin: str = "prediction"
    value: LabelStudioVideoValue
    score: float = Field(description="mean score of the track's boxes")


class LabelStudioVideoPrediction(BaseModel):
    model_version: str
    score: float
    result: list[LabelStudioVideoRegion]


class LabelStudioVideoTask(BaseModel):
    data: dict[str, str | int | float | None]
    predictions: list[LabelStudioVideoPrediction]


def build_labelstudio_video(manifest: JobManifest, results: Sequence[FrameResult]) -> list[LabelStudioVideoTask]:
    """One Label Studio task for the video, with one ``videorectangle`` region per track.

    For a labeling config ``<Video name="video" value="$video"/>`` with ``<VideoRectangle
    name="box" toName="video"/>`` and ``<Labels name="videoLabels" toName="video">``. Only video
    jobs: the task's ``video`` is the job's source and the frame rate is the video's.
    """
    if manifest.video is None or manifest.video.fps <= 0:
        raise ValueError(f"job {manifest.spec.job_id} has no source video with a frame rate; "
                         "the Label Studio video export needs one")
    tracked = tracked_frames(manifest, results)
    fps = manifest.video.fps
    regions = []
    for track in tracked.tracks:
        sequence = []
        for index, box in enumerate(track.boxes):
            result = tracked.results[box.position]
            det = box.detection
            sequence.append(LabelStudioVideoBox(
                frame=box.frame + 1,
                enabled=index + 1 < len(track.boxes) and not track.breaks_after(index, len(tracked.frames)),
                x=100.0 * det.box[0] / result.width, y=100.0 * det.box[1] / result.height,
                width=100.0 * det.width / result.width, height=100.0 * det.height / result.height,
                time=(box.frame + 1) / fps))
        regions.append(LabelStudioVideoRegion(
            id=f"track-{track.track_id}",
            value=LabelStudioVideoValue(framesCount=tracked.size, duration=manifest.video.duration_s,
                                        sequence=sequence, labels=[track.class_name]),
            score=sum(b.detection.score for b in track.boxes) / len(track.boxes)))
    versions = sorted({f"{r.model}@{r.model_version}" for r in tracked.results})
    score = sum(r.score for r in regions) / len(regions) if regions else 0.0
    return [LabelStudioVideoTask(
        data={"video": manifest.spec.source, "job_id": manifest.spec.job_id},
        predictions=[LabelStudioVideoPrediction(model_version=",".join(versions), score=score, result=regions)])]


def build_mot(manifest: JobManifest, results: Sequence[FrameResult]) -> str:
    """MOTChallenge text: ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1`` per box,
    sorted by frame then id. Frames and pixel coordinates are 1-based (MOTChallenge's MATLAB
    convention: the top-left pixel is 1,1; motmetrics' reader subtracts 1 from bb_left and bb_top)."""
    tracked = tracked_frames(manifest, results)
    rows = sorted((box.frame + 1, track.track_id, box.detection) for track in tracked.tracks for box in track.boxes)
    lines = []
    for frame, track_id, det in rows:
        x, y, w, h = det.xywh()
        lines.append(f"{frame},{track_id},{x + 1:.2f},{y + 1:.2f},{w:.2f},{h:.2f},{det.score:.4f},-1,-1,-1")
    return "".join(line + "\n" for line in lines)
