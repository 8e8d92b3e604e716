"""At-least-once delivery made safe: a lease per task, and a count of deliveries that died.

Redis redelivers a message that was not acknowledged: after the visibility timeout when its
worker was killed, but also while its first delivery still runs (a worker that loses its
broker connection puts its unacknowledged messages back; a task that outlives the visibility
timeout). Both records are keyed by the Celery task id, which every delivery and every retry
of one message share:

    autolabel:lease:TASK_ID        the delivery running it now: SET NX PX, renewed while it runs,
                                   so a second delivery does not run it in parallel
    autolabel:deliveries:TASK_ID   deliveries started and not ended. Any exit of the task function
                                   ends a delivery (success, a handled failure, a retry); only a
                                   delivery whose process died stays counted, so the count says how
                                   many times this task has taken its worker down with it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

# A delivery count outlives any redelivery of its message, and then expires.
COUNT_TTL_S = 7 * 24 * 3600
# Ending a delivery and releasing a lease wait out a Redis restart of several seconds. Giving up
# leaves the count one too high (the task is dead-lettered one lost delivery early) or the lease
# to lapse on its own; nothing worse.
SETTLE_DELAYS_S = (0.25, 0.5, 1, 2, 4)

# KEYS: lease. ARGV: token, lease in ms. Extends the lease only if this delivery still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease. ARGV: token. Releases the lease only if this delivery holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: count. Ends one delivery; the key goes when none is left.
_END = """
local left = redis.call('DECR', KEYS[1])
if left <= 0 then redis.call('DEL', KEYS[1]) end
return left
"""


class LeaseBusy(Exception):
    """Another delivery of this task holds its lease: it is running right now."""


@dataclass
class Delivery:
    task_id: str
    lost: int  # earlier deliveries of this task that started and never ended
    settled: bool = False  # the task is given up for good: its count is dropped, not decremented


class Deliveries:
    """Leases and delivery counts in Redis. Thread-safe; one per worker process."""

    def __init__(self, client: redis.Redis, *, lease_s: float) -> None:
        self.redis = client
        self.lease_ms = max(1, int(lease_s * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._end = client.register_script(_END)

    @staticmethod
    def lease_key(name: str) -> str:
        return f"autolabel:lease:{name}"

    @staticmethod
    def count_key(task_id: str) -> str:
        return f"autolabel:deliveries:{task_id}"

    @staticmethod
    def holder_pid(token: str) -> int:
        """The process id in a lease token (``host/pid/random``)."""
        return int(token.split("/")[1])

    @contextmanager
    def lease(self, name: str) -> Iterator[None]:
        """Hold ``name``'s lease while the block runs; raises LeaseBusy when another holder has it.

        A holder that dies stops renewing, so its lease lapses after ``lease_s``.
        """
        # The token names the holder, so an operator (or a test) can tell which process runs what.
        key, token = self.lease_key(name), f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex}"
        if not self.redis.set(key, token, nx=True, px=self.lease_ms):
            raise LeaseBusy(name)
        stop = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(key, token, stop), name=f"lease-{name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            settle(f"release lease {key}", lambda: self._release(keys=[key], args=[token]))

    def _keep(self, key: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(self.lease_ms / 3000):
            try:
                if not self._renew(keys=[key], args=[token, self.lease_ms]):
                    log.warning("lease %s was lost (Redis restarted without it, or it lapsed); a redelivered "
                                "copy may run alongside", key)
            except redis.RedisError as exc:
                log.warning("cannot renew lease %s: %s", key, exc)

    @contextmanager
    def track(self, task_id: str) -> Iterator[Delivery]:
        """Count this delivery while the block runs; ``Delivery.lost`` says how many before it died."""
        key = self.count_key(task_id)
        with self.redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, COUNT_TTL_S)
            started, _ = pipe.execute()
        delivery = Delivery(task_id, lost=int(started) - 1)
        try:
            yield delivery
        finally:
            if delivery.settled:
                settle(f"drop delivery count {key}", lambda: self.redis.delete(key))
            else:
                settle(f"end delivery {key}", lambda: self._end(keys=[key]))


def settle(what: str, call: Callable[[], object]) -> None:
    for delay in (*SETTLE_DELAYS_S, None):
        try:
            call()
            return
        except redis.RedisError as exc:
            if delay is None:
                log.warning("could not %s in Redis: %s", what, exc)
                return
            time.sleep(delay)
