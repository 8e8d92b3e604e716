"""The ``autolabel`` command line."""

from __future__ import annotations

import sys

import click

from autolabel.settings import get_settings


@click.group()
@click.version_option(package_name="autolabel")
def main() -> None:
    """Label video with a heavy detector through Redis/Celery workers and S3 storage."""


@main.command()
@click.option("--producer", is_flag=True, help="Skip the ML-stack checks (a producer-only install).")
def doctor(producer: bool) -> None:
    """Check the installed stack, the settings and the services; exit non-zero on any failure."""
    from autolabel.doctor import report, run_checks

    settings = get_settings()
    if not report(run_checks(settings, ml_stack=not producer), settings, click.echo):
        sys.exit(1)
