"""The ``autolabel`` commands that belong to the worker package.

The worker's distribution registers them in the ``autolabel.commands`` entry-point group
(worker/pyproject.toml); the torch-free ``autolabel`` CLI loads a command from there only when it
is run, so a producer-only install has no worker commands and never imports this module.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from autolabel.settings import get_settings


@click.command("fetch-model")
@click.argument("uri")
@click.option("--dest", "dest_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to put the checkpoint in (an emptyDir, or a volume every worker pod shares).")
@click.option("--sha256", help="Expected SHA-256 (64 hex digits); a file that differs is refused or fetched again.")
@click.option("--name", "filename", help="File name in --dest (default: the key's last part).")
@click.option("--lock-timeout-s", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="How long to wait for another process or pod fetching the same file into --dest.")
def fetch_model(uri: str, dest_dir: Path, sha256: str | None, filename: str | None, lock_timeout_s: float) -> None:
    """Download a checkpoint from s3://BUCKET/KEY into --dest once, check it, print its path.

    For a Kubernetes initContainer: many pods may run it on one shared volume at once; one
    downloads, the others wait for it, and none ever sees a half-written file.
    """
    from autolabel_worker.fetch import fetch_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    path = fetch_checkpoint(uri, dest_dir, get_settings(), sha256=sha256, filename=filename,
                            lock_timeout_s=lock_timeout_s)
    click.echo(str(path))


@click.command("inspect-checkpoint")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The model config the checkpoint is meant for (for example configs/co-dino-5scale-swin-l.py).")
@click.option("--limit", type=click.IntRange(0), default=20, show_default=True,
              help="Keys listed per kind; 0 lists all.")
def inspect_checkpoint(checkpoint: Path, config: Path, limit: int) -> None:
    """Compare a checkpoint's keys with a config's model, on CPU; exit 1 if any weight the model runs
    with is missing or of another shape."""
    from autolabel_worker.checkpoint import load_weights
    from autolabel_worker.detector import build_model
    from autolabel_worker.runtime import add_plugin_dirs

    add_plugin_dirs(get_settings().plugin_dirs)
    model, _ = build_model(config)
    report = load_weights(model, checkpoint)
    sections = [
        ("missing (in the model, not in the checkpoint)", report.missing),
        ("shape mismatch (checkpoint vs model)", [f"{key}: {theirs} vs {ours}" for key, theirs, ours in
                                                  report.shape_mismatch]),
        ("unexpected (in the checkpoint, not in the model; ignored)", report.unexpected),
        ("skipped (parts the model does not build for inference)", report.skipped),
    ]
    for title, keys in sections:
        click.echo(f"{title}: {len(keys)}")
        for key in keys[:limit or None]:
            click.echo(f"  {key}")
        if limit and len(keys) > limit:
            click.echo(f"  ... {len(keys) - limit} more")
    total = len(model.state_dict())
    loaded = total - len(report.missing) - len(report.shape_mismatch)
    click.echo(f"{loaded} of {total} model tensors loaded from {checkpoint}")
    if report.missing or report.shape_mismatch:
        sys.exit(1)


@click.command()
@click.option("--devices", default="all", show_default=True, help="all, cpu, or GPU indices such as 0,1.")
@click.option("--procs-per-device", default="auto", show_default=True,
              help="Worker processes per device, or auto (fit the card's memory; on CPU one per 2 cores).")
@click.option("--batch-size", type=click.IntRange(1, 64), help="Frames per forward pass (default: AUTOLABEL_BATCH_SIZE).")
@click.option("--threads", type=click.IntRange(1, 64),
              help="Tasks in flight per process; their frames share forward passes (default: AUTOLABEL_WORKER_THREADS).")
@click.option("--queues", help="Comma-separated queues (default: the model's queue).")
@click.option("--health-port", type=int, default=8008, show_default=True,
              help="HTTP port of /ready, /live and /metrics.")
@click.option("--health-host", help="Address /ready and /live listen on (default: AUTOLABEL_HEALTH_HOST, 0.0.0.0).")
@click.option("--shutdown-timeout", type=float, default=120.0, show_default=True,
              help="Seconds a process may take to finish its batch on SIGTERM before it is killed.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(devices: str, procs_per_device: str, batch_size: int | None, threads: int | None, queues: str | None,
           health_port: int, health_host: str | None, shutdown_timeout: float, loglevel: str) -> None:
    """Run worker processes for AUTOLABEL_MODEL."""
    from autolabel_worker.pool import run_pool

    if procs_per_device != "auto" and not (procs_per_device.isdigit() and int(procs_per_device) > 0):
        raise click.BadParameter("a positive number or auto", param_hint="--procs-per-device")
    settings = get_settings()
    overrides = {"batch_size": batch_size, "worker_threads": threads, "health_host": health_host}
    settings = settings.model_copy(update={name: value for name, value in overrides.items() if value})
    run_pool(settings, devices=devices, procs_per_device=procs_per_device,
             queues=queues.split(",") if queues else None, health_port=health_port, loglevel=loglevel,
             shutdown_timeout=shutdown_timeout)
