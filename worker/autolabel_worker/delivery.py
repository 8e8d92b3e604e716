"""At-least-once delivery made safe: a lease per task, and a count of deliveries that died.

Redis redelivers a message that was not acknowledged: after the visibility timeout when its
worker was killed, but also while its first delivery still runs (a worker that loses its
broker connection puts its unacknowledged messages back; a task that outlives the visibility
timeout). Both records are keyed by the Celery task id, which every delivery and every retry
of one message share:

    autolabel:lease:TASK_ID        the delivery running it now: SET NX PX, renewed while it runs,
                                   so a second delivery does not run it in parallel
    autolabel:deliveries:TASK_ID   deliveries started and not ended: a hash, one field per delivery
                                   (its token, as a lease's). Any exit of the task function ends a
                                   delivery (success, a handled failure, a retry) by deleting its
                                   field; only a delivery whose process died stays, so the count says
                                   how many times this task has taken its worker down with it. A field
                                   per delivery, not a counter: a start or an end whose reply was lost
                                   to a Redis restart can be done again, or taken back, without
                                   counting twice.
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

from autolabel_worker import metrics

log = logging.getLogger(__name__)

# A delivery count outlives any redelivery of its message, and then expires.
COUNT_TTL_S = 7 * 24 * 3600
# Ending a delivery, releasing a lease and counting a pass wait out a Redis restart or failover of
# up to this long, trying again every SETTLE_MAX_DELAY_S at most, so they land within seconds of
# Redis coming back. Giving up on a delivery's end would leave its count one too high, as if its
# process had died (the task is dead-lettered one lost delivery early); giving up on a lease lets
# it lapse on its own. The wait holds the task's thread, so an end lands before the task returns
# and its message is acknowledged; a process killed meanwhile never ends its delivery, and that
# delivery counts as lost, as it should. Two minutes: longer than the ~80 s a message send waits
# for Redis (task_publish_retry_policy), past which the task cannot go on anyway.
SETTLE_PATIENCE_S = 120.0
SETTLE_MAX_DELAY_S = 2.0

# KEYS: lease. ARGV: token, lease in ms. 1: extended, this delivery still holds it. 2: taken again,
# it had lapsed and is free (Redis was away for longer than the lease: the holder is alive, and a
# copy of its message, put back when the workers lost Redis, may have run and ended meanwhile).
# 0: another delivery holds it.
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
# KEYS: lease. ARGV: token. Releases the lease only if this delivery holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseBusy(Exception):
    """Another delivery of this task holds its lease: it is running right now."""


@dataclass
class HeldLease:
    """A lease this delivery took; ``confirm`` before work that must not be done twice."""

    key: str
    token: str
    owner: Deliveries
    lapsed: bool = False  # it lapsed once and was taken again: another delivery may have run meanwhile

    def renew(self) -> bool:
        """Extend the lease, or take it again if it lapsed and is free; False when another delivery holds it."""
        outcome = self.owner.renew_script(keys=[self.key], args=[self.token, self.owner.lease_ms])
        self.lapsed = self.lapsed or outcome == 2
        return bool(outcome)

    def confirm(self) -> bool:
        """Raise LeaseBusy when another delivery holds the lease now (it lapsed while Redis was away
        and a copy of this task's message took it: that copy does the work). Else True when the
        lease lapsed at some point: a copy may have run and ended meanwhile, so what this delivery
        looked up before (existing results) must be looked up again."""
        if not self.renew():
            metrics.here(metrics.LEASE_CONFLICTS).inc()
            raise LeaseBusy(self.key)
        return self.lapsed


@dataclass
class Delivery:
    task_id: str
    lost: int  # earlier deliveries of this task that started and never ended
    settled: bool = False  # the task is given up for good: its record is dropped, not just this delivery


class Deliveries:
    """Leases and delivery counts in Redis. Thread-safe; one per worker process."""

    def __init__(self, client: redis.Redis, *, lease_s: float) -> None:
        self.redis = client
        self.lease_ms = max(1, int(lease_s * 1000))
        self.renew_script = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

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

    @staticmethod
    def token() -> str:
        """A lease's or a delivery's token; it names the holder, so an operator (or a test) can tell
        which process runs what."""
        return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex}"

    @contextmanager
    def lease(self, name: str) -> Iterator[HeldLease]:
        """Hold ``name``'s lease while the block runs; raises LeaseBusy when another holder has it.

        A holder that dies stops renewing, so its lease lapses after ``lease_s``.
        """
        key, token = self.lease_key(name), self.token()
        if not self.redis.set(key, token, nx=True, px=self.lease_ms):
            raise LeaseBusy(name)
        held, stop = HeldLease(key, token, self), threading.Event()
        renewer = threading.Thread(target=self._keep, args=(held, stop), name=f"lease-{name}", daemon=True)
        renewer.start()
        try:
            yield held
        finally:
            stop.set()
            renewer.join()
            settle(f"release lease {key}", lambda: self._release(keys=[key], args=[token]))

    def _keep(self, held: HeldLease, stop: threading.Event) -> None:
        every_s = self.lease_ms / 3000
        while not stop.wait(every_s):
            try:
                if not held.renew():
                    log.warning("lease %s was taken by another delivery (it lapsed while Redis was away); "
                                "this one writes no results while the other holds it", held.key)
                every_s = self.lease_ms / 3000
            except redis.RedisError as exc:
                log.warning("cannot renew lease %s: %s", held.key, exc)
                # Renewed within a second of Redis coming back, before copies of the message put
                # back meanwhile are delivered and find the lease lapsed.
                every_s = min(every_s, 1.0)

    @contextmanager
    def track(self, task_id: str) -> Iterator[Delivery]:
        """Count this delivery while the block runs; ``Delivery.lost`` says how many before it died."""
        key, token = self.count_key(task_id), self.token()
        try:
            with self.redis.pipeline() as pipe:
                pipe.hset(key, token, int(time.time()))
                pipe.expire(key, COUNT_TTL_S)
                pipe.hlen(key)
                started = pipe.execute()[-1]
        except redis.RedisError:
            # Redis went away with the reply, maybe after the write (a restart takes the write to its
            # AOF, then closes the connection): take the start back, so that this delivery, which is
            # retried, is not counted as one that died.
            settle(f"take back the start of delivery {key}", lambda: self.redis.hdel(key, token))
            raise
        delivery = Delivery(task_id, lost=int(started) - 1)
        try:
            yield delivery
        finally:
            if delivery.settled:
                settle(f"drop the deliveries of {key}", lambda: self.redis.delete(key))
            else:
                settle(f"end delivery {key}", lambda: self.redis.hdel(key, token))


def settle(what: str, call: Callable[[], object]) -> None:
    """Run ``call`` until Redis takes it, SETTLE_PATIENCE_S at most; a failure after that is logged, not raised."""
    deadline, delay = time.monotonic() + SETTLE_PATIENCE_S, 0.0
    while True:
        try:
            call()
            return
        except redis.RedisError as exc:
            first, delay = not delay, min(max(delay * 2, 0.25), SETTLE_MAX_DELAY_S)
            if time.monotonic() + delay > deadline:
                log.warning("could not %s in Redis within %.0f s: %s", what, SETTLE_PATIENCE_S, exc)
                return
            if first:
                log.warning("cannot %s in Redis (%s); trying again for up to %.0f s", what, exc, SETTLE_PATIENCE_S)
        time.sleep(delay)
