"""The middleware: request ids, errors to JSON, Idempotency-Key replay, the access log."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import re
import secrets
import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from holdsvc.appkeys import BOOKINGS, HOLD_KEY, IDEMPOTENCY, KEY_REF, METRICS, REQUEST_ID
from holdsvc.domain.access import Principal
from holdsvc.domain.bookings import REPLAYED_HEADER, HoldKey
from holdsvc.domain.errors import Conflict, IdempotencyMismatch, Unavailable, ValidationError
from holdsvc.domain.idempotency import IdempotencyKeys, KeyRef
from holdsvc.domain.records import Claim, ClaimResult
from holdsvc.http.auth import authenticate
from holdsvc.http.views import error_response, redis_unavailable, stored_outcome

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
# The one POST whose keys live in Redis (a hold involves no money).
HOLDS_PATH = "/api/bookings"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
access_log = logging.getLogger("holdsvc.access")
# Request ids only need to be unique, not secret: a random per-process prefix and a counter
# cost far less than a uuid4 per request.
_ID_PREFIX = secrets.token_hex(6) + "-"
_ids = itertools.count(1)
# The method label is bounded to these; anything else a client sends counts as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware, so a request pays for one layer, not four. In order: the request
    id (taken from X-Request-ID or made), errors to JSON, the API key, Idempotency-Key
    replay; then one log line and one latency observation per request, with the final
    status and the key's name (never its secret)."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if given and _REQUEST_ID.match(given) else f"{_ID_PREFIX}{next(_ids):x}"
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    principal = None
    try:
        try:
            principal = authenticate(request)
            if IDEMPOTENCY_HEADER in request.headers and request.method == "POST":
                response = await _idempotent(request, handler, principal)
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _answer(request, exc)
        except Exception as exc:
            response = _answer(request, exc)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except web.HTTPException as exc:  # redirects and the like
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    finally:
        seconds = time.perf_counter() - started
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        request.app[METRICS].observe_request(method, route, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            extra = {
                "method": request.method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": request_id,
            }
            if principal is not None and principal.name:
                extra["key"] = principal.name
            access_log.info("%s %s %d", request.method, route, status, extra=extra)


def _fingerprint(path: str, body: bytes) -> bytes:
    """What makes two requests the same: the path and the parsed body, so bodies of equal
    JSON match whatever their whitespace or key order (raw bytes when it is not JSON: such a
    body is refused by the handler anyway)."""
    canonical = body
    if body.strip():
        with contextlib.suppress(orjson.JSONDecodeError):
            canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"POST\0" + path.rstrip("/").encode() + b"\0" + canonical).digest()


def _answer(request: web.Request, exc: Exception) -> web.Response:
    if redis_unavailable(exc):
        request.app[METRICS].redis_errors.inc()
    return error_response(exc)


async def _idempotent(
    request: web.Request, handler: Handler, principal: Principal | None
) -> web.StreamResponse:
    """The same key and request get the first answer again, errors included (as Stripe does).

    A hold's key is claimed by the hold script in Redis. Every other key is claimed in SQL
    before the handler runs, so a concurrent duplicate, in this process or another, is told
    409 instead of running twice; a different request under the same key is refused with 422.
    An effect in SQL stores its answer in its own commit; any other answer is stored after,
    and one that cannot be stored is not sent (503: the retry finds out what happened). A 5xx
    is not kept, and a claim left without an answer lapses within a lease, so the retry runs.
    Keys are per API key, as Stripe's are per account: another client's use of the same key
    is another request, and never sees this one's answer.
    """
    key = request.headers[IDEMPOTENCY_HEADER]
    if not _KEY.match(key):
        raise ValidationError(f"{IDEMPOTENCY_HEADER} must be 1 to 255 visible ASCII characters")
    if principal is not None and principal.name:
        key = f"{principal.name}:{key}"  # a key's name has no ":", so no two scopes meet
    fingerprint = _fingerprint(request.path, await request.read())
    if request.path.rstrip("/") == HOLDS_PATH:
        # A hold's key is claimed and answered by the hold script itself, in Redis.
        request[HOLD_KEY] = HoldKey(key, fingerprint.hex())
        return await handler(request)
    keys = request.app[IDEMPOTENCY]
    claim, owner = await keys.claim(key, fingerprint)
    try:
        return await _run_claimed(request, handler, key, owner, claim)
    finally:
        keys.finish(owner)


async def _run_claimed(
    request: web.Request, handler: Handler, key: str, owner: str, claim: ClaimResult
) -> web.StreamResponse:
    keys = request.app[IDEMPOTENCY]
    if claim.claim is Claim.MISMATCH:
        raise IdempotencyMismatch("Idempotency-Key was already used with a different request")
    if claim.claim is Claim.RUNNING:
        raise Conflict(
            "A request with this Idempotency-Key is still in progress", "idempotency_in_progress"
        )
    if claim.claim is Claim.REPLAY:
        if claim.outcome is not None:
            assert claim.record is not None
            replay = stored_outcome(
                claim.outcome, claim.record, request.app[BOOKINGS].redis_now_ms()
            )
        else:
            assert claim.status is not None and claim.body is not None
            replay = web.Response(
                body=claim.body, status=claim.status, content_type="application/json"
            )
        replay.headers[REPLAYED_HEADER] = "true"
        return replay

    ref = request[KEY_REF] = KeyRef(key, owner)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            await _release(keys, key, owner)
            raise
        response = _answer(request, exc)
    except Exception as exc:
        response = _answer(request, exc)
    if ref.stored:
        return response  # committed with the effect
    if response.status >= 500 or not isinstance(response, web.Response) or response.body is None:
        await _release(keys, key, owner)
        return response
    assert isinstance(response.body, bytes)
    try:
        if not await keys.complete(key, owner, response.status, response.body):
            log.warning("Idempotency-Key %r was taken over while its request ran", key)
    except Exception as exc:
        # Not kept, so not sent: a retry must not run again after an answer it never saw
        # kept. Its claim lapses; the retry finds the effect, if any, by its key.
        log.warning("storing the answer for Idempotency-Key %r failed: %s", key, exc)
        await _release(keys, key, owner)
        return error_response(
            Unavailable("The answer could not be recorded; retry with the same key")
        )
    return response


async def _release(keys: IdempotencyKeys, key: str, owner: str) -> None:
    """Forget the claim at once (best effort: if SQL cannot take it, the lease lapses)."""
    with contextlib.suppress(Exception):
        await keys.release(key, owner)
