"""A real `autolabel worker` pool for the tests that need one, and what they count with.

Pool starts `autolabel worker` as a subprocess against a DevStack and probes its /ready
endpoint; it finds the processes in the middle of a batch (they hold a task's lease) and
signals them. ``count_frames`` counts a job from the bucket (with versioning on) and the
workers' pass counts; ``tally`` checks the exports and counts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_lib
from PIL import Image

from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.contract import FrameRef, JobManifest
from autolabel.devservices import DevStack, free_port, wait_until
from autolabel.exports import CocoFile, LabelStudioTask, Summary
from autolabel.storage import ObjectStore
from autolabel.synth import render_frames
from autolabel.video import encode_jpeg
from autolabel_worker.delivery import Deliveries

BIN = Path(sys.executable).parent
MODEL = "shapes-rtmdet-tiny"
PROCESSES = 3
THREADS = 4
MAX_DELIVERIES = 3
# Delivery settings scaled down so that recovery from a killed worker takes seconds.
WORKER_ENV = {
    "AUTOLABEL_VISIBILITY_TIMEOUT_S": "20",
    "AUTOLABEL_BATCH_TIME_LIMIT_S": "15",
    "AUTOLABEL_LEASE_S": "4",
    "AUTOLABEL_MAX_DELIVERIES": str(MAX_DELIVERIES),
    "AUTOLABEL_BATCH_SIZE": "4",
}


def small_canvas_configs(repo_root: Path, out: Path) -> Path:
    """A configs dir whose embedded-model config runs on a 320x192 canvas instead of 1280x720:
    same weights and code path, a sixteenth of the compute."""
    text = (repo_root / "configs" / f"{MODEL}.py").read_text()
    assert "width=1280, height=720" in text
    (out / f"{MODEL}.py").write_text(text.replace("width=1280, height=720", "width=320, height=192"))
    return out


class Pool:
    """`autolabel worker` with ``processes`` CPU processes, and the ways to hurt them."""

    def __init__(self, stack: DevStack, configs_dir: Path, log_path: Path, *, processes: int = PROCESSES,
                 threads: int = THREADS, env: Mapping[str, str] = WORKER_ENV) -> None:
        """``env``: settings for the worker processes on top of the stack's (PYTHONPATH, AUTOLABEL_*)."""
        self.stack, self.port, self.log_path = stack, free_port(), log_path
        self.redis = redis_lib.Redis.from_url(env.get("AUTOLABEL_BROKER_URL", stack.settings().broker_url),
                                              decode_responses=True)
        self.log = log_path.open("wb")
        self.launcher = subprocess.Popen(
            [str(BIN / "autolabel"), "worker", "--devices", "cpu", "--procs-per-device", str(processes),
             "--threads", str(threads), "--health-port", str(self.port), "--shutdown-timeout", "60"],
            env=stack.subprocess_env(AUTOLABEL_CONFIGS_DIR=str(configs_dir), **env),
            stdout=self.log, stderr=subprocess.STDOUT)

    def status(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def wait_ready(self, timeout: float = 300) -> None:
        def ready() -> bool:
            if self.launcher.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the worker pool exited with {self.launcher.returncode}; {self.log_path} ends:\n{tail}")
            return self.status()[0] == 200

        wait_until(ready, "every worker process warmed up", timeout)

    def pids(self) -> set[int]:
        return {process["pid"] for process in self.status()[1]["processes"]}

    def busy_pids(self) -> set[int]:
        """Worker processes holding a task's lease right now: each is in the middle of a batch."""
        holders = set()
        for key in self.redis.scan_iter(Deliveries.lease_key("*")):
            token = self.redis.get(key)
            if token and not key.startswith(Deliveries.lease_key("finalize:")):
                holders.add(Deliveries.holder_pid(token))
        return holders & self.pids()

    def kill_busy(self, sig: signal.Signals, rng: random.Random, *, spare: frozenset[int] = frozenset(),
                  timeout: float = 30) -> int:
        """Signal a process that is in the middle of a batch (not one in ``spare``); returns its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if busy := sorted(self.busy_pids() - spare):
                victim = rng.choice(busy)
                try:
                    os.kill(victim, sig)
                    return victim
                except ProcessLookupError:
                    pass  # it died on its own meanwhile (a lease outlives its holder by up to lease_s)
            time.sleep(0.02)
        raise AssertionError(f"no worker process was in the middle of a batch within {timeout:.0f} s")

    def finalized(self, job_id: str) -> int:
        """How many times the job's exports were written, by the workers' own log lines."""
        def count() -> int:
            return self.log_path.read_text(errors="replace").count(f"job {job_id} finalized:")

        wait_until(lambda: count() >= 1, f"the log line of {job_id}'s finalize", 10)
        return count()

    def stop(self) -> None:
        self.launcher.send_signal(signal.SIGTERM)
        try:
            self.launcher.wait(90)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait()
        self.log.close()

    def __enter__(self) -> Pool:
        """Ready to take work; on exit it is stopped and the end of its log printed (pytest shows
        it when a test fails)."""
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        print(self.log_path.read_text(errors="replace")[-4000:])


def upload_frames(store: ObjectStore, prefix: str, count: int, seed: int) -> list[str]:
    """``count`` distinct 320x180 synthetic frames under ``prefix``; jobs point their frames at
    these objects in turn."""
    keys = []
    for frame in render_frames(320, 180, count, seed=seed):
        key = f"{prefix}/{frame.index:03d}.jpg"
        store.put_bytes(key, encode_jpeg(Image.fromarray(frame.image)), "image/jpeg")
        keys.append(key)
    return keys


@dataclass
class Tally:
    """A job's frames, counted from what the exports are not built from: the bucket's listing
    (frame uploads, result objects and every version of each), the workers' per-frame pass
    counts, and the failed list. Redis progress (the done set) is not used."""

    expected: int
    labeled: int  # frames with a result object in the bucket
    failed: int
    lost: int  # expected, without a result object and not failed
    rewritten: dict[str, int]  # frame id -> writes of its result beyond the first (bucket versions)
    passed_again: dict[str, int]  # frame id -> forward passes beyond the first (the workers' count)
    uncounted: list[str]  # frames with a result object and no pass counted: the pass count is incomplete
    export_writes: int  # versions of the most-written export file

    @property
    def duplicated_writes(self) -> int:
        return sum(self.rewritten.values())

    @property
    def duplicated_passes(self) -> int:
        return sum(self.passed_again.values())

    def check(self, *, passes_again_allowed: bool) -> None:
        """What every fault scenario asserts: nothing lost, no result written twice, each pass counted;
        a frame passed twice only where the scenario allows it (a kill between the pass and the write)."""
        assert self.lost == 0, f"{self.lost} frames lost: neither a result object nor failed"
        assert self.duplicated_writes == 0, f"duplicated writes: {self.rewritten}"
        assert self.uncounted == [], f"frames labeled without a counted pass: {self.uncounted[:10]}"
        if not passes_again_allowed:
            assert self.duplicated_passes == 0, f"duplicated passes: {self.passed_again}"


def job_frames(keys: list[str], count: int) -> list[FrameRef]:
    return [FrameRef(frame_id=f"{i:05d}", key=keys[i % len(keys)], index=i) for i in range(count)]


def wait_for_progress(client: LabelingClient, job_id: str, share: float, timeout: float = 300) -> None:
    """Until ``share`` of the job's frames are finished: the fault lands in the middle of the job."""
    wait_until(lambda: (s := client.status(job_id)).finished >= share * s.total, f"{share:.0%} of {job_id}", timeout)


def enable_versioning(store: ObjectStore) -> None:
    """Every write of an object stays as a version: a result written twice shows in the listing."""
    store.client.put_bucket_versioning(Bucket=store.bucket, VersioningConfiguration={"Status": "Enabled"})


@contextmanager
def versioned_stack(workdir: Path) -> Iterator[DevStack]:
    """A test module's own services (its scenarios may restart or pause them), the bucket
    versioned so that every write of an object counts."""
    with DevStack(workdir=workdir) as started:
        enable_versioning(ObjectStore.from_settings(started.settings()))
        yield started


def _versions(store: ObjectStore, prefix: str) -> Counter[str]:
    """Writes per key under ``prefix``: object versions, delete markers left out."""
    writes: Counter[str] = Counter()
    for page in store.client.get_paginator("list_object_versions").paginate(Bucket=store.bucket, Prefix=prefix):
        writes.update(version["Key"] for version in page.get("Versions", []))
    return writes


def _listed(store: ObjectStore, prefix: str) -> set[str]:
    keys: set[str] = set()
    for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def count_frames(client: LabelingClient, job_id: str, frames: list[FrameRef], failed: Mapping[str, str]) -> Tally:
    """Count the job in the bucket and the workers' pass counts (``failed``: the job's failed list).

    Expected frames are the client's own list, the manifest in the bucket and any frame objects
    the producer uploaded under the job; they must agree.
    """
    store, prefix = client.store, layout.job_prefix(job_id)
    expected = {f.frame_id for f in frames}
    manifest = JobManifest.model_validate(store.get_json(layout.manifest_key(job_id)))
    assert {f.frame_id for f in manifest.frames} == expected, "the manifest in the bucket lists other frames"
    uploaded = {key.removeprefix(prefix + "frames/").removesuffix(".jpg") for key in _listed(store, prefix + "frames/")}
    assert uploaded <= expected, f"frames uploaded that the job does not list: {sorted(uploaded - expected)[:10]}"
    results = {key.removeprefix(prefix + "detections/").removesuffix(".json")
               for key in _listed(store, prefix + "detections/")}
    assert results <= expected, f"results for frames the job does not have: {sorted(results - expected)[:10]}"
    writes = _versions(store, prefix)
    passes = client.progress.passes(job_id)
    return Tally(
        expected=len(expected), labeled=len(results), failed=len(set(failed) & expected),
        lost=len(expected - results - set(failed)),
        rewritten={frame_id: n - 1 for frame_id in expected
                   if (n := writes[layout.detection_key(job_id, frame_id)]) > 1},
        passed_again={frame_id: n - 1 for frame_id, n in passes.items() if n > 1},
        uncounted=sorted(frame_id for frame_id in results if passes.get(frame_id, 0) == 0),
        export_writes=max(writes[layout.export_key(job_id, name)] for name in layout.EXPORT_NAMES),
    )


def tally(client: LabelingClient, job_id: str, frames: list[FrameRef]) -> tuple[Tally, Summary]:
    """Check the final exports against each other and against the bucket, and count the job
    (``count_frames``, with the summary's failed list); fails on a frame that is neither labeled
    once nor failed with a reason."""
    store = client.store
    coco = CocoFile.model_validate(store.get_json(layout.export_key(job_id, "coco.json")))
    studio = [LabelStudioTask.model_validate(t) for t in store.get_json(layout.export_key(job_id, "labelstudio.json"))]
    summary = Summary.model_validate(store.get_json(layout.export_key(job_id, "summary.json")))
    image_ids = [image.id for image in coco.images]
    assert len(set(image_ids)) == len(image_ids), "COCO image ids repeat"
    assert {a.image_id for a in coco.annotations} <= set(image_ids)
    labeled = [image.frame_id for image in coco.images]
    assert len(set(labeled)) == len(labeled), "a frame is in coco.json twice"
    assert sorted(str(t.data["frame_id"]) for t in studio) == sorted(labeled)
    failed = {f.frame_id: f.reason for f in summary.failed_frames}
    assert all(reason.strip() for reason in failed.values())
    assert not set(labeled) & set(failed), "a frame is both labeled and failed"
    counts = count_frames(client, job_id, frames, failed)
    assert sorted(summary.missing_frames) == sorted({f.frame_id for f in frames} - set(labeled) - set(failed))
    assert counts.labeled == len(labeled), "coco.json and the result objects in the bucket disagree"
    return counts, summary


def report(capsys: pytest.CaptureFixture[str], scenario: str, counts: Tally, seconds: float, note: str = "",
           *, passes_again_allowed: bool = False) -> None:
    """One line of the scenario table; ``passes_again_allowed`` marks the duplicated passes the scenario permits."""
    with capsys.disabled():
        print(f"\n[fault] {scenario:<38} expected {counts.expected:>5} / labeled {counts.labeled:>5} / "
              f"duplicated writes {counts.duplicated_writes} / duplicated passes {counts.duplicated_passes}"
              f"{' (allowed)' if passes_again_allowed else ''} / failed {counts.failed} / lost {counts.lost}  "
              f"({seconds:.0f} s{', ' + note if note else ''})")
