"""The benchmarks' arithmetic, apart from anything that runs: busy share, gaps, stage split, cores per card."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

# Where a frame's CPU goes outside the device, in the order a frame meets them; forward_host is the
# model thread's own CPU around the device's time (launches and copies; with the simulated device, the
# outputs made up).
STAGES = ("fetch", "decode", "pipeline", "collate", "forward_host", "postprocess", "upload", "redis")


def busy_seconds(intervals: Iterable[tuple[float, float]], window: tuple[float, float]) -> float:
    """Seconds of ``window`` covered by at least one interval (overlaps counted once)."""
    low, high = window
    clipped = sorted((max(s, low), min(e, high)) for s, e in intervals if e > low and s < high)
    total, reach = 0.0, low
    for start, end in clipped:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def busy_share(intervals: Iterable[tuple[float, float]], window: tuple[float, float]) -> float:
    """The share of ``window`` the device was busy: the pipeline's efficiency against the device."""
    low, high = window
    if high <= low:
        raise ValueError(f"empty window {window}")
    return busy_seconds(intervals, window) / (high - low)


def gaps(intervals: Sequence[tuple[float, float]]) -> list[float]:
    """Idle seconds between consecutive passes (ordered by start); 0 where the next was waiting."""
    ordered = sorted(intervals)
    return [max(0.0, nxt[0] - cur[1]) for cur, nxt in zip(ordered, ordered[1:])]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank: a value that occurred, never an interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def stage_split(cpu_seconds: Mapping[str, float], frames: int) -> dict[str, float]:
    """CPU milliseconds a frame costs in each stage, from each stage's CPU seconds over ``frames``."""
    if frames < 1:
        raise ValueError(f"frames must be at least 1, not {frames}")
    unknown = set(cpu_seconds) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {STAGES}")
    return {stage: 1000 * cpu_seconds.get(stage, 0.0) / frames for stage in STAGES}


def cores_per_card(cpu_ms_per_frame: float, card_frames_per_s: float) -> float:
    """CPU cores that keep one card fed: the CPU seconds its frames cost in one second of it."""
    return cpu_ms_per_frame * card_frames_per_s / 1000
