"""A job for a model no worker serves: refused at submit when the name is certainly unknown,
otherwise `status` says no worker takes it and `submit --wait` stops after
AUTOLABEL_NO_WORKER_TIMEOUT_S instead of waiting forever.

Real redis-server and S3 server; the CLI runs as a subprocess. No worker is started: the
model names here are served by none.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.devservices import DevStack
from autolabel.errors import InvalidInputError, JobNotFoundError
from autolabel.progress import JobState
from autolabel.serving import Heartbeat
from autolabel.settings import Settings
from autolabel.storage import ObjectStore
from autolabel.synth import generate_video

pytestmark = [pytest.mark.integration]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("video")
    generate_video(out / "short.mp4", out / "short.json", width=320, height=180, fps=5, seconds=1, seed=1201)
    return out / "short.mp4"


def autolabel(devstack: DevStack, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "autolabel"), *args], env=devstack.subprocess_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def test_unknown_model_is_refused_before_anything_is_uploaded(
    devstack: DevStack, video: Path, repo_root: Path, settings: Settings, store: ObjectStore
) -> None:
    configs = repo_root / "configs"
    job_id = "unknown-model-job"
    run = autolabel(devstack, "submit", str(video), "--model", "no-such-model", "--job-id", job_id,
                    AUTOLABEL_CONFIGS_DIR=str(configs))
    assert run.returncode == 1, run.stderr
    assert "unknown model 'no-such-model': no config no-such-model.py" in run.stderr
    assert "shapes-rtmdet-tiny" in run.stderr  # the known names are listed
    assert store.list_keys(layout.job_prefix(job_id)) == []
    client = LabelingClient(settings.model_copy(update={"configs_dir": str(configs)}))
    with pytest.raises(JobNotFoundError):
        client.status(job_id)

    # The client's raw-frames submit refuses it the same way.
    with pytest.raises(InvalidInputError, match="unknown model 'no-such-model'"):
        client.submit_frames([{"frame_id": "f1", "key": "uploads/f1.jpg"}], job_id=job_id, model="no-such-model")
    assert store.list_keys(layout.job_prefix(job_id)) == []

    # A name missing from this configs dir but served by a live worker (its own configs) is taken.
    Heartbeat(client.progress.redis, "served-elsewhere").beat()
    served = client.submit_frames([{"frame_id": "f1", "key": "uploads/f1.jpg"}], model="served-elsewhere")
    assert client.status(served).state == JobState.QUEUED
    assert client.unserved_for_s(client.status(served)) is None


def test_without_known_configs_status_and_wait_say_no_worker_takes_the_job(
    devstack: DevStack, video: Path, settings: Settings, store: ObjectStore
) -> None:
    job_id, timeout_s = "no-worker-job", 3
    started = time.monotonic()
    run = autolabel(devstack, "submit", str(video), "--model", "no-such-model", "--job-id", job_id, "--wait",
                    AUTOLABEL_NO_WORKER_TIMEOUT_S=str(timeout_s))
    elapsed = time.monotonic() - started
    print(f"submit --wait returned after {elapsed:.1f} s (timeout {timeout_s} s): {run.stderr.splitlines()[-1]}")
    assert run.returncode == 1, run.stderr
    assert "NoWorkerError: job no-worker-job: no live worker serves model 'no-such-model'" in run.stderr
    assert "queue autolabel.no-such-model" in run.stderr
    assert run.stdout.splitlines() == [job_id]

    # The job stays queued with its frames; status says why it does not move.
    client = LabelingClient(settings)
    status = client.status(job_id)
    assert (status.state, status.total) == (JobState.QUEUED, 5)
    assert time.time() - status.created_at >= timeout_s
    assert len(store.list_keys(layout.job_prefix(job_id) + "frames/")) == 5
    shown = autolabel(devstack, "status", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "no live worker serves model 'no-such-model'; none has taken queue autolabel.no-such-model for" in shown.stdout
