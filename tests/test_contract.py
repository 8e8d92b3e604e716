"""The task contract refuses bad input with errors that name the field."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from kombu.exceptions import ContentDisallowed

from autolabel.celery_app import make_celery
from autolabel.contract import MAX_FRAMES_PER_TASK, DetectTask, FrameRef, JobSpec, Sampling, content_hash, validated
from autolabel.errors import InvalidInputError
from autolabel.schemas import render_schemas
from autolabel.settings import Settings

OPTIONS = {"model": "shapes-rtmdet-tiny", "score_threshold": 0.3}


def frame(i: int, **extra: object) -> dict[str, object]:
    return {"frame_id": f"{i:08d}", "key": f"jobs/j1/frames/{i:08d}.jpg", "index": i, "timestamp": i / 10} | extra


def test_valid_payload_round_trips_through_json() -> None:
    task = DetectTask(job_id="j1", options=OPTIONS, frames=[frame(0), frame(1)])
    assert DetectTask.model_validate_json(task.model_dump_json()) == task


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"job_id": "../etc", "options": OPTIONS, "frames": [frame(0)]}, "job_id"),
        ({"job_id": "/abs", "options": OPTIONS, "frames": [frame(0)]}, "job_id"),
        ({"job_id": "j1", "options": OPTIONS, "frames": [frame(0, key="jobs/j1/../../secret")]}, "frames.0.key"),
        ({"job_id": "j1", "options": OPTIONS, "frames": [frame(0, key="/etc/passwd")]}, "frames.0.key"),
        ({"job_id": "j1", "options": OPTIONS, "frames": [frame(0, frame_id="a/b")]}, "frames.0.frame_id"),
        ({"job_id": "j1", "options": OPTIONS, "frames": [frame(0, index="zero")]}, "frames.0.index"),
        ({"job_id": "j1", "options": OPTIONS, "frames": []}, "frames"),
        ({"job_id": "j1", "options": OPTIONS, "frames": [frame(i) for i in range(MAX_FRAMES_PER_TASK + 1)]}, "frames"),
        ({"job_id": "j1", "options": {"model": "m", "score_threshold": 2}, "frames": [frame(0)]},
         "options.score_threshold"),
        ({"job_id": "j1", "frames": [frame(0)]}, "options"),
        ({"job_id": "j1", "options": OPTIONS, "frames": [frame(0)], "image_bytes": "..."}, "image_bytes"),
    ],
)
def test_bad_payloads_name_the_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"\b{field}\b"):
        validated(DetectTask, payload)


def test_repeated_frame_ids_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="appears more than once"):
        validated(DetectTask, {"job_id": "j1", "options": OPTIONS, "frames": [frame(0), frame(0)]})


def test_sampling_rules() -> None:
    with pytest.raises(InvalidInputError, match="not both"):
        validated(Sampling, {"every_nth": 2, "target_fps": 5})
    with pytest.raises(InvalidInputError, match="must be after"):
        validated(Sampling, {"start_s": 5, "end_s": 2})
    with pytest.raises(InvalidInputError, match="priority"):
        validated(JobSpec, {"job_id": "j", "source": "v.mp4", "options": OPTIONS, "priority": 11})


def test_celery_app_refuses_pickle() -> None:
    app = make_celery(Settings(_env_file=None))
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    from kombu.serialization import dumps, loads

    content_type, encoding, body = dumps({"a": 1}, serializer="pickle")
    with pytest.raises(ContentDisallowed):
        loads(body, content_type, encoding, accept=app.conf.accept_content)


def test_frame_ref_carries_keys_not_bytes() -> None:
    assert set(FrameRef.model_fields) == {"frame_id", "key", "index", "timestamp", "sha256"}


def test_frame_ref_sha256_is_a_content_hash() -> None:
    data = b"\xff\xd8 some image bytes"
    ref = validated(FrameRef, {"frame_id": "f", "key": "k.jpg", "sha256": content_hash(data)})
    assert ref.sha256 == hashlib.sha256(data).hexdigest()[:32]
    with pytest.raises(InvalidInputError, match="sha256"):
        validated(FrameRef, {"frame_id": "f", "key": "k.jpg", "sha256": "not-a-hash"})


def test_committed_schemas_are_current(repo_root: Path) -> None:
    for name, text in render_schemas().items():
        committed = repo_root / "docs" / "schemas" / name
        assert committed.read_text() == text, f"{committed} is stale: run python -m autolabel.schemas"
