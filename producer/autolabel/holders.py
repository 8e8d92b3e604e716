"""Which worker process holds each unacknowledged message, and whether that process is alive.

kombu's Redis transport keeps a message a worker has taken and not yet acknowledged in the hash
``unacked`` (delivery tag -> message) and gives it back only after the visibility timeout (an hour
by default). The workers (``autolabel_worker.recovery``) also record the process that took it:

    autolabel:unacked:holders     hash, delivery tag -> holder id (``host/pid/random``), written in
                                  the same transaction as kombu's ``unacked`` entry
    autolabel:holder:HOLDER_ID    the holder's heartbeat: set with a time to live of
                                  AUTOLABEL_LEASE_S, renewed every third of it by a thread of
                                  the process; gone once the process has been dead that long

A message whose holder's heartbeat is gone is put back on its queue by any live worker's sweep.
This module is the producer's view of the same records (``autolabel status``, ``--wait``).
"""

from __future__ import annotations

import json
from base64 import b64decode
from binascii import Error as Base64Error

import redis
from pydantic import BaseModel

HOLDERS_KEY = "autolabel:unacked:holders"
HOLDER_KEY_PREFIX = "autolabel:holder:"
UNACKED_KEY = "unacked"  # kombu's default ``unacked_key``, which make_celery keeps


def heartbeat_key(holder: str) -> str:
    return f"{HOLDER_KEY_PREFIX}{holder}"


class Orphans(BaseModel):
    """A job's task messages held by worker processes that are gone (heartbeat expired)."""

    tasks: int
    frames: int


def dead_holders(client: redis.Redis) -> dict[str, str]:
    """Delivery tag -> holder, for the unacknowledged messages whose holder's heartbeat is gone."""
    held = {_text(tag): _text(holder) for tag, holder in client.hgetall(HOLDERS_KEY).items()}
    ids = sorted(set(held.values()))
    with client.pipeline(transaction=False) as pipe:
        for holder in ids:
            pipe.exists(heartbeat_key(holder))
        alive = pipe.execute()
    dead = {holder for holder, up in zip(ids, alive) if not up}
    return {tag: holder for tag, holder in held.items() if holder in dead}


def orphans(client: redis.Redis, job_id: str) -> Orphans:
    """The job's tasks that wait to be put back on their queue by a live worker's sweep."""
    tags = list(dead_holders(client))
    raws = client.hmget(UNACKED_KEY, tags) if tags else []
    tasks = frames = 0
    for raw in raws:
        kwargs = _task_kwargs(raw)
        if kwargs is not None and kwargs.get("job_id") == job_id:
            tasks += 1
            frames += len(kwargs.get("frames") or ())
    return Orphans(tasks=tasks, frames=frames)


def orphans_note(found: Orphans, sweep_s: float) -> str | None:
    """One line for ``status`` and ``--wait`` while some of a job's tasks wait for a sweep; None if none do.
    Every live worker process sweeps every ``sweep_s``, whatever model it serves."""
    if not found.tasks:
        return None
    return (f"{found.tasks} task{'s' if found.tasks != 1 else ''} ({found.frames} frames) held by a worker "
            f"process that is gone; a live worker puts them back in the queue within {sweep_s:.0f} s")


def _task_kwargs(raw: bytes | str | None) -> dict | None:
    """The keyword arguments of a Celery task message as kombu stores it in ``unacked``."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return kwargs if isinstance(kwargs, dict) else None
    except (ValueError, KeyError, TypeError, IndexError, Base64Error):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
