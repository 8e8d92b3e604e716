"""Progress counters on a real redis-server: each frame counted once, one finalize claim."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autolabel.client import LabelingClient
from autolabel.contract import FrameRef
from autolabel.errors import JobNotFoundError
from autolabel.progress import DeadLetter, JobState, ProgressStore
from autolabel.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def progress(settings: Settings) -> ProgressStore:
    return ProgressStore.from_url(settings.broker_url)


def test_frames_processed_twice_are_counted_once(progress: ProgressStore) -> None:
    progress.register("twice", total=3, model="m", source="v.mp4")
    assert progress.record("twice", done=["a", "b"], failed={}) == 0
    assert progress.record("twice", done=["a", "b"], failed={}) == 0
    status = progress.status("twice")
    assert (status.done, status.failed, status.state) == (2, 0, JobState.RUNNING)


def test_a_frame_that_succeeds_after_failing_is_not_failed(progress: ProgressStore) -> None:
    progress.register("flaky", total=2, model="m", source="v.mp4")
    progress.record("flaky", done=[], failed={"a": "corrupt"})
    progress.record("flaky", done=["a"], failed={})
    progress.record("flaky", done=[], failed={"a": "late duplicate failure"})
    status = progress.status("flaky")
    assert (status.done, status.failed) == (1, 0)


def test_exactly_one_racing_caller_claims_finalize(progress: ProgressStore) -> None:
    frames = [f"f{i:03d}" for i in range(200)]
    progress.register("race", total=len(frames), model="m", source="v.mp4")

    def record(frame_id: str) -> int:
        # Every frame is reported by two "workers", as after a redelivery.
        return progress.record("race", done=[frame_id], failed={}) + progress.record("race", done=[frame_id], failed={})

    with ThreadPoolExecutor(8) as pool:
        claims = sum(pool.map(record, frames))
    assert claims == 1
    status = progress.status("race")
    assert (status.done, status.state) == (200, JobState.FINALIZING)
    progress.mark_done("race")
    assert progress.status("race").ended


def test_failures_complete_a_job_too(progress: ProgressStore) -> None:
    progress.register("bad", total=2, model="m", source="v.mp4")
    assert progress.record("bad", done=["a"], failed={}) == 0
    assert progress.record("bad", done=[], failed={"b": "FrameError: empty"}) == 1
    assert progress.status("bad").failures == {"b": "FrameError: empty"}


def test_labeled_at_is_when_the_last_frame_was_recorded(progress: ProgressStore) -> None:
    progress.register("timed", total=2, model="m", source="v.mp4")
    progress.record("timed", done=["a"], failed={})
    assert progress.status("timed").labeled_at is None
    before = time.time()
    progress.record("timed", done=[], failed={"b": "corrupt"})
    labeled_at = progress.status("timed").labeled_at
    assert labeled_at is not None and before <= labeled_at <= time.time()
    progress.record("timed", done=["b"], failed={})  # a late redelivery does not move it
    assert progress.status("timed").labeled_at == labeled_at


def test_reopen_allows_a_second_finalize_after_retry(progress: ProgressStore) -> None:
    progress.register("again", total=2, model="m", source="v.mp4")
    progress.record("again", done=["a"], failed={"b": "missing"})
    progress.mark_done("again")
    progress.reopen("again", ["b"])
    status = progress.status("again")
    assert (status.state, status.failed, status.labeled_at, status.finished_at) == (JobState.RUNNING, 0, None, None)
    assert progress.record("again", done=["b"], failed={}) == 1


def test_cancelled_job_is_never_finalized(progress: ProgressStore) -> None:
    progress.register("stop", total=1, model="m", source="v.mp4")
    progress.cancel("stop")
    assert progress.is_cancelled("stop")
    assert progress.record("stop", done=["a"], failed={}) == 0


def test_unknown_job(progress: ProgressStore) -> None:
    with pytest.raises(JobNotFoundError, match="nope"):
        progress.status("nope")
    assert progress.record("nope", done=["a"], failed={}) == -1


def test_the_task_that_completed_a_job_can_claim_its_finalize_again(progress: ProgressStore) -> None:
    # Its first delivery died between recording and sending finalize; the redelivery (same task id) sends it.
    progress.register("reclaim", total=2, model="m", source="v.mp4")
    assert progress.record("reclaim", done=["a"], failed={}, claimer="task-1") == 0
    assert progress.record("reclaim", done=["b"], failed={}, claimer="task-2") == 1
    assert progress.record("reclaim", done=["b"], failed={}, claimer="task-2") == 1
    assert progress.record("reclaim", done=["a"], failed={}, claimer="task-1") == 0
    progress.mark_done("reclaim")
    assert progress.record("reclaim", done=["b"], failed={}, claimer="task-2") == 0


def test_resubmitting_a_finished_job_leaves_finalize_to_its_tasks(progress: ProgressStore) -> None:
    progress.register("resubmit", total=2, model="m", source="frames")
    assert progress.record("resubmit", done=["a", "b"], failed={}) == 1
    progress.mark_done("resubmit")
    # Submitted again with other frames: the earlier submission's frames do not count, so the
    # first batch of this one (frame a) does not complete the job.
    progress.register("resubmit", total=2, model="m", source="frames")
    status = progress.status("resubmit")
    assert (status.state, status.done) == (JobState.QUEUED, 0)
    assert progress.record("resubmit", done=["a"], failed={}, claimer="t1") == 0
    assert progress.record("resubmit", done=["c"], failed={}, claimer="t2") == 1


def test_dead_letters_fail_their_frames_and_show_in_status(progress: ProgressStore) -> None:
    progress.register("dead", total=3, model="m", source="frames")
    progress.record("dead", done=["a"], failed={})
    letter = DeadLetter(task_id="t-9", frame_ids=["b", "c"], lost_deliveries=3)
    assert progress.dead_letter("dead", letter, "dead-lettered after 3 lost deliveries") == 1
    status = progress.status("dead")
    assert status.dead_letters == [letter]
    assert status.failures == {"b": "dead-lettered after 3 lost deliveries", "c": "dead-lettered after 3 lost deliveries"}
    progress.reopen("dead", ["b", "c"])
    assert progress.status("dead").dead_letters == []


def test_a_clients_submits_reuse_their_redis_connections(settings: Settings, tmp_path: Path) -> None:
    # Each connection is a TCP handshake and a HELLO on a lone frame's path (its broker check cost
    # 1.5 ms of a 10 ms submit): once a client has submitted, a submit opens no new one.
    client = LabelingClient(settings.model_copy(update={"configs_dir": str(tmp_path / "no-configs"),
                                                        "model": "served-by-no-worker"}))
    frame = FrameRef(frame_id="f0", key="anywhere/f0.jpg", index=0)
    client.submit_frames([frame])
    opened = client.progress.redis.info("stats")["total_connections_received"]
    client.submit_frames([frame])
    assert client.progress.redis.info("stats")["total_connections_received"] == opened
