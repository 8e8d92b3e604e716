"""``make demo``: the main job end to end on the embedded defaults, on loopback.

Starts redis-server, an S3-compatible server, one worker and Flower; generates a synthetic
video with ground truth; submits it with ``autolabel submit --wait``; downloads the exports and
previews; prints where they are, the Flower URL and, last, mAP@0.5 against the ground truth.
With ``--track`` (``make demo TRACK=1``) the video has objects that cross and leave the frame, the
job is submitted with ``--track``, and the track exports (CVAT video, Label Studio video,
MOTChallenge) and an MP4 preview with track ids are downloaded too.
Everything it started is stopped on exit, Ctrl-C included; the services' logs (worker, Flower,
redis-server, S3) are copied beside the results first, since the working directory goes away.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from autolabel.celery_app import FLOWER_TASKS_COLUMNS
from autolabel.devservices import DevStack, Service, free_port
from autolabel.exports import CocoFile, Summary
from autolabel.synth import generate_video
from autolabel_worker.scoring import export_boxes, map_scores

OUTPUT = Path("demo-output")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cli(*args: str, env: dict[str, str], capture: bool = False) -> str:
    autolabel = str(Path(sys.executable).with_name("autolabel"))
    result = subprocess.run([autolabel, *args], env=env, check=True, text=True,
                            stdout=subprocess.PIPE if capture else None)
    return result.stdout.strip() if capture else ""


def _keep_logs(workdir: Path, logs: Path) -> Path:
    """Copy the services' logs out of the working directory, which is deleted on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    for log in sorted(workdir.glob("*.log")):
        shutil.copy2(log, logs / log.name)
    return logs


def run(workdir: Path, output: Path, track: bool = False) -> float:
    stack = DevStack(workdir=workdir)
    env = stack.subprocess_env()
    flower_port, health_port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    worker = Service("worker", [str(bin_dir / "autolabel"), "worker", "--health-port", str(health_port)],
                     health_port, workdir / "worker.log")
    flower = Service("flower", [str(bin_dir / "celery"), "--broker", env["AUTOLABEL_BROKER_URL"], "flower",
                                "--address=127.0.0.1", f"--port={flower_port}", f"--tasks_columns={FLOWER_TASKS_COLUMNS}"],
                     flower_port, workdir / "flower.log")
    job_dir = output / "failed-before-submit"
    try:
        print("demo: starting redis-server and the S3 server on loopback", flush=True)
        stack.start()
        worker.start(env)
        flower.start(env)
        print(f"demo: Flower at http://127.0.0.1:{flower_port} while the demo runs (it stops with it)", flush=True)
        video, ground_truth = workdir / "shapes.mp4", workdir / "shapes-gt.json"
        generate_video(video, ground_truth, width=1280, height=720, fps=10, seconds=6, seed=2024,
                       crossings=3 if track else 0)
        print(f"demo: generated {video} (1280x720, 6 s at 10 fps) with ground truth", flush=True)
        job_id = _cli("submit", str(video), "--wait", *(["--track"] if track else []), env=env,
                      capture=True).splitlines()[0]
        job_dir = output / job_id
        _cli("results", job_id, "-o", str(job_dir), env=env)
        _cli("preview", job_id, "-o", str(job_dir / "preview"), "--limit", "60" if track else "10",
             *(["--video"] if track else []), env=env)
        export = CocoFile.model_validate_json((job_dir / "coco.json").read_text())
        tracking = Summary.model_validate_json((job_dir / "summary.json").read_text()).tracking
        if tracking is not None:
            print(f"demo: {tracking.tracks} tracks ({tracking.tracker}, {tracking.seconds} s on CPU); "
                  f"{job_dir}/cvat-video.xml, labelstudio-video.json, mot.txt; "
                  f"{job_dir}/preview/{job_id}.mp4", flush=True)
        scores = map_scores(json.loads(ground_truth.read_text()), export_boxes(export))
    finally:
        flower.stop()
        worker.stop()
        stack.stop()
        logs = _keep_logs(workdir, job_dir / "logs")
        print(f"demo: worker log {logs / worker.log_path.name}, Flower log {logs / flower.log_path.name} "
              f"(redis-server and S3 logs beside them)", flush=True)
    print(f"demo: results downloaded to {job_dir}/ (the bucket s3://{stack.bucket}/jobs/{job_id}/ and Flower "
          "stopped with the demo)")
    print(f"mAP@[.5:.95]: {scores.map:.3f}")
    print(f"mAP@0.5: {scores.map50:.3f}", flush=True)
    return scores.map50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make demo: the main job end to end on loopback")
    parser.add_argument("--track", action="store_true",
                        help="objects that cross and leave, the job tracked, the track exports and an MP4 preview")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="autolabel-demo-") as tmp:
            run(Path(tmp), OUTPUT.resolve(), track=args.track)
    except KeyboardInterrupt:
        print("demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
