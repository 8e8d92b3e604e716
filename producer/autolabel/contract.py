"""The task contract between producers and workers: payloads, task names, result files.

Torch-free on purpose: a web backend imports this module to enqueue work. Payloads are
JSON and carry object keys, never image bytes.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from autolabel.detections import Detection
from autolabel.errors import InvalidInputError

SCHEMA_VERSION = 1

TASK_DETECT = "autolabel.detect_frames"
TASK_FINALIZE = "autolabel.finalize_job"
TASK_SUBMIT = "autolabel.submit_frames"
DEFAULT_QUEUE = "autolabel"


def queue_for(model: str) -> str:
    """Each model has its own queue, so a worker only receives work for the model it loaded."""
    return f"{DEFAULT_QUEUE}.{model}"


# A task carries at most this many frames: bigger payloads make redelivery after a lost
# worker re-run too much work, and the message body stays small in Redis.
MAX_FRAMES_PER_TASK = 64
# A job's frames are listed in its manifest; beyond this a job should be split.
MAX_FRAMES_PER_JOB = 200_000

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)


def check_id(value: str, what: str) -> str:
    """Ids become parts of object keys: refuse anything that could leave a job's prefix."""
    if not _ID_RE.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must match {ID_PATTERN} and contain no '..'")
    return value


def check_key(key: str) -> str:
    """An object key a task may read: relative, no '..' segment, no backslash or control character."""
    if not key or key.startswith("/") or "\\" in key or any(ord(c) < 32 for c in key):
        raise ValueError(f"object key {key!r} must be a relative key without backslashes or control characters")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key


JobId = Annotated[str, StringConstraints(pattern=ID_PATTERN), AfterValidator(partial(check_id, what="job_id"))]
FrameId = Annotated[str, StringConstraints(pattern=ID_PATTERN), AfterValidator(partial(check_id, what="frame_id"))]
ObjectKey = Annotated[str, AfterValidator(check_key)]


CONTENT_HASH_PATTERN = r"^[0-9a-f]{32}$"


def content_hash(data: bytes) -> str:
    """The first 128 bits of the SHA-256 of an image's bytes, in hex: which input a result was made from."""
    return hashlib.sha256(data).hexdigest()[:32]


def _check_unique(frames: tuple[FrameRef, ...]) -> None:
    seen: set[str] = set()
    for frame in frames:
        if frame.frame_id in seen:
            raise ValueError(f"frames: frame_id {frame.frame_id!r} appears more than once")
        seen.add(frame.frame_id)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrameRef(_Strict):
    """One frame to label: where its image is, and where it sits in its video."""

    frame_id: FrameId = Field(description="unique in the job; names the frame's result file")
    key: ObjectKey = Field(description="object key of the frame image (JPEG or PNG) in the job's bucket")
    index: int | None = Field(None, ge=0, description="frame number in the source video")
    timestamp: float | None = Field(None, ge=0, description="seconds from the start of the video")
    sha256: str | None = Field(None, pattern=CONTENT_HASH_PATTERN,
                               description="content_hash of the image bytes: a re-submission under the same job id "
                               "with other content for this frame id is told apart")


class Sampling(_Strict):
    """Which frames of a video to label: every Nth frame or a target rate, within a time window."""

    every_nth: int | None = Field(None, ge=1)
    target_fps: float | None = Field(None, gt=0)
    start_s: float = Field(0.0, ge=0)
    end_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_rule(self) -> Sampling:
        if self.every_nth is not None and self.target_fps is not None:
            raise ValueError("give every_nth or target_fps, not both")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self


class Selection(_Strict):
    """Which of the sampled frames of a video to label: near-duplicates of the last kept frame are
    dropped, the first frame after a scene cut is always kept. The measures: autolabel.selection."""

    skip_similar: float = Field(ge=0, lt=1, description="a frame is dropped when at most this share of its "
                                "128x128 grey thumbnail changed (by more than 10 of 255 grey levels) since the "
                                "last kept frame; 0 drops only frames where nothing changed beyond noise")
    cut_threshold: float = Field(0.1, gt=0, le=1, description="a frame whose colour histogram is further than this "
                                 "(total variation distance, 0..1) from the previous sampled frame's starts a new "
                                 "scene and is kept whatever its change")


class DroppedFrame(_Strict):
    """A sampled frame that was not labeled: the kept frame ``like`` stands for it."""

    index: int = Field(ge=0, description="frame number in the source video")
    timestamp: float = Field(ge=0, description="seconds from the start of the video")
    reason: Literal["similar"] = Field(description="similar: at most skip_similar of it changed since the kept "
                                       "frame `like`")
    like: FrameId = Field(description="the last kept frame before it, whose labels stand for it")
    change: float = Field(ge=0, le=1, description="the share of its thumbnail that changed since `like`")


class SelectionReport(_Strict):
    """What frame selection did with a video's sampled frames (in the manifest and the summary)."""

    rule: Selection
    considered: int = Field(ge=0, description="frames the sampling gave (every frame without --every-nth/--fps)")
    kept: int = Field(ge=0, description="frames uploaded and labeled")
    kept_by_reason: dict[Literal["first", "cut", "changed"], int] = Field(
        description="first: the first sampled frame; cut: the first after a scene cut; changed: more than "
        "skip_similar of it changed since the last kept frame")
    dropped_by_reason: dict[Literal["similar"], int]
    cuts: tuple[FrameId, ...] = Field(description="frames kept as the first after a scene cut")
    dropped: tuple[DroppedFrame, ...] = Field(description="every dropped frame, in order")


class DetectOptions(_Strict):
    """How to detect: the same for every frame of a job."""

    model: str = Field(description="model name the workers serve")
    score_threshold: float = Field(0.3, ge=0, le=1)
    classes: tuple[str, ...] | None = Field(None, min_length=1, description="keep only these class names")


class JobSpec(_Strict):
    """What a producer asked for; stored in the job manifest."""

    job_id: JobId
    source: str = Field(description="video path or s3:// URI, or 'frames' for frames already in storage")
    options: DetectOptions
    sampling: Sampling = Sampling()
    selection: Selection | None = Field(None, description="near-duplicate frames dropped; null: every sampled "
                                        "frame is labeled")
    batch_size: int = Field(4, ge=1, le=MAX_FRAMES_PER_TASK)
    priority: int = Field(5, ge=0, le=9, description="0 is served first")
    track: bool = Field(False, description="link detections across the job's frames into tracks when its frames "
                        "are labeled (on CPU, in finalize): every detection gets a track_id, and the CVAT video, "
                        "Label Studio video and MOTChallenge exports are written")
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class DetectTask(_Strict):
    """Payload of TASK_DETECT: one batch of frames of one job."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: JobId
    options: DetectOptions
    frames: tuple[FrameRef, ...] = Field(min_length=1, max_length=MAX_FRAMES_PER_TASK)

    @model_validator(mode="after")
    def _unique_frames(self) -> DetectTask:
        _check_unique(self.frames)
        return self


class SubmitFramesTask(_Strict):
    """Payload of TASK_SUBMIT: a whole job of frames already in storage, for backends that only have Celery.

    A worker writes the manifest, registers progress and fans the frames out into DetectTasks.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    spec: JobSpec
    frames: tuple[FrameRef, ...] = Field(min_length=1, max_length=MAX_FRAMES_PER_JOB)

    @model_validator(mode="after")
    def _unique_frames(self) -> SubmitFramesTask:
        _check_unique(self.frames)
        return self


class FinalizeTask(_Strict):
    """Payload of TASK_FINALIZE: write the job's exports once every frame is done or failed."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: JobId


class VideoInfo(_Strict):
    """What the producer read from the video container."""

    width: int = Field(gt=0, description="display width, after rotation")
    height: int = Field(gt=0, description="display height, after rotation")
    fps: float = Field(ge=0, description="average frame rate")
    frame_count: int = Field(ge=0, description="frames read from the file (its video packets)")
    frames_expected: int | None = Field(
        None, ge=0, description="frames the container's index or header announces (MP4/MOV/AVI frame count; "
        "Matroska/WebM track duration x the rate read); null where it announces none. Above frame_count: "
        "the file is truncated or damaged, and only the frame_count frames there were sampled")
    duration_s: float = Field(ge=0)
    rotation: int = Field(0, description="degrees the stored frames were rotated for display")
    codec: str = ""
    variable_frame_rate: bool = False


class JobManifest(_Strict):
    """``jobs/JOB_ID/manifest.json``: the spec, the source's metadata and every frame of the job."""

    spec: JobSpec
    video: VideoInfo | None = None
    selection: SelectionReport | None = Field(None, description="which sampled frames were kept and why the others "
                                              "were dropped; null without spec.selection")
    frames: tuple[FrameRef, ...] = Field(max_length=MAX_FRAMES_PER_JOB)


class FrameResult(_Strict):
    """``jobs/JOB_ID/detections/FRAME_ID.json``: one frame's detections in original-frame pixels."""

    job_id: JobId
    frame_id: FrameId
    frame_index: int | None
    timestamp: float | None
    width: int
    height: int
    model: str
    model_version: str
    detections: tuple[Detection, ...]


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: dict[str, Any]) -> Model:
    """Build a contract model, turning pydantic's error into one that names each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or model.__name__}: {err['msg']}"
                             for err in exc.errors())
        raise InvalidInputError(f"invalid {model.__name__}: {problems}") from exc
