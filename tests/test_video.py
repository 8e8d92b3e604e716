"""Producer-side video reading on real files written here with PyAV: sampling, VFR, rotation, errors.

Every frame shows its own number as 8 black/white stripes (most significant bit left) across its
top half, over a black bottom half, so a test reads back WHICH frame it got and which way up.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from autolabel import layout
from autolabel.contract import JobManifest, Sampling
from autolabel.devservices import DevStack
from autolabel.errors import InvalidInputError
from autolabel.storage import ObjectStore
from autolabel.video import encode_jpeg, iter_sampled_frames, probe_video

WIDTH, HEIGHT = 160, 120
STRIPE = WIDTH // 8
CFR_MS = [40 * i for i in range(25)]  # 25 fps for 1 s
# 1 s at 25 fps, then 1 s at 5 fps: index / fps puts samples of the second second in the wrong place.
VFR_MS = CFR_MS + [1000 + 200 * i for i in range(5)]


def stored_image(number: int) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(8):
        if number >> (7 - bit) & 1:
            image[: HEIGHT // 2, bit * STRIPE:(bit + 1) * STRIPE] = 255
    return image


def frame_number(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.shape == (HEIGHT, WIDTH), "frame is not upright"
    assert pixels[HEIGHT // 2 + 10:].mean() < 30, "bottom half is not black: frame is upside down"
    bits = [pixels[HEIGHT // 4 - 5:HEIGHT // 4 + 5, b * STRIPE + 5:(b + 1) * STRIPE - 5].mean() > 128 for b in range(8)]
    return sum(bit << (7 - i) for i, bit in enumerate(bits))


def write_video(path: Path, times_ms: list[int], *, codec: str = "libx264", ccw_rotation: int | None = None,
                rotate_tag: str | None = None) -> Path:
    """Frame i, showing number i, presented at times_ms[i]."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            # B-frames, so packets come in a different order than frames are shown.
            stream.options = {"preset": "veryfast", "crf": "12", "bf": "2"}
        if ccw_rotation is not None:
            stream.set_display_rotation(ccw_rotation)
        if rotate_tag is not None:
            stream.metadata["rotate"] = rotate_tag
        for number, ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(stored_image(number), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def sample(path: Path, **rule: float) -> list[tuple[int, float]]:
    """(index, timestamp) of each kept frame, checking that each image shows its own index."""
    kept = []
    for frame in iter_sampled_frames(path, Sampling(**rule)):
        assert frame_number(frame.image) == frame.index
        kept.append((frame.index, frame.timestamp))
    return kept


def indices(path: Path, **rule: float) -> list[int]:
    return [index for index, _ in sample(path, **rule)]


@pytest.fixture(scope="module")
def constant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("cfr") / "cfr.mp4", CFR_MS)


@pytest.fixture(scope="module")
def variable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("vfr") / "vfr.mp4", VFR_MS)


def test_constant_rate_every_frame_and_metadata(constant: Path) -> None:
    frames = sample(constant)
    assert [index for index, _ in frames] == list(range(25))
    assert [t for _, t in frames] == pytest.approx([i * 0.04 for i in range(25)])
    info = probe_video(constant)
    assert (info.width, info.height, info.frame_count, info.rotation, info.codec) == (WIDTH, HEIGHT, 25, 0, "h264")
    assert info.fps == pytest.approx(25) and info.duration_s == pytest.approx(1.0)
    assert not info.variable_frame_rate


def test_every_nth_counts_indices_over_the_whole_video(constant: Path) -> None:
    assert indices(constant, every_nth=5) == [0, 5, 10, 15, 20]
    # The window does not restart the count: index 8 is the first in it, but 10 the first multiple of 5.
    assert indices(constant, every_nth=5, start_s=0.3) == [10, 15, 20]


def test_target_fps_keeps_the_first_frame_at_or_after_each_instant(constant: Path) -> None:
    frames = sample(constant, target_fps=10)
    assert [index for index, _ in frames] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]
    assert [t for _, t in frames] == pytest.approx([0, 0.12, 0.2, 0.32, 0.4, 0.52, 0.6, 0.72, 0.8, 0.92])
    # Faster than the video: every frame once, none repeated.
    assert indices(constant, target_fps=100) == list(range(25))


def test_window_is_half_open(constant: Path) -> None:
    assert indices(constant, start_s=0.2, end_s=0.4) == [5, 6, 7, 8, 9]
    assert indices(constant, target_fps=5, start_s=0.5) == [13, 18, 23]


def test_target_fps_follows_timestamps_on_variable_frame_rate(variable: Path) -> None:
    frames = sample(variable, target_fps=5)
    assert [index for index, _ in frames] == [0, 5, 10, 15, 20, 25, 26, 27, 28, 29]
    assert [t for _, t in frames] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8])
    # In the 5 fps second every frame covers two 10 fps instants: kept once, not twice.
    assert indices(variable, target_fps=10)[-6:] == [23, 25, 26, 27, 28, 29]


def test_variable_frame_rate_metadata(variable: Path) -> None:
    info = probe_video(variable)
    assert info.variable_frame_rate
    assert info.frame_count == 30
    assert 1.8 < info.duration_s <= 2.0
    assert info.fps == pytest.approx(30 / info.duration_s)


# Real-world shapes: frame rates with NTSC fractions, B-frames, an audio track, five containers.
CLIP_FRAMES = 48
CLIPS = {  # name: (video codec, frame rate, encoder options, audio codec or None)
    "h264-29.97-aac.mp4": ("libx264", Fraction(30000, 1001), {"bf": "2", "preset": "veryfast"}, "aac"),
    "h264-23.976.mov": ("libx264", Fraction(24000, 1001), {"bf": "3", "preset": "veryfast"}, None),
    "h264-60.mkv": ("libx264", Fraction(60), {"bf": "2", "preset": "veryfast"}, None),
    "vp9-25.webm": ("libvpx-vp9", Fraction(25), {"deadline": "realtime", "cpu-used": "8"}, None),
    "mpeg4-part2-25.avi": ("mpeg4", Fraction(25), {"bf": "2"}, None),
}


def write_clip(path: Path, codec: str, rate: Fraction, options: dict[str, str], audio: str | None,
               frames: int = CLIP_FRAMES, container_options: dict[str, str] | None = None) -> Path:
    """``frames`` frames at a constant ``rate``, timed in ticks of 1 / rate; audio of the same length."""
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = options
        sound = container.add_stream(audio, rate=48000) if audio else None
        samples_muxed = 0
        for number in range(frames):
            frame = av.VideoFrame.from_ndarray(stored_image(number), format="rgb24")
            frame.pts, frame.time_base = number, 1 / rate
            container.mux(stream.encode(frame))
            while sound is not None and samples_muxed < (number + 1) * 48000 / rate:
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = 48000, samples_muxed, Fraction(1, 48000)
                container.mux(sound.encode(chunk))
                samples_muxed += 1024
        container.mux(stream.encode())
        if sound is not None:
            container.mux(sound.encode())
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {name: write_clip(folder / name, *spec) for name, spec in CLIPS.items()}


def assert_clip_metadata(name: str, info: dict[str, object]) -> None:
    rate = CLIPS[name][1]
    # Matroska keeps millisecond timestamps: 60 fps ends at 999 ms, not 1000.
    assert info["duration_s"] == pytest.approx(CLIP_FRAMES / rate, abs=1.5e-3), name
    assert info["fps"] == pytest.approx(float(rate), rel=2e-3), name
    assert (info["frame_count"], info["width"], info["height"]) == (CLIP_FRAMES, WIDTH, HEIGHT), name
    assert info["frames_expected"] == CLIP_FRAMES, name


def test_probe_reads_timing_while_the_container_is_open(clips: dict[str, Path]) -> None:
    """The stream's time base used to be read after the container was closed, from freed memory.

    glibc's MALLOC_PERTURB_ overwrites freed memory at once, so a read-after-close shows every time
    (a time base of 1: durations in ticks) instead of now and then, as a TypeError where the memory
    was reused with zeros, or a wrong duration.
    """
    script = ("import json, sys; from pathlib import Path; from autolabel.video import probe_video; "
              "print(json.dumps([probe_video(Path(p)).model_dump() for p in sys.argv[1:]]))")
    names = list(clips)
    run = subprocess.run([sys.executable, "-c", script, *(str(clips[n]) for n in names)], capture_output=True,
                         text=True, env={**os.environ, "MALLOC_PERTURB_": "165"}, timeout=120)
    assert run.returncode == 0, run.stderr
    for name, info in zip(names, json.loads(run.stdout), strict=True):
        assert_clip_metadata(name, info)


def test_probe_is_stable_across_repeats_and_garbage_collection(clips: dict[str, Path]) -> None:
    for name, path in clips.items():
        for repeat in range(20):
            assert_clip_metadata(name, probe_video(path).model_dump())
            if repeat % 5 == 4:
                gc.collect()


def cut(path: Path, target: Path, at: int) -> Path:
    target.write_bytes(path.read_bytes()[:at])
    return target


@pytest.fixture(scope="module")
def truncated_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MP4 written with its index (moov) in front, cut in the middle of its frame data (mdat)."""
    folder = tmp_path_factory.mktemp("truncated")
    whole = write_clip(folder / "whole.mp4", *CLIPS["h264-29.97-aac.mp4"], container_options={"movflags": "+faststart"})
    data = whole.read_bytes()
    moov, mdat = data.find(b"moov"), data.find(b"mdat")
    assert 0 < moov < mdat, "the index is not in front"
    return cut(whole, folder / "cut.mp4", mdat + (len(data) - mdat) // 2)


def test_a_truncated_video_is_reported_against_its_index(truncated_mp4: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="autolabel.video"):
        info = probe_video(truncated_mp4)
    assert info.frames_expected == CLIP_FRAMES
    assert 0 < info.frame_count < CLIP_FRAMES
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "cut.mp4" in warning and "truncated" in warning
    assert f"{CLIP_FRAMES} frames" in warning and f"{info.frame_count} " in warning
    # What is there is still sampled.
    assert 0 < len(list(iter_sampled_frames(truncated_mp4, Sampling()))) <= info.frame_count


@pytest.mark.integration
def test_submit_warns_of_a_truncated_video_and_the_manifest_keeps_both_counts(
    devstack: DevStack, truncated_mp4: Path, tmp_path: Path
) -> None:
    # A Redis database of its own: no worker of another test picks this job's tasks up.
    broker = devstack.env()["AUTOLABEL_BROKER_URL"].removesuffix("/0") + "/7"
    submit = subprocess.run([str(Path(sys.executable).parent / "autolabel"), "submit", str(truncated_mp4)],
                            env=devstack.subprocess_env(AUTOLABEL_BROKER_URL=broker), cwd=tmp_path,
                            capture_output=True, text=True, timeout=180)
    assert submit.returncode == 0, submit.stderr
    warnings = [line for line in submit.stderr.splitlines() if "truncated" in line]
    assert len(warnings) == 1 and "cut.mp4" in warnings[0], submit.stderr
    store = ObjectStore.from_settings(devstack.settings())
    video = JobManifest.model_validate(store.get_json(layout.manifest_key(submit.stdout.strip()))).video
    assert video is not None and video.frames_expected == CLIP_FRAMES and 0 < video.frame_count < CLIP_FRAMES
    assert f"announces {CLIP_FRAMES} frames, only {video.frame_count} can be read" in warnings[0]


def test_a_truncated_matroska_file_is_reported_against_its_track_duration(
    clips: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Matroska has no frame count; FFmpeg's muxer writes each track's duration in a tag up front.
    whole = clips["vp9-25.webm"]
    with caplog.at_level(logging.WARNING, logger="autolabel.video"):
        info = probe_video(cut(whole, tmp_path / "cut.webm", whole.stat().st_size // 2))
    assert info.frames_expected == CLIP_FRAMES
    assert 0 < info.frame_count < CLIP_FRAMES
    assert "cut.webm" in caplog.text and f"{CLIP_FRAMES} frames" in caplog.text


def test_complete_files_warn_of_nothing(clips: dict[str, Path], tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    # An MP4 cut without re-encoding starts at a key frame before the cut and hides the frames before
    # it through its edit list: they are in the index but are no frames of the video.
    trimmed = tmp_path / "trimmed.mp4"
    with av.open(str(clips["h264-29.97-aac.mp4"])) as source, av.open(str(trimmed), "w") as target:
        stream = source.streams.video[0]
        out = target.add_stream_from_template(stream)
        hidden = 5 * int(1 / (stream.average_rate * stream.time_base))  # 5 frames in ticks
        for packet in source.demux(stream):
            if packet.size:
                packet.pts, packet.dts, packet.stream = packet.pts - hidden, packet.dts - hidden, out
                target.mux(packet)
    with av.open(str(trimmed)) as container:
        assert container.streams.video[0].frames == CLIP_FRAMES
    with caplog.at_level(logging.WARNING, logger="autolabel.video"):
        assert (probe_video(trimmed).frame_count, probe_video(trimmed).frames_expected) == (CLIP_FRAMES - 5,) * 2
        for path in clips.values():
            probe_video(path)
    assert not caplog.records


@pytest.mark.parametrize(("times_ms", "variable"), [
    # 29.97 fps in milliseconds alternates 33 and 34 ms steps: rounding, not a variable rate.
    ([round(i * 1001 / 30) for i in range(12)], False),
    # One frame shown 60 ms instead of 40: a variable rate.
    ([0, 40, 80, 140, 180, 220, 260], True),
])
def test_variable_frame_rate_tolerates_rounding_only(tmp_path: Path, times_ms: list[int], variable: bool) -> None:
    path = write_video(tmp_path / "clip.mkv", times_ms)  # Matroska keeps millisecond timestamps as written
    assert probe_video(path).variable_frame_rate is variable


def test_frame_count_comes_from_the_stream_not_the_header(tmp_path: Path) -> None:
    # Matroska has no frame count in its header.
    path = write_video(tmp_path / "clip.mkv", CFR_MS[:7])
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    assert probe_video(path).frame_count == 7


@pytest.mark.parametrize("ccw", [90, 180, 270])
def test_display_matrix_rotation_comes_back_upright(tmp_path: Path, ccw: int) -> None:
    path = write_video(tmp_path / f"rot{ccw}.mp4", CFR_MS[:3], ccw_rotation=ccw)
    info = probe_video(path)
    assert info.rotation == (-ccw) % 360  # reported clockwise, as the `rotate` tag does
    quarter_turn = ccw in (90, 270)
    assert (info.width, info.height) == ((HEIGHT, WIDTH) if quarter_turn else (WIDTH, HEIGHT))
    frames = list(iter_sampled_frames(path, Sampling()))
    assert [f.image.size for f in frames] == [(info.width, info.height)] * 3
    shown = np.asarray(frames[1].image, dtype=np.float32)
    expected = np.rot90(stored_image(1), k=ccw // 90).astype(np.float32)  # what a player shows
    assert np.abs(shown - expected).mean() < 8
    if not quarter_turn:
        return
    wrong_way = np.rot90(stored_image(1), k=ccw // 90 + 2).astype(np.float32)
    assert np.abs(shown - wrong_way).mean() > 20


def test_legacy_rotate_tag_is_clockwise(tmp_path: Path) -> None:
    path = write_video(tmp_path / "tagged.mkv", CFR_MS[:2], rotate_tag="90")
    info = probe_video(path)
    assert (info.rotation, info.width, info.height) == (90, HEIGHT, WIDTH)
    first = next(iter_sampled_frames(path, Sampling()))
    expected = np.rot90(stored_image(0), k=-1).astype(np.float32)
    assert np.abs(np.asarray(first.image, dtype=np.float32) - expected).mean() < 8


def test_a_corrupt_packet_skips_one_frame_not_the_video(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = write_video(tmp_path / "good.mkv", CFR_MS[:6], codec="mjpeg")
    damaged = tmp_path / "damaged.mkv"
    with av.open(str(good)) as source, av.open(str(damaged), "w") as target:
        stream = source.streams.video[0]
        out = target.add_stream_from_template(stream)
        for number, packet in enumerate(p for p in source.demux(stream) if p.size):
            if number == 3:
                garbage = av.Packet(b"\x00not a jpeg" * 20)
                garbage.pts, garbage.dts, garbage.time_base = packet.pts, packet.dts, packet.time_base
                packet = garbage
            packet.stream = out
            target.mux(packet)
    with caplog.at_level(logging.WARNING, logger="autolabel.video"):
        frames = list(iter_sampled_frames(damaged, Sampling()))
    # Frame 3 is gone; the decode index counts the frames that did decode.
    assert [frame_number(f.image) for f in frames] == [0, 1, 2, 4, 5]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.timestamp for f in frames] == pytest.approx([0, 0.04, 0.08, 0.16, 0.2])
    assert "damaged.mkv" in caplog.text and "skipping" in caplog.text
    # probe_video counts packets, documented as differing from the decodable count just here.
    assert probe_video(damaged).frame_count == 6


def test_stream_without_timestamps_is_timed_at_its_nominal_rate(tmp_path: Path) -> None:
    path = tmp_path / "raw.h264"  # an elementary stream: frames without pts
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for number in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored_image(number), format="rgb24")))
        container.mux(stream.encode())
    assert sample(path) == [(0, 0.0), (1, 0.04), (2, 0.08), (3, 0.12)]
    info = probe_video(path)
    assert (info.frame_count, info.duration_s, info.variable_frame_rate) == (4, pytest.approx(0.16), False)


def test_missing_and_non_video_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"missing\.mp4 does not exist"):
        probe_video(tmp_path / "missing.mp4")
    with pytest.raises(InvalidInputError, match=r"missing\.mp4 does not exist"):
        next(iter_sampled_frames(tmp_path / "missing.mp4", Sampling()))
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InvalidInputError, match=r"noise\.mp4 cannot be read as a video"):
        probe_video(noise)
    # FFmpeg would open this as an ANSI-art "video".
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n" * 50)
    with pytest.raises(InvalidInputError, match=r"notes\.txt is a text file"):
        next(iter_sampled_frames(notes, Sampling()))


def test_random_bytes_a_text_demuxer_takes_are_not_called_text(tmp_path: Path) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 32000, dtype=np.uint8).tobytes())
    with av.open(str(noise)) as container:  # FFmpeg's binary-text-art demuxer takes any .bin file of this size
        assert container.format.name == "bin"
    with pytest.raises(InvalidInputError, match=r"noise\.bin is not a video \(no known container format\)$"):
        probe_video(noise)


@pytest.mark.parametrize(("name", "text"), [
    ("notes.txt", "not a video\n" * 50),  # FFmpeg opens it as ANSI art
    ("notes.mp4", "not a video\n" * 50),  # FFmpeg refuses it
    ("café.nfo", "Café crème, señor: ¿qué?\n" * 40),
])
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_text_files_are_named_as_text_whatever_their_name_and_encoding(tmp_path: Path, name: str, text: str,
                                                                        encoding: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    with pytest.raises(InvalidInputError, match=rf"{path.stem}\.{path.suffix[1:]} is a text file, not a video$"):
        probe_video(path)


def test_tags_in_a_legacy_encoding_do_not_stop_reading(tmp_path: Path) -> None:
    path = tmp_path / "latin1.avi"  # old AVI tools wrote their INFO tags in Latin-1
    with av.open(str(path), "w", metadata_encoding="latin-1") as container:
        container.metadata["title"] = "Café"
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.metadata["title"] = "Straße"
        for number in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored_image(number), format="rgb24")))
        container.mux(stream.encode())
    assert probe_video(path).frame_count == 3
    assert [frame_number(f.image) for f in iter_sampled_frames(path, Sampling())] == [0, 1, 2]


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        samples.sample_rate = 8000
        container.mux(stream.encode(samples))
        container.mux(stream.encode())
    with pytest.raises(InvalidInputError, match=r"sound\.wav has no video stream \(its streams: audio\)"):
        probe_video(path)


def test_encode_jpeg_round_trips_the_size() -> None:
    data = encode_jpeg(Image.new("RGB", (321, 123), (10, 200, 30)))
    decoded = Image.open(io.BytesIO(data))
    assert (decoded.format, decoded.size) == ("JPEG", (321, 123))
    assert np.abs(np.asarray(decoded, dtype=np.int16) - (10, 200, 30)).max() <= 4
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert len(encode_jpeg(noise, quality=50)) < len(encode_jpeg(noise))
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(Image.new("RGB", (8, 8)), quality=0)
