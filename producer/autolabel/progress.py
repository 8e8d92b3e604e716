"""Job progress in Redis: counters that count each frame once, and a single finalize claim.

Per job:
    autolabel:job:ID          hash: state, total, model, source, timestamps, finalize claim, timings,
                              and the current run's (submission's or retry's) frames labeled and times
    autolabel:job:ID:done     set of frame ids labeled
    autolabel:job:ID:failed   hash frame id -> reason, never holding a frame that is in :done
    autolabel:job:ID:dead     hash task id -> DeadLetter JSON: tasks given up after lost deliveries
    autolabel:job:ID:passes   hash frame id -> forward passes the frame went through; above 1, work
                              was done again (a worker killed between the pass and the write)
    autolabel:jobs            sorted set of job ids by creation time
Recording results is one Lua script, so concurrent workers and redelivered tasks cannot
double-count a frame or both claim the job's finalize step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

import redis
from pydantic import BaseModel, Field

from autolabel.errors import BrokerError, InvalidInputError, JobNotFoundError
from autolabel.settings import mask_url_password

JOBS_INDEX = "autolabel:jobs"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    DONE = "done"
    CANCELLED = "cancelled"


class DeadLetter(BaseModel):
    """A task whose deliveries kept dying (worker killed each time): its frames are failed, not retried again."""

    task_id: str
    frame_ids: list[str]
    lost_deliveries: int = Field(description="deliveries that started and never ended")


class JobStatus(BaseModel):
    job_id: str
    state: JobState
    total: int
    done: int
    failed: int
    model: str
    source: str
    created_at: float
    started_at: float | None = None
    labeled_at: float | None = Field(None, description="when the last frame was labeled or failed; exports follow")
    finished_at: float | None = None
    run_labeled: int = Field(0, description="frames this run (the latest submission or retry) put through the "
                             "model; results reused from an earlier submission of the same job id are not counted")
    run_started_at: float | None = Field(None, description="when this run's first batch started")
    run_labeled_at: float | None = Field(None, description="when this run last labeled a frame")
    failures: dict[str, str] = {}
    dead_letters: list[DeadLetter] = []

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def ended(self) -> bool:
        return self.state in (JobState.DONE, JobState.CANCELLED)

    def frames_per_second(self, now: float | None = None) -> float:
        """Frames this run labeled over its active time: from its first batch's start to now while
        frames are in work, else to its last labeled frame. Frames labeled by an earlier submission
        of the same job id, idle time before a retry and the time since a cancel are not counted
        (``done`` and ``finished_at`` would count them)."""
        if self.run_started_at is None or self.run_labeled == 0:
            return 0.0
        in_work = self.state in (JobState.QUEUED, JobState.RUNNING)
        end = (now or time.time()) if in_work else (self.run_labeled_at or self.run_started_at)
        return self.run_labeled / max(end - self.run_started_at, 1e-6)


# KEYS: job hash, done set, failed hash. ARGV: now, claimer, number of done ids, done ids...,
# then (failed id, reason) pairs. Returns -1 for an unknown job, 1 to the one caller that
# completes the job (it must enqueue finalize), else 0. The claimer (a Celery task id) that
# completed the job gets 1 again when it calls again: a redelivered task whose worker died
# between this call and sending finalize sends it after all.
_RECORD = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
local n_done = tonumber(ARGV[3])
for i = 4, 3 + n_done do
  redis.call('SADD', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
end
for i = 4 + n_done, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end
if state == 'queued' and #ARGV > 3 then
  redis.call('HSET', KEYS[1], 'state', 'running')
  redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
  state = 'running'
end
local finished = redis.call('SCARD', KEYS[2]) + redis.call('HLEN', KEYS[3])
if finished < tonumber(redis.call('HGET', KEYS[1], 'total')) then return 0 end
redis.call('HSETNX', KEYS[1], 'labeled_at', ARGV[1])
if (state == 'running' or state == 'queued')
   and redis.call('HSETNX', KEYS[1], 'finalize_claimed', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'finalizing')
  return 1
end
if state == 'finalizing' and ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'finalize_claimed') == ARGV[2] then
  return 1
end
return 0
"""


# KEYS: job hash. ARGV: now. Returns the state the job had; only a queued or running job becomes
# cancelled. A finalizing or done job has every frame labeled: cancelling it would only keep its
# exports from being written or downloaded.
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1])
end
return state
"""


def broker_checker(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A Redis client for ``ping_broker`` that gives up after ``timeout_s``, to keep between checks."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)


def ping_broker(url: str, timeout_s: float = 2.0, checker: redis.Redis | None = None) -> None:
    """Raise BrokerError unless Redis at ``url`` answers within ``timeout_s``: checked before work that
    would be lost without it (a submit's uploads). ``checker`` (``broker_checker(url)``) keeps its
    connection: a submit's check is then one round trip, not a new connection (1.5 ms of its latency)."""
    try:
        if checker is not None:
            checker.ping()
            return
        with broker_checker(url, timeout_s) as client:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise broker_error(url, exc) from exc


def broker_problem(url: str, exc: BaseException) -> tuple[str, str]:
    """What went wrong with Redis at ``url`` and the fix, naming AUTOLABEL_BROKER_URL with its
    password masked. A refused password is told apart from a Redis that does not answer: the
    fix is in the URL, not in starting a server."""
    where = f"Redis at AUTOLABEL_BROKER_URL={mask_url_password(url)}"
    if isinstance(exc, redis.AuthenticationError):
        return (f"{where} refused the password ({exc})",
                "put Redis's password in AUTOLABEL_BROKER_URL: redis://:PASSWORD@HOST:PORT/DB (rediss:// for TLS)")
    return f"{where} does not answer ({exc})", "start redis-server or point AUTOLABEL_BROKER_URL at a running Redis"


def broker_error(url: str, exc: BaseException) -> BrokerError:
    problem, fix = broker_problem(url, exc)
    return BrokerError(f"{problem}; {fix}")


_RUN_FIELDS = ("run_labeled", "run_started_at", "run_labeled_at")


def _unknown_job(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(f"job {job_id!r} is not known to the broker; check the id with `autolabel jobs`")


def _keys(job_id: str) -> tuple[str, str, str]:
    base = f"autolabel:job:{job_id}"
    return base, f"{base}:done", f"{base}:failed"


def _dead_key(job_id: str) -> str:
    return f"autolabel:job:{job_id}:dead"


def _passes_key(job_id: str) -> str:
    return f"autolabel:job:{job_id}:passes"


def _count_passes(pipe: redis.client.Pipeline, job_id: str, frame_ids: Sequence[str]) -> None:
    for frame_id in frame_ids:
        pipe.hincrby(_passes_key(job_id), frame_id, 1)


class ProgressStore:
    """All reads and writes of job progress. Safe to share between threads."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._record = client.register_script(_RECORD)
        self._cancel = client.register_script(_CANCEL)

    @classmethod
    def from_url(cls, url: str) -> ProgressStore:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, decode_responses=True))

    def register(self, job_id: str, *, total: int, model: str, source: str) -> None:
        """Start tracking a new job (or restart tracking a re-submitted one) with ``total`` frames."""
        job, done, failed = _keys(job_id)
        now = time.time()
        # Nothing of an earlier submission of the same job id stays counted: its frames may not be
        # this submission's (another sampling, another video), and a done set holding them would let
        # the first batch complete the job. This submission's tasks count each frame again, skipping
        # those whose result was made from the same image (autolabel_worker.detect).
        with self.redis.pipeline() as pipe:
            pipe.delete(job, done, failed, _dead_key(job_id))
            pipe.hset(job, mapping={"state": JobState.QUEUED, "total": total, "model": model,
                                    "source": source, "created_at": now})
            pipe.zadd(JOBS_INDEX, {job_id: now})
            pipe.execute()

    def record(self, job_id: str, *, done: Iterable[str], failed: Mapping[str, str], claimer: str = "") -> int:
        """Count frames as labeled or failed; 1 means this caller (``claimer``: its task id) completed the job."""
        done = list(done)
        args: list[str | float | int] = [time.time(), claimer, len(done), *done]
        for frame_id, reason in failed.items():
            args += [frame_id, reason[:500]]
        return int(self._record(keys=list(_keys(job_id)), args=args))

    def dead_letter(self, job_id: str, letter: DeadLetter, reason: str) -> int:
        """Give up on a task's frames: keep the dead letter and fail the frames (as ``record``)."""
        self.redis.hset(_dead_key(job_id), letter.task_id, letter.model_dump_json())
        return self.record(job_id, done=(), failed=dict.fromkeys(letter.frame_ids, reason), claimer=letter.task_id)

    def mark_started(self, job_id: str) -> None:
        """The first batch of the job, and of this run of it, starts work now (later calls change nothing)."""
        job, _, _ = _keys(job_id)
        now = time.time()
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(job, "started_at", now)
            pipe.hsetnx(job, "run_started_at", now)
            pipe.execute()

    def add_timing(self, job_id: str, *, frame_ids: Sequence[str], device_seconds: float,
                   frames_per_pass: int, passes: float = 0.0) -> None:
        """Frames just through the model. ``frames_per_pass`` sums, over the frames, the size of the
        forward pass each rode in; ``passes`` sums 1/size, the job's share of those passes (whole passes
        when no other job's frames rode along). Each frame's pass count goes up by one (see ``passes``)."""
        job, _, _ = _keys(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(job, "frames_inferred", len(frame_ids))
            # This run's rate (JobStatus.frames_per_second) counts frames through the model, not
            # frames whose earlier result was reused.
            pipe.hincrby(job, "run_labeled", len(frame_ids))
            pipe.hset(job, "run_labeled_at", time.time())
            pipe.hincrby(job, "frames_per_pass_sum", frames_per_pass)
            pipe.hincrbyfloat(job, "device_seconds", device_seconds)
            pipe.hincrbyfloat(job, "forward_passes", passes)
            _count_passes(pipe, job_id, frame_ids)
            pipe.execute()

    def count_passes(self, job_id: str, frame_ids: Sequence[str]) -> None:
        """Frames handed to the model whose results will not be used (a batch past its time limit
        still runs): they count as passed, without timings."""
        with self.redis.pipeline() as pipe:
            _count_passes(pipe, job_id, frame_ids)
            pipe.execute()

    def passes(self, job_id: str) -> dict[str, int]:
        """Per frame, the forward passes it went through in all deliveries and submissions of the
        job: a count kept apart from results and exports, so a frame labeled twice shows here."""
        return {frame_id: int(n) for frame_id, n in self.redis.hgetall(_passes_key(job_id)).items()}

    def timings(self, job_id: str) -> dict[str, float]:
        job, _, _ = _keys(job_id)
        names = ("frames_inferred", "frames_per_pass_sum", "device_seconds", "forward_passes")
        return {name: float(value or 0) for name, value in zip(names, self.redis.hmget(job, names))}

    def mark_done(self, job_id: str) -> None:
        job, _, _ = _keys(job_id)
        self.redis.hset(job, mapping={"state": JobState.DONE, "finished_at": time.time()})

    def cancel(self, job_id: str) -> JobState:
        """Cancel a queued or running job; returns the state it had (cancelling twice changes nothing)."""
        state = self._cancel(keys=[_keys(job_id)[0]], args=[time.time()])
        if not state:
            raise _unknown_job(job_id)
        if state in (JobState.FINALIZING, JobState.DONE):
            raise InvalidInputError(f"job {job_id} is {state}: every frame is labeled, there is nothing to cancel "
                                    f"(`autolabel results {job_id}` downloads its exports)")
        return JobState(state)

    def is_cancelled(self, job_id: str) -> bool:
        job, _, _ = _keys(job_id)
        return self.redis.hget(job, "state") == JobState.CANCELLED

    def done_frames(self, job_id: str) -> set[str]:
        return set(self.redis.smembers(_keys(job_id)[1]))

    def reopen(self, job_id: str, frame_ids: Iterable[str]) -> None:
        """Forget the failures and dead letters of frames about to be retried and allow a new finalize."""
        job, _, failed = _keys(job_id)
        frame_ids = list(frame_ids)
        with self.redis.pipeline() as pipe:
            if frame_ids:
                pipe.hdel(failed, *frame_ids)
            pipe.delete(_dead_key(job_id))
            # The retry is a new run: its rate counts its own frames from its own first batch.
            pipe.hdel(job, "finalize_claimed", "labeled_at", "finished_at", *_RUN_FIELDS)
            pipe.hset(job, "state", JobState.RUNNING)
            pipe.execute()

    def status(self, job_id: str) -> JobStatus:
        job, done, failed = _keys(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hgetall(job)
            pipe.scard(done)
            pipe.hgetall(failed)
            pipe.hvals(_dead_key(job_id))
            fields, n_done, failures, dead = pipe.execute()
        if not fields:
            raise _unknown_job(job_id)
        return JobStatus(
            job_id=job_id, state=fields["state"], total=int(fields["total"]), done=n_done,
            failed=len(failures), model=fields.get("model", ""), source=fields.get("source", ""),
            created_at=float(fields["created_at"]),
            started_at=float(fields["started_at"]) if "started_at" in fields else None,
            labeled_at=float(fields["labeled_at"]) if "labeled_at" in fields else None,
            finished_at=float(fields["finished_at"]) if "finished_at" in fields else None,
            run_labeled=int(fields.get("run_labeled", 0)),
            run_started_at=float(fields["run_started_at"]) if "run_started_at" in fields else None,
            run_labeled_at=float(fields["run_labeled_at"]) if "run_labeled_at" in fields else None,
            failures=failures,
            dead_letters=sorted((DeadLetter.model_validate_json(raw) for raw in dead), key=lambda d: d.task_id),
        )

    def recent(self, limit: int = 20) -> list[JobStatus]:
        """The ``limit`` newest jobs, newest first."""
        if limit < 1:
            # Redis reads a stop index of -1 as "to the end": 0 would list every job there is.
            raise InvalidInputError(f"limit must be at least 1, not {limit}")
        statuses = []
        for job_id in self.redis.zrevrange(JOBS_INDEX, 0, limit - 1):
            try:
                statuses.append(self.status(job_id))
            except JobNotFoundError:
                self.redis.zrem(JOBS_INDEX, job_id)
        return statuses
