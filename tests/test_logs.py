"""AUTOLABEL_LOG_FORMAT: the JSON lines and the masking of secrets (the pure parts; the worker
pool's own lines are checked in test_worker_metrics)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from autolabel.celery_app import frames_repr, make_celery
from autolabel.logs import JsonFormatter, RedactingFormatter, mask_handlers, redact, relay_lines, secrets_of
from autolabel.settings import MASK, Settings

PASSWORD = "hunter2-Xy9"
SECRET_KEY = "AKIA-secret-key-0123"


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, broker_url=f"redis://:{PASSWORD}@redis.internal:6379/0",
                    s3_secret_access_key=SECRET_KEY, **values)


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("autolabel.test", logging.WARNING, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize("url", [f"redis://:{PASSWORD}@h:6379/0", f"rediss://default:{PASSWORD}@h:6380/1",
                                 f"http://admin:{PASSWORD}@flower:5555/"])
def test_url_passwords_are_masked(url: str) -> None:
    masked = redact(f"connecting to {url} now", [])
    assert PASSWORD not in masked and f":{MASK}@h" in masked.replace("flower", "h")


def test_secret_values_are_masked_anywhere() -> None:
    secrets = secrets_of(settings())
    assert set(secrets) == {PASSWORD, SECRET_KEY}
    assert redact(f"key={SECRET_KEY} pw {PASSWORD}", secrets) == f"key={MASK} pw {MASK}"


def test_a_json_line_masks_the_message_and_the_traceback() -> None:
    formatter = JsonFormatter({"model": "m", "device": "cpu"}, secrets_of(settings()))
    try:
        raise ConnectionError(f"cannot reach redis://:{PASSWORD}@redis.internal:6379/0")
    except ConnectionError as exc:
        line = formatter.format(record("broker %s with secret %s failed", settings().broker_url, SECRET_KEY,
                                       exc=exc))
    assert "\n" not in line
    parsed = json.loads(line)
    assert PASSWORD not in line and SECRET_KEY not in line
    assert parsed["level"] == "WARNING" and parsed["logger"] == "autolabel.test" and parsed["model"] == "m"
    assert parsed["message"] == f"broker redis://:{MASK}@redis.internal:6379/0 with secret {MASK} failed"
    assert "ConnectionError" in parsed["exception"]


def test_text_lines_stay_readable_and_masked() -> None:
    line = RedactingFormatter(None, secrets_of(settings())).format(record("using %s", settings().broker_url))
    assert line.endswith(f"autolabel.test WARNING using redis://:{MASK}@redis.internal:6379/0")


def test_a_line_inside_a_task_carries_its_job_task_and_frames() -> None:
    app = make_celery(settings())
    formatter = JsonFormatter({}, [])
    lines: list[dict[str, object]] = []

    @app.task(name="test.logs")
    def labeled(**_: object) -> None:
        lines.append(json.loads(formatter.format(record("inside"))))

    labeled.apply(kwargs={"job_id": "job-7", "frames": [{}, {}, {}]}, task_id="task-7")
    assert lines == [{**lines[0], "task_id": "task-7", "task": "test.logs", "job_id": "job-7", "frames": 3}]
    outside = json.loads(formatter.format(record("Task %(name)s[%(id)s] received", {"id": "t-9", "name": "x"})))
    assert outside["task_id"] == "t-9" and "job_id" not in outside
    # Celery's own line about a frame task, before it runs: the job and frames from its kwargsrepr.
    kwargs = {"job_id": "job-8", "frames": [{"frame_id": "00001"}, {"frame_id": "00002"}]}
    received = json.loads(formatter.format(record("Task %(name)s[%(id)s] received", {
        "id": "t-8", "name": "autolabel.detect_frames", "kwargs": frames_repr(kwargs)})))
    assert (received["task_id"], received["job_id"], received["frames"]) == ("t-8", "job-8", 2)


def test_a_childs_output_is_relayed_as_json_lines(capfd: pytest.CaptureFixture[str]) -> None:
    child_line = json.dumps({"level": "INFO", "message": "from the child"})
    relay_lines([child_line.encode() + b"\n", b"\n", f"worker: Warm shutdown, {settings().broker_url}\r\n".encode()],
                {"device": "0", "process": "1"}, secrets_of(settings()))
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == child_line
    wrapped = json.loads(lines[1])
    assert len(lines) == 2 and PASSWORD not in lines[1]
    assert wrapped["message"] == f"worker: Warm shutdown, redis://:{MASK}@redis.internal:6379/0"
    assert (wrapped["device"], wrapped["process"], wrapped["logger"]) == ("0", "1", "output")


def test_celerys_text_handlers_are_wrapped_to_mask_secrets() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(levelname)s/MainProcess] %(message)s"))  # Celery's layout
    logger = logging.getLogger("test.celery-text")
    logger.addHandler(handler)
    logger.propagate = False
    mask_handlers(logger, settings())
    mask_handlers(logger, settings())  # Celery sets up its loggers more than once: wrapped once
    logger.warning("Connected to %s", settings().broker_url)
    assert stream.getvalue() == f"[WARNING/MainProcess] Connected to redis://:{MASK}@redis.internal:6379/0\n"
