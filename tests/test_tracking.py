"""Tracks: their quality against the synthetic video's ground-truth identities (MOTA and IDF1 by
motmetrics), and the track exports read back the way CVAT, Label Studio and MOTChallenge tools
read them (docs/results.md lists the facts of each format these checks rest on)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import motmetrics
import numpy as np
import pytest

from autolabel import layout
from autolabel.contract import DetectOptions, FrameRef, FrameResult, JobManifest, JobSpec, VideoInfo
from autolabel.detections import Detection
from autolabel.devservices import DevStack
from autolabel.exports import Summary
from autolabel.progress import ProgressStore
from autolabel.storage import ObjectStore
from autolabel.synth import SHAPE_CLASSES, SynthFrame, coco_ground_truth, generate_video, render_frames
from autolabel.track_exports import build_cvat_video, build_labelstudio_video, build_mot
from autolabel_worker.batching import Batcher
from autolabel_worker.detector import Detector
from autolabel_worker.evaluate import decode_bgr
from autolabel_worker.finalize import finalize_job
from autolabel_worker.models import REPO_CONFIGS_DIR, WEIGHTS_DIR, ModelFiles
from autolabel_worker.runtime import Runtime
from autolabel_worker.tracking import link_tracks
from trackscore import tracking_scores
from workerpool import MODEL

# Training draws seeds 1000 * (seed + 1) + 1 onwards (a few dozen videos, train_shapes.data_seed);
# the documented held-out video is 424242 and the accuracy test's 9090909. This one is none of them.
HELD_OUT_SEED = 6_060_606
SIZE = (1280, 720)  # the embedded model's own size (objects of 12-140 px)
CROSSINGS = 3
IDF1_BAR = 0.90


def _results(frames: list[SynthFrame], detections: list[list[Detection]], size: tuple[int, int]) -> list[FrameResult]:
    return [FrameResult(job_id="tracking", frame_id=f"{frame.index:08d}", frame_index=frame.index,
                        timestamp=frame.index / 10, width=size[0], height=size[1], model=MODEL, model_version="test",
                        detections=tuple(dets)) for frame, dets in zip(frames, detections)]


def _truth_as_detections(frames: list[SynthFrame]) -> list[list[Detection]]:
    """A perfect detector: every counted ground-truth box, score 0.9."""
    return [[Detection(box=tuple(map(float, a.box)), score=0.9, class_id=a.class_id,
                       class_name=SHAPE_CLASSES[a.class_id]) for a in frame.annotations if not a.ignore]
            for frame in frames]


def _crossings_and_exits(frames: list[SynthFrame]) -> tuple[int, int]:
    """Same-class pairs whose boxes overlap in some frame, and objects that leave before the end."""
    pairs, last_seen = set(), {}
    for frame in frames:
        for a in frame.annotations:
            last_seen[a.track_id] = frame.index
            for b in frame.annotations:
                if a.track_id < b.track_id and a.class_id == b.class_id and (
                        min(a.box[2], b.box[2]) > max(a.box[0], b.box[0])
                        and min(a.box[3], b.box[3]) > max(a.box[1], b.box[1])):
                    pairs.add((a.track_id, b.track_id))
    return len(pairs), sum(1 for seen in last_seen.values() if seen < frames[-1].index)


@pytest.mark.slow
def test_embedded_model_tracks_crossing_and_leaving_objects(tmp_path: Path) -> None:
    video, truth = tmp_path / "heldout.mp4", tmp_path / "heldout.json"
    info = generate_video(video, truth, width=SIZE[0], height=SIZE[1], fps=10, seconds=3, seed=HELD_OUT_SEED,
                          crossings=CROSSINGS)
    frames = list(render_frames(SIZE[0], SIZE[1], info.frames, HELD_OUT_SEED, crossings=CROSSINGS))
    assert json.loads(truth.read_text())["annotations"][0]["track_id"] == frames[0].annotations[0].track_id
    crossings, exits = _crossings_and_exits(frames)
    assert crossings >= CROSSINGS and exits >= 3, (crossings, exits)

    detector = Detector.load(REPO_CONFIGS_DIR / f"{MODEL}.py", WEIGHTS_DIR / f"{MODEL}.pth")
    decoded = decode_bgr(video)
    threshold = DetectOptions(model=MODEL).score_threshold  # a job's default
    detections: list[list[Detection]] = []
    for start in range(0, len(decoded), 4):
        detections += detector.predict(decoded[start:start + 4], threshold)
    linked, summary = link_tracks(_results(frames, detections, SIZE))

    scores = tracking_scores(json.loads(truth.read_text()), linked)  # the boxes on a track: the track exports
    print(f"held-out seed {HELD_OUT_SEED}, {info.frames} frames {SIZE[0]}x{SIZE[1]}, {crossings} crossing pairs, "
          f"{exits} exits: {scores}; {summary.tracks} tracks linked in {summary.seconds} s")
    assert scores["idf1"] >= IDF1_BAR, scores


def test_every_box_of_a_perfect_detector_is_on_the_right_track() -> None:
    """With the ground-truth boxes as detections, tracks follow identities through crossings and
    exits, and the first box of each track carries its id (ByteTrack alone gives a track its id
    from its second box)."""
    frames = list(render_frames(*SIZE, 40, HELD_OUT_SEED, crossings=CROSSINGS))
    results = _results(frames, _truth_as_detections(frames), SIZE)
    linked, summary = link_tracks(results)
    scores = tracking_scores(coco_ground_truth(frames, *SIZE), linked)
    assert scores["idf1"] >= 0.97 and scores["mota"] >= 0.97, scores
    first_frame_ids = {d.track_id for d in linked[0].detections}
    assert len(first_frame_ids) == len(linked[0].detections)  # each first box on a track of its own object
    ids = [d.track_id for r in linked for d in r.detections]
    assert sorted(set(ids)) == list(range(1, summary.tracks + 1))
    classes: dict[int, set[str]] = {}
    for d in (d for r in linked for d in r.detections):
        classes.setdefault(d.track_id, set()).add(d.class_name)
    assert all(len(names) == 1 for names in classes.values())


def test_a_box_on_no_track_keeps_a_null_track_id() -> None:
    lone = Detection(box=(10.0, 10.0, 30.0, 30.0), score=0.35, class_id=0, class_name="circle")  # below HIGH_SCORE
    steady = [Detection(box=(200.0 + 5 * i, 100.0, 240.0 + 5 * i, 140.0), score=0.9, class_id=1, class_name="square")
              for i in range(3)]
    frames = [SynthFrame(i, np.empty(0, np.uint8), ()) for i in range(3)]
    linked, summary = link_tracks(_results(frames, [[lone, steady[0]], [steady[1]], [steady[2]]], SIZE))
    assert [[d.track_id for d in r.detections] for r in linked] == [[None, 1], [1], [1]]
    assert (summary.tracks, summary.untracked) == (1, 1)


def _job(frames: list[SynthFrame], every: int = 1) -> tuple[JobManifest, list[FrameResult]]:
    """A tracked video job of the frames (every ``every``-th labeled), with ground-truth detections."""
    chosen = frames[::every]
    spec = JobSpec(job_id="tracked", source="s3://bucket/video.mp4", options=DetectOptions(model=MODEL), track=True)
    video = VideoInfo(width=SIZE[0], height=SIZE[1], fps=10.0, frame_count=len(frames), duration_s=len(frames) / 10)
    refs = tuple(FrameRef(frame_id=f"{f.index:08d}", key=f"jobs/tracked/frames/{f.index:08d}.jpg", index=f.index,
                          timestamp=f.index / 10) for f in chosen)
    linked, _ = link_tracks(_results(chosen, _truth_as_detections(chosen), SIZE))
    return JobManifest(spec=spec, video=video, frames=refs), linked


def _boxes_by_frame_and_track(results: list[FrameResult]) -> dict[tuple[int, int], tuple[float, ...]]:
    return {(r.frame_index, d.track_id): tuple(round(v, 2) for v in d.box) for r in results for d in r.detections
            if d.track_id is not None}


def _same_boxes(read: dict[tuple[int, int], tuple[float, ...]], results: list[FrameResult]) -> None:
    """The boxes read back are the results' boxes, frame by frame and track by track (0.01 px: two decimals)."""
    expected = _boxes_by_frame_and_track(results)
    assert sorted(read) == sorted(expected)
    for key, box in expected.items():
        assert read[key] == pytest.approx(box, abs=0.011), key


@pytest.mark.parametrize("every", [1, 3])
def test_cvat_video_xml_is_what_cvat_loads(every: int) -> None:
    """CVAT for video 1.1 as CVAT's importer reads it: <track label> with <box> shapes carrying frame,
    outside, occluded, keyframe and xtl/ytl/xbr/ybr; only keyframes are kept; an object is visible
    from a keyframe with outside=0 until the next keyframe (interpolated) and gone after one with
    outside=1. Read back that way, the file gives every labeled frame's boxes, and no box where a
    track is absent."""
    frames = list(render_frames(*SIZE, 30, HELD_OUT_SEED, crossings=CROSSINGS))
    manifest, results = _job(frames, every)
    root = ElementTree.fromstring(build_cvat_video(manifest, results, SHAPE_CLASSES))
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task is not None and task.findtext("mode") == "interpolation"
    assert task.findtext("size") == str(len(frames)) and task.findtext("stop_frame") == str(len(frames) - 1)
    assert task.findtext("original_size/width") == str(SIZE[0])
    assert [label.findtext("name") for label in task.iterfind("labels/label")] == list(SHAPE_CLASSES)
    visible: dict[tuple[int, int], tuple[float, ...]] = {}
    labeled = {r.frame_index for r in results}
    for track in root.iterfind("track"):
        assert track.get("label") in SHAPE_CLASSES and track.get("source") == "auto"
        track_id = int(track.get("id", "0"))
        shapes = track.findall("box")
        assert [int(b.get("frame", "-1")) for b in shapes] == sorted({int(b.get("frame", "-1")) for b in shapes})
        assert shapes[0].get("outside") == "0"
        for box in shapes:
            assert {"frame", "outside", "occluded", "keyframe", "xtl", "ytl", "xbr", "ybr"} <= set(box.keys())
            assert box.get("keyframe") == "1" and box.get("occluded") == "0"
            frame = int(box.get("frame", "-1"))
            assert 0 <= frame < len(frames)
            if box.get("outside") == "0":
                visible[(frame, track_id)] = tuple(float(box.get(k, "nan")) for k in ("xtl", "ytl", "xbr", "ybr"))
            else:
                assert frame in labeled or frame == max(labeled) + 1  # taken out where the tool sees it gone
        # Between two visible keyframes CVAT interpolates; no labeled frame there may lack the track.
        frames_on = [int(b.get("frame", "-1")) for b in shapes]
        for box, following in zip(shapes, shapes[1:]):
            if box.get("outside") == "0":
                between = {f for f in labeled if int(box.get("frame", "-1")) < f < int(following.get("frame", "-1"))}
                assert not between, (track_id, frames_on)
    _same_boxes(visible, results)


def test_mot_text_reads_back_with_motmetrics(tmp_path: Path) -> None:
    """MOTChallenge 2D text (frame,id,bb_left,bb_top,bb_width,bb_height,conf,-1,-1,-1; frames from 1),
    read by motmetrics' own MOT15-2D reader."""
    frames = list(render_frames(*SIZE, 20, HELD_OUT_SEED, crossings=CROSSINGS))
    manifest, results = _job(frames)
    path = tmp_path / "mot.txt"
    text = build_mot(manifest, results)
    path.write_text(text)
    assert all(line.endswith(",-1,-1,-1") and len(line.split(",")) == 10 for line in text.splitlines())
    table = motmetrics.io.loadtxt(str(path), fmt="mot15-2D")
    read = {(int(f) - 1, int(i)): (row.X, row.Y, row.X + row.Width, row.Y + row.Height)
            for (f, i), row in table.iterrows()}
    _same_boxes(read, results)
    scores = {(r.frame_index, d.track_id): round(d.score, 4) for r in results for d in r.detections}
    assert {(int(f) - 1, int(i)): row.Confidence for (f, i), row in table.iterrows()} == scores


@pytest.mark.parametrize("every", [1, 3])
def test_labelstudio_video_regions_are_videorectangle_sequences(every: int) -> None:
    """Label Studio's VideoRectangle result: type videorectangle, value.sequence of {frame (1-based),
    enabled, rotation, x, y, width, height (percent of the frame), time}, value.framesCount,
    value.duration and value.labels; enabled false on a track's last box before it is absent."""
    frames = list(render_frames(*SIZE, 30, HELD_OUT_SEED, crossings=CROSSINGS))
    manifest, results = _job(frames, every)
    tasks = [json.loads(task.model_dump_json()) for task in build_labelstudio_video(manifest, results)]
    assert len(tasks) == 1 and tasks[0]["data"]["video"] == manifest.spec.source
    regions = tasks[0]["predictions"][0]["result"]
    read: dict[tuple[int, int], tuple[float, ...]] = {}
    labeled = sorted(r.frame_index for r in results)
    for region in regions:
        assert (region["type"], region["from_name"], region["to_name"]) == ("videorectangle", "box", "video")
        value = region["value"]
        assert value["framesCount"] == len(frames) and value["duration"] == pytest.approx(len(frames) / 10)
        assert len(value["labels"]) == 1 and value["labels"][0] in SHAPE_CLASSES
        sequence = value["sequence"]
        assert [s["frame"] for s in sequence] == sorted({s["frame"] for s in sequence}) and sequence[0]["frame"] >= 1
        assert sequence[-1]["enabled"] is False
        track_id = int(region["id"].removeprefix("track-"))
        for item, following in zip(sequence, sequence[1:] + [None]):
            assert set(item) == {"frame", "enabled", "rotation", "x", "y", "width", "height", "time"}
            frame = item["frame"] - 1
            assert item["time"] == pytest.approx(item["frame"] / 10)
            x1, y1 = item["x"] * SIZE[0] / 100, item["y"] * SIZE[1] / 100
            read[(frame, track_id)] = (round(x1, 2), round(y1, 2), round(x1 + item["width"] * SIZE[0] / 100, 2),
                                       round(y1 + item["height"] * SIZE[1] / 100, 2))
            if following is not None:
                # enabled: the box lives on (interpolated) to the next one, with no labeled frame between
                # lacking the track; disabled: the track is absent on the next labeled frame.
                next_labeled = labeled[labeled.index(frame) + 1]
                assert item["enabled"] == (following["frame"] - 1 == next_labeled)
    _same_boxes(read, results)


@pytest.mark.integration
def test_finalize_writes_track_ids_and_exports_and_clears_ids_without_tracking(devstack: DevStack) -> None:
    """finalize on the real S3 server and Redis: a tracked job's result files get their track ids (their
    stamp kept, so a re-submission still reuses them) and the track exports are written and listed;
    the same results finalized under a job without tracking lose the ids (as a re-submission of a
    tracked job id without --track reuses them)."""
    settings = devstack.settings()
    store = ObjectStore.from_settings(settings)
    rt = Runtime(settings=settings, store=store, progress=ProgressStore.from_url(settings.broker_url),
                 model=ModelFiles(MODEL, Path("unused.py"), Path("unused.pth"), "test"),
                 batcher=Batcher(lambda: SimpleNamespace(classes=SHAPE_CLASSES), max_batch=1))
    frames = list(render_frames(*SIZE, 12, HELD_OUT_SEED, crossings=CROSSINGS))
    for job_id, track, detections in (("finalize-tracked", True, _truth_as_detections(frames)),
                                      ("finalize-untracked", False, None)):
        manifest, linked = _job(frames)
        manifest = manifest.model_copy(update={"spec": manifest.spec.model_copy(update={"job_id": job_id,
                                                                                         "track": track})})
        results = _results(frames, detections, SIZE) if detections else linked  # untracked: results with ids
        stamp = {"model-version": "test", "options": "o", "input": "0" * 32}
        store.put_json(layout.manifest_key(job_id), manifest)
        for result in results:
            store.put_json(layout.detection_key(job_id, result.frame_id),
                           result.model_copy(update={"job_id": job_id}), stamp)
        rt.progress.register(job_id, total=len(results), model=MODEL, source=manifest.spec.source)
        assert rt.progress.record(job_id, done=[r.frame_id for r in results], failed={}) == 1
        finalize_job(rt, job_id)

        written = [FrameResult.model_validate(store.get_json(layout.detection_key(job_id, r.frame_id)))
                   for r in results]
        assert store.metadata(layout.detection_key(job_id, results[0].frame_id)) == stamp
        summary = Summary.model_validate(store.get_json(layout.export_key(job_id, "summary.json")))
        coco = store.get_json(layout.export_key(job_id, "coco.json"))
        if track:
            assert summary.tracking is not None and summary.tracking.tracks > 0
            assert summary.exports == [*layout.EXPORT_NAMES, "cvat-video.xml", "mot.txt", "labelstudio-video.json"]
            assert all(d.track_id is not None for r in written for d in r.detections)
            assert [a["track_id"] for a in coco["annotations"]] == [d.track_id for r in written for d in r.detections]
            for name in layout.TRACK_EXPORT_NAMES:
                assert store.size(layout.export_key(job_id, name)) > 0
        else:
            assert summary.tracking is None and summary.exports == list(layout.EXPORT_NAMES)
            assert all(d.track_id is None for r in written for d in r.detections)
            assert all(a["track_id"] is None for a in coco["annotations"])
