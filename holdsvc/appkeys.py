"""Typed keys of every resource the app factory puts on the application."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from holdsvc.domain.access import Keyring, Principal
from holdsvc.domain.bookings import Bookings, HoldKey
from holdsvc.domain.expiry import Expirer
from holdsvc.domain.flights import Flights
from holdsvc.domain.health import Health
from holdsvc.domain.idempotency import IdempotencyKeys, KeyRef
from holdsvc.domain.payments import PaymentRecovery, Payments
from holdsvc.domain.restore import Restorer
from holdsvc.domain.seatfeed import SeatFeeds
from holdsvc.domain.seatmap import SeatMap
from holdsvc.gateway import MockGateway
from holdsvc.metrics import Metrics
from holdsvc.seats.holds import HoldStore
from holdsvc.settings import Settings
from persistence.persister import Persister
from persistence.stores import AnyStore

SETTINGS = web.AppKey("settings", Settings)
GATEWAY = web.AppKey("gateway", MockGateway)
METRICS = web.AppKey("metrics", Metrics)
REQUEST_ID = web.RequestKey("request_id", str)
KEYRING = web.AppKey("keyring", Keyring)
# The service listens on a loopback address: the admin views need no key.
LOOPBACK = web.AppKey("loopback", bool)
# Who the request acts as, once the middleware has checked its key.
PRINCIPAL = web.RequestKey("principal", Principal)
# The request's Idempotency-Key, once the middleware has claimed it in SQL.
KEY_REF = web.RequestKey("key_ref", KeyRef)
# A hold's Idempotency-Key and fingerprint, for the hold script to claim.
HOLD_KEY = web.RequestKey("hold_key", HoldKey)
REDIS_URL = web.AppKey("redis_url", str)
# Why the service stopped itself (the embedded Redis kept dying); serve then exits 1.
GAVE_UP = web.AppKey("gave_up", str)
REDIS = web.AppKey("redis", Redis)
STORE: web.AppKey[AnyStore] = web.AppKey("store")
HOLDS = web.AppKey("holds", HoldStore)
FLIGHTS = web.AppKey("flights", Flights)
BOOKINGS = web.AppKey("bookings", Bookings)
PAYMENTS = web.AppKey("payments", Payments)
EXPIRER = web.AppKey("expirer", Expirer)
RESTORER = web.AppKey("restorer", Restorer)
RECOVERY = web.AppKey("recovery", PaymentRecovery)
PERSISTER = web.AppKey("persister", Persister)
SEAT_MAP = web.AppKey("seat_map", SeatMap)
SEAT_FEEDS = web.AppKey("seat_feeds", SeatFeeds)
HEALTH = web.AppKey("health", Health)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyKeys)
