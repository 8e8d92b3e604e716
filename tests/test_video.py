"""Producer-side video reading on real MP4 files: sampling, timestamps, VFR, rotation, errors."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from autolabel.contract import Sampling
from autolabel.errors import InvalidInputError
from autolabel.video import encode_jpeg, iter_sampled_frames, probe_video

WIDTH, HEIGHT = 64, 48


def write_video(path: Path, times_ms: list[int], *, marker_left: bool = False) -> Path:
    """Frame i has grey level 8*i (so a test can tell which frame came back) at the given time."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "0", "bf": "0"}
        for i, ms in enumerate(times_ms):
            image = np.full((HEIGHT, WIDTH, 3), 8 * i, np.uint8)
            if marker_left:
                image[:, :8] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def grey(image: Image.Image) -> int:
    return round(np.asarray(image)[HEIGHT // 2, WIDTH // 2].mean() / 8)


def sample(path: Path, **rule: float) -> list[tuple[int, float, int]]:
    return [(f.index, f.timestamp, grey(f.image)) for f in iter_sampled_frames(path, Sampling(**rule))]


@pytest.fixture
def constant(tmp_path: Path) -> Path:
    return write_video(tmp_path / "cfr.mp4", [40 * i for i in range(25)])  # 25 fps, 1 s


def test_every_frame_with_its_timestamp(constant: Path) -> None:
    frames = sample(constant)
    assert [f[0] for f in frames] == list(range(25))
    assert [f[2] for f in frames] == list(range(25))
    assert frames[10][1] == pytest.approx(0.4)
    info = probe_video(constant)
    assert (info.width, info.height, info.frame_count, info.variable_frame_rate) == (WIDTH, HEIGHT, 25, False)
    assert info.fps == pytest.approx(25, rel=0.05) and info.duration_s == pytest.approx(1.0, abs=0.05)


def test_every_nth_and_window(constant: Path) -> None:
    assert [f[0] for f in sample(constant, every_nth=5)] == [0, 5, 10, 15, 20]
    assert [f[0] for f in sample(constant, start_s=0.2, end_s=0.4)] == [5, 6, 7, 8, 9]  # end is exclusive


def test_target_fps_follows_timestamps_on_variable_frame_rate(tmp_path: Path) -> None:
    # 0-1 s at 25 fps, then 1-2 s at 5 fps: index / fps would put every sample in the wrong place.
    times = [40 * i for i in range(25)] + [1000 + 200 * i for i in range(5)]
    path = write_video(tmp_path / "vfr.mp4", times)
    frames = sample(path, target_fps=5)
    assert [f[0] for f in frames] == [0, 5, 10, 15, 20, 25, 26, 27, 28, 29]
    assert [f[1] for f in frames] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8])
    assert probe_video(path).variable_frame_rate


def test_target_fps_above_the_video_rate_never_repeats_a_frame(constant: Path) -> None:
    indices = [f[0] for f in sample(constant, target_fps=100)]
    assert indices == list(range(25))


def _rotate_in_container(path: Path) -> None:
    """Write a 90-degree display matrix into the MP4 track header, as phones do."""
    data = bytearray(path.read_bytes())
    tkhd = data.index(b"tkhd")
    matrix = tkhd + 4 + 40  # version/flags, times, track id, duration, layer, volume come first
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def test_rotated_video_comes_back_upright(tmp_path: Path) -> None:
    path = write_video(tmp_path / "rotated.mp4", [40 * i for i in range(3)], marker_left=True)
    _rotate_in_container(path)
    frames = list(iter_sampled_frames(path, Sampling()))
    info = probe_video(path)
    assert info.rotation in (90, -90, 270)
    assert (info.width, info.height) == (HEIGHT, WIDTH)
    image = np.asarray(frames[0].image)
    assert image.shape[:2] == (WIDTH, HEIGHT)
    # The white band on the stored frame's left edge ends up along the top or bottom edge.
    rows = image.mean(axis=(1, 2))
    assert max(rows[:8].mean(), rows[-8:].mean()) > 200 and rows[WIDTH // 2] < 100


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        probe_video(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(InvalidInputError, match="notes.mp4"):
        probe_video(text)


def test_encode_jpeg_round_trips_the_size() -> None:
    data = encode_jpeg(Image.new("RGB", (321, 123), (10, 200, 30)))
    assert data[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(data)).size == (321, 123)
