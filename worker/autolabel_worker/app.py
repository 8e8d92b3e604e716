"""The worker's Celery app: ``celery -A autolabel_worker.app worker``."""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

from autolabel.celery_app import make_celery
from autolabel.settings import get_settings

# Redis URLs in this process use the screening transport, and the worker the guarded consumer: an
# item on a queue that is not a task message is kept aside instead of killing or stalling the worker
# (autolabel_worker.broker).
TRANSPORT_ALIASES.update(dict.fromkeys(("redis", "rediss"), "autolabel_worker.broker:Transport"))

app = make_celery(get_settings())
app.conf.update(include=["autolabel_worker.tasks"], worker_consumer="autolabel_worker.broker:Consumer")
