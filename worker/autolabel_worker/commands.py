"""The ``autolabel`` commands that belong to the worker package."""

from __future__ import annotations

import logging
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
