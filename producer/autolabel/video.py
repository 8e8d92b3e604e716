"""Reading videos on the producer side: metadata, sampled frames upright, JPEG encoding.

Timestamps come from each frame's presentation time (pts x time base), not from index / fps,
so sampling by a target rate stays right on variable-frame-rate video. Frames are turned
upright by the stream's display matrix (phones record rotated video and say so in metadata).
Decoding is lazy: a two-hour video is never held in memory.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image

from autolabel.contract import Sampling, VideoInfo
from autolabel.errors import InvalidInputError

log = logging.getLogger(__name__)

# Frame durations that differ by more than this fraction of the median mean a VFR stream.
VFR_TOLERANCE = 0.1


@dataclass(frozen=True)
class SampledFrame:
    index: int  # decode order in the whole video, from 0
    timestamp: float  # seconds from the first frame
    image: Image.Image  # RGB, upright


def upright(image: Image.Image, rotation: int) -> Image.Image:
    """Apply a display rotation (degrees counter-clockwise, as in the display matrix)."""
    rotation %= 360
    if rotation == 0:
        return image
    return image.rotate(rotation, expand=True)


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise InvalidInputError(f"video {path} does not exist or is not a file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise InvalidInputError(f"{path} is not a readable video: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise InvalidInputError(f"{path} has no video stream")
    return container


class VideoReader:
    """One pass over a video; after iterating, ``info()`` describes what was actually decoded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.decoded = 0
        self.rotation = 0
        self.last_timestamp = 0.0
        self._durations: list[float] = []
        with _open(path) as container:
            stream = container.streams.video[0]
            self.codec = stream.codec_context.name
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            self.fps = float(stream.average_rate or stream.guessed_rate or 0)

    def frames(self, sampling: Sampling) -> Iterator[SampledFrame]:
        """The frames the sampling rule keeps, in order."""
        next_time = sampling.start_s
        with _open(self.path) as container:
            stream = container.streams.video[0]
            first_pts: int | None = None
            previous: float | None = None
            try:
                for frame in container.decode(stream):
                    index = self.decoded
                    self.decoded += 1
                    if frame.pts is None or frame.time_base is None:
                        timestamp = index / self.fps if self.fps else 0.0
                    else:
                        first_pts = frame.pts if first_pts is None else first_pts
                        timestamp = float((frame.pts - first_pts) * frame.time_base)
                    if previous is not None:
                        self._durations.append(timestamp - previous)
                    previous = timestamp
                    self.last_timestamp = timestamp
                    self.rotation = int(frame.rotation or 0)
                    if timestamp < sampling.start_s:
                        continue
                    if sampling.end_s is not None and timestamp > sampling.end_s:
                        break
                    if sampling.every_nth is not None and index % sampling.every_nth:
                        continue
                    if sampling.target_fps is not None:
                        # Keep the first frame at or past each sampling instant, once.
                        if timestamp + 1e-6 < next_time:
                            continue
                        while next_time <= timestamp + 1e-6:
                            next_time += 1.0 / sampling.target_fps
                    yield SampledFrame(index, round(timestamp, 6), upright(frame.to_image(), self.rotation))
            except av.error.InvalidDataError as exc:
                # A damaged tail ends the video; the frames read so far are kept.
                log.warning("%s: stopped decoding after frame %d: %s", self.path, self.decoded, exc)

    def info(self) -> VideoInfo:
        durations = sorted(self._durations)
        median = durations[len(durations) // 2] if durations else 0.0
        vfr = bool(durations) and median > 0 and (durations[-1] - durations[0]) > VFR_TOLERANCE * median
        swap = self.rotation % 180 != 0
        return VideoInfo(
            width=self.height if swap else self.width,
            height=self.width if swap else self.height,
            fps=round(self.fps, 3),
            frame_count=self.decoded,
            duration_s=round(self.last_timestamp + (median or (1 / self.fps if self.fps else 0)), 3),
            rotation=self.rotation,
            codec=self.codec,
            variable_frame_rate=vfr,
        )


def encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
