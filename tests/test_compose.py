"""The compose stack built and run for real (docs/deploy.md); `make compose-test` runs this module alone.

A docker engine (Debian's dockerd, started here as root when none answers, and stopped after), the
stand-in base images where no registry serves the real ones (scripts/docker-standins.sh), the cpu
worker and producer images built offline from docker/wheels/ (scripts/docker-wheels.sh), then
docker-compose.yml brought up unchanged but for docker/compose.kill-test.yml (delivery limits of
seconds, Redis on a loopback port for the counts). A generated video goes in through the cli
container and its COCO export is scored against the ground truth; the worker container is
`docker kill`ed in the middle of a second job and started again, and that job must end with every
frame labeled, its result written once and its pass counted. `down -v` whatever happens; the images
stay, cached for the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.contract import JobManifest
from autolabel.devservices import free_port, wait_until
from autolabel.exports import CocoFile
from autolabel.settings import Settings
from autolabel.synth import generate_video
from autolabel_worker.scoring import export_boxes, map_scores
from workerpool import enable_versioning, tally

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "autolabel-compose-test"
FILES = ["-f", "docker-compose.yml", "-f", "docker/compose.kill-test.yml"]
ENV = {
    "REDIS_PASSWORD": "compose-test-redis", "MINIO_ROOT_USER": "autolabel", "MINIO_ROOT_PASSWORD": "compose-test-minio",
    "FLOWER_USER": "admin", "FLOWER_PASSWORD": "compose-test-flower", "OFFLINE": "1", "TAG": "compose-test",
    # Ports nothing on this host uses: a CI machine may run its own MinIO on 9000.
    **{name: str(free_port()) for name in ("MINIO_PORT", "MINIO_CONSOLE_PORT", "FLOWER_PORT", "EXPORTER_PORT")},
}
WORKER_IMAGE = f"autolabel-worker:{ENV['TAG']}-cpu"
PRODUCER_IMAGE = f"autolabel:{ENV['TAG']}"
BASE_IMAGE = "python:3.11-slim-bookworm"
LONG_RUNNING = ("redis", "minio", "worker", "flower")


def sh(what: str, *argv: str, env: dict[str, str] | None = None, timeout_s: float = 600) -> str:
    """Run ``argv`` in the repository; a failure is one line naming ``what`` and the command, then its output."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: `{' '.join(argv)}` still running after {timeout_s:.0f} s", pytrace=False)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        pytest.fail(f"{what}: `{' '.join(argv)}` exited {done.returncode}: {last}\n{done.stdout[-4000:]}"
                    f"\n{done.stderr[-4000:]}", pytrace=False)
    return done.stdout


def compose_command() -> list[str]:
    """Docker Compose v2 (the plugin) where it is installed, else Debian's docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed: run `make services`", pytrace=False)


def buildkit_client() -> str:
    """A docker CLI that builds with BuildKit, which skips the stages a FLAVOR does not use (the
    legacy builder builds the cuda stage for a cpu image too): one with the buildx plugin, or
    Debian docker.io's own client, which has BuildKit built in."""
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0:
        return "docker"
    if Path("/usr/bin/docker").is_file():
        return "/usr/bin/docker"
    pytest.fail("no docker client that builds with BuildKit (the buildx plugin, or Debian's docker.io)", pytrace=False)


@dataclass
class Figures:
    """What the run measured, printed as it goes (docs/deploy.md quotes them)."""

    config: pytest.Config

    def say(self, line: str) -> None:
        # Past the output capture, as it happens (module fixtures have no capsys to disable).
        with self.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print(f"[compose] {line}", flush=True)


@pytest.fixture(scope="module")
def figures(pytestconfig: pytest.Config) -> Figures:
    return Figures(pytestconfig)


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    """A docker engine: the one that answers, else Debian's dockerd started here (there is no
    systemd) and stopped after, with the containerd it started."""
    if not shutil.which("docker"):
        pytest.fail("no docker client: run `make services` (Debian's docker.io)", pytrace=False)
    if engine_answers():
        yield
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).is_file():
        pytest.fail("no docker engine answers and dockerd is not installed: run `make services`", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("no docker engine answers, and dockerd can be started only as root", pytrace=False)
    log_path = Path(tempfile.gettempdir()) / "autolabel-dockerd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_until(lambda: process.poll() is not None or engine_answers(), "dockerd to answer", timeout=90)
        except TimeoutError:
            pytest.fail(f"dockerd did not answer within 90 s; its log: {log_path}", pytrace=False)
        if process.poll() is not None:
            pytest.fail(f"dockerd exited {process.returncode} at start; its log: {log_path}", pytrace=False)
        yield
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def image_id(image: str) -> str | None:
    done = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def image_report(image: str) -> tuple[int, list[tuple[int, str]]]:
    """Uncompressed size in bytes, and the layers' sizes and what made them, largest first."""
    size = int(sh(f"docker image inspect {image}", "docker", "image", "inspect", "-f", "{{.Size}}", image))
    layers = []
    for line in sh(f"docker history {image}", "docker", "history", "--no-trunc", "--human=false",
                   "--format", "{{.Size}}\t{{.CreatedBy}}", image).splitlines():
        layer_bytes, created_by = line.split("\t", 1)
        layers.append((int(layer_bytes), created_by.replace("/bin/sh -c #(nop) ", "")[:100]))
    return size, sorted(layers, reverse=True)


@dataclass
class Images:
    sizes: dict[str, int]  # image -> uncompressed bytes
    revision: str  # the commit they were built at (the OCI revision label)


@pytest.fixture(scope="module")
def images(engine: None, figures: Figures) -> Images:
    """The wheels, the stand-ins where needed, and the two images built offline with BuildKit."""
    started = time.monotonic()
    sh("scripts/docker-wheels.sh (the images' wheels from the host's)", "scripts/docker-wheels.sh", timeout_s=900)
    sh("scripts/docker-standins.sh (base images no registry serves here)", "scripts/docker-standins.sh",
       timeout_s=1200)
    figures.say(f"wheels and stand-ins: {time.monotonic() - started:.0f} s")
    revision = sh("git rev-parse", "git", "rev-parse", "HEAD").strip()
    builder = buildkit_client()
    for tag, dockerfile, args in ((WORKER_IMAGE, "worker.Dockerfile", ["FLAVOR=cpu"]),
                                  (PRODUCER_IMAGE, "producer.Dockerfile", [])):
        started = time.monotonic()
        previous = image_id(tag)
        build = [builder, "build", "-q", "-f", f"docker/{dockerfile}", "-t", tag]
        for arg in [*args, "OFFLINE=1", f"REVISION={revision}"]:
            build += ["--build-arg", arg]
        sh(f"building {tag}", *build, ".", env={**os.environ, "DOCKER_BUILDKIT": "1"}, timeout_s=1800)
        if previous and previous != image_id(tag):  # the last run's image, untagged now: not left to fill the disk
            subprocess.run(["docker", "image", "rm", previous], capture_output=True, timeout=120)
        figures.say(f"build {tag}: {time.monotonic() - started:.0f} s")
    # Each build with changed code adds gigabytes of cache; what a warm run uses is under 5 GB.
    sh("pruning the build cache", builder, "builder", "prune", "-f", "--keep-storage", "10GB", timeout_s=900)
    sizes = {}
    for tag in (WORKER_IMAGE, PRODUCER_IMAGE, BASE_IMAGE):
        sizes[tag], layers = image_report(tag)
        figures.say(f"{tag}: {sizes[tag] / 1e6:.0f} MB; largest layers: "
                    + "; ".join(f"{n / 1e6:.0f} MB {what}" for n, what in layers[:3]))
    return Images(sizes, revision)


@dataclass
class Stack:
    """The compose project this module brought up."""

    data_dir: Path  # /data in the cli container
    compose_argv: list[str]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLABEL_")}
        return {**env, **ENV, "DATA_DIR": str(self.data_dir), "COMPOSE_PROJECT_NAME": PROJECT}

    def compose(self, what: str, *args: str, timeout_s: float = 600) -> str:
        return sh(what, *self.compose_argv, *FILES, *args, env=self.env(), timeout_s=timeout_s)

    def container(self, service: str) -> str:
        return self.compose(f"finding the {service} container", "ps", "-q", service).strip()

    def health(self) -> dict[str, str]:
        states = {}
        for service in LONG_RUNNING:
            container = self.container(service)
            states[service] = sh(f"docker inspect ({service})", "docker", "inspect", "-f",
                                 "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
                                 container).strip() if container else "not created"
        return states

    def client(self) -> LabelingClient:
        """A client on this machine, on the stack's Redis (a loopback port the override publishes)
        and MinIO (its loopback port): the counts the fault suite takes."""
        redis_port = self.compose("finding Redis' port", "port", "redis", "6379").strip().rsplit(":", 1)[1]
        minio_port = self.compose("finding MinIO's port", "port", "minio", "9000").strip().rsplit(":", 1)[1]
        return LabelingClient(Settings(
            _env_file=None, broker_url=f"redis://:{ENV['REDIS_PASSWORD']}@127.0.0.1:{redis_port}/0",
            s3_endpoint_url=f"http://127.0.0.1:{minio_port}", s3_access_key_id=ENV["MINIO_ROOT_USER"],
            s3_secret_access_key=ENV["MINIO_ROOT_PASSWORD"], bucket="autolabel"))


@pytest.fixture(scope="module")
def stack(images: Images, figures: Figures, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("compose-data")
    data_dir.chmod(0o777)  # the cli container's user (10001) writes the results there
    started = time.monotonic()
    stack = Stack(data_dir, compose_command())
    try:
        stack.compose("docker compose up", "up", "-d", "--no-build")
        try:
            wait_until(lambda: set(stack.health().values()) == {"healthy"}, "every service healthy", timeout=600)
        except TimeoutError:
            pytest.fail(f"the stack is not healthy after 600 s: {stack.health()}", pytrace=False)
        figures.say(f"up until every service is healthy: {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        # Every service's log, kept past down -v for a failure's post-mortem.
        log_path = tmp_path_factory.getbasetemp() / "compose.log"
        with log_path.open("w") as log:
            subprocess.run([*stack.compose_argv, *FILES, "logs", "--no-color", "--timestamps"], cwd=ROOT,
                           env=stack.env(), stdout=log, stderr=subprocess.STDOUT, timeout=120)
        figures.say(f"the services' logs: {log_path}")
        started = time.monotonic()
        # down -v: containers, the project's network and its named volumes; not the images.
        subprocess.run([*stack.compose_argv, *FILES, "down", "-v", "--remove-orphans", "--timeout", "30"],
                       cwd=ROOT, env=stack.env(), capture_output=True, timeout=300)
        figures.say(f"down -v: {time.monotonic() - started:.0f} s")


def test_images_built_offline_on_the_slim_base(images: Images) -> None:
    # The sizes docs/deploy.md quotes; the cpu worker's target (1.5 GB) is met and must stay met.
    worker_bytes = images.sizes[WORKER_IMAGE]
    assert worker_bytes <= 1.5e9, f"cpu worker {worker_bytes / 1e6:.0f} MB > 1500 MB"
    for image in (WORKER_IMAGE, PRODUCER_IMAGE):
        inspect = sh("docker image inspect", "docker", "image", "inspect", "-f", "{{json .Config}}", image)
        config = json.loads(inspect)
        assert config["User"] == "10001" and config["Entrypoint"] == ["autolabel"], image
        assert config["Labels"]["org.opencontainers.image.revision"] == images.revision, image


def test_video_through_the_cli_container_is_labeled(stack: Stack, figures: Figures) -> None:
    info = generate_video(stack.data_dir / "video.mp4", stack.data_dir / "video.json", width=1280, height=720,
                          fps=10, seconds=3, seed=11)
    started = time.monotonic()
    out = stack.compose("`autolabel submit --wait` in the cli container",
                        "run", "--rm", "cli", "autolabel", "submit", "/data/video.mp4", "--wait")
    job = out.strip().splitlines()[0]
    seconds = time.monotonic() - started
    stack.compose("`autolabel results` in the cli container", "run", "--rm", "cli", "autolabel", "results", job,
                  "-o", "/data/out1")
    coco = CocoFile.model_validate_json((stack.data_dir / "out1" / "coco.json").read_text())
    scores = map_scores(json.loads((stack.data_dir / "video.json").read_text()), export_boxes(coco))
    figures.say(f"job 1: {info.frames} frames in {seconds:.0f} s (submit --wait), mAP@0.5 {scores.map50:.3f}, "
                f"mAP {scores.map:.3f}")
    assert len(coco.images) == info.frames, f"{len(coco.images)} of {info.frames} frames in coco.json"
    assert scores.map50 >= 0.80, f"mAP@0.5 {scores.map50:.3f} < 0.80"


def test_killed_worker_container_job_completes_with_every_frame_once(stack: Stack, figures: Figures) -> None:
    info = generate_video(stack.data_dir / "video2.mp4", stack.data_dir / "video2.json", width=1280, height=720,
                          fps=10, seconds=8, seed=12)
    client = stack.client()
    enable_versioning(client.store)  # every write of a result object stays: one written twice shows
    # A cli container that stays up: status calls without a container start each.
    cli = stack.compose("starting a cli container", "run", "-d", "cli", "sleep", "3600").strip().splitlines()[-1]
    try:
        job = sh("`autolabel submit` in the cli container", "docker", "exec", cli, "autolabel", "submit",
                 "/data/video2.mp4", "--job-id", "killed-worker").strip().splitlines()[-1]
        try:
            wait_until(lambda: client.status(job).finished >= info.frames // 4, "a quarter of job 2", timeout=300)
        except TimeoutError:
            pytest.fail(f"job 2 made no progress in 300 s: {client.status(job)}", pytrace=False)
        worker = stack.container("worker")
        done = client.status(job).finished
        sh("docker kill (the worker)", "docker", "kill", worker)
        killed = time.monotonic()
        sh("docker start (the worker)", "docker", "start", worker)
        sh("`autolabel status --wait` after the kill", "docker", "exec", cli, "autolabel", "status", job, "--wait")
        recovery_s = time.monotonic() - killed
        sh("`autolabel results` after the kill", "docker", "exec", cli, "autolabel", "results", job,
           "-o", "/data/out2")
    finally:
        subprocess.run(["docker", "rm", "-f", cli], capture_output=True, timeout=60)
    manifest = JobManifest.model_validate(client.store.get_json(layout.manifest_key(job)))
    assert len(manifest.frames) == info.frames, f"the manifest lists {len(manifest.frames)} of {info.frames} frames"
    counts, summary = tally(client, job, manifest.frames)
    coco = CocoFile.model_validate_json((stack.data_dir / "out2" / "coco.json").read_text())
    scores = map_scores(json.loads((stack.data_dir / "video2.json").read_text()), export_boxes(coco))
    figures.say(f"job 2: worker killed at {done}/{info.frames} frames, complete {recovery_s:.0f} s later: "
                f"labeled {counts.labeled}, written twice {counts.duplicated_writes}, passed again "
                f"{counts.duplicated_passes}, failed {counts.failed}, lost {counts.lost}, dead letters "
                f"{len(summary.dead_letters)}, mAP@0.5 {scores.map50:.3f}")
    assert done < info.frames, "the worker was killed after the job had finished"
    # A frame may pass twice when the kill fell between its forward pass and its write; never twice written.
    counts.check(passes_again_allowed=True)
    assert counts.labeled == info.frames and counts.failed == 0, counts
    assert sorted(image.frame_index for image in coco.images) == list(range(info.frames))
    assert scores.map50 >= 0.80, f"mAP@0.5 {scores.map50:.3f} < 0.80"
