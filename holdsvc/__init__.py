"""holdsvc: seat holds in Redis, bookings durable in SQL.

The names below are the public surface for tools that run beside the service (the benchmark
harness): the app and its settings, the domain's entry points, the hold store and its client,
and the embedded Redis. They load on first use, so ``import holdsvc.<module>`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from holdsvc import appkeys
    from holdsvc.app import create_app
    from holdsvc.domain.bookings import HoldRequest
    from holdsvc.domain.payments import PayOutcome
    from holdsvc.domain.records import NewFlight
    from holdsvc.domain.states import State
    from holdsvc.embedded_redis import EmbeddedRedis, LocalCluster, find_binary, free_port
    from holdsvc.seats import keys as seat_keys
    from holdsvc.seats.holds import (
        Held,
        HoldMeta,
        HoldStore,
        NotRestored,
        Taken,
        connect_hold_store,
    )
    from holdsvc.seats.redis_client import PipelinedRedis
    from holdsvc.seats.scripts import load_scripts
    from holdsvc.settings import Settings

_EXPORTS = {
    "appkeys": "holdsvc.appkeys",
    "create_app": "holdsvc.app",
    "HoldRequest": "holdsvc.domain.bookings",
    "PayOutcome": "holdsvc.domain.payments",
    "NewFlight": "holdsvc.domain.records",
    "State": "holdsvc.domain.states",
    "EmbeddedRedis": "holdsvc.embedded_redis",
    "LocalCluster": "holdsvc.embedded_redis",
    "find_binary": "holdsvc.embedded_redis",
    "free_port": "holdsvc.embedded_redis",
    "Held": "holdsvc.seats.holds",
    "HoldMeta": "holdsvc.seats.holds",
    "HoldStore": "holdsvc.seats.holds",
    "NotRestored": "holdsvc.seats.holds",
    "Taken": "holdsvc.seats.holds",
    "connect_hold_store": "holdsvc.seats.holds",
    "PipelinedRedis": "holdsvc.seats.redis_client",
    "seat_keys": "holdsvc.seats.keys",
    "load_scripts": "holdsvc.seats.scripts",
    "Settings": "holdsvc.settings",
}

__all__ = [
    "EmbeddedRedis",
    "Held",
    "HoldMeta",
    "HoldRequest",
    "HoldStore",
    "LocalCluster",
    "NewFlight",
    "NotRestored",
    "PayOutcome",
    "PipelinedRedis",
    "Settings",
    "State",
    "Taken",
    "appkeys",
    "connect_hold_store",
    "create_app",
    "find_binary",
    "free_port",
    "load_scripts",
    "seat_keys",
]

# Names that are modules themselves, not attributes of one.
_MODULES = frozenset({"appkeys", "seat_keys"})


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'holdsvc' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    return loaded if name in _MODULES else getattr(loaded, name)
