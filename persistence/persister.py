"""The keyspace-event consumer: hears Redis expire keys and hands them to a callback.

It knows nothing of bookings (``persistence`` never imports ``holdsvc``): the app factory gives
it ``on_expired`` to act on the keys, and ``on_subscribed``, run after every (re)subscription,
because events published while the connection was down are gone for good and whatever they
would have triggered must be looked for instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from persistence.outage import Outage

log = logging.getLogger(__name__)

OnExpired = Callable[[list[bytes]], Awaitable[None]]
OnSubscribed = Callable[[], Awaitable[object]]

# Keys handed over per callback: events for the seats of one booking arrive together.
MAX_BATCH = 1000
RECONNECT_DELAY_S = 0.2


def expired_channel(db: int) -> str:
    return f"__keyevent@{db}__:expired"


class Persister:
    def __init__(
        self,
        redis: Redis,
        db: int,
        on_expired: OnExpired,
        on_subscribed: OnSubscribed | None = None,
    ) -> None:
        self._redis = redis
        self._channel = expired_channel(db)
        self._on_expired = on_expired
        self._on_subscribed = on_subscribed
        self.subscribed = asyncio.Event()
        self.subscriptions = 0
        self._outage = Outage(log, f"the persister's subscription to {self._channel}")

    async def run(self) -> None:
        """Consume until cancelled, resubscribing after every lost connection."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.subscriptions += 1
                self._outage.ok()
                self.subscribed.set()
                if self._on_subscribed is not None:
                    await self._on_subscribed()
                await self._consume(pubsub)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.subscribed.clear()
                self._outage.failed(exc)
                await asyncio.sleep(RECONNECT_DELAY_S)
            except Exception:
                # Anything else (a SQL error in the resubscribe sweep) must not end the task.
                self.subscribed.clear()
                log.exception("persister failed; resubscribing")
                await asyncio.sleep(RECONNECT_DELAY_S)
            finally:
                await pubsub.aclose()

    async def _consume(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            batch = [message["data"]]
            while len(batch) < MAX_BATCH:
                more = await pubsub.get_message(timeout=0)
                if more is None:
                    break
                batch.append(more["data"])
            try:
                await self._on_expired(batch)
            except (RedisConnectionError, RedisTimeoutError):
                raise
            except Exception:
                # A failure here must not stop the consumer; a later sweep finds what it missed.
                log.exception("persister callback failed for %d keys", len(batch))
