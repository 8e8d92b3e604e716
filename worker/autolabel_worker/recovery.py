"""A killed worker's messages back on their queue within two leases, not the visibility timeout.

kombu's Redis transport keeps each message a worker has taken and not acknowledged in the hash
``unacked`` and puts it back only after the visibility timeout (3600 s): with the threads pool a
SIGKILLed or OOM-killed process takes its messages (running and prefetched) with it for an hour.
Here the worker's QoS also records which process holds each message (``autolabel.holders``): in
the same transaction as kombu's entry, the delivery tag -> holder id, and the holder's heartbeat,
a key with a time to live of AUTOLABEL_LEASE_S that a thread of the process renews every third
of it. Every worker process sweeps (on kombu's restore timer, every ``unacked_restore_interval``
seconds): a message whose holder's heartbeat is gone is put back on its queue by one Lua script
that checks, at that moment and with Redis's own clock (the key's expiry), that the holder is
still recorded and still dead and that the message is still the one read; the second of two
sweepers finds nothing to do. Where it goes back (its queue, its priority list, the redelivered
flag) is kombu's own ``_do_restore_message``, recorded instead of sent.

An acknowledgement removes the message's records only while its holder is this process (or none
is recorded): a process that was paused past its heartbeat and resumes must not remove the entry
of the process its message was redelivered to, or that copy would be lost with its next holder.

kombu also puts messages back itself: what a process holds when its broker connection drops or
it shuts down (``restore_unacked``), a requeue, a message past the visibility timeout
(``restore_by_tag``). Its transaction removes the ``unacked`` entry even when it could not push
the message back: ``_do_restore_message`` logs any error but a connection error and goes on, and
a closing channel's lookup of a named exchange's bindings fails that way (``'NoneType' object has
no attribute 'hostname'``). It also removes the entry of a process the message was swept to
meanwhile, and pushes a second copy. Here the pushes are worked out first, and the entry is
removed and the message pushed by one Lua script, or neither; a process puts back only what it
still holds; a message that cannot be routed is disowned (recorded as held by this process's id
plus ``DISOWNED``, which never beats) and the next sweep of a live process puts it back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from autolabel.holders import HOLDERS_KEY, dead_holders, heartbeat_key
from autolabel.settings import get_settings
from autolabel_worker import metrics
from autolabel_worker.delivery import Deliveries

log = logging.getLogger("autolabel.recovery")

DISOWNED = "/disowned"

# KEYS: unacked, unacked_index, holders. ARGV: tag, holder, the holder disowned. Acknowledges unless
# another process holds it now.
_RELEASE = """
local holder = redis.call('HGET', KEYS[3], ARGV[1])
if holder and holder ~= ARGV[2] and holder ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""
# KEYS: unacked, unacked_index, holders, the holder's heartbeat, the task's lease, then the lists
# to push to. ARGV: tag, holder, the unacked entry as read, then one payload per list.
# Puts the message back only if the holder is still recorded for it, its heartbeat is still gone,
# no delivery holds the task's lease (a redelivery would only be sent again for later), and the
# entry is unchanged; exactly once, whoever else sweeps at the same time.
_RESTORE = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 6, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[i - 2]) end
return 1
"""

# KEYS: unacked, unacked_index, holders, then the lists to push to. ARGV: tag, holder ('' for any),
# the unacked entry as read, RPUSH or LPUSH, then one payload per list. Only while no other process
# holds the message and its entry is the one read; removed and pushed together.
_PUT_BACK = """
local holder = redis.call('HGET', KEYS[3], ARGV[1])
if ARGV[2] ~= '' and holder and holder ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
for i = 4, #KEYS do redis.call(ARGV[4], KEYS[i], ARGV[i + 1]) end
return 1
"""
# KEYS: holders. ARGV: tag, holder, the holder disowned. Hands the message to the sweep, unless
# another process holds it now.
_DISOWN = """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class Holder:
    """This process as a holder of messages: its id and the heartbeat thread that says it lives."""

    _lock = threading.Lock()
    _current: Holder | None = None

    def __init__(self, client: redis.Redis, ttl_ms: int) -> None:
        # The random part: a restarted container may give a new process the old one's pid.
        self.id = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self.key, self.ttl_ms, self._client = heartbeat_key(self.id), ttl_ms, client
        self.disowned = self.id + DISOWNED  # never beats: what this process gives up is swept
        threading.Thread(target=self._beat, name="holder-heartbeat", daemon=True).start()

    @classmethod
    def of_this_process(cls, client: redis.Redis) -> Holder:
        with cls._lock:
            if cls._current is None:
                cls._current = cls(client, max(1, int(get_settings().lease_s * 1000)))
            return cls._current

    def _beat(self) -> None:
        while True:  # a daemon thread: the heartbeat ends with the process
            time.sleep(self.ttl_ms / 3000)
            try:
                # SET, not PEXPIRE: after a Redis restart that lost the key, it is back within a third.
                self._client.set(self.key, "1", px=self.ttl_ms)
            except redis.RedisError as exc:
                log.warning("cannot renew holder heartbeat %s: %s", self.key, exc)


class _Pushes:
    """Stands in for the pipeline kombu's ``_do_restore_message`` pushes to: records the pushes."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.command = "RPUSH"

    def rpush(self, key: str, value: str) -> None:
        self.items.append((key, value))

    def lpush(self, key: str, value: str) -> None:
        self.command = "LPUSH"
        self.items.append((key, value))


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with self.channel.conn_or_acquire() as client:
            self._release = client.register_script(_RELEASE)
            self._restore = client.register_script(_RESTORE)
            self._put_back = client.register_script(_PUT_BACK)
            self._disown = client.register_script(_DISOWN)

    def _holder(self) -> Holder:
        return Holder.of_this_process(self.channel._create_client())

    def append(self, message: Any, delivery_tag: str) -> None:
        """kombu's append (``unacked`` and its index), with the holder and its heartbeat in the same
        transaction: no moment where the message is unacknowledged and its holder unknown."""
        holder = self._holder()
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, dumps(
                [message._raw, delivery["exchange"], delivery["routing_key"]]))
            pipe.hset(HOLDERS_KEY, delivery_tag, holder.id)
            pipe.set(holder.key, "1", px=holder.ttl_ms)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self._release_tag(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self._put_back_tag(delivery_tag, None, leftmost=True, holder=self._holder())
        else:
            self._release_tag(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        """kombu's put-back of what this process holds (a lost connection, a warm shutdown), each
        message only while this process is still its holder."""
        holder = self._holder()
        with self.channel.conn_or_acquire(client) as client:
            for tag in self._delivered:
                self._put_back_tag(tag, client, holder=holder)
        self._delivered.clear()

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """kombu's put-back of a message past the visibility timeout, whoever holds it."""
        self._put_back_tag(tag, client, leftmost=leftmost)

    def _release_tag(self, delivery_tag: str) -> None:
        holder = self._holder()
        with self.channel.conn_or_acquire() as client:
            self._release(keys=[self.unacked_key, self.unacked_index_key, HOLDERS_KEY],
                          args=[delivery_tag, holder.id, holder.disowned], client=client)

    def _put_back_tag(self, tag: str, client: Any, leftmost: bool = False, holder: Holder | None = None) -> None:
        """Put one message back on its queue without the loss kombu's restore_by_tag risks (see the
        module's docstring); with ``holder``, only while that process holds it."""
        with self.channel.conn_or_acquire(client) as client:
            raw = client.hget(self.unacked_key, tag)
            if raw is None:  # acknowledged, or swept to another process
                return
            _, pushes = self._route(raw, leftmost)
            if not pushes.items:  # kombu could not route it (logged)
                if holder is not None and self._disown(
                        keys=[HOLDERS_KEY], args=[tag, holder.id, holder.disowned], client=client) == 1:
                    log.warning("message %s could not be put back on its queue here; the next sweep will", tag)
                return
            self._put_back(keys=[self.unacked_key, self.unacked_index_key, HOLDERS_KEY,
                                 *(key for key, _ in pushes.items)],
                           args=[tag, holder.id if holder else "", raw, pushes.command,
                                 *(value for _, value in pushes.items)],
                           client=client)

    def _route(self, raw: bytes, leftmost: bool = False) -> tuple[dict[str, Any], _Pushes]:
        """An ``unacked`` entry's message, and the pushes kombu's own restore would make of it."""
        payload, exchange, routing_key = loads(bytes_to_str(raw))
        pushes = _Pushes()
        self.channel._do_restore_message(payload, exchange, routing_key, pushes, leftmost)
        return payload, pushes

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        super().restore_visible(*args, **kwargs)
        try:
            self.sweep()
        except redis.RedisError as exc:  # Redis away: the next tick sweeps again
            log.warning("sweep for messages of dead workers failed: %s", exc)

    def sweep(self) -> int:
        """Put back on their queues the messages whose holder is dead; returns how many."""
        restored = 0
        with self.channel.conn_or_acquire() as client:
            for tag, holder in dead_holders(client).items():
                raw = client.hget(self.unacked_key, tag)
                pushes, task_id = _Pushes(), tag
                if raw is not None:
                    payload, pushes = self._route(raw)
                    task_id = str((payload.get("headers") or {}).get("id") or tag)
                    if not pushes.items:  # kombu could not route it (logged): the visibility timeout will
                        continue
                keys = [self.unacked_key, self.unacked_index_key, HOLDERS_KEY, heartbeat_key(holder),
                        Deliveries.lease_key(task_id), *(key for key, _ in pushes.items)]
                args = [tag, holder, raw or "", *(value for _, value in pushes.items)]
                if self._restore(keys=keys, args=args, client=client) == 1:
                    restored += 1
                    metrics.here(metrics.DELIVERIES_LOST).inc()
                    log.warning("message %s of dead worker process %s put back on %s", tag, holder,
                                ", ".join(key for key, _ in pushes.items))
        return restored
