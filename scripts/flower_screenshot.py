"""Take docs/img/flower-tasks.png: Flower's tasks page during a real small job, with headless Chromium.

    .venv/bin/python scripts/flower_screenshot.py [docs/img/flower-tasks.png]

Starts redis-server and the S3 server on loopback (DevStack), one `autolabel worker` process,
Flower behind basic auth, submits a 6 s synthetic video at 4 fps (2 frames a task), and takes the
screenshot with Debian's `chromium` once some of the job's tasks are done and others still wait.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from autolabel.celery_app import FLOWER_TASKS_COLUMNS
from autolabel.client import LabelingClient
from autolabel.devservices import DevStack, Service, free_port, wait_until
from autolabel.synth import generate_video

USER, PASSWORD = "operator", "screenshot"


def main(out: Path) -> None:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="flower-shot-") as tmp, DevStack(workdir=Path(tmp)) as stack:
        workdir, env = Path(tmp), stack.subprocess_env()
        health, port = free_port(), free_port()
        worker = Service("worker", [str(bin_dir / "autolabel"), "worker", "--procs-per-device", "1",
                                    "--health-port", str(health)], health, workdir / "worker.log")
        flower = Service("flower", [str(bin_dir / "celery"), "--broker", env["AUTOLABEL_BROKER_URL"], "flower",
                                    "--address=127.0.0.1", f"--port={port}", f"--tasks_columns={FLOWER_TASKS_COLUMNS}"],
                         port, workdir / "flower.log")
        worker.start(env)
        flower.start({**env, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})
        try:
            client = LabelingClient(stack.settings())
            video = workdir / "shapes.mp4"
            generate_video(video, workdir / "shapes.json", width=1280, height=720, fps=10, seconds=6, seed=7)
            wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/ready", timeout=2).status == 200,
                       "the worker warmed up", 300)
            job_id = client.submit_video(video, job_id="shapes-cam-0412", target_fps=4, batch_size=2)
            wait_until(lambda: client.status(job_id).finished >= client.status(job_id).total // 2,
                       "half of the job", 300)
            time.sleep(1)
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--window-size=1600,900", "--virtual-time-budget=8000", f"--screenshot={out.resolve()}",
                            f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/tasks"], check=True, timeout=120,
                           capture_output=True)
            print(f"{out}: Flower's tasks page with job {job_id} at {client.status(job_id).finished} of "
                  f"{client.status(job_id).total} frames")
        finally:
            flower.stop()
            worker.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/flower-tasks.png"))
