"""Frame selection: drop sampled frames nearly identical to the last kept one, keep every scene's first.

A static camera gives long stretches of frames that differ only by noise; labeling each costs
device time and an annotator's time for nothing. Both measures are taken on a thumbnail: the
frame shrunk to THUMB_SIZE with PIL's box filter, so each thumbnail pixel is the mean of its cell
of the frame and compression or sensor noise averages out.

- change: the share of the grey thumbnail's pixels that differ from the last *kept* frame's by
  more than NOISE_LEVELS of 255. Against the last kept frame, not the previous one, so a slow
  drift (an object creeping, light fading) adds up until the frame is kept. A frame with change
  <= ``Selection.skip_similar`` is dropped: the kept frame's labels stand for it.
- cut: the total variation distance (half the L1 distance, 0..1) between the colour histograms
  (HISTOGRAM_LEVELS per channel) of the thumbnail and of the previous *sampled* frame's. A
  histogram ignores where things are, so a pan or moving objects stay near 0 and a cut to another
  scene jumps; above ``Selection.cut_threshold`` the frame is kept as the first after a cut,
  whatever its change.

Decisions depend only on the decoded frames and the rule, so the same video and rule always keep
the same frames.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from autolabel import layout
from autolabel.contract import DroppedFrame, JobManifest, Selection, SelectionReport

THUMB_SIZE = (128, 128)
# Grey levels a cell may move by and still count as unchanged: above what H.264 at ordinary
# quality and sensor noise leave after the box filter's averaging, below a 12 px shape's contrast
# diluted over its cell.
NOISE_LEVELS = 10
HISTOGRAM_LEVELS = 4


@dataclass(frozen=True)
class Thumbnail:
    """A frame as the measures see it."""

    grey: np.ndarray  # THUMB_SIZE, int16 so differences do not wrap
    histogram: np.ndarray  # HISTOGRAM_LEVELS**3 colour bins, summing to 1

    @classmethod
    def of(cls, image: Image.Image) -> Thumbnail:
        small = image.convert("RGB").resize(THUMB_SIZE, Image.Resampling.BOX)
        rgb = np.asarray(small, dtype=np.uint8)
        grey = np.asarray(small.convert("L"), dtype=np.int16)
        bins = rgb // (256 // HISTOGRAM_LEVELS)
        codes = (bins[..., 0].astype(np.int32) * HISTOGRAM_LEVELS + bins[..., 1]) * HISTOGRAM_LEVELS + bins[..., 2]
        counts = np.bincount(codes.ravel(), minlength=HISTOGRAM_LEVELS**3)
        return cls(grey, counts / counts.sum())


def change(a: Thumbnail, b: Thumbnail) -> float:
    """The share of thumbnail pixels whose grey level differs by more than NOISE_LEVELS."""
    return float(np.mean(np.abs(a.grey - b.grey) > NOISE_LEVELS))


def cut_distance(a: Thumbnail, b: Thumbnail) -> float:
    """Total variation distance between the two colour histograms: 0 the same colours, 1 none shared."""
    return float(np.abs(a.histogram - b.histogram).sum() / 2)


class FrameSelector:
    """Decides, sampled frame after sampled frame in order, which to keep; then reports."""

    def __init__(self, rule: Selection) -> None:
        self.rule = rule
        self.previous: Thumbnail | None = None
        self.kept: Thumbnail | None = None
        self.kept_id = ""
        self.considered = 0
        self.kept_by_reason: Counter[str] = Counter()
        self.cuts: list[str] = []
        self.dropped: list[DroppedFrame] = []

    def consider(self, index: int, timestamp: float, image: Image.Image) -> bool:
        """Whether to label the frame with decode index ``index``; a dropped frame is recorded."""
        thumb = Thumbnail.of(image)
        previous, self.previous = self.previous, thumb
        self.considered += 1
        frame_id = layout.video_frame_id(index)
        if self.kept is None:
            reason = "first"
        elif previous is not None and cut_distance(previous, thumb) > self.rule.cut_threshold:
            reason = "cut"
            self.cuts.append(frame_id)
        elif (changed := change(self.kept, thumb)) <= self.rule.skip_similar:
            self.dropped.append(DroppedFrame(index=index, timestamp=timestamp, reason="similar", like=self.kept_id,
                                             change=round(changed, 6)))
            return False
        else:
            reason = "changed"
        self.kept, self.kept_id = thumb, frame_id
        self.kept_by_reason[reason] += 1
        return True

    def report(self) -> SelectionReport:
        kept = sum(self.kept_by_reason.values())
        return SelectionReport(rule=self.rule, considered=self.considered, kept=kept,
                               kept_by_reason=dict(sorted(self.kept_by_reason.items())),
                               dropped_by_reason=dict(Counter(frame.reason for frame in self.dropped)),
                               cuts=tuple(self.cuts), dropped=tuple(self.dropped))


def labels_for_frames(manifest: JobManifest) -> dict[int, str]:
    """Frame index -> the frame id whose labels stand for it: each labeled frame its own, each
    dropped frame the kept frame it duplicates. What a tool carrying labels to every sampled frame uses."""
    standing = {frame.index: frame.frame_id for frame in manifest.frames if frame.index is not None}
    if manifest.selection is not None:
        standing.update({frame.index: frame.like for frame in manifest.selection.dropped})
    return standing
