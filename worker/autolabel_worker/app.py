"""The worker's Celery app: ``celery -A autolabel_worker.app worker``."""

from __future__ import annotations

from autolabel.celery_app import make_celery
from autolabel.settings import get_settings

app = make_celery(get_settings())
app.conf.update(include=["autolabel_worker.tasks"])
