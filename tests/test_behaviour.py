"""Documented behaviour, each through a real worker: cancel, labeling again for other options or
weights, the batch time limit, retries running out, a finalize delivered twice, the refusals and
the class filter, the job's frame limit, s3:// video and checkpoint sources.

Real redis-server and S3 server, this module's own: the bucket keeps every version of every
object, so a write that should not happen shows in its listing. One `autolabel worker` process
(tests/workerpool.py) runs the embedded model on a 320x192 canvas and loads its weights from an
s3:// AUTOLABEL_CHECKPOINT, with a HOME of its own so that no earlier download is reused. Retries
are shortened (AUTOLABEL_MAX_RETRIES=3, backoff at most 1 s) and the batch time limit is 10 s, so
those paths take seconds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.contract import (
    MAX_FRAMES_PER_JOB,
    TASK_DETECT,
    TASK_FINALIZE,
    TASK_SUBMIT,
    DetectOptions,
    DetectTask,
    FinalizeTask,
    FrameRef,
    FrameResult,
    JobManifest,
    JobSpec,
    SubmitFramesTask,
    queue_for,
    validated,
)
from autolabel.devservices import DevStack, wait_until
from autolabel.errors import InvalidInputError, JobNotFoundError
from autolabel.exports import CocoFile, Summary
from autolabel.progress import JobState
from autolabel.synth import generate_video
from autolabel_worker.models import WEIGHTS_DIR, file_digest
from workerpool import (
    MODEL,
    WORKER_ENV,
    Pool,
    count_frames,
    job_frames,
    small_canvas_configs,
    tally,
    upload_frames,
    versioned_stack,
)

pytestmark = [pytest.mark.integration]

THREADS = 4
# Far above what a batch takes even on a loaded 2-core machine: a tighter limit makes batches time
# out on their own, and their abandoned frames, which still run, slow the next batches down.
TIME_LIMIT_S = 10
MAX_RETRIES = 3
WEIGHTS = WEIGHTS_DIR / f"{MODEL}.pth"
CHECKPOINT_KEY = f"models/{MODEL}.pth"
ENV = {
    **WORKER_ENV,
    "AUTOLABEL_BATCH_TIME_LIMIT_S": str(TIME_LIMIT_S),
    "AUTOLABEL_MAX_RETRIES": str(MAX_RETRIES),
    "AUTOLABEL_RETRY_BACKOFF_MAX_S": "1",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with versioned_stack(tmp_path_factory.mktemp("behaviour-services")) as started:
        yield started


@pytest.fixture(scope="module")
def client(stack: DevStack) -> LabelingClient:
    return LabelingClient(stack.settings())


@pytest.fixture(scope="module")
def worker_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-home")


@pytest.fixture(scope="module")
def pool(stack: DevStack, client: LabelingClient, worker_home: Path, repo_root: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    client.store.put_bytes(CHECKPOINT_KEY, WEIGHTS.read_bytes())
    configs = small_canvas_configs(repo_root, tmp_path_factory.mktemp("configs"))
    log = tmp_path_factory.mktemp("pool") / "pool.log"
    env = {**ENV, "AUTOLABEL_CHECKPOINT": f"s3://{stack.bucket}/{CHECKPOINT_KEY}", "HOME": str(worker_home)}
    with Pool(stack, configs, log, processes=1, threads=THREADS, env=env) as started:
        yield started


@pytest.fixture(scope="module")
def frame_keys(client: LabelingClient) -> list[str]:
    return upload_frames(client.store, "behaviour/frames", 16, seed=5151)


def log_count(pool: Pool, text: str) -> int:
    return pool.log_path.read_text(errors="replace").count(text)


def result_keys(client: LabelingClient, job_id: str) -> list[str]:
    return client.store.list_keys(layout.job_prefix(job_id) + "detections/")


def exports(client: LabelingClient, job_id: str) -> tuple[CocoFile, Summary]:
    return (CocoFile.model_validate(client.store.get_json(layout.export_key(job_id, "coco.json"))),
            Summary.model_validate(client.store.get_json(layout.export_key(job_id, "summary.json"))))


def test_cancel_ends_the_wait_and_the_workers_skip_the_remaining_batches(client: LabelingClient, pool: Pool,
                                                                         frame_keys: list[str]) -> None:
    job_id, frames = "cancelled", job_frames(frame_keys, 400)
    tasks = len(frames) // 4
    pool.wait_ready()
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
    with ThreadPoolExecutor(max_workers=1) as waiter:
        waited = waiter.submit(client.wait, job_id, timeout=300)
        wait_until(lambda: client.status(job_id).done >= 24, f"24 frames of {job_id} labeled", 120)
        assert not waited.done()
        client.cancel(job_id)
        status = waited.result(timeout=10)
    assert status.state == JobState.CANCELLED
    at_cancel = len(result_keys(client, job_id))

    # Tasks already past their cancel check finish their batch (at most one per thread); every
    # other task is taken off the queue and skipped with a log line, writing nothing.
    def skipped() -> int:
        return log_count(pool, f"job {job_id} is cancelled; skipping 4 frames")

    wait_until(lambda: skipped() + len(result_keys(client, job_id)) // 4 == tasks,
               "every task of the cancelled job labeled or skipped", 120)
    written = len(result_keys(client, job_id))
    assert written <= at_cancel + THREADS * 4
    assert written < len(frames) // 2, f"{written} of {len(frames)} frames labeled after the cancel"
    time.sleep(2)
    assert len(result_keys(client, job_id)) == written, "results appeared after every task was skipped"
    status = client.status(job_id)
    assert (status.state, status.done) == (JobState.CANCELLED, written)
    assert not client.store.exists(layout.export_key(job_id, "summary.json")), "a cancelled job was finalized"


def test_other_options_or_another_model_version_label_a_frame_again(client: LabelingClient, pool: Pool,
                                                                    frame_keys: list[str]) -> None:
    """Each result is stamped with the weights' version and the options that made it: a submission
    with the same stamp skips the frame, another threshold or other weights label it again."""
    job_id, frames = "relabel", job_frames(frame_keys, 8)
    pool.wait_ready()

    def submit(score_threshold: float) -> dict[str, int]:
        """Submit the job again under its id; per frame, the writes of its result beyond the first."""
        client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4, score_threshold=score_threshold)
        status = client.wait(job_id, timeout=120)
        assert (status.state, status.done, status.failed) == (JobState.DONE, len(frames), 0)
        return count_frames(client, job_id, frames, {}).rewritten

    assert submit(0.3) == {}
    scores = [a.score for a in exports(client, job_id)[0].annotations]
    assert any(score < 0.6 for score in scores), "no detection between the thresholds: the test shows nothing"
    assert submit(0.3) == {}, "the same options labeled a frame again"

    every_frame = {frame.frame_id: 1 for frame in frames}
    assert submit(0.6) == every_frame
    coco, summary = exports(client, job_id)
    assert coco.annotations and min(a.score for a in coco.annotations) >= 0.6
    assert summary.model_version == file_digest(WEIGHTS)

    # The result of frame 0 as if other weights had made it (its stamp names another version).
    key = layout.detection_key(job_id, frames[0].frame_id)
    stamp = client.store.metadata(key)
    assert stamp is not None and stamp["model-version"] == file_digest(WEIGHTS)
    client.store.client.copy_object(Bucket=client.store.bucket, Key=key, CopySource={"Bucket": client.store.bucket,
                                    "Key": key}, Metadata={**stamp, "model-version": "0123456789ab"},
                                    MetadataDirective="REPLACE", ContentType="application/json")
    # Frame 0: written at 0.3 and 0.6, copied with the other stamp, labeled again.
    assert submit(0.6) == {**every_frame, frames[0].frame_id: 3}
    assert client.store.metadata(key) == stamp


def test_a_batch_past_its_time_limit_is_retried_and_the_job_completes(client: LabelingClient, pool: Pool,
                                                                      frame_keys: list[str]) -> None:
    """The worker process stops (SIGSTOP, as a stuck device or a stalled host would stop it) for
    longer than AUTOLABEL_BATCH_TIME_LIMIT_S with tasks in flight: those tasks give up waiting for
    their forward passes and are retried; the job completes with every frame labeled."""
    job_id, frames = "time-limit", job_frames(frame_keys, 120)
    pool.wait_ready()
    (pid,) = pool.pids()
    limit_line = f"BatchTimeLimitExceeded('job {job_id}: "
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
    for _ in range(3):  # a pause can land while every task in flight is past its forward passes
        wait_until(lambda: pool.busy_pids() == {pid} or client.status(job_id).finished == len(frames),
                   "a task in flight", 60)
        if client.status(job_id).finished == len(frames):
            break
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(TIME_LIMIT_S + 1.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            wait_until(lambda: log_count(pool, limit_line) > 0, "a task to give up at its time limit", 10)
            break
        except TimeoutError:
            continue
    status = client.wait(job_id, timeout=180)
    assert (status.state, status.done, status.failed) == (JobState.DONE, len(frames), 0), status.failures
    assert log_count(pool, limit_line) >= 1, "no task gave up at its time limit"
    assert f"within {TIME_LIMIT_S} s')" in pool.log_path.read_text(errors="replace")
    counts, _ = tally(client, job_id, frames)
    # Frames of an abandoned batch still went through the model: passed twice, written once.
    counts.check(passes_again_allowed=True)
    assert (counts.labeled, counts.export_writes) == (len(frames), 1)


def test_retries_running_out_fail_the_tasks_frames_and_the_job_completes(client: LabelingClient, pool: Pool,
                                                                         frame_keys: list[str]) -> None:
    """A frame archived to GLACIER: every read of it is refused (InvalidObjectState), an object-store
    error the worker retries. After AUTOLABEL_MAX_RETRIES retries the task fails for good and its
    failure handler fails its frames with the reason; the other frames are labeled, the job completes."""
    job_id, archived = "retries-run-out", "behaviour/archived/frame.jpg"
    client.store.client.put_object(Bucket=client.store.bucket, Key=archived, Body=client.store.get_bytes(frame_keys[0]),
                                   StorageClass="GLACIER")
    frames = job_frames(frame_keys, 8)
    frames[5] = FrameRef(frame_id=frames[5].frame_id, key=archived, index=5)
    pool.wait_ready()
    started = time.monotonic()
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
    status = client.wait(job_id, timeout=120)
    assert time.monotonic() - started < 60
    assert (status.state, status.done) == (JobState.DONE, 4)
    doomed = {frame.frame_id for frame in frames[4:]}
    assert set(status.failures) == doomed
    reason = status.failures[frames[4].frame_id]
    assert reason.startswith(f"gave up after {MAX_RETRIES} retries: StorageError: cannot read "
                             f"s3://{client.store.bucket}/{archived}"), reason
    assert "InvalidObjectState" in reason
    assert all(status.failures[frame_id] == reason for frame_id in doomed)
    retries = [line for line in pool.log_path.read_text(errors="replace").splitlines()
               if "retry: Retry in" in line and archived in line]
    assert len(retries) == MAX_RETRIES, retries
    counts, summary = tally(client, job_id, frames)
    assert (counts.labeled, counts.failed, counts.lost) == (4, 4, 0)
    assert {f.frame_id: f.reason for f in summary.failed_frames} == dict.fromkeys(doomed, reason)


def test_a_finalize_delivered_twice_writes_the_exports_once(client: LabelingClient, pool: Pool,
                                                            frame_keys: list[str]) -> None:
    """The test plays the worker that recorded the job's last frame (every frame failed) and sends
    its finalize twice at once, then once more after the job is done: the exports have one version."""
    job_id, frames = "finalize-twice", job_frames(frame_keys, 3)
    spec = JobSpec(job_id=job_id, source="frames", options=DetectOptions(model=MODEL))
    client.store.put_json(layout.manifest_key(job_id), JobManifest(spec=spec, frames=tuple(frames)))
    client.progress.register(job_id, total=len(frames), model=MODEL, source="frames")
    reasons = {frame.frame_id: "inference failed: given up by the test" for frame in frames}
    assert client.progress.record(job_id, done=(), failed=reasons, claimer="the-test") == 1
    assert client.status(job_id).state == JobState.FINALIZING
    pool.wait_ready()

    def finalize() -> None:
        client.celery.send_task(TASK_FINALIZE, kwargs=FinalizeTask(job_id=job_id).model_dump(), queue=queue_for(MODEL))

    def handled() -> int:
        return log_count(pool, f"job {job_id} finalized:") + log_count(pool, f"job {job_id} is done; nothing to finalize")

    finalize()
    finalize()
    assert client.wait(job_id, timeout=60).state == JobState.DONE
    # The second message ran at once (and found the job done) or found the lease held and ran later.
    wait_until(lambda: handled() == 2, "both finalize messages handled", 60)
    finalize()
    wait_until(lambda: handled() == 3, "the third finalize message handled", 30)
    assert log_count(pool, f"job {job_id} finalized:") == 1
    counts, summary = tally(client, job_id, frames)
    assert counts.export_writes == 1
    assert {f.frame_id: f.reason for f in summary.failed_frames} == reasons


def test_refusals_fail_the_frames_with_the_reason(client: LabelingClient, pool: Pool, frame_keys: list[str]) -> None:
    frames = job_frames(frame_keys, 8)
    pool.wait_ready()
    unknown = client.submit_frames(frames, job_id="unknown-class", model=MODEL, classes=["circle", "hexagon"])
    status = client.wait(unknown, timeout=120)
    assert (status.state, status.done) == (JobState.DONE, 0)
    refusal = "unknown class names ['hexagon']; the model knows ['circle', 'square', 'triangle']"
    assert status.failures == dict.fromkeys((f.frame_id for f in frames), refusal)

    # A task for another model on this model's queue (a raw Celery sender's routing mistake).
    job_id, other = "model-mismatch", "co-dino-5scale-swin-l"
    spec = JobSpec(job_id=job_id, source="frames", options=DetectOptions(model=other))
    client.store.put_json(layout.manifest_key(job_id), JobManifest(spec=spec, frames=tuple(frames[:4])))
    client.progress.register(job_id, total=4, model=other, source="frames")
    task = DetectTask(job_id=job_id, options=spec.options, frames=frames[:4])
    client.celery.send_task(TASK_DETECT, queue=queue_for(MODEL), kwargs=task.model_dump(mode="json"))
    wait_until(lambda: client.status(job_id).failed == 4, "the mismatched task's frames to fail", 60)
    status = client.status(job_id)
    assert status.done == 0
    assert set(status.failures.values()) == {f"this worker serves model {MODEL!r}, the task asks for {other!r}"}
    assert not result_keys(client, job_id)


def test_the_classes_filter_keeps_only_those_classes(client: LabelingClient, pool: Pool,
                                                     frame_keys: list[str]) -> None:
    frames = job_frames(frame_keys, 8)
    pool.wait_ready()
    every = client.submit_frames(frames, job_id="all-classes", model=MODEL)
    some = client.submit_frames(frames, job_id="some-classes", model=MODEL, classes=["circle", "triangle"])
    for job_id in (every, some):
        assert client.wait(job_id, timeout=120).done == len(frames)
    found = {every: [], some: []}
    for job_id, kept in found.items():
        for frame in frames:
            result = FrameResult.model_validate(client.store.get_json(layout.detection_key(job_id, frame.frame_id)))
            kept.extend((frame.frame_id, d.class_name, *d.box, d.score) for d in result.detections)
    assert {d[1] for d in found[every]} == {"circle", "square", "triangle"}
    expected = [d for d in found[every] if d[1] != "square"]
    assert [d[:2] for d in found[some]] == [d[:2] for d in expected]
    assert [v for d in found[some] for v in d[2:]] == pytest.approx([v for d in expected for v in d[2:]], abs=1e-3)
    _, summary = exports(client, some)
    assert set(summary.detections_per_class) == {"circle", "triangle"}


def test_a_job_over_the_frame_limit_is_refused_at_the_client(client: LabelingClient) -> None:
    """MAX_FRAMES_PER_JOB: one frame too many is refused with the limit named, before anything is
    written or enqueued; the limit itself is accepted by the contract."""
    frames = [FrameRef(frame_id=f"f{i:06d}", key=f"up/{i}.jpg") for i in range(MAX_FRAMES_PER_JOB + 1)]
    with pytest.raises(InvalidInputError, match=rf"^invalid JobManifest: frames: .*at most {MAX_FRAMES_PER_JOB} "):
        client.submit_frames(frames, job_id="too-many-frames", model=MODEL)
    assert not client.store.exists(layout.manifest_key("too-many-frames"))
    with pytest.raises(JobNotFoundError):
        client.status("too-many-frames")
    payload = {"spec": {"job_id": "raw", "source": "frames", "options": {"model": MODEL}},
               "frames": [f.model_dump(exclude_none=True) for f in frames]}
    with pytest.raises(InvalidInputError, match=rf"^invalid SubmitFramesTask: frames: .*at most {MAX_FRAMES_PER_JOB} "):
        validated(SubmitFramesTask, payload)
    assert len(validated(SubmitFramesTask, {**payload, "frames": payload["frames"][:-1]}).frames) == MAX_FRAMES_PER_JOB


def test_a_raw_celery_job_over_the_frame_limit_is_rejected_by_the_worker(client: LabelingClient, pool: Pool) -> None:
    pool.wait_ready()
    pids = pool.pids()
    rejected = "rejecting malformed message: invalid SubmitFramesTask: frames: "
    before = log_count(pool, rejected)
    payload = {"schema_version": 1, "spec": {"job_id": "raw-too-many", "source": "frames", "options": {"model": MODEL}},
               "frames": [{"frame_id": f"f{i:06d}", "key": f"up/{i}.jpg"} for i in range(MAX_FRAMES_PER_JOB + 1)]}
    client.celery.send_task(TASK_SUBMIT, kwargs=payload, queue=queue_for(MODEL))
    wait_until(lambda: log_count(pool, rejected) > before, "the worker to reject the job", 120)
    line = next(line for line in pool.log_path.read_text(errors="replace").splitlines() if rejected in line)
    assert f"at most {MAX_FRAMES_PER_JOB} items" in line
    with pytest.raises(JobNotFoundError):
        client.status("raw-too-many")
    assert not client.store.exists(layout.manifest_key("raw-too-many"))
    assert pool.pids() == pids


def test_an_s3_video_labeled_by_a_worker_whose_checkpoint_came_from_s3(
        stack: DevStack, client: LabelingClient, pool: Pool, worker_home: Path, tmp_path: Path) -> None:
    video, truth = tmp_path / "clip.mp4", tmp_path / "clip.json"
    info = generate_video(video, truth, width=320, height=180, fps=10, seconds=1, seed=5252)
    client.store.put_bytes("videos/clip.mp4", video.read_bytes(), "video/mp4")
    uri = f"s3://{stack.bucket}/videos/clip.mp4"
    pool.wait_ready()
    job_id = client.submit_video(uri, job_id="s3-video", model=MODEL)
    status = client.wait(job_id, timeout=120)
    assert (status.state, status.done, status.failed) == (JobState.DONE, info.frames, 0)
    manifest = JobManifest.model_validate(client.store.get_json(layout.manifest_key(job_id)))
    assert manifest.spec.source == uri
    assert manifest.video is not None and (manifest.video.width, manifest.video.height) == (320, 180)
    assert [f.index for f in manifest.frames] == list(range(info.frames))
    coco, summary = exports(client, job_id)
    assert summary.source == uri and len(coco.images) == info.frames
    # The worker downloaded the embedded weights from the S3 server into its own cache: the
    # results name their version.
    cached = worker_home / ".cache" / "autolabel" / "checkpoints" / stack.bucket / CHECKPOINT_KEY
    assert cached.read_bytes() == WEIGHTS.read_bytes()
    assert summary.model_version == file_digest(WEIGHTS) == file_digest(cached)
