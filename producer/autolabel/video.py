"""Reading a video for the producer: its metadata, its sampled frames upright, and their JPEG bytes.

Time is each frame's pts x time_base, counted from the first frame, never index / fps: that is
what keeps sampling by time right on variable-frame-rate input (phones, screen recordings).
Frames are decoded one packet at a time, so memory does not grow with the video's length.

Rotation: phones store frames in sensor orientation and ask the player to rotate them, through a
display matrix (read from each decoded frame's side data) or, in files from old muxers, a ``rotate``
tag. Frames come out of here already turned upright, and ``VideoInfo`` gives the upright size.
``VideoInfo.rotation`` is the clockwise angle a player turns the stored frames by, in 0/90/180/270:
the convention of the ``rotate`` tag, where a portrait phone video says 90.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer
from av.sidedata.sidedata import Type as SideDataType
from av.video.stream import VideoStream
from PIL import Image

from autolabel.contract import Sampling, VideoInfo
from autolabel.errors import InvalidInputError

log = logging.getLogger(__name__)

# FFmpeg opens any text file as a one-stream "video" that renders it as ANSI art (tty and the
# bintext demuxers), and these take any file at all with their extensions (.nfo, .bin, ...): a
# file they open is text or no video, never what a user meant to label.
_TEXT_FORMATS = frozenset({"tty", "bin", "adf", "idf", "xbin"})
_TEXT_SNIFF_BYTES = 64 * 1024
# Bytes text has none of, in any encoding but UTF-16/32: C0 controls other than tab, newlines,
# form feed, ESC (ANSI colours) and SUB (DOS end of file); about one random byte in ten is one.
_BINARY_BYTES = bytes(set(range(32)) - {0x09, 0x0A, 0x0C, 0x0D, 0x1A, 0x1B}) + b"\x7f"

# Timestamps are exact rationals turned into floats; this absorbs the rounding, so a frame that
# lands exactly on a sampling instant or on start_s is kept, and one exactly on end_s is not.
_EPSILON_S = 1e-6

# PIL's transpose turns counter-clockwise, the display angle is clockwise.
_UPRIGHT = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class SampledFrame:
    """One kept frame: its decode index in the whole video, seconds since the first frame, upright RGB image."""

    index: int
    timestamp: float
    image: Image.Image


def probe_video(path: Path) -> VideoInfo:
    """A video's metadata, reading its packets but decoding only the first frame.

    ``frame_count`` counts the stream's packets (a video packet holds one frame), not the
    container header's count, which Matroska/WebM leave out and some muxers get wrong. Counting
    packets only reads the file, where counting decoded frames would decode the video twice (here
    and when sampling); the two differ only by damaged packets, which sampling logs and skips.

    ``frames_expected`` is what the container announces before its frames: a truncated file whose
    index is in front (an MP4 written for streaming, cut off in its frame data) otherwise reads
    as a shorter video without a word. Fewer frames than announced is logged as a warning.
    """
    first = _first_frame(path)
    with _open_video(path) as (container, stream):
        timeline = _Timeline(_StreamTiming.of(stream, path))
        for packet in _demux(container, stream, path):
            if packet.is_discard:
                # Outside the file's edit list (a cut without re-encoding): in the index, but no frame.
                timeline.discarded += 1
            else:
                timeline.add(packet.pts, packet.duration)
        rotation = _display_rotation(first, _tag_rotation(stream))
        codec = stream.codec_context.name
        indexed_frames = stream.frames
        track_duration_s = _tag_duration_s(stream)
    swap = rotation in (90, 270)
    duration_s, variable = timeline.summary()
    if indexed_frames:
        expected: int | None = indexed_frames - timeline.discarded
    elif track_duration_s is not None and duration_s > 0:
        # A duration, not a count: frames at the rate of those read, so a variable rate is no gap.
        expected = round(track_duration_s * timeline.count / duration_s)
    else:
        expected = None
    if expected is not None and expected > timeline.count:
        log.warning("video %s is truncated or damaged: its container announces %d frames, only %d can be read "
                    "(%.1f s); sampling those", path, expected, timeline.count, duration_s)
    return VideoInfo(width=first.height if swap else first.width, height=first.width if swap else first.height,
                     fps=timeline.count / duration_s if duration_s > 0 else 0.0, frame_count=timeline.count,
                     frames_expected=expected, duration_s=duration_s, rotation=rotation, codec=codec,
                     variable_frame_rate=variable)


def iter_sampled_frames(path: Path, sampling: Sampling) -> Iterator[SampledFrame]:
    """Decode the video lazily and yield the frames ``sampling`` keeps, in order, upright.

    ``every_nth`` keeps decode indices divisible by N; ``target_fps`` keeps the first frame at or
    after each instant start_s + k / target_fps and then moves to the next instant after that
    frame, so it never yields a frame twice and yields every frame of a slower video. The window
    is start_s <= timestamp < end_s, half-open so consecutive windows of one video never share a
    frame; decoding stops at end_s.
    """
    keep = _Sampler(sampling)
    with _open_video(path) as (container, stream):
        clock = _Clock(_StreamTiming.of(stream, path))
        tag_rotation = _tag_rotation(stream)
        for index, frame in enumerate(_decoded_frames(container, stream, path)):
            timestamp = clock.seconds(frame, index)
            if sampling.end_s is not None and timestamp >= sampling.end_s - _EPSILON_S:
                return
            if keep(index, timestamp):
                image = _upright(frame.to_image(), _display_rotation(frame, tag_rotation))
                yield SampledFrame(index=index, timestamp=timestamp, image=image)


def encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    """JPEG bytes of an image; 92 keeps the edges small objects are detected by."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, not {quality}")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@contextmanager
def _open_video(path: Path) -> Iterator[tuple[InputContainer, VideoStream]]:
    """The container and its video stream, or InvalidInputError saying why the file is no video."""
    if not path.is_file():
        raise InvalidInputError(f"video {path} does not exist or is not a file")
    try:
        # Tags are text in any encoding (old AVI tools wrote Latin-1); none is worth refusing a video for.
        container = av.open(str(path), metadata_errors="replace")
    except av.FFmpegError as exc:
        if _is_text(path):
            raise InvalidInputError(f"video {path} is a text file, not a video") from exc
        raise InvalidInputError(f"video {path} cannot be read as a video: {exc.strerror or exc}") from exc
    with container:
        if container.format.name in _TEXT_FORMATS:
            if _is_text(path):
                raise InvalidInputError(f"video {path} is a text file, not a video")
            raise InvalidInputError(f"video {path} is not a video (no known container format)")
        # Cover art in audio files is a one-picture "video" stream marked as attached.
        streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise InvalidInputError(f"video {path} has no video stream (its streams: {kinds})")
        stream = streams[0]
        if stream.codec_context is None:
            raise InvalidInputError(f"video {path}: this FFmpeg build has no decoder for its video codec")
        # Frame threads as well as slice threads: decoding is the producer's main cost.
        stream.codec_context.thread_type = "AUTO"
        yield container, stream


def _is_text(path: Path) -> bool:
    """Whether the file starts as text (ASCII, UTF-8 or an 8-bit code page): containers are binary from byte 0."""
    with path.open("rb") as file:
        head = file.read(_TEXT_SNIFF_BYTES)
    binary = len(head) - len(head.translate(None, _BINARY_BYTES))
    return bool(head) and binary * 100 <= len(head)  # a stray control byte in a long text is forgiven


def _demux(container: InputContainer, stream: VideoStream, path: Path) -> Iterator[av.Packet]:
    """The stream's frame packets, ending the video early (with a warning) where the file is damaged.

    Packets outside the file's edit list come too, marked ``is_discard``: they decode to no frame.
    """
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            log.warning("video %s is damaged after this point, reading stops: %s", path, exc)
            return
        # Empty packets flush the decoder.
        if packet.size:
            yield packet


def _decoded_frames(container: InputContainer, stream: VideoStream, path: Path) -> Iterator[av.VideoFrame]:
    """Every decodable frame in presentation order; a packet the decoder refuses is logged and skipped."""
    shown = (packet for packet in _demux(container, stream, path) if not packet.is_discard)
    packets: Iterator[av.Packet | None] = itertools.chain(shown, [None])
    for packet in packets:  # None at the end drains the frames the decoder still holds
        try:
            frames = stream.decode(packet)
        except av.error.InvalidDataError as exc:
            log.warning("video %s: skipping an undecodable frame at pts %s: %s",
                        path, packet.pts if packet else None, exc)
            continue
        yield from frames


def _first_frame(path: Path) -> av.VideoFrame:
    with _open_video(path) as (container, stream):
        frame = next(_decoded_frames(container, stream, path), None)
    if frame is None:
        raise InvalidInputError(f"video {path} has no decodable frame")
    return frame


@dataclass(frozen=True)
class _StreamTiming:
    """A stream's time base and nominal rate, copied while its container is open.

    A PyAV stream reads FFmpeg's stream struct, which closing the container frees: read after
    that, ``time_base`` is whatever reused the memory (a wrong fraction, None, or a crash).
    """

    path: Path
    time_base: Fraction  # FFmpeg gives every input stream one
    nominal_rate: Fraction | None

    @classmethod
    def of(cls, stream: VideoStream, path: Path) -> _StreamTiming:
        return cls(path, stream.time_base, stream.average_rate or stream.guessed_rate)

    def rate(self) -> Fraction:
        """The nominal frame rate, for frames without timestamps."""
        if not self.nominal_rate:
            raise InvalidInputError(f"video {self.path} has neither frame timestamps nor a frame rate")
        return self.nominal_rate


class _Timeline:
    """The presentation times of a stream's packets, in ticks of its time base."""

    def __init__(self, timing: _StreamTiming) -> None:
        self.timing = timing
        self.count = 0
        self.discarded = 0  # packets outside the edit list, not counted
        self.times = array("q")  # 8 bytes a frame: a two-hour 60 fps video needs 3.5 MB
        self.last_pts: int | None = None
        self.last_duration = 0

    def add(self, pts: int | None, duration: int | None) -> None:
        self.count += 1
        if pts is None:
            return
        self.times.append(pts)
        if self.last_pts is None or pts >= self.last_pts:
            self.last_pts, self.last_duration = pts, duration or 0

    def summary(self) -> tuple[float, bool]:
        """(duration in seconds, whether frame durations vary)."""
        if not self.times:
            # Raw elementary streams (.h264) carry no timestamps: they play at their nominal rate.
            return self.count / float(self.timing.rate()), False
        # Packets come in decode order; B-frames make that differ from presentation order.
        times = np.sort(np.frombuffer(self.times, dtype=np.int64))
        steps = np.diff(times)
        step = int(np.median(steps)) if steps.size else self.last_duration
        # Timestamps are whole ticks of the time base, so 29.97 fps in milliseconds alternates
        # 33 and 34: a tick (or 1 %) of jitter is rounding, not a variable rate.
        tolerance = max(1, step // 100)
        variable = bool(steps.size) and int(np.abs(steps - step).max()) > tolerance
        # Matroska gives every packet the nominal duration, so the last frame's is only a guess.
        end = int(times[-1]) + (self.last_duration or step)
        return float((end - int(times[0])) * self.timing.time_base), variable


class _Clock:
    """Seconds since the first frame, from pts x time_base."""

    def __init__(self, timing: _StreamTiming) -> None:
        self.timing = timing
        self.origin: int | None = None

    def seconds(self, frame: av.VideoFrame, index: int) -> float:
        if frame.pts is None:
            return float(index / self.timing.rate())
        if self.origin is None:
            self.origin = frame.pts
        # A damaged file can present a frame before its first one; time stays non-negative.
        return max(0.0, float((frame.pts - self.origin) * self.timing.time_base))


class _Sampler:
    """Decides, frame after frame in presentation order, which frames the sampling keeps."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.next_instant = 0  # k of the next sampling instant start_s + k / target_fps

    def __call__(self, index: int, timestamp: float) -> bool:
        sampling = self.sampling
        if timestamp < sampling.start_s - _EPSILON_S:
            return False
        if sampling.every_nth is not None:
            return index % sampling.every_nth == 0
        if sampling.target_fps is not None:
            if timestamp < sampling.start_s + self.next_instant / sampling.target_fps - _EPSILON_S:
                return False
            # Instants this frame already covers (a gap in a VFR video) are not made up later.
            self.next_instant = math.floor((timestamp - sampling.start_s + _EPSILON_S) * sampling.target_fps) + 1
        return True


def _display_rotation(frame: av.VideoFrame, tag_rotation: int) -> int:
    """Clockwise display angle: the frame's display matrix if it has one, else the stream's tag."""
    if SideDataType.DISPLAYMATRIX in frame.side_data:
        # PyAV's frame.rotation is counter-clockwise.
        return _right_angle(-frame.rotation)
    return tag_rotation


def _tag(stream: VideoStream, name: str) -> str | None:
    """A stream's metadata tag by lower-case name; Matroska upper-cases tag names."""
    return next((v for k, v in stream.metadata.items() if k.lower() == name), None)


def _tag_rotation(stream: VideoStream) -> int:
    """The legacy ``rotate`` tag (clockwise degrees)."""
    value = _tag(stream, "rotate") or "0"
    try:
        return _right_angle(float(value))
    except ValueError:
        log.warning("ignoring the stream's rotate tag %r: not a number", value)
        return 0


def _tag_duration_s(stream: VideoStream) -> float | None:
    """Matroska's per-track ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``), which FFmpeg's muxer and mkvmerge write."""
    value = _tag(stream, "duration")
    if value is None:
        return None
    try:
        hours, minutes, seconds = value.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _right_angle(degrees: float) -> int:
    """Snap to 0/90/180/270; the pipeline turns images by whole quarter turns only."""
    return int(90 * round(degrees / 90)) % 360


def _upright(image: Image.Image, rotation: int) -> Image.Image:
    """Turn a stored frame clockwise by its display rotation."""
    return image.transpose(_UPRIGHT[rotation]) if rotation else image
