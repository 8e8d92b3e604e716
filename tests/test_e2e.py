"""The main job end to end: real redis-server, S3 server, worker process and CLI process.

A generated video with exact ground truth goes in through `autolabel submit --wait`; a second
job goes in through the backend API while the first runs, and a third through the raw Celery
path with a corrupt frame among good ones. Every export is checked against ground truth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autolabel import layout
from autolabel.celery_app import make_celery
from autolabel.client import LabelingClient
from autolabel.contract import TASK_SUBMIT, DetectOptions, FrameRef, FrameResult, JobSpec, SubmitFramesTask, queue_for
from autolabel.devservices import DevStack, Service, wait_until
from autolabel.exports import CocoFile, LabelStudioTask, Summary, labelstudio_to_pixels
from autolabel.progress import JobState
from autolabel.settings import Settings
from autolabel.storage import ObjectStore
from autolabel.synth import generate_video
from autolabel_worker.scoring import export_boxes, map_scores
from trackscore import tracking_scores

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    out = tmp_path_factory.mktemp("videos")
    made = {}
    for name, size, seconds, seed in (("main", (1280, 720), 4, 7001), ("backend", (960, 540), 2, 7002)):
        video, gt = out / f"{name}.mp4", out / f"{name}.json"
        generate_video(video, gt, width=size[0], height=size[1], fps=10, seconds=seconds, seed=seed)
        made[name] = (video, json.loads(gt.read_text()))
    return made


def _exports(store: ObjectStore, job_id: str) -> tuple[CocoFile, list[LabelStudioTask], Summary]:
    coco = CocoFile.model_validate(store.get_json(layout.export_key(job_id, "coco.json")))
    studio = [LabelStudioTask.model_validate(t) for t in store.get_json(layout.export_key(job_id, "labelstudio.json"))]
    summary = Summary.model_validate(store.get_json(layout.export_key(job_id, "summary.json")))
    return coco, studio, summary


def _uploaded_frames(client: LabelingClient, video: Path, every_nth: int) -> list[dict]:
    """Frames already in the bucket, as a backend would have them: those of a finished video job."""
    source_job = client.submit_video(video, every_nth=every_nth)
    client.wait(source_job, timeout=600)
    return list(client.store.get_json(layout.manifest_key(source_job))["frames"])


def test_video_job_through_cli_and_backend_job_alongside(
    devstack: DevStack, worker: Service, videos, settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    main_video, main_gt = videos["main"]
    main_job = "cli-main-job"
    cli = subprocess.Popen([str(BIN / "autolabel"), "submit", str(main_video), "--wait", "--batch-size", "4",
                            "--job-id", main_job, "--track"],
                           env=devstack.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = LabelingClient(settings)
    wait_until(lambda: main_job in {job.job_id for job in client.jobs(50)}, f"the CLI to register {main_job}", 300)

    backend_video, backend_gt = videos["backend"]
    backend_job = client.submit_video(backend_video, batch_size=2, priority=3)
    backend_status = client.wait(backend_job, timeout=600)
    stdout, stderr = cli.communicate(timeout=900)
    assert cli.returncode == 0, stderr
    assert stdout.splitlines()[0] == main_job
    assert "frames/s" in stderr and "ETA" in stderr

    # (mAP@0.5, mAP@[.5:.95]) bars, 0.02 below what each job scores (measured: main 0.989 / 0.836, the
    # smaller 960x540 backend video 0.918 / 0.734): a regression of a few points fails here.
    bars = {main_job: (0.969, 0.816), backend_job: (0.898, 0.714)}
    for job_id, gt, status in ((main_job, main_gt, client.status(main_job)), (backend_job, backend_gt, backend_status)):
        assert status.state == JobState.DONE
        assert status.done == len(gt["images"]) and status.failed == 0
        coco, studio, summary = _exports(store, job_id)
        scores = map_scores(gt, export_boxes(coco))
        print(f"{job_id}: mAP@[.5:.95] {scores.map:.3f}  mAP@0.5 {scores.map50:.3f}")
        assert scores.map50 >= bars[job_id][0] and scores.map >= bars[job_id][1], (job_id, scores)
        assert summary.labeled_frames == len(gt["images"]) and not summary.failed_frames
        gt_size = (gt["images"][0]["width"], gt["images"][0]["height"])
        assert {(image.width, image.height) for image in coco.images} == {gt_size}
        # Label Studio's percentages convert back to the pixels of the frame's result file.
        for task in studio:
            result = FrameResult.model_validate(store.get_json(layout.detection_key(job_id, task.data["frame_id"])))
            converted = [v for region in task.predictions[0].result for v in labelstudio_to_pixels(region)]
            assert converted == pytest.approx([v for d in result.detections for v in d.box], abs=1e-6)

    # The main job was tracked: its result files were written again with track ids and the stamp
    # that lets a re-submission reuse them; the backend job was not.
    results = [FrameResult.model_validate(store.get_json(layout.detection_key(main_job, image.frame_id)))
               for image in _exports(store, main_job)[0].images]
    assert sum(d.track_id is not None for r in results for d in r.detections) > 0.8 * sum(len(r.detections)
                                                                                      for r in results)
    assert "model-version" in (store.metadata(layout.detection_key(main_job, results[0].frame_id)) or {})
    main_summary, backend_summary = _exports(store, main_job)[2], _exports(store, backend_job)[2]
    assert main_summary.tracking is not None and backend_summary.tracking is None
    assert backend_summary.exports == list(layout.EXPORT_NAMES)
    scores = tracking_scores(main_gt, results)
    print(f"{main_job} tracks: {main_summary.tracking.tracks}, {scores}")
    assert scores["idf1"] >= 0.97, scores  # measured 0.994 (MOTA 0.987, no ID switch)

    out = tmp_path / "results"
    subprocess.run([str(BIN / "autolabel"), "results", main_job, "-o", str(out)], env=devstack.subprocess_env(),
                   check=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(layout.EXPORT_NAMES + layout.TRACK_EXPORT_NAMES)
    assert len((out / "mot.txt").read_text().splitlines()) == sum(d.track_id is not None
                                                                  for r in results for d in r.detections)


def test_raw_celery_path_with_a_corrupt_frame(
    devstack: DevStack, worker: Service, videos, settings: Settings, store: ObjectStore
) -> None:
    client = LabelingClient(settings)
    frames = _uploaded_frames(client, videos["backend"][0], every_nth=5)
    store.put_bytes("uploads/corrupt.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")
    store.put_bytes("uploads/empty.jpg", b"", "image/jpeg")
    frames += [{"frame_id": "corrupt", "key": "uploads/corrupt.jpg"}, {"frame_id": "empty", "key": "uploads/empty.jpg"},
               {"frame_id": "missing", "key": "uploads/missing.jpg"}]
    spec = JobSpec(job_id="raw-celery-job", source="frames", options=DetectOptions(model=settings.model), batch_size=3)
    payload = SubmitFramesTask(spec=spec, frames=[FrameRef.model_validate(f) for f in frames])
    make_celery(settings).send_task(TASK_SUBMIT, kwargs=payload.model_dump(mode="json"), queue=queue_for(settings.model))

    wait_until(lambda: any(job.job_id == "raw-celery-job" and job.ended for job in client.jobs(50)),
               "the raw Celery job to end", 600)
    status = client.status("raw-celery-job")
    assert status.state == JobState.DONE
    assert set(status.failures) == {"corrupt", "empty", "missing"}
    assert "empty (0 bytes)" in status.failures["empty"]
    assert "does not exist" in status.failures["missing"]
    coco, _, summary = _exports(store, "raw-celery-job")
    assert summary.labeled_frames == len(frames) - 3
    assert {f.frame_id for f in summary.failed_frames} == {"corrupt", "empty", "missing"}
    assert len(coco.images) == len(frames) - 3


def test_single_frame_tasks_share_forward_passes_under_a_backlog(
    devstack: DevStack, worker: Service, videos, settings: Settings, store: ObjectStore
) -> None:
    client = LabelingClient(settings)
    frames = _uploaded_frames(client, videos["backend"][0], every_nth=2)
    assert len(frames) == 10

    # batch_size=1: every frame is its own Celery task, as a backend sending frames one by one would.
    backlog = client.submit_frames(frames, batch_size=1)
    assert client.wait(backlog, timeout=600).done == len(frames)
    _, _, summary = _exports(store, backlog)
    assert summary.labeled_frames == len(frames)
    assert summary.timings.mean_frames_per_pass > 1.0, summary.timings

    # Into an idle worker a lone frame rides alone: nothing waited for a batch to fill.
    lone = client.submit_frames(frames[:1], batch_size=1)
    assert client.wait(lone, timeout=120).done == 1
    assert _exports(store, lone)[2].timings.mean_frames_per_pass == 1.0
