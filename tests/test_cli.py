"""The `autolabel` CLI run as a user runs it (a subprocess) against a real redis-server and S3 server:
bad input and missing services give one line naming the problem, never a traceback or a setting's value."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.devservices import DevStack, Service, free_port, redis_service
from autolabel.errors import InvalidInputError, SubmitError
from autolabel.progress import JobState, ProgressStore
from autolabel.storage import ObjectStore
from autolabel.synth import generate_video

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SECRET = "hunter2-not-for-logs"
# Jobs on a model no worker serves stay queued: the tests that only need a job to exist use it.
UNSERVED = "nobody-serves-this"


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None,
            timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "autolabel"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exactly one line on stderr holding every needle; returns that line."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-video") / "short.mp4"
    generate_video(path, path.with_suffix(".json"), width=320, height=240, fps=10, seconds=2, seed=11)
    return path


COMMANDS = [
    ["submit", "video.mp4"], ["status", "some-job"], ["jobs"], ["results", "some-job", "-o", "out"],
    ["cancel", "some-job"], ["retry", "some-job"], ["preview", "some-job", "-o", "out"], ["worker"],
    ["inspect-checkpoint", str(REPO / "worker/autolabel_worker/weights/shapes-rtmdet-tiny.pth"),
     "--config", str(REPO / "configs/shapes-rtmdet-tiny.py")],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_every_command_names_a_bad_setting_in_one_line_without_its_value(
    devstack: DevStack, tmp_path: Path, command: list[str]
) -> None:
    # Not a redis URL, with a password in it: pydantic's own message would print the whole value.
    env = devstack.subprocess_env(AUTOLABEL_BROKER_URL=f"http://:{SECRET}@cache:6379/0")
    result = run_cli(*command, env=env, cwd=tmp_path)
    line = assert_one_line_error(result, "AUTOLABEL_BROKER_URL", "redis://")
    assert SECRET not in result.stdout + result.stderr, line


def test_doctor_reports_bad_settings_as_failed_checks(devstack: DevStack, tmp_path: Path) -> None:
    env = devstack.subprocess_env(AUTOLABEL_BROKER_URL=f"http://:{SECRET}@cache:6379/0",
                                  AUTOLABEL_LEASE_S=SECRET, AUTOLABEL_BUCKET="still-fine")
    result = run_cli("doctor", "--producer", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and SECRET not in result.stdout + result.stderr
    assert "FAIL AUTOLABEL_BROKER_URL" in result.stdout and "FAIL AUTOLABEL_LEASE_S" in result.stdout
    assert "fix: AUTOLABEL_LEASE_S: set AUTOLABEL_LEASE_S" in result.stdout
    assert "ok   python" in result.stdout


def test_a_check_across_settings_is_named_without_values(devstack: DevStack, tmp_path: Path) -> None:
    env = devstack.subprocess_env(AUTOLABEL_VISIBILITY_TIMEOUT_S="77", AUTOLABEL_LEASE_S="88",
                                  AUTOLABEL_BATCH_TIME_LIMIT_S="66")
    line = assert_one_line_error(run_cli("jobs", env=env, cwd=tmp_path),
                                 "AUTOLABEL_LEASE_S must be below AUTOLABEL_VISIBILITY_TIMEOUT_S")
    assert "77" not in line and "88" not in line


def test_submit_names_a_missing_or_incomplete_s3_source_in_one_line(devstack: DevStack, tmp_path: Path) -> None:
    env = devstack.subprocess_env()
    assert_one_line_error(run_cli("submit", f"s3://{devstack.bucket}/no-such-video.mp4", env=env, cwd=tmp_path),
                          f"s3://{devstack.bucket}/no-such-video.mp4 does not exist")
    assert_one_line_error(run_cli("submit", f"s3://{devstack.bucket}", env=env, cwd=tmp_path),
                          "must name a bucket and a key: s3://BUCKET/KEY")


def test_a_missing_bucket_is_named_once_before_any_upload_and_doctor_creates_it(
    devstack: DevStack, tmp_path: Path, video: Path
) -> None:
    env = devstack.subprocess_env(AUTOLABEL_BUCKET="made-by-doctor")
    line = assert_one_line_error(run_cli("submit", str(video), env=env, cwd=tmp_path),
                                 "bucket 'made-by-doctor' does not exist", "autolabel doctor --create-bucket")
    assert line.count("does not exist") == 1

    doctor = run_cli("doctor", "--producer", env=env, cwd=tmp_path)
    assert "FAIL object store" in doctor.stdout and "--create-bucket" in doctor.stdout
    created = run_cli("doctor", "--producer", "--create-bucket", env=env, cwd=tmp_path)
    assert created.returncode == 0, created.stdout + created.stderr
    assert "ok   object store" in created.stdout


def test_submit_without_redis_uploads_nothing_and_names_the_broker_in_one_line(
    devstack: DevStack, store: ObjectStore, tmp_path: Path, video: Path
) -> None:
    nobody = free_port()
    env = devstack.subprocess_env(AUTOLABEL_BROKER_URL=f"redis://:{SECRET}@127.0.0.1:{nobody}/0")
    started = time.monotonic()
    line = assert_one_line_error(run_cli("submit", str(video), "--job-id", "cli-no-redis", env=env, cwd=tmp_path),
                                 "AUTOLABEL_BROKER_URL=redis://:********@127.0.0.1", "does not answer")
    assert SECRET not in line
    assert time.monotonic() - started < 30
    assert store.list_keys(layout.job_prefix("cli-no-redis")) == []


def test_redis_lost_during_the_upload_names_the_job_and_the_prefix_it_leaves(
    devstack: DevStack, store: ObjectStore, tmp_path: Path, video: Path
) -> None:
    redis = redis_service(tmp_path)
    redis.start()
    client = LabelingClient(devstack.settings(broker_url=f"redis://127.0.0.1:{redis.port}/0"))

    def redis_goes_away(uploaded: int) -> None:
        if uploaded == 1:
            redis.stop()

    with pytest.raises(SubmitError) as caught:
        client.submit_video(video, job_id="cli-redis-lost", model=UNSERVED, on_frame=redis_goes_away)
    message = str(caught.value)
    assert "job cli-redis-lost was not submitted" in message
    assert f"s3://{devstack.bucket}/jobs/cli-redis-lost/" in message and "--job-id cli-redis-lost" in message
    # Kept, as the message says: the frames are there for a submit again under the same id.
    assert any(key.endswith(".jpg") for key in store.list_keys(layout.job_prefix("cli-redis-lost")))


def test_a_finished_job_is_not_cancelled_and_keeps_its_results_and_retry(
    devstack: DevStack, worker: Service, tmp_path: Path, video: Path
) -> None:
    env = devstack.subprocess_env()
    submitted = run_cli("submit", str(video), "--wait", "--job-id", "cli-cancel-done", env=env, cwd=tmp_path,
                        timeout_s=600)
    assert submitted.returncode == 0, submitted.stderr
    assert_one_line_error(run_cli("cancel", "cli-cancel-done", env=env, cwd=tmp_path),
                          "job cli-cancel-done is done", "nothing to cancel")
    results = run_cli("results", "cli-cancel-done", "-o", str(tmp_path / "out"), env=env, cwd=tmp_path)
    assert results.returncode == 0, results.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(layout.EXPORT_NAMES)
    retry = run_cli("retry", "cli-cancel-done", env=env, cwd=tmp_path)
    assert retry.returncode == 0 and "0 frames re-enqueued" in retry.stdout
    assert LabelingClient(devstack.settings()).status("cli-cancel-done").state == JobState.DONE


def test_a_queued_job_is_cancelled_once_and_a_second_cancel_is_harmless(
    devstack: DevStack, tmp_path: Path, video: Path
) -> None:
    env = devstack.subprocess_env()
    submitted = run_cli("submit", str(video), "--model", UNSERVED, "--job-id", "cli-cancel-queued", env=env,
                        cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    first = run_cli("cancel", "cli-cancel-queued", env=env, cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.strip() == "job cli-cancel-queued cancelled"
    cancelled_at = LabelingClient(devstack.settings()).status("cli-cancel-queued").finished_at
    second = run_cli("cancel", "cli-cancel-queued", env=env, cwd=tmp_path)
    assert second.returncode == 0 and "already cancelled" in second.stdout
    assert LabelingClient(devstack.settings()).status("cli-cancel-queued").finished_at == cancelled_at


def test_zero_frames_per_task_is_refused_not_replaced_by_the_default(
    devstack: DevStack, store: ObjectStore, tmp_path: Path, video: Path
) -> None:
    env = devstack.subprocess_env()
    for option in ("--batch-size", "--frames-per-task"):
        result = run_cli("submit", str(video), option, "0", "--model", UNSERVED, "--job-id", "cli-zero-batch",
                         env=env, cwd=tmp_path)
        assert result.returncode == 2 and "0 is not in the range 1<=x<=64" in result.stderr, result.stderr
    assert store.list_keys(layout.job_prefix("cli-zero-batch")) == []
    client = LabelingClient(devstack.settings())
    with pytest.raises(InvalidInputError, match="batch_size"):
        client.submit_frames([{"frame_id": "f1", "key": "uploads/f1.jpg"}], job_id="api-zero-batch", batch_size=0,
                             model=UNSERVED)
    with pytest.raises(InvalidInputError, match="limit must be at least 1"):
        client.jobs(0)


def test_submit_and_worker_help_tell_their_batch_sizes_apart(devstack: DevStack, tmp_path: Path) -> None:
    submit = run_cli("submit", "--help", env=devstack.subprocess_env(), cwd=tmp_path).stdout
    worker = run_cli("worker", "--help", env=devstack.subprocess_env(), cwd=tmp_path).stdout
    assert "--frames-per-task, --batch-size" in submit and "Frames per task message" in submit
    assert "Frames per forward pass" in worker


def test_jobs_prints_a_header_and_aligned_columns_and_refuses_a_limit_below_one(
    devstack: DevStack, tmp_path: Path
) -> None:
    progress = ProgressStore.from_url(devstack.settings().broker_url)
    progress.register("cli-table-job-with-a-long-id", total=7, model="m", source="a.mp4")
    progress.register("cli-table-b", total=12345, model="a-longer-model-name", source="s3://videos/b.mp4")
    env = devstack.subprocess_env()
    listed = run_cli("jobs", "--limit", "2", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["JOB", "STATE", "DONE", "FAILED", "FRAMES/S", "MODEL", "CREATED", "SOURCE"]
    assert [row.split()[0] for row in rows] == ["cli-table-b", "cli-table-job-with-a-long-id"]
    for row, cells in zip(rows, (("queued", "0/12345", "a-longer-model-name", "s3://videos/b.mp4"),
                                 ("queued", "0/7", "m", "a.mp4"))):
        state, done, model, source = cells
        assert row.index(state) == header.index("STATE")  # left-aligned columns start under their titles
        assert row.index(model) == header.index("MODEL") and row.index(source) == header.index("SOURCE")
        assert row.index(done) + len(done) == header.index("DONE") + len("DONE")  # numbers end under theirs
    for limit in ("0", "-1"):
        refused = run_cli("jobs", "--limit", limit, env=env, cwd=tmp_path)
        assert refused.returncode == 2 and "Invalid value for '--limit'" in refused.stderr, refused.stdout


@pytest.fixture
def progress(devstack: DevStack) -> ProgressStore:
    return ProgressStore.from_url(devstack.settings().broker_url)


def _labeled(progress: ProgressStore, job_id: str, frame_ids: list[str]) -> None:
    """What a worker's batch does: its frames go through the model, then are recorded."""
    progress.add_timing(job_id, frame_ids=frame_ids, device_seconds=0.01, frames_per_pass=len(frame_ids) ** 2)
    progress.record(job_id, done=frame_ids, failed={})


def test_frames_per_second_leaves_out_results_reused_from_an_earlier_submission(progress: ProgressStore) -> None:
    frames = ["a", "b", "c", "d"]
    progress.register("rate-resubmit", total=4, model="m", source="frames")
    progress.mark_started("rate-resubmit")
    _labeled(progress, "rate-resubmit", frames)
    progress.mark_done("rate-resubmit")
    # Submitted again: the results of a, b and c are reused (recorded, not labeled); d is labeled again.
    progress.register("rate-resubmit", total=4, model="m", source="frames")
    progress.mark_started("rate-resubmit")
    progress.record("rate-resubmit", done=frames[:3], failed={})
    time.sleep(0.3)
    _labeled(progress, "rate-resubmit", ["d"])
    progress.mark_done("rate-resubmit")
    status = progress.status("rate-resubmit")
    assert (status.done, status.run_labeled) == (4, 1)
    assert 1 / 2.0 < status.frames_per_second() <= 1 / 0.3


def test_frames_per_second_of_a_cancelled_job_counts_frames_landing_after_the_cancel(
    progress: ProgressStore,
) -> None:
    progress.register("rate-cancel", total=100, model="m", source="frames")
    progress.mark_started("rate-cancel")
    time.sleep(0.3)
    _labeled(progress, "rate-cancel", ["a", "b", "c", "d"])
    progress.cancel("rate-cancel")
    time.sleep(0.3)
    _labeled(progress, "rate-cancel", ["e", "f", "g", "h"])  # a batch in flight at the cancel lands later
    status = progress.status("rate-cancel")
    rate = status.frames_per_second()
    assert 8 / 2.0 < rate <= 8 / 0.6
    # Ended: the rate does not decay with the time since.
    assert status.frames_per_second(now=time.time() + 100) == rate


def test_frames_per_second_after_a_retry_counts_the_retry_from_its_own_start(progress: ProgressStore) -> None:
    progress.register("rate-retry", total=2, model="m", source="frames")
    progress.mark_started("rate-retry")
    _labeled(progress, "rate-retry", ["a"])
    progress.record("rate-retry", done=[], failed={"b": "missing"})
    progress.mark_done("rate-retry")
    time.sleep(1.0)  # the job sits done until someone retries it
    progress.reopen("rate-retry", ["b"])
    progress.mark_started("rate-retry")
    time.sleep(0.2)
    _labeled(progress, "rate-retry", ["b"])
    status = progress.status("rate-retry")
    assert status.run_labeled == 1
    assert 1 / 1.0 < status.frames_per_second() <= 1 / 0.2
