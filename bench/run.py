"""Pipeline benchmarks against a real redis-server, S3 server and worker processes: ``make bench``.

    pipeline   end-to-end frames/s of a job / frames/s of a bare in-process loop (same frames, same batch)
    batching   end-to-end frames/s at batch sizes 1, 2, 4, 8
    latency    one single-frame task into an idle worker: submit-to-result / bare model time
    scaling    end-to-end frames/s with 1, 2 and 4 processes per device on a backlog

Each prints a table and writes bench/results/NAME.json. Ratios are measured side by side in
one run on one machine; absolute numbers only describe that machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


from autolabel.client import LabelingClient
from autolabel.contract import FrameRef, Sampling
from autolabel.devservices import DevStack, free_port, wait_until
from autolabel.settings import Settings
from autolabel.synth import generate_video
from autolabel.video import encode_jpeg, iter_sampled_frames

RESULTS = Path(__file__).resolve().parent / "results"
AUTOLABEL = str(Path(sys.executable).with_name("autolabel"))


def machine() -> dict[str, object]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write(name: str, data: dict[str, object], rows: list[tuple[object, ...]], header: tuple[str, ...]) -> None:
    RESULTS.mkdir(exist_ok=True)
    data["machine"] = machine()
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print(f"\n{name}")
    for row in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


class Bench:
    def __init__(self, stack: DevStack, frames: int, device: str) -> None:
        self.stack, self.device = stack, device
        self.settings: Settings = stack.settings(device=device)
        self.client = LabelingClient(self.settings)
        self.refs, self.jpegs = self._upload_frames(frames)

    def _upload_frames(self, count: int) -> tuple[list[FrameRef], list[bytes]]:
        """Frames of a synthetic 1280x720 video, uploaded once and reused by every run."""
        with tempfile.TemporaryDirectory() as tmp:
            video = Path(tmp) / "bench.mp4"
            generate_video(video, Path(tmp) / "gt.json", width=1280, height=720, fps=25, seconds=count / 25, seed=99)
            refs, jpegs = [], []
            for frame in iter_sampled_frames(video, Sampling()):
                data = encode_jpeg(frame.image)
                key = f"bench/frames/{frame.index:08d}.jpg"
                self.client.store.put_bytes(key, data, "image/jpeg")
                refs.append(FrameRef(frame_id=f"{frame.index:08d}", key=key, index=frame.index))
                jpegs.append(data)
        return refs[:count], jpegs[:count]

    @contextmanager
    def workers(self, batch: int, procs: int) -> Iterator[None]:
        port = free_port()
        process = subprocess.Popen(
            [AUTOLABEL, "worker", "--devices", "cpu" if self.device == "cpu" else "all", "--procs-per-device",
             str(procs), "--batch-size", str(batch), "--health-port", str(port), "--loglevel", "WARNING"],
            env=self.stack.subprocess_env(AUTOLABEL_DEVICE=self.device), stdout=subprocess.DEVNULL)

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                return response.status == 200

        try:
            wait_until(lambda: _quiet(ready), "workers ready", timeout=900)
            yield
        finally:
            process.terminate()
            process.wait(180)

    def job_fps(self, refs: list[FrameRef], batch: int) -> float:
        job_id = self.client.submit_frames(refs, batch_size=batch)
        status = self.client.wait(job_id, poll_s=0.05)
        assert status.done == len(refs), status
        return len(refs) / (status.finished_at - status.created_at)

    def bare(self, batch: int, frames: int | None = None) -> tuple[float, float]:
        """Frames/s of a plain loop over decoded frames, and the median seconds of one single-frame pass."""
        from autolabel_worker.detector import Detector
        from autolabel_worker.frames import decode_image
        from autolabel_worker.models import resolve_model

        model = resolve_model(self.settings)
        detector = Detector.load(model.config, model.checkpoint, device=self.device)
        images = [decode_image(data, self.settings.max_frame_pixels) for data in self.jpegs[:frames]]
        detector.predict(images[:batch], score_threshold=0.3)
        started = time.perf_counter()
        for i in range(0, len(images), batch):
            detector.predict(images[i:i + batch], score_threshold=0.3)
        fps = len(images) / (time.perf_counter() - started)
        singles = []
        for image in images[:10]:
            t = time.perf_counter()
            detector.predict([image], score_threshold=0.3)
            singles.append(time.perf_counter() - t)
        return fps, statistics.median(singles)


def _quiet(probe) -> bool:
    try:
        return probe()
    except Exception:
        return False


def pipeline(bench: Bench, batch: int) -> None:
    # The bare loop runs before and after the job and the two are averaged, so a drift in the
    # machine's speed during the run weighs on both sides of the ratio alike.
    before, _ = bench.bare(batch)
    with bench.workers(batch, 1):
        job_id = bench.client.submit_frames(bench.refs, batch_size=batch)
        status = bench.client.wait(job_id, poll_s=0.05)
        assert status.done == len(bench.refs) and status.finished_at is not None, status
        device_seconds = bench.client.progress.timings(job_id)["device_seconds"]
    after, _ = bench.bare(batch)
    wall = status.finished_at - status.created_at
    e2e, bare = len(bench.refs) / wall, (before + after) / 2
    write("pipeline", {"frames": len(bench.refs), "batch_size": batch, "pipeline_fps": e2e, "bare_fps": bare,
                       "bare_fps_before": before, "bare_fps_after": after, "efficiency": e2e / bare,
                       "device_busy": device_seconds / wall},
          [(len(bench.refs), batch, f"{e2e:.2f}", f"{bare:.2f}", f"{e2e / bare:.3f}", f"{device_seconds / wall:.2f}")],
          ("frames", "batch", "pipeline frames/s", "bare frames/s", "efficiency", "device busy"))


def batching(bench: Bench, frames: int) -> None:
    rows, data = [], {}
    for batch in (1, 2, 4, 8):
        with bench.workers(batch, 1):
            fps = bench.job_fps(bench.refs[:frames], batch)
        data[str(batch)] = fps
        rows.append((batch, f"{fps:.2f}"))
    write("batching", {"frames": frames, "frames_per_second": data}, rows, ("batch", "frames/s"))


def latency(bench: Bench, batch: int) -> None:
    waits = []
    with bench.workers(batch, 1):
        for ref in bench.refs[:10]:
            started = time.time()
            job_id = bench.client.submit_frames([ref], batch_size=batch)
            # The worker stamps the moment the frame's result is recorded (labeled_at), so this
            # client can wait without polling hard for CPU the worker needs. The job's exports
            # (finalize) come after and are not part of a frame's latency.
            while (labeled_at := bench.client.status(job_id).labeled_at) is None:
                time.sleep(0.05)
            waits.append(labeled_at - started)
            bench.client.wait(job_id, poll_s=0.05)  # the next frame meets an idle worker
    _, single = bench.bare(batch, frames=10)
    ratio = statistics.median(waits) / single
    write("latency", {"submit_to_result_s": statistics.median(waits), "bare_single_frame_s": single,
                      "idle_latency_ratio": ratio, "samples": len(waits)},
          [(f"{statistics.median(waits):.3f}", f"{single:.3f}", f"{ratio:.3f}")],
          ("submit-to-result s", "bare model s", "idle_latency_ratio"))


def scaling(bench: Bench, batch: int, frames: int) -> None:
    rows, data = [], {}
    for procs in (1, 2, 4):
        with bench.workers(batch, procs):
            fps = bench.job_fps(bench.refs[:frames], batch)
        data[str(procs)] = fps
        rows.append((procs, f"{fps:.2f}"))
    write("scaling", {"frames": frames, "batch_size": batch, "frames_per_second": data}, rows,
          ("processes", "frames/s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["pipeline", "batching", "latency", "scaling"])
    parser.add_argument("--frames", type=int, default=1000, help="frames of the pipeline job")
    parser.add_argument("--sweep-frames", type=int, default=200, help="frames per batching/scaling run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with DevStack() as stack:
        bench = Bench(stack, max(args.frames, args.sweep_frames), args.device)
        for name in args.names:
            if name == "pipeline":
                pipeline(bench, args.batch_size)
            elif name == "batching":
                batching(bench, args.sweep_frames)
            elif name == "latency":
                latency(bench, args.batch_size)
            elif name == "scaling":
                scaling(bench, args.batch_size, args.sweep_frames)
            else:
                parser.error(f"unknown benchmark {name!r}")


if __name__ == "__main__":
    main()
