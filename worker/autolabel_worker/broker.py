"""The worker's Redis transport and Celery consumer: kombu's and Celery's, except that an item on
a queue that is not a task message does not take the worker down.

Anything can LPUSH to a queue list: a script, a producer with another serializer, an operator by
hand. kombu's Redis channel pops an item with BRPOP and decodes it (JSON, then kombu's message
envelope) inside the worker's event loop; an item that does not decode raises out of the loop and
Celery exits the process ("Unrecoverable error: JSONDecodeError"), and the tasks that process held
wait for their visibility timeout. A kombu message that is not a Celery task message (no ``id``
header, no delivery info) fails later, in Celery's consumer, which takes the error for a lost
connection, reconnects, gets the message back and fails again, several times a second.

Here each popped item is first decoded the way kombu will decode it (``Channel``), and Celery's
handling of each message is guarded (``Consumer``). An item that fails either is moved to the
Redis list ``autolabel:bad-messages`` (newest first, the last ``BAD_MESSAGES_KEPT``) with its list
and the reason, logged in one line, and the worker goes on.

``autolabel_worker.app`` makes these the transport of ``redis://`` and ``rediss://`` URLs and the
consumer of the worker process; producers, ``celery inspect`` and Flower keep kombu's own.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from pydantic import BaseModel, Field

from autolabel_worker.recovery import QoS

log = logging.getLogger("autolabel.broker")

BAD_MESSAGES_KEY = "autolabel:bad-messages"
BAD_MESSAGES_KEPT = 1000
# What kombu's JSON decoding and its Message envelope raise on bytes that are not a message.
_UNDECODABLE = (ValueError, TypeError, KeyError, AttributeError, RecursionError)


class BadMessage(BaseModel):
    """One entry of ``autolabel:bad-messages``: the item as it was popped, and why it was refused."""

    list: str = Field(description="the Redis list it was popped from (a queue, or one of its priority lists)")
    reason: str
    popped_at: float = Field(description="Unix time")
    worker: str = Field(description="host/pid of the worker process that popped it")
    encoding: Literal["utf-8", "base64"] = Field(description="how data holds the item's bytes")
    data: str


def bad_message(list_key: bytes, item: bytes, reason: str) -> BadMessage:
    try:
        data, encoding = item.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        data, encoding = base64.b64encode(item).decode("ascii"), "base64"
    return BadMessage(list=list_key.decode("utf-8", "backslashreplace"), reason=reason, popped_at=time.time(),
                      worker=f"{socket.gethostname()}/{os.getpid()}", encoding=encoding, data=data)


class ScreenedRedis(redis.Redis):
    """The channel's Redis client: a BRPOP reply that ``screen`` refuses reads as nothing popped,
    which kombu answers by polling again."""

    def __init__(self, *args: Any, screen: Callable[[bytes, bytes], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._screen = screen

    def parse_response(self, connection: Any, command_name: str | bytes, **options: Any) -> Any:
        response = super().parse_response(connection, command_name, **options)
        if command_name == "BRPOP" and response and not self._screen(*response):
            return None
        return response


class Channel(kombu_redis.Channel):
    # Records which process holds each unacknowledged message, and puts back those of dead processes.
    QoS = QoS

    def _get_client(self) -> Callable[..., redis.Redis]:
        return functools.partial(ScreenedRedis, screen=self._screen)

    def _screen(self, list_key: bytes, item: bytes) -> bool:
        """True when kombu can make a message of ``item``; otherwise it is kept aside and False."""
        try:
            payload = loads(bytes_to_str(item))
        except _UNDECODABLE as exc:
            reason = f"not JSON: {exc}"
        else:
            try:
                message = self.Message(payload, channel=self)
                # kombu's Redis QoS keeps an unacknowledged message under its tag, with these two.
                if not isinstance(message.delivery_tag, str) or not {"exchange", "routing_key"} <= set(
                        message.delivery_info):
                    raise ValueError("no delivery_tag, or no exchange and routing_key in delivery_info")
                return True
            except _UNDECODABLE as exc:
                reason = f"not a kombu message envelope: {type(exc).__name__}: {exc}"
        self.keep_aside(bad_message(list_key, item, reason[:300]))
        return False

    def keep_aside(self, record: BadMessage) -> None:
        try:
            with self.conn_or_acquire() as client, client.pipeline() as pipe:
                pipe.lpush(BAD_MESSAGES_KEY, record.model_dump_json())
                pipe.ltrim(BAD_MESSAGES_KEY, 0, BAD_MESSAGES_KEPT - 1)
                pipe.execute()
            kept = f"kept in Redis list {BAD_MESSAGES_KEY}"
        except redis.RedisError as exc:
            kept = f"not kept ({exc}); its first bytes: {record.data[:200]!r}"
        log.error("dropped an item of %s that is not a task message (%s); %s", record.list, record.reason, kept)


class Transport(kombu_redis.Transport):
    Channel = Channel


class Consumer(CeleryConsumer):
    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Message], None]:
        handle = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors)

        def on_task_received(message: Message) -> None:
            try:
                handle(message)
            except Exception as exc:  # noqa: BLE001 (what Celery raises on a message it cannot make a request of)
                # kombu's Redis transport counts KeyError among its connection errors; raised while
                # Celery reads one message, it is that message's (a header it lacks).
                if isinstance(exc, connection_errors) and not isinstance(exc, KeyError):
                    raise
                self._refuse(message, f"not a Celery task message: {type(exc).__name__}: {exc}")

        return on_task_received

    @staticmethod
    def _refuse(message: Message, reason: str) -> None:
        envelope = {"body": bytes_to_str(message.body), "content-type": message.content_type,
                    "content-encoding": message.content_encoding, "headers": message.headers,
                    "properties": message.properties}
        delivery = message.delivery_info if isinstance(message.delivery_info, dict) else {}
        record = bad_message(str(delivery.get("routing_key", "?")).encode(),
                             json.dumps(envelope, default=repr).encode(), reason[:300])
        message.channel.keep_aside(record)
        if not message.acknowledged:
            message.ack()
