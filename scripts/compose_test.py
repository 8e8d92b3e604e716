"""The compose stack, built and run for real: `make compose-test` (docs/deploy.md).

Builds the cpu worker and producer images offline (docker/wheels/) with BuildKit, brings docker-compose.yml up
(with docker/compose.kill-test.yml's short delivery limits), waits for every service to be
healthy, submits a generated video through the cli container and scores its COCO export against
the ground truth (mAP@0.5 >= 0.80), then `docker kill`s the worker in the middle of a second job,
starts it again and checks that the job completes with every frame labeled once. Always ends with
`down -v` and prints the figures. Needs a running docker engine and the stand-in images where no
registry is reachable (scripts/docker-standins.sh), and docker compose (v2 plugin or v1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autolabel.exports import CocoFile, Summary
from autolabel.synth import generate_video
from autolabel_worker.scoring import export_boxes, map_scores

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "autolabel-compose-test"
FILES = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker" / "compose.kill-test.yml")]
ENV = {
    "REDIS_PASSWORD": "compose-test-redis", "MINIO_ROOT_USER": "autolabel", "MINIO_ROOT_PASSWORD": "compose-test-minio",
    "FLOWER_USER": "admin", "FLOWER_PASSWORD": "compose-test-flower", "OFFLINE": "1", "TAG": "compose-test",
}
LONG_RUNNING = ("redis", "minio", "worker", "flower")
figures: dict[str, object] = {}


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    sys.exit("compose-test: neither `docker compose` nor `docker-compose` is installed")


COMPOSE = compose_command()


def buildkit_client() -> str:
    """A docker CLI that builds with BuildKit, which skips the stages a FLAVOR does not use (the
    legacy builder would build the cuda stage for a cpu image too): one with the buildx plugin,
    or Debian docker.io's own client, which has BuildKit built in."""
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0:
        return "docker"
    if Path("/usr/bin/docker").is_file():
        return "/usr/bin/docker"
    sys.exit("compose-test: no docker client with BuildKit (the buildx plugin, or Debian's docker.io)")


BUILDER = buildkit_client()
WORKER_IMAGE = f"autolabel-worker:{ENV['TAG']}-cpu"
PRODUCER_IMAGE = f"autolabel:{ENV['TAG']}"


def sh(*argv: str, check: bool = True, capture: bool = True, env: dict[str, str] | None = None,
       timeout: float = 900) -> str:
    done = subprocess.run(argv, capture_output=capture, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout if capture else ""


def compose(*args: str, data_dir: Path, **kwargs: object) -> str:
    env = {**os.environ, **ENV, "DATA_DIR": str(data_dir), "COMPOSE_PROJECT_NAME": PROJECT}
    env = {k: v for k, v in env.items() if not k.startswith("AUTOLABEL_")}
    return sh(*COMPOSE, *FILES, *args, env=env, **kwargs)  # type: ignore[arg-type]


def step(name: str, started: float) -> None:
    figures[name] = round(time.monotonic() - started, 1)
    print(f"compose-test: {name}: {figures[name]} s", flush=True)


def container(service: str, data_dir: Path) -> str:
    return compose("ps", "-q", service, data_dir=data_dir).strip()


def health(container_id: str) -> str:
    return sh("docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
              container_id).strip()


def wait_healthy(data_dir: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = {service: health(container(service, data_dir)) for service in LONG_RUNNING}
        if all(state == "healthy" for state in states.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not healthy after {timeout_s:.0f} s: {states}")
        time.sleep(3)


def image_report(image: str) -> dict[str, object]:
    size = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image))
    layers = []
    for line in sh("docker", "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image).splitlines():
        layer_size, created_by = line.split("\t", 1)
        layers.append((layer_size, created_by.replace("/bin/sh -c #(nop) ", "")[:90]))
    return {"bytes": size, "mb": round(size / 1e6), "layers": layers}


def start_engine() -> subprocess.Popen[bytes] | None:
    """Debian's dockerd, started here (there is no systemd) unless an engine answers already."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return None
    if not shutil.which("dockerd"):
        sys.exit("compose-test: no docker engine; `make compose-test` installs Debian's docker.io")
    log = (Path(tempfile.gettempdir()) / "autolabel-dockerd.log").open("wb")
    engine = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        if engine.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"compose-test: dockerd did not start; see {log.name}")
        time.sleep(1)
    return engine


def main() -> None:
    engine = start_engine()
    try:
        run_stack()
    finally:
        if engine is not None:
            engine.terminate()
            engine.wait(60)


def run_stack() -> None:
    started_all = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="autolabel-compose-"))
    data_dir.chmod(0o777)  # the cli container's user (10001) writes the results there
    try:
        started = time.monotonic()
        sh(str(ROOT / "scripts" / "docker-wheels.sh"), capture=False)
        sh(str(ROOT / "scripts" / "docker-standins.sh"), capture=False)
        step("wheels and stand-ins", started)

        revision = sh("git", "rev-parse", "HEAD").strip()
        for tag, dockerfile, args in ((WORKER_IMAGE, "worker.Dockerfile", ["FLAVOR=cpu"]),
                                      (PRODUCER_IMAGE, "producer.Dockerfile", [])):
            started = time.monotonic()
            build = [BUILDER, "build", "-q", "-f", f"docker/{dockerfile}", "-t", tag]
            for arg in [*args, "OFFLINE=1", f"REVISION={revision}"]:
                build += ["--build-arg", arg]
            sh(*build, ".", env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout=1800)
            step(f"build {tag}", started)
        figures["images"] = {tag: image_report(tag) for tag in (WORKER_IMAGE, PRODUCER_IMAGE,
                                                                "python:3.11-slim-bookworm")}
        for tag, report in figures["images"].items():  # type: ignore[union-attr]
            print(f"compose-test: {tag}: {report['mb']} MB; largest layers:", flush=True)
            for layer_size, created_by in sorted(report["layers"], key=lambda layer: -_bytes(layer[0]))[:4]:
                print(f"    {layer_size:>8}  {created_by}", flush=True)

        started = time.monotonic()
        compose("up", "-d", "--no-build", data_dir=data_dir, capture=False)
        wait_healthy(data_dir)
        step("up until healthy", started)

        info = generate_video(data_dir / "video.mp4", data_dir / "video.json", width=1280, height=720, fps=10,
                              seconds=3, seed=11)
        started = time.monotonic()
        out = compose("run", "--rm", "cli", "autolabel", "submit", "/data/video.mp4", "--wait", data_dir=data_dir)
        job = out.strip().splitlines()[0]
        step("job 1 (submit --wait)", started)
        compose("run", "--rm", "cli", "autolabel", "results", job, "-o", "/data/out1", data_dir=data_dir)
        coco = CocoFile.model_validate_json((data_dir / "out1" / "coco.json").read_text())
        scores = map_scores(json.loads((data_dir / "video.json").read_text()), export_boxes(coco))
        figures["job 1"] = {"frames": info.frames, "map50": round(scores.map50, 3), "map": round(scores.map, 3)}
        print(f"compose-test: job 1: {figures['job 1']}", flush=True)
        assert len(coco.images) == info.frames and scores.map50 >= 0.80, figures["job 1"]

        kill_test(data_dir)
    finally:
        started = time.monotonic()
        compose("down", "-v", "--remove-orphans", data_dir=data_dir, check=False, capture=False)
        shutil.rmtree(data_dir, ignore_errors=True)
        step("down -v", started)
        figures["total"] = round(time.monotonic() - started_all, 1)
        print("compose-test figures: " + json.dumps({k: v for k, v in figures.items() if k != "images"}), flush=True)


def kill_test(data_dir: Path) -> None:
    info = generate_video(data_dir / "video2.mp4", data_dir / "video2.json", width=1280, height=720, fps=10,
                          seconds=8, seed=12)
    # A cli container that stays up, for status calls without a container start each.
    cli = compose("run", "-d", "cli", "sleep", "3600", data_dir=data_dir).strip().splitlines()[-1]
    try:
        job = sh("docker", "exec", cli, "autolabel", "submit", "/data/video2.mp4", "--job-id", "killed-worker")
        job = job.strip().splitlines()[-1]
        started = time.monotonic()
        while (done := _done(cli, job)) < info.frames // 4:
            assert time.monotonic() - started < 300, f"job 2 made no progress ({done} frames)"
            time.sleep(1)
        worker = container("worker", data_dir)
        sh("docker", "kill", worker)
        figures["job 2 killed at"] = {"frames done": done, "of": info.frames}
        print(f"compose-test: worker killed with {done}/{info.frames} frames done", flush=True)
        killed = time.monotonic()
        sh("docker", "start", worker)
        sh("docker", "exec", cli, "autolabel", "status", job, "--wait", timeout=600)
        figures["job 2 recovery"] = round(time.monotonic() - killed, 1)
        sh("docker", "exec", cli, "autolabel", "results", job, "-o", "/data/out2")
    finally:
        sh("docker", "rm", "-f", cli, check=False)
    coco = CocoFile.model_validate_json((data_dir / "out2" / "coco.json").read_text())
    summary = Summary.model_validate_json((data_dir / "out2" / "summary.json").read_text())
    frame_ids = [image.frame_index for image in coco.images]
    assert sorted(frame_ids) == list(range(info.frames)), f"frames not each once: {sorted(frame_ids)}"
    assert summary.labeled_frames == summary.total_frames == info.frames and not summary.missing_frames
    scores = map_scores(json.loads((data_dir / "video2.json").read_text()), export_boxes(coco))
    figures["job 2"] = {"frames": info.frames, "labeled": summary.labeled_frames,
                        "failed": len(summary.failed_frames), "dead letters": len(summary.dead_letters),
                        "map50": round(scores.map50, 3)}
    print(f"compose-test: job 2: {figures['job 2']}, recovered in {figures['job 2 recovery']} s", flush=True)
    assert figures["job 2"]["failed"] == 0 and scores.map50 >= 0.80, figures["job 2"]  # type: ignore[index]


def _done(cli: str, job: str) -> int:
    line = sh("docker", "exec", cli, "autolabel", "status", job).splitlines()[1]
    return int(line.split()[2].split("/")[0])


def _bytes(size: str) -> float:
    units = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if size.endswith(unit):
            return float(size[: -len(unit)]) * units[unit]
    return 0.0


if __name__ == "__main__":
    main()
