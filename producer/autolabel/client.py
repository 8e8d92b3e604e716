"""The Python API a backend calls: ``LabelingClient(settings).submit_video(...)`` and friends."""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

from autolabel import layout
from autolabel.celery_app import make_celery
from autolabel.contract import (
    DetectOptions,
    FrameRef,
    JobManifest,
    JobSpec,
    Sampling,
    Selection,
    content_hash,
    validated,
)
from autolabel.errors import InvalidInputError, JobNotFoundError, NoWorkerError, StorageError, SubmitError
from autolabel.exports import Summary
from autolabel.holders import orphans, orphans_note
from autolabel.jobs import changed_frame, enqueue_frames, frame_change, previous_manifest, start_job
from autolabel.progress import JobState, JobStatus, ProgressStore, broker_checker, ping_broker
from autolabel.selection import FrameSelector
from autolabel.serving import config_names, no_worker_message, unserved_for_s
from autolabel.settings import Settings, get_settings
from autolabel.storage import ObjectStore, parse_s3_uri
from autolabel.video import encode_jpeg, iter_sampled_frames, probe_video

log = logging.getLogger(__name__)


def new_job_id() -> str:
    """Sortable by creation time and readable in a bucket listing."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class LabelingClient:
    """Submit, follow, cancel and retry labeling jobs. Thread-safe; reuse one per process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.store = ObjectStore.from_settings(self.settings)
        self.progress = ProgressStore.from_url(self.settings.broker_url)
        self._broker_checker = broker_checker(self.settings.broker_url)
        self.celery = make_celery(self.settings)

    def _spec(self, source: str, job_id: str | None, options: dict[str, Any]) -> JobSpec:
        detect = validated(DetectOptions, {
            "model": options.get("model") or self.settings.model,
            "score_threshold": options.get("score_threshold", 0.3),
            "classes": options.get("classes") or None,
        })
        self._check_model(detect.model)
        sampling = validated(Sampling, {k: options[k] for k in ("every_nth", "target_fps", "start_s", "end_s")
                                        if options.get(k) is not None})
        if options.get("cut_threshold") is not None and options.get("skip_similar") is None:
            raise InvalidInputError("cut_threshold (--cut-threshold) is a rule of frame selection: give skip_similar "
                                    "(--skip-similar) with it")
        selection = None if options.get("skip_similar") is None else validated(Selection, {
            k: options[k] for k in ("skip_similar", "cut_threshold") if options.get(k) is not None})
        return validated(JobSpec, {
            "job_id": job_id or new_job_id(), "source": source, "options": detect, "sampling": sampling,
            "selection": selection,
            # 0 is refused by the contract, not replaced by the default.
            "batch_size": self.settings.batch_size if options.get("batch_size") is None else options["batch_size"],
            "priority": options.get("priority", 5),
            "track": bool(options.get("track", False)),
        })

    def submit_video(
        self,
        source: str | Path,
        *,
        job_id: str | None = None,
        model: str | None = None,
        score_threshold: float = 0.3,
        classes: Sequence[str] | None = None,
        every_nth: int | None = None,
        target_fps: float | None = None,
        start_s: float | None = None,
        end_s: float | None = None,
        skip_similar: float | None = None,
        cut_threshold: float | None = None,
        priority: int = 5,
        batch_size: int | None = None,
        track: bool = False,
        upload_threads: int = 8,
        on_frame: Callable[[int], None] | None = None,
        replace: bool = False,
    ) -> str:
        """Decode a local video or ``s3://`` URI, upload its sampled frames and enqueue them; returns the job id.

        A ``job_id`` used before for another video is refused before anything of it is overwritten,
        unless ``replace``: then the new video's frames are labeled under it (see ``_previous``).
        ``track``: once its frames are labeled, the job's detections are linked into tracks (on CPU,
        no device time) and the video track exports are written (docs/results.md).

        ``skip_similar``: drop sampled frames of which at most this share changed since the last kept
        one, keeping the first frame after each scene cut (``cut_threshold``); the manifest and
        summary list each dropped frame and the kept frame that stands for it (autolabel.selection).
        """
        spec = self._spec(str(source), job_id, {
            "model": model, "score_threshold": score_threshold, "classes": classes, "every_nth": every_nth,
            "target_fps": target_fps, "start_s": start_s, "end_s": end_s, "skip_similar": skip_similar,
            "cut_threshold": cut_threshold, "priority": priority, "batch_size": batch_size, "track": track})
        # Both services are checked before anything is uploaded: without Redis the frames would be
        # uploaded for nothing, and a missing bucket fails here, once, not as the first frame's upload.
        ping_broker(self.settings.broker_url, checker=self._broker_checker)
        self.store.check_bucket()
        with tempfile.TemporaryDirectory(prefix="autolabel-") as tmp:
            path = self._local_video(str(source), Path(tmp))
            video = probe_video(path)
            previous = self._previous(job_id, replace)
            with self._leftovers_named(spec.job_id):
                selector = FrameSelector(spec.selection) if spec.selection is not None else None
                frames = self._upload_frames(spec, path, upload_threads, on_frame, None if replace else previous,
                                             selector)
        if not frames:
            raise InvalidInputError(f"sampling {spec.sampling.model_dump(exclude_none=True)} selects no frame "
                                    f"of {source} ({video.duration_s:.1f} s, {video.frame_count} frames)")
        with self._leftovers_named(spec.job_id):
            start_job(self.store, self.progress, self.celery, spec, frames, video, previous=previous,
                      selection=selector.report() if selector is not None else None)
        return spec.job_id

    @contextmanager
    def _leftovers_named(self, job_id: str) -> Iterator[None]:
        """A service failing once a submit has written to the bucket (Redis gone during the upload)
        raises SubmitError naming the job id and its prefix. What was written is kept, not deleted:
        the failure may be the store itself, the frames are the work of the whole upload, and a
        submit again under the same job id picks them up (or overwrites them)."""
        try:
            yield
        except (StorageError, redis.RedisError, OperationalError, OSError) as exc:
            where = f"s3://{self.store.bucket}/{layout.job_prefix(job_id)}"
            raise SubmitError(f"job {job_id} was not submitted ({type(exc).__name__}: {exc}); what it wrote stays "
                              f"under {where}: submit again with --job-id {job_id} once the cause is fixed, "
                              "or delete that prefix") from exc

    def _previous(self, job_id: str | None, replace: bool) -> JobManifest | None:
        """The manifest of an earlier submission under ``job_id``. Replacing one that is still
        running is refused: its queued batches would label the new frames under the old ones' ids."""
        previous = previous_manifest(self.store, job_id) if job_id else None
        if previous is not None and replace:
            try:
                status = self.progress.status(previous.spec.job_id)
            except JobNotFoundError:
                return previous
            if not status.ended:
                raise InvalidInputError(f"job {job_id} is {status.state}; cancel it (`autolabel cancel {job_id}`) "
                                        "or let it end before replacing it")
        return previous

    @staticmethod
    def _refuse_other_frames(job_id: str, change: str) -> InvalidInputError:
        return InvalidInputError(f"job {job_id} exists with other frames ({change}); replace it with "
                                 "`--replace` (replace=True) or use another job id")

    def _local_video(self, source: str, tmp: Path) -> Path:
        if source.startswith("s3://"):
            bucket, key = parse_s3_uri(source)
            target = tmp / Path(key).name
            self.store.download(key, target, bucket=bucket)
            return target
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"video {source} does not exist or is not a file")
        return path

    def _upload_frames(self, spec: JobSpec, path: Path, threads: int, on_frame: Callable[[int], None] | None,
                       previous: JobManifest | None, selector: FrameSelector | None) -> list[FrameRef]:
        """Encode and upload frames on a thread pool; at most 2 x threads frames are held in memory.

        With ``selector`` only the frames it keeps are uploaded; it is asked in frame order, here,
        before the pool, so its decisions do not depend on thread timing.

        With ``previous`` (an earlier submission under this job id) each frame is compared with the
        one it would overwrite before it is uploaded: another image stops the upload and is refused.
        """
        slots = threading.BoundedSemaphore(2 * threads)
        pending: list[Future[FrameRef]] = []
        uploaded = 0
        lock = threading.Lock()
        refused = threading.Event()
        # Indexed once: each frame is compared with the one it would overwrite as it is uploaded.
        before = {frame.frame_id: frame for frame in previous.frames} if previous is not None else {}

        def upload(frame_id: str, key: str, frame: Any) -> FrameRef:
            nonlocal uploaded
            try:
                data = encode_jpeg(frame.image)
                ref = FrameRef(frame_id=frame_id, key=key, index=frame.index, timestamp=frame.timestamp,
                               sha256=content_hash(data))
                if change := frame_change(before.get(frame_id), ref):
                    refused.set()
                    raise self._refuse_other_frames(spec.job_id, change)
                if refused.is_set():
                    return ref  # another frame was refused: the upload stops
                self.store.put_bytes(key, data, "image/jpeg")
                with lock:
                    uploaded += 1
                    if on_frame:
                        on_frame(uploaded)
                return ref
            finally:
                slots.release()

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for frame in iter_sampled_frames(path, spec.sampling):
                if refused.is_set():
                    break
                if selector is not None and not selector.consider(frame.index, frame.timestamp, frame.image):
                    continue
                frame_id = layout.video_frame_id(frame.index)
                slots.acquire()
                pending.append(pool.submit(upload, frame_id, layout.frame_key(spec.job_id, frame_id), frame))
            return [future.result() for future in pending]

    def submit_frames(self, frames: Iterable[FrameRef | dict[str, Any]], *, job_id: str | None = None,
                      model: str | None = None, score_threshold: float = 0.3,
                      classes: Sequence[str] | None = None, priority: int = 5,
                      batch_size: int | None = None, replace: bool = False, track: bool = False) -> str:
        """Label frames already in the bucket; returns the job id.

        A ``job_id`` used before with other frames (a frame id naming another key, or another
        ``sha256``) is refused unless ``replace``. Results are reused only for the same image bytes.
        ``track``: as in submit_video, frames in the order given.
        """
        refs = [frame if isinstance(frame, FrameRef) else validated(FrameRef, frame) for frame in frames]
        if not refs:
            raise InvalidInputError("frames: at least one frame is needed")
        spec = self._spec("frames", job_id, {"model": model, "score_threshold": score_threshold,
                                             "classes": classes, "priority": priority, "batch_size": batch_size,
                                             "track": track})
        ping_broker(self.settings.broker_url, checker=self._broker_checker)
        previous = self._previous(job_id, replace)
        if previous is not None and not replace and (change := changed_frame(previous, refs)):
            raise self._refuse_other_frames(spec.job_id, change)
        with self._leftovers_named(spec.job_id):
            start_job(self.store, self.progress, self.celery, spec, refs, previous=previous)
        return spec.job_id

    def _check_model(self, model: str) -> None:
        """Refuse, before anything is uploaded, a model name that is certainly unknown: no config of
        that name in AUTOLABEL_CONFIGS_DIR and no live worker serving it. Without that directory on
        this machine the name cannot be judged here (a worker may start later with its own configs;
        the queues keep the job): ``wait`` and ``status`` then say that no worker takes it."""
        configs = Path(self.settings.configs_dir) if self.settings.configs_dir else None
        if configs is None or not configs.is_dir():
            return
        known = config_names(configs)
        if model in known or unserved_for_s(self.progress.redis, model, since=time.time()) is None:
            return
        raise InvalidInputError(f"unknown model {model!r}: no config {model}.py in AUTOLABEL_CONFIGS_DIR={configs} "
                                f"(known: {', '.join(known) or 'none'}) and no live worker serves it")

    def status(self, job_id: str) -> JobStatus:
        return self.progress.status(job_id)

    def unserved_for_s(self, status: JobStatus) -> float | None:
        """Seconds the job has gone without a live worker for its model; None while one is live or
        once the job has ended."""
        if status.ended:
            return None
        return unserved_for_s(self.progress.redis, status.model, since=status.created_at)

    def orphans_note(self, status: JobStatus) -> str | None:
        """A line while some of the job's tasks are held by a worker process that is gone (its
        heartbeat lapsed) and wait for a live worker's sweep to put them back; None otherwise."""
        if status.ended:
            return None
        return orphans_note(orphans(self.progress.redis, status.job_id),
                            sweep_s=self.celery.conf.broker_transport_options["unacked_restore_interval"])

    def jobs(self, limit: int = 20) -> list[JobStatus]:
        return self.progress.recent(limit)

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 0.5,
             on_update: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Block until the job is done or cancelled, calling ``on_update`` on every poll.

        Raises NoWorkerError once no live worker has served the job's model for
        AUTOLABEL_NO_WORKER_TIMEOUT_S (an unknown model name, or no worker started): such a job
        would be waited on forever.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if on_update:
                on_update(status)
            if status.ended:
                return status
            waited = self.unserved_for_s(status)
            if waited is not None and waited >= self.settings.no_worker_timeout_s:
                raise NoWorkerError(no_worker_message(job_id, status.model, waited))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout} s: {status.finished}/{status.total}")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> JobState:
        """Workers skip the job's remaining batches; frames already labeled keep their results.
        Returns the state the job had; a finalizing or done job is refused (InvalidInputError)."""
        return self.progress.cancel(job_id)

    def manifest(self, job_id: str) -> JobManifest:
        """The job's manifest: its spec, video, frame selection and frames."""
        return JobManifest.model_validate(self.store.get_json(layout.manifest_key(job_id)))

    def retry(self, job_id: str) -> int:
        """Re-enqueue the job's failed and missing frames; returns how many."""
        manifest = self.manifest(job_id)
        done = self.progress.done_frames(job_id)
        todo = [frame for frame in manifest.frames if frame.frame_id not in done]
        if not todo:
            return 0
        self.progress.reopen(job_id, [frame.frame_id for frame in todo])
        enqueue_frames(self.celery, manifest.spec, todo)
        return len(todo)

    def download_results(self, job_id: str, out_dir: Path) -> list[Path]:
        """Download the job's exports (coco.json, labelstudio.json, summary.json, and with tracking
        cvat-video.xml, labelstudio-video.json, mot.txt) into ``out_dir``."""
        status = self.status(job_id)
        if status.state != JobState.DONE:
            raise InvalidInputError(f"job {job_id} is {status.state}, its exports are written when it is done")
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        # The summary lists the exports the job has (the track exports only with tracking).
        summary = Summary.model_validate(self.store.get_json(layout.export_key(job_id, "summary.json")))
        for name in summary.exports:
            path = out_dir / name
            path.write_bytes(self.store.get_bytes(layout.export_key(job_id, name)))
            paths.append(path)
        return paths
