"""Synthetic video with exact ground truth: the oracle for the embedded model and the pipeline tests.

Circles, squares and triangles of several colours and sizes (down to 12 px) move across a
textured, slowly panning and brightening background; they enter and leave the frame and
partly overlap. Everything is drawn from one seed, so the same call draws the same frames and
writes the same ground truth. (The libx264 bundled with PyAV is not bit-reproducible, so two
encodings of those frames may differ by compression noise, never by content.)

Ground truth is COCO JSON. Boxes are the extent of each object's *visible* pixels (what a
detector can see), category ids are class ids + 1, and image ``frame_index`` ties a box to
its frame. An object with less than ``MIN_VISIBLE_FRACTION`` of its area visible (mostly
occluded or outside the frame) or fewer than ``MIN_VISIBLE_PIXELS`` visible pixels is kept
with ``iscrowd = 1``: COCO evaluation ignores detections on it instead of calling them wrong.
Each annotation's ``track_id`` is its object's identity: the same object has the same id in every
frame, and an object that left the frame never comes back (a new one enters with a new id), which
is the ground truth a tracker's MOTA and IDF1 are measured against.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle")
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (250, 250, 250), (20, 20, 20))
MIN_SIZE, SMALL_SIZE, MAX_SIZE = 12, 16, 140
SMALL_SHARE = 0.2  # objects of 12-16 px: the hard case a labeling model must not miss
MIN_VISIBLE_FRACTION = 0.35
MIN_VISIBLE_PIXELS = 50
CUT_SEED_STEP = 1_000_003  # the k-th scene after cuts is drawn from seed + k x this


@dataclass
class _Shape:
    track_id: int
    class_id: int
    colour: tuple[int, int, int]
    size: float
    x: float  # centre
    y: float
    vx: float
    vy: float

    def outline(self) -> list[tuple[float, float]] | tuple[float, float, float, float]:
        half = self.size / 2
        if SHAPE_CLASSES[self.class_id] == "triangle":
            return [(self.x, self.y - half), (self.x + half, self.y + half), (self.x - half, self.y + half)]
        return (self.x - half, self.y - half, self.x + half, self.y + half)

    def draw(self, draw: ImageDraw.ImageDraw, fill: Any) -> None:
        shape = SHAPE_CLASSES[self.class_id]
        if shape == "circle":
            draw.ellipse(self.outline(), fill=fill)
        elif shape == "square":
            draw.rectangle(self.outline(), fill=fill)
        else:
            draw.polygon(self.outline(), fill=fill)

    def area(self) -> float:
        return {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[SHAPE_CLASSES[self.class_id]] * self.size**2


@dataclass(frozen=True)
class Annotation:
    track_id: int
    class_id: int
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 of the visible pixels, x2/y2 exclusive
    visible_pixels: int
    ignore: bool


@dataclass(frozen=True)
class SynthFrame:
    index: int
    image: np.ndarray  # RGB uint8 HxWx3
    annotations: tuple[Annotation, ...]


@dataclass(frozen=True)
class SynthInfo:
    video: Path
    ground_truth: Path
    width: int
    height: int
    fps: int
    frames: int
    annotations: int


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-saturation noise at two scales plus stripes, so shapes never sit on a flat colour."""
    layers = []
    for cells in (6, 40):
        grid = rng.random((cells, cells * width // height + 1, 3)).astype(np.float32)
        layers.append(np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((width, height),
                                                                                       Image.BICUBIC), np.float32))
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = 25 * np.sin((xx + 0.6 * yy) / rng.uniform(9, 25))[..., None]
    base = 0.6 * layers[0] + 0.4 * layers[1]
    grey = base.mean(axis=2, keepdims=True)
    muted = grey + 0.35 * (base - grey)  # desaturate: saturated colour belongs to the objects
    return np.clip(0.55 * muted + 50 + stripes, 0, 255).astype(np.float32)


class _Scene:
    def __init__(self, width: int, height: int, seed: int, first_id: int = 0) -> None:
        """``first_id``: objects are numbered from first_id + 1, so the scenes of one video share no id."""
        self.width, self.height = width, height
        self.rng = np.random.default_rng(seed)
        self.pan = 200
        self.texture = _texture(self.rng, height + self.pan, width + self.pan)
        self.next_id = first_id
        self.shapes = [self._spawn(inside=True) for _ in range(int(self.rng.integers(6, 13)))]

    def _spawn(self, inside: bool) -> _Shape:
        rng = self.rng
        if rng.random() < SMALL_SHARE:
            size = float(rng.uniform(MIN_SIZE, SMALL_SIZE))
        else:
            size = float(math.exp(rng.uniform(math.log(SMALL_SIZE), math.log(MAX_SIZE))))
        speed = rng.uniform(1.0, 9.0)
        if inside:
            x, y = rng.uniform(0, self.width), rng.uniform(0, self.height)
            angle = rng.uniform(0, 2 * math.pi)
        else:
            # Enter from a random edge, heading roughly inward.
            edge = int(rng.integers(4))
            x = (-size / 2, self.width + size / 2, rng.uniform(0, self.width), rng.uniform(0, self.width))[edge]
            y = (rng.uniform(0, self.height), rng.uniform(0, self.height), -size / 2, self.height + size / 2)[edge]
            angle = math.atan2(self.height / 2 - y, self.width / 2 - x) + rng.uniform(-0.6, 0.6)
        self.next_id += 1
        return _Shape(self.next_id, int(rng.integers(len(SHAPE_CLASSES))),
                      PALETTE[int(rng.integers(len(PALETTE)))], size, x, y,
                      speed * math.cos(angle), speed * math.sin(angle))

    def add_crossings(self, pairs: int, frames: int) -> None:
        """Pairs of same-class objects on roughly head-on paths that meet inside the frame, at
        moments spread over the video's ``frames``: one passes over the other (an occlusion where
        identities can swap), then both go on and leave the frame."""
        rng = self.rng
        for pair in range(pairs):
            meet_at = max(5.0, frames * (pair + 1) / (pairs + 1))
            meet_x, meet_y = rng.uniform(0.3, 0.7) * self.width, rng.uniform(0.3, 0.7) * self.height
            class_id = int(rng.integers(len(SHAPE_CLASSES)))
            size = float(math.exp(rng.uniform(math.log(24), math.log(80))))
            angle = rng.uniform(0, 2 * math.pi)
            # Slow enough that both start inside the frame (a start outside would be respawned at once).
            speed = min(float(rng.uniform(3.0, 7.0)), 0.25 * self.height / meet_at)
            colours = rng.choice(len(PALETTE), size=2, replace=False)
            for heading, scale, colour in ((angle, 1.0, colours[0]),
                                           (angle + math.pi + rng.uniform(-0.7, 0.7), rng.uniform(0.8, 1.2),
                                            colours[1])):
                vx, vy = speed * math.cos(heading), speed * math.sin(heading)
                self.next_id += 1
                self.shapes.append(_Shape(self.next_id, class_id, PALETTE[int(colour)], size * float(scale),
                                          meet_x - vx * meet_at, meet_y - vy * meet_at, vx, vy))

    def _gone(self, shape: _Shape) -> bool:
        margin = shape.size
        return not (-margin < shape.x < self.width + margin and -margin < shape.y < self.height + margin)

    def step(self) -> None:
        for shape in self.shapes:
            shape.x += shape.vx
            shape.y += shape.vy
        self.shapes = [s if not self._gone(s) else self._spawn(inside=False) for s in self.shapes]

    def render(self, index: int) -> SynthFrame:
        offset = int(self.pan / 2 + self.pan / 2 * math.sin(index / 40))
        brightness = 1.0 + 0.15 * math.sin(index / 25)
        background = self.texture[offset:offset + self.height, offset:offset + self.width] * brightness
        image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
        labels = Image.new("I", (self.width, self.height), 0)
        draw, label_draw = ImageDraw.Draw(image), ImageDraw.Draw(labels)
        for z, shape in enumerate(self.shapes, start=1):
            shape.draw(draw, shape.colour)
            shape.draw(label_draw, z)
        label_map = np.asarray(labels)
        annotations = []
        for z, shape in enumerate(self.shapes, start=1):
            # Only the shape's own bounding square can hold its pixels; scanning just that is
            # what keeps rendering fast enough to draw training data on the fly.
            half = shape.size / 2 + 2
            x0, y0 = max(0, math.floor(shape.x - half)), max(0, math.floor(shape.y - half))
            x1, y1 = min(self.width, math.ceil(shape.x + half)), min(self.height, math.ceil(shape.y + half))
            if x1 <= x0 or y1 <= y0:
                continue
            ys, xs = np.nonzero(label_map[y0:y1, x0:x1] == z)
            if len(xs) == 0:
                continue
            visible = len(xs)
            ignore = visible < MIN_VISIBLE_PIXELS or visible < MIN_VISIBLE_FRACTION * shape.area()
            box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
            annotations.append(Annotation(shape.track_id, shape.class_id, box, visible, ignore))
        return SynthFrame(index, np.asarray(image), tuple(annotations))


def render_frames(width: int, height: int, count: int, seed: int, *, stills: Sequence[tuple[int, int]] = (),
                  cuts: Sequence[int] = (), crossings: int = 0,
                  fixed_camera: Sequence[tuple[int, int]] = ()) -> Iterator[SynthFrame]:
    """The frames of one synthetic video, in order, with their annotations.

    ``stills``: (start, end) pairs of frame numbers; nothing moves from frame start to frame end,
    not the objects, the pan nor the light, so frames start..end are one picture (a static camera
    on a still scene). ``cuts``: frames at which another scene starts (another seed: background,
    objects and their ids). ``crossings``: pairs of objects added to the first scene that cross
    each other and leave the frame (``_Scene.add_crossings``); 0 draws the same video as before.
    ``fixed_camera``: (start, end) pairs; from frame start to frame end the background neither pans
    nor changes light while the objects move on (a surveillance camera).
    """
    scene, clock = _Scene(width, height, seed), 0
    scene.add_crossings(crossings, count)
    for index in range(count):
        if index in cuts:
            scene, clock = _Scene(width, height, seed + CUT_SEED_STEP * (sorted(cuts).index(index) + 1),
                                  first_id=scene.next_id), 0
        yield replace(scene.render(clock), index=index)
        if not any(start <= index < end for start, end in stills):
            scene.step()
            # The clock drives the pan and the light: the camera's, stopped while it is fixed.
            clock += not any(start <= index < end for start, end in fixed_camera)


def coco_ground_truth(frames: list[SynthFrame], width: int, height: int) -> dict[str, Any]:
    images, annotations = [], []
    for frame in frames:
        images.append({"id": frame.index + 1, "file_name": f"{frame.index:08d}.jpg", "width": width,
                       "height": height, "frame_index": frame.index})
        for ann in frame.annotations:
            x1, y1, x2, y2 = ann.box
            annotations.append({"id": len(annotations) + 1, "image_id": frame.index + 1,
                                "category_id": ann.class_id + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": ann.visible_pixels, "iscrowd": int(ann.ignore), "track_id": ann.track_id})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES)]
    return {"info": {"description": "autolabel synthetic shapes"}, "images": images,
            "annotations": annotations, "categories": categories}


def generate_video(out_mp4: Path, out_coco_json: Path, *, width: int = 1280, height: int = 720, fps: int = 10,
                   seconds: float = 10.0, seed: int = 0, stills: Sequence[tuple[int, int]] = (),
                   cuts: Sequence[int] = (), crossings: int = 0,
                   fixed_camera: Sequence[tuple[int, int]] = ()) -> SynthInfo:
    """Write an H.264 MP4 (yuv420p, readable by PyAV and OpenCV) and its COCO ground truth.

    ``stills``, ``cuts`` and ``fixed_camera`` (frame numbers) as in render_frames: static stretches,
    scene cuts and a camera that holds while objects move; ``crossings``: pairs of objects that
    cross each other and leave the frame."""
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, not {width}x{height}")
    count = max(1, round(seconds * fps))
    frames: list[SynthFrame] = []
    out_mp4.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out_mp4), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Near-lossless: the 12 px objects must survive compression.
        stream.options = {"crf": "14", "preset": "veryfast"}
        for frame in render_frames(width, height, count, seed, stills=stills, cuts=cuts,
                                   crossings=crossings, fixed_camera=fixed_camera):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.image, format="rgb24")))
            frames.append(SynthFrame(frame.index, np.empty(0, np.uint8), frame.annotations))
        container.mux(stream.encode())
    ground_truth = coco_ground_truth(frames, width, height)
    out_coco_json.write_text(json.dumps(ground_truth))
    return SynthInfo(out_mp4, out_coco_json, width, height, fps, count, len(ground_truth["annotations"]))
