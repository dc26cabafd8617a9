"""Prometheus metrics, one registry per app (tests run many apps in one process).

holdsvc_holds_total{outcome}                 hold requests: created, refused
holdsvc_transitions_total{to_state,cause}    committed moves: bookings by final state, and
                                             expirations by path (cause expiry-event, sweeper,
                                             reconcile, redis-data-lost, ...)
holdsvc_expiry_lag_seconds                   hold deadline -> EXPIRED committed
holdsvc_http_request_duration_seconds{method,route,status}
holdsvc_sql_commit_batch_size                operations per group commit
holdsvc_sql_commit_seconds                   one group commit, fsync included
holdsvc_redis_errors_total                   Redis errors answered 503
holdsvc_redis_connects_total                 connections the hold client opened (1 + reconnects)
holdsvc_worker{worker,pid}                   1: which API process answered (serve --workers N)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from holdsvc.domain.records import State, Transition

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Every counter would also export a *_created series; nobody here graphs those.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _Live(Collector):
    """Counters kept elsewhere (the Redis client), read when scraped."""

    def __init__(self, connects: Callable[[], int]) -> None:
        self._connects = connects

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "holdsvc_redis_connects",
            "Connections the hold path's Redis client opened (1 + reconnects)",
            value=self._connects(),
        )


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.holds = Counter("holdsvc_holds", "Hold requests by outcome", ["outcome"], registry=r)
        # labels() takes a lock and builds a tuple: the hot path's children are made once.
        self.holds_created = self.holds.labels("created")
        self.holds_refused = self.holds.labels("refused")
        self.transitions = Counter(
            "holdsvc_transitions",
            "Committed booking moves by target state and cause",
            ["to_state", "cause"],
            registry=r,
        )
        self.expiry_lag = Histogram(
            "holdsvc_expiry_lag_seconds",
            "From a hold's deadline to its EXPIRED commit",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.http = Histogram(
            "holdsvc_http_request_duration_seconds",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self.sql_batch = Histogram(
            "holdsvc_sql_commit_batch_size",
            "Operations per SQL group commit",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.sql_commit = Histogram(
            "holdsvc_sql_commit_seconds",
            "One SQL group commit, fsync included",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._transition_children: dict[tuple[str, str], Any] = {}
        self.redis_errors = Counter("holdsvc_redis_errors", "Redis errors answered 503", registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._http_children.get(key)
        if child is None:  # labels() takes a lock and builds a tuple: once per route/status
            child = self._http_children[key] = self.http.labels(method, route, str(status))
        child.observe(seconds)

    def identify(self, worker: int, pid: int) -> None:
        """Which API process these counts are from (0: a serve that is not one of several)."""
        Gauge(
            "holdsvc_worker",
            "The API process that answered: its number and pid",
            ["worker", "pid"],
            registry=self.registry,
        ).labels(str(worker), str(pid)).set(1)

    def watch_redis_client(self, connects: Callable[[], int]) -> None:
        self.registry.register(_Live(connects))

    def on_transition(self, t: Transition) -> None:
        key = (t.to_state, t.cause)
        child = self._transition_children.get(key)
        if child is None:  # labels() takes a lock and builds a tuple: once per label pair
            child = self._transition_children[key] = self.transitions.labels(*key)
        child.inc()
        if t.to_state == State.EXPIRED.value and t.deadline is not None:
            self.expiry_lag.observe(max(0.0, (t.at - t.deadline) / 1000))

    def on_commit(self, batch: int, seconds: float) -> None:
        self.sql_batch.observe(batch)
        self.sql_commit.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
