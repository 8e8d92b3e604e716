"""The Celery app both sides share: JSON only, late acks, events on for Flower.

Producers only send tasks by name (``app.send_task(TASK_DETECT, kwargs=...)``), so this
module imports no task code and no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

from autolabel.contract import DEFAULT_QUEUE, TASK_DETECT, TASK_SUBMIT
from autolabel.settings import Settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("autolabel", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=DEFAULT_QUEUE,
        # A message is acknowledged after its results are written; a worker that dies
        # mid-batch leaves it to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Flower shows tasks only when both sides emit events.
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        # Sending a task (a retry, finalize, a job's fan-out) waits out a Redis restart of about a
        # minute instead of failing after Celery's default 2 s; a worker whose retry cannot be
        # sent drops the message (Celery rejects it without requeue).
        task_publish_retry_policy={"max_retries": 30, "interval_start": 0, "interval_step": 0.5, "interval_max": 3},
        broker_transport_options={
            # Redis redelivers a message not acknowledged within this: how a message held by a
            # killed worker comes back. It must exceed the longest a task can take (the batch
            # time limit is checked to be below it); a task redelivered while still running is
            # held off by its lease (autolabel_worker.delivery).
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu looks for such messages every interval x throttle seconds (100 s by default);
            # look at least ten times per visibility timeout so recovery is not delayed further. The
            # workers' sweep for messages of dead processes runs on the same timer: at least four
            # times per lease, so they are back within two leases (autolabel_worker.recovery).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 10, settings.lease_s / 4)),
            "unacked_restore_throttle": 1,
            "queue_order_strategy": "priority",
            # Priority lists and their separator stay kombu's defaults (steps 0, 3, 6, 9; sep
            # "\x06\x16"): a backend's plain `Celery(broker=URL)` and `celery inspect` / Flower use
            # them, so any other value sends their prioritized messages to lists no worker reads and
            # hides the workers' replies. A priority p goes to the list of the largest step <= p
            # (0-2, 3-5, 6-8, 9), the worker reads the lists in that order, first in first out within one.
        },
    )
    return app


# Flower's tasks page with the arguments column (frames_repr: the job and its frames) beside the
# state and the runtime. The producer image sets it as FLOWER_TASKS_COLUMNS; the demo passes it.
FLOWER_TASKS_COLUMNS = "name,state,kwargs,received,runtime,worker"


def frames_repr(kwargs: Mapping[str, Any]) -> str:
    """A frame task's arguments as Flower and the worker's log show them: its job and its frames,
    ``job=ID frames=16 (00000..00015)``. Celery's default, the payload's repr cut at 1 KB, shows
    frame keys and options and can cut the job id off."""
    spec = kwargs.get("spec")  # a submit task's job id is in its spec
    job_id = kwargs.get("job_id") or (spec.get("job_id") if isinstance(spec, Mapping) else None)
    frames = [frame for frame in kwargs.get("frames") or () if isinstance(frame, Mapping)]
    ids = [str(frame.get("frame_id")) for frame in frames]
    span = f" ({ids[0]}..{ids[-1]})" if len(ids) > 1 else f" ({ids[0]})" if ids else ""
    return f"job={job_id} frames={len(frames)}{span}"


@before_task_publish.connect
def _describe_frame_tasks(sender: str | None = None, headers: dict[str, Any] | None = None, body: Any = None,
                          **_: Any) -> None:
    """Every frame task a process with this module sends gets ``frames_repr`` as its kwargsrepr
    header: the producers' sends, the workers' retries and fan-outs, which Celery rebuilds from
    the request without the original repr."""
    if sender in (TASK_DETECT, TASK_SUBMIT) and headers is not None and isinstance(body, (tuple, list)) \
            and len(body) > 1 and isinstance(body[1], Mapping):
        headers["kwargsrepr"] = frames_repr(body[1])
