"""The worker's Celery app: ``celery -A autolabel_worker.app worker``."""

from __future__ import annotations

from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, setup_logging
from kombu.transport import TRANSPORT_ALIASES

from autolabel.celery_app import make_celery
from autolabel.logs import configure, mask_handlers
from autolabel.settings import get_settings

# Redis URLs in this process use the screening transport, and the worker the guarded consumer: an
# item on a queue that is not a task message is kept aside instead of killing or stalling the worker
# (autolabel_worker.broker).
TRANSPORT_ALIASES.update(dict.fromkeys(("redis", "rediss"), "autolabel_worker.broker:Transport"))

app = make_celery(get_settings())
app.conf.update(include=["autolabel_worker.tasks"], worker_consumer="autolabel_worker.broker:Consumer")


if get_settings().log_format == "json":
    # From the start (the warnings of Celery's start-up and of the model's loading come before
    # Celery sets up logging); a receiver of setup_logging replaces Celery's own set-up, so every
    # logger, Celery's included, writes through the root's JSON handler.
    configure(get_settings())

    @setup_logging.connect
    def _json_logs(loglevel: Any = "INFO", **_: Any) -> None:
        configure(get_settings(), loglevel or "INFO")
else:
    # Celery's readable text lines stay; their secrets are masked.
    @after_setup_logger.connect
    @after_setup_task_logger.connect
    def _masked_logs(logger: Any, **_: Any) -> None:
        mask_handlers(logger, get_settings())
