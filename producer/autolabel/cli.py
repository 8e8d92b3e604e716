"""The ``autolabel`` command line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import click
import redis

from autolabel.contract import MAX_FRAMES_PER_TASK
from autolabel.errors import AutolabelError
from autolabel.progress import JobState, JobStatus, broker_error
from autolabel.serving import no_worker_message
from autolabel.settings import get_settings


# Other packages add commands through this entry-point group: the worker package its `worker`,
# `inspect-checkpoint` and `fetch-model` (worker/pyproject.toml). A command is imported only when
# it is run or listed, so `autolabel submit` never imports the worker's ML stack.
COMMANDS_GROUP = "autolabel.commands"


def _plugin_commands() -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group=COMMANDS_GROUP)}


class _Group(click.Group):
    """Our errors are for users: print the message, exit 1, no traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        entry = None if command else _plugin_commands().get(cmd_name)
        if entry is None:
            return command
        try:
            return entry.load()
        except ImportError as exc:
            raise click.ClickException(f"`{cmd_name}` needs the autolabel-worker package and its ML stack ({exc}); "
                                       "run `make setup`") from exc

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                               list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            if _plugin_commands() or "No such command" not in exc.message:
                raise
            raise click.UsageError(f"{exc.message} Commands such as `worker` come with the autolabel-worker "
                                   "package (`make setup`, or `pip install ./worker`).", ctx) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AutolabelError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
        except redis.RedisError as exc:
            # Redis failing under a command (a wrong password, Redis gone): one line naming the
            # setting, its password masked. The settings were read already, or the command had not run.
            error = broker_error(get_settings().broker_url, exc)
            raise click.ClickException(f"{type(error).__name__}: {error}") from exc


def _client():  # imported lazily: `autolabel --help` and `doctor` need no broker connection
    from autolabel.client import LabelingClient

    return LabelingClient(get_settings())


@click.group(cls=_Group)
@click.version_option(package_name="autolabel")
def main() -> None:
    """Label video with a heavy detector through Redis/Celery workers and S3 storage."""


@main.command()
@click.option("--producer", is_flag=True, help="Skip the ML-stack checks (a producer-only install).")
@click.option("--create-bucket", is_flag=True, help="Create AUTOLABEL_BUCKET first if it does not exist.")
def doctor(producer: bool, create_bucket: bool) -> None:
    """Check the installed stack, the settings and the services; exit non-zero on any failure."""
    from autolabel.doctor import diagnose, report

    checks, settings = diagnose(ml_stack=not producer, create_bucket=create_bucket)
    if not report(checks, settings, click.echo):
        sys.exit(1)


class ProgressLine:
    """One status line: redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, interactive: bool, every_s: float = 2.0,
                 note: Callable[[JobStatus], str | None] | None = None) -> None:
        """``note``: a line that replaces the ETA and state while it has one (tasks held by a dead worker)."""
        self.interactive, self.every_s, self.last, self.note = interactive, every_s, 0.0, note

    def __call__(self, status: JobStatus) -> None:
        now = time.monotonic()
        if not self.interactive and now - self.last < self.every_s and not status.ended:
            return
        self.last = now
        rate = status.frames_per_second()
        left = status.total - status.finished
        eta = f"{left / rate:.0f}s" if rate > 0 and left else "-"
        filled = int(30 * status.finished / status.total) if status.total else 30
        note = self.note(status) if self.note else None
        line = (f"[{'#' * filled}{'.' * (30 - filled)}] {status.done}/{status.total} done, "
                f"{status.failed} failed, {rate:.1f} frames/s, {note or f'ETA {eta}, {status.state}'}")
        click.echo(f"\r{line}" if self.interactive else line, nl=not self.interactive, err=True)
        if self.interactive and status.ended:
            click.echo(err=True)


def _wait(job_id: str) -> None:
    client = _client()
    status = client.wait(job_id, on_update=ProgressLine(sys.stderr.isatty(), note=client.orphans_note))
    click.echo(f"job {job_id} {status.state}: {status.done} labeled, {status.failed} failed")
    if status.failed:
        sys.exit(2)


@main.command()
@click.argument("source")
@click.option("--every-nth", type=int, help="Keep every Nth frame.")
@click.option("--fps", "target_fps", type=float, help="Keep frames at this rate (follows timestamps).")
@click.option("--start", "start_s", type=float, help="Start time in seconds.")
@click.option("--end", "end_s", type=float, help="End time in seconds.")
@click.option("--skip-similar", type=click.FloatRange(0, 1, max_open=True), metavar="SHARE",
              help="Drop sampled frames of which at most this share (0..1) changed since the last kept frame, "
                   "e.g. 0.002; the first frame after a scene cut is always kept. The manifest and summary list "
                   "each dropped frame.")
@click.option("--cut-threshold", type=click.FloatRange(0, 1, min_open=True),
              help="Colour-histogram distance (0..1) from the previous sampled frame above which a frame starts a "
                   "new scene (with --skip-similar; default 0.1).")
@click.option("--model", help="Model name (default: AUTOLABEL_MODEL).")
@click.option("--score-threshold", type=float, default=0.3, show_default=True)
@click.option("--classes", help="Comma-separated class names to keep.")
@click.option("--priority", type=click.IntRange(0, 9), default=5, show_default=True, help="0 is served first.")
@click.option("--frames-per-task", "--batch-size", "batch_size", type=click.IntRange(1, MAX_FRAMES_PER_TASK),
              help="Frames per task message: how the job's work is split among workers (default: "
                   "AUTOLABEL_BATCH_SIZE). Not the worker's forward-pass size (`worker --batch-size`).")
@click.option("--track", is_flag=True,
              help="Link the detections across frames into tracks (on CPU once the frames are labeled) and write "
                   "CVAT video, Label Studio video and MOTChallenge exports beside COCO.")
@click.option("--job-id", help="Job id (default: a new time-sortable id).")
@click.option("--replace", is_flag=True,
              help="Label this video under --job-id even if the id was used for another video (refused otherwise).")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
def submit(source: str, classes: str | None, wait: bool, **options: Any) -> None:
    """Submit a video file or s3:// URI for labeling."""
    client = _client()
    started = time.monotonic()

    def uploaded(count: int) -> None:
        if sys.stderr.isatty():
            click.echo(f"\ruploading frames: {count}", nl=False, err=True)

    job_id = client.submit_video(source, classes=classes.split(",") if classes else None,
                                 on_frame=uploaded, **options)
    status = client.status(job_id)
    click.echo(f"{chr(10) if sys.stderr.isatty() else ''}job {job_id}: {status.total} frames uploaded "
               f"and enqueued in {time.monotonic() - started:.1f}s", err=True)
    if options["skip_similar"] is not None and (selection := client.manifest(job_id).selection) is not None:
        click.echo(f"frame selection: {selection.kept} of {selection.considered} sampled frames kept "
                   f"({len(selection.cuts)} scene cuts), {len(selection.dropped)} near-duplicates dropped", err=True)
    click.echo(job_id)
    if wait:
        _wait(job_id)


_COLUMNS = ("JOB", "STATE", "DONE", "FAILED", "FRAMES/S", "MODEL", "CREATED", "SOURCE")
_RIGHT_ALIGNED = {"DONE", "FAILED", "FRAMES/S"}


def _table(statuses: list[JobStatus]) -> list[str]:
    """A header and one line per job, each column as wide as its widest cell."""
    rows = [_COLUMNS] + [(
        status.job_id, status.state.value, f"{status.done}/{status.total}", str(status.failed),
        f"{status.frames_per_second():.1f}", status.model,
        datetime.fromtimestamp(status.created_at).strftime("%Y-%m-%d %H:%M:%S"), status.source,
    ) for status in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return ["  ".join(cell.rjust(width) if name in _RIGHT_ALIGNED else cell.ljust(width)
                      for name, cell, width in zip(_COLUMNS, row, widths)).rstrip() for row in rows]


@main.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
def status(job_id: str, wait: bool) -> None:
    """Show a job's progress and its failed frames."""
    if wait:
        _wait(job_id)
        return
    client = _client()
    current = client.status(job_id)
    for line in _table([current]):
        click.echo(line)
    if (waited := client.unserved_for_s(current)) is not None:
        click.echo(f"  {no_worker_message(job_id, current.model, waited)}")
    if note := client.orphans_note(current):
        click.echo(f"  {note}")
    for frame_id, reason in sorted(current.failures.items()):
        click.echo(f"  failed {frame_id}: {reason}")
    for letter in current.dead_letters:
        click.echo(f"  dead letter: task {letter.task_id} after {letter.lost_deliveries} lost deliveries, "
                   f"frames {', '.join(letter.frame_ids)}")


@main.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many jobs.")
def jobs(limit: int) -> None:
    """List recent jobs, newest first; frames/s counts the latest run (submission or retry) only."""
    for line in _table(_client().jobs(limit)):
        click.echo(line)


@main.command()
@click.argument("job_id")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True)
def results(job_id: str, out_dir: Path) -> None:
    """Download a finished job's exports (COCO, Label Studio, summary)."""
    for path in _client().download_results(job_id, out_dir):
        click.echo(str(path))


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Stop a queued or running job: workers skip its remaining frames. A finished job is refused."""
    if _client().cancel(job_id) == JobState.CANCELLED:
        click.echo(f"job {job_id} was already cancelled")
    else:
        click.echo(f"job {job_id} cancelled")


@main.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
def retry(job_id: str, wait: bool) -> None:
    """Re-enqueue a job's failed and missing frames only."""
    count = _client().retry(job_id)
    click.echo(f"job {job_id}: {count} frames re-enqueued")
    if wait and count:
        _wait(job_id)


@main.command()
@click.argument("job_id")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many frames.")
@click.option("--video", is_flag=True, help="Also write OUT/JOB_ID.mp4: the frames in order with their boxes.")
def preview(job_id: str, out_dir: Path, limit: int, video: bool) -> None:
    """Render frames with their boxes, class names and track ids to PNG files (and an MP4)."""
    from autolabel.preview import render_preview, render_video

    store = _client().store
    paths = render_preview(store, job_id, out_dir, limit=limit)
    click.echo(f"{len(paths)} frames rendered to {out_dir}")
    if video:
        mp4 = out_dir / f"{job_id}.mp4"
        click.echo(f"{render_video(store, job_id, mp4, limit=limit)} frames in {mp4}")



@main.command()
@click.option("--host", help="Address /metrics listens on (default: AUTOLABEL_EXPORTER_HOST, 0.0.0.0).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port of /metrics (default: AUTOLABEL_EXPORTER_PORT, 9464).")
def exporter(host: str | None, port: int | None) -> None:
    """Serve the queue, job and worker-count metrics for Prometheus, read from Redis at each scrape.

    One per system (not per worker): docs/operations.md."""
    from autolabel.exporter import serve
    from autolabel.logs import configure

    settings = get_settings()
    configure(settings)  # AUTOLABEL_LOG_FORMAT, secrets masked
    serve(settings.broker_url, host or settings.exporter_host, port or settings.exporter_port)


def _frame_ranges(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    ranges = []
    for value in values:
        start, _, end = value.partition("-")
        if not (start.isdigit() and end.isdigit() and int(start) < int(end)):
            raise click.BadParameter(f"{value!r} is not START-END, two frame numbers with START < END", ctx, param)
        ranges.append((int(start), int(end)))
    return tuple(ranges)


@main.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--gt", "gt_path", type=click.Path(dir_okay=False, path_type=Path),
              help="COCO ground-truth file (default: OUT with .json).")
@click.option("--width", type=int, default=1280, show_default=True)
@click.option("--height", type=int, default=720, show_default=True)
@click.option("--fps", type=int, default=10, show_default=True)
@click.option("--seconds", type=float, default=10.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--still", "stills", multiple=True, callback=_frame_ranges, metavar="START-END",
              help="Nothing moves from frame START to frame END (a static stretch); repeatable.")
@click.option("--cut", "cuts", type=click.IntRange(min=1), multiple=True, metavar="FRAME",
              help="Another scene starts at this frame (a scene cut); repeatable.")
@click.option("--fixed-camera", multiple=True, callback=_frame_ranges, metavar="START-END",
              help="From frame START to frame END the background holds while the objects move; repeatable.")
@click.option("--crossings", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pairs of same-class objects that cross each other and leave the frame (tracking tests).")
def synth(out: Path, gt_path: Path | None, width: int, height: int, fps: int, seconds: float, seed: int,
          stills: tuple[tuple[int, int], ...], cuts: tuple[int, ...], fixed_camera: tuple[tuple[int, int], ...],
          crossings: int) -> None:
    """Write a synthetic shapes video with exact COCO ground truth (track_id: each object's identity)."""
    from autolabel.synth import generate_video

    info = generate_video(out, gt_path or out.with_suffix(".json"), width=width, height=height, fps=fps,
                          seconds=seconds, seed=seed, stills=stills, cuts=cuts, fixed_camera=fixed_camera,
                          crossings=crossings)
    click.echo(f"{info.video}: {info.frames} frames {info.width}x{info.height} at {info.fps} fps; "
               f"{info.annotations} boxes in {info.ground_truth}")
