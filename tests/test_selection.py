"""Frame selection's measures and decisions (pure), the generator's static stretches and cuts, and
selection on real encoded files: the generator's H.264 and a photograph filmed by a noisy still camera."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import cbook
from PIL import Image

from autolabel.cli import main
from autolabel.contract import Sampling, Selection
from autolabel.selection import NOISE_LEVELS, THUMB_SIZE, FrameSelector, Thumbnail, change, cut_distance
from autolabel.synth import generate_video, render_frames
from autolabel.video import iter_sampled_frames

# 1280 x 1280: each thumbnail pixel is a 10 x 10 cell, so shapes on the cell grid are counted exactly.
SIDE = 1280
CELL = SIDE // THUMB_SIZE[0]


def canvas(grey: int = 0, squares: tuple[tuple[int, int, int], ...] = ()) -> Image.Image:
    """A grey picture with white squares (x, y, side) in pixels."""
    pixels = np.full((SIDE, SIDE, 3), grey, np.uint8)
    for x, y, side in squares:
        pixels[y:y + side, x:x + side] = 255
    return Image.fromarray(pixels)


def decide(images: list[Image.Image], **rule: float) -> FrameSelector:
    selector = FrameSelector(Selection(**rule))
    for index, image in enumerate(images):
        selector.consider(index, index / 10, image)
    return selector


def test_change_is_the_share_of_cells_that_moved_beyond_noise() -> None:
    still = Thumbnail.of(canvas(squares=((100, 300, 10 * CELL),)))
    assert change(still, still) == 0.0
    # The square moved by its own side: its old 100 cells and its new 100 cells changed.
    moved = Thumbnail.of(canvas(squares=((100 + 10 * CELL, 300, 10 * CELL),)))
    assert change(still, moved) == 200 / (THUMB_SIZE[0] * THUMB_SIZE[1])
    # Brightness within the noise tolerance changes nothing; just above it, everything.
    assert change(Thumbnail.of(canvas(100)), Thumbnail.of(canvas(100 + NOISE_LEVELS))) == 0.0
    assert change(Thumbnail.of(canvas(100)), Thumbnail.of(canvas(100 + NOISE_LEVELS + 1))) == 1.0


def test_cut_distance_sees_colours_not_where_they_are() -> None:
    red = Image.new("RGB", (SIDE, SIDE), (200, 20, 20))
    blue = Image.new("RGB", (SIDE, SIDE), (20, 20, 200))
    assert cut_distance(Thumbnail.of(red), Thumbnail.of(blue)) == 1.0
    # The same square elsewhere (a pan, a moving object): the same colours, distance 0.
    left, right = canvas(squares=((0, 0, 10 * CELL),)), canvas(squares=((600, 600, 10 * CELL),))
    assert cut_distance(Thumbnail.of(left), Thumbnail.of(right)) == 0.0


def test_near_duplicates_of_the_last_kept_frame_are_dropped_and_drift_adds_up() -> None:
    # Brightness creeps up 4 levels a frame: each frame is within noise of the one before, but
    # against the last KEPT frame the change reaches NOISE_LEVELS + 2 at frame 3, which is kept.
    frames = [canvas(100 + 4 * n) for n in range(7)]
    selector = decide(frames, skip_similar=0.01)
    report = selector.report()
    assert [f.index for f in report.dropped] == [1, 2, 4, 5]
    assert [f.like for f in report.dropped] == ["00000000", "00000000", "00000003", "00000003"]
    assert {f.change for f in report.dropped} == {0.0}
    assert (report.considered, report.kept, report.kept_by_reason) == (7, 3, {"changed": 2, "first": 1})
    assert report.dropped_by_reason == {"similar": 4}


def test_a_moving_object_is_kept_above_the_threshold_and_dropped_below_it() -> None:
    frames = [canvas(squares=((100 + n * 2 * CELL, 300, 5 * CELL),)) for n in range(4)]
    # Each 2-cell step changes 2 x 2 x 5 = 20 cells against the previous frame, more against older ones.
    step = 20 / (THUMB_SIZE[0] * THUMB_SIZE[1])
    assert decide(frames, skip_similar=step / 2).report().kept == 4
    wide = decide(frames, skip_similar=step).report()
    assert [f.index for f in wide.dropped] == [1, 3]  # frame 2 is two steps from frame 0: kept


def test_the_first_frame_after_a_cut_is_kept_however_similar_and_counted() -> None:
    # The same grey (72), no colour bin in common; and almost any change is "similar" with skip_similar 0.99.
    red = Image.new("RGB", (SIDE, SIDE), (100, 60, 60))
    blue = Image.new("RGB", (SIDE, SIDE), (60, 60, 165))
    assert change(Thumbnail.of(red), Thumbnail.of(blue)) == 0.0
    report = decide([red, red, blue, blue, red], skip_similar=0.99).report()
    assert report.cuts == ("00000002", "00000004")
    assert report.kept_by_reason == {"cut": 2, "first": 1}
    assert [(f.index, f.like) for f in report.dropped] == [(1, "00000000"), (3, "00000002")]
    # Below the threshold a colour change is no cut.
    assert decide([red, blue], skip_similar=0.99, cut_threshold=1.0).report().cuts == ()


def test_selection_is_refused_out_of_range() -> None:
    with pytest.raises(ValueError, match="skip_similar"):
        Selection(skip_similar=1.0)
    with pytest.raises(ValueError, match="cut_threshold"):
        Selection(skip_similar=0.1, cut_threshold=0)


def test_the_generator_holds_still_and_cuts() -> None:
    frames = list(render_frames(160, 96, 20, 3, stills=((4, 8),), cuts=(12,)))
    for index in range(5, 9):
        assert np.array_equal(frames[index].image, frames[4].image)
        assert frames[index].annotations == frames[4].annotations
    assert not np.array_equal(frames[9].image, frames[8].image)
    # A cut is another scene: none of the objects before it is there after it.
    before = {a.track_id for f in frames[:12] for a in f.annotations}
    after = {a.track_id for f in frames[12:] for a in f.annotations}
    assert before and after and not before & after
    assert [f.index for f in frames] == list(range(20))


def test_under_a_fixed_camera_only_the_objects_move() -> None:
    frames = list(render_frames(640, 360, 6, 3, fixed_camera=((1, 5),)))
    for before, after in zip(frames[1:4], frames[2:5]):
        assert before.annotations != after.annotations
        background = np.ones((360, 640), bool)
        for annotation in before.annotations + after.annotations:
            x1, y1, x2, y2 = annotation.box
            background[max(0, y1 - 1):y2 + 1, max(0, x1 - 1):x2 + 1] = False
        assert background.mean() > 0.3
        assert np.array_equal(before.image[background], after.image[background])
    # Before and after, the camera pans: the background moves.
    moving = np.abs(frames[0].image.astype(int) - frames[1].image.astype(int)).mean()
    assert moving > 1


@pytest.fixture(scope="module")
def stills_and_cuts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("selection")
    generate_video(out / "v.mp4", out / "v.json", width=640, height=360, fps=10, seconds=5, seed=11,
                   stills=((5, 15), (30, 36)), cuts=(20, 40))
    return out / "v.mp4"


def test_on_the_generators_h264_the_stills_are_dropped_and_the_cuts_kept(stills_and_cuts: Path) -> None:
    def select() -> FrameSelector:
        selector = FrameSelector(Selection(skip_similar=0.002))
        for frame in iter_sampled_frames(stills_and_cuts, Sampling()):
            selector.consider(frame.index, frame.timestamp, frame.image)
        return selector

    report = select().report()
    assert [f.index for f in report.dropped] == [*range(6, 16), *range(31, 37)]
    assert {f.like for f in report.dropped} == {"00000005", "00000030"}
    assert report.cuts == ("00000020", "00000040")
    assert (report.considered, report.kept) == (50, 34)
    assert select().report() == report  # deterministic


def test_a_photograph_under_a_noisy_still_camera_is_dropped_until_the_camera_pans(tmp_path: Path) -> None:
    """Real photographic texture, sensor noise (sigma 4 levels, new every frame) and H.264 at
    libx264's default quality: the still stretch is dropped, every frame of the pan kept."""
    with cbook.get_sample_data("grace_hopper.jpg") as file:
        photo = np.asarray(Image.open(file).convert("RGB").resize((400, 468)), np.float32)
    rng = np.random.default_rng(5)
    path = tmp_path / "camera.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for n in range(30):
            shift = 0 if n < 20 else 6 * (n - 19)  # still for 20 frames, then a pan of 6 px a frame
            crop = photo[100:340, shift:shift + 320] + rng.normal(0, 4, (240, 320, 3))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.clip(crop, 0, 255).astype(np.uint8),
                                                                   format="rgb24")))
        container.mux(stream.encode())
    selector = FrameSelector(Selection(skip_similar=0.002))
    for frame in iter_sampled_frames(path, Sampling()):
        selector.consider(frame.index, frame.timestamp, frame.image)
    report = selector.report()
    assert [f.index for f in report.dropped] == list(range(1, 20))
    assert report.kept_by_reason == {"first": 1, "changed": 10}
    assert report.cuts == ()


def test_synth_refuses_a_still_that_is_not_a_range(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "v.mp4"), "--still", "9-3"])
    assert result.exit_code == 2
    assert "'9-3' is not START-END" in result.output
