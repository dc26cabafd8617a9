"""Authentication: the request's bearer key, found in the keyring, checked against the action
its route declares. What each role may do is decided in :mod:`holdsvc.domain.access`."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from holdsvc.appkeys import KEYRING, LOOPBACK, PRINCIPAL
from holdsvc.domain.access import OPEN, Action, Principal
from holdsvc.domain.errors import Forbidden, Unauthorized

# handler -> the action it performs. A handler that is not here needs no key (health).
_ACTIONS: dict[Handler, Action] = {}


def requires(action: Action) -> Callable[[Handler], Handler]:
    """Declare what a handler does; the middleware lets only keys whose role may do it in."""

    def register(handler: Handler) -> Handler:
        _ACTIONS[handler] = action
        return handler

    return register


def action_of(handler: Handler) -> Action | None:
    return _ACTIONS.get(handler)


def authenticate(request: web.Request) -> Principal | None:
    """Who the request acts as (also kept as ``request[PRINCIPAL]``), or None for a route
    that needs no key. Raises 401 for a missing or unknown key, 403 for a role that may not
    do this."""
    action = _ACTIONS.get(request.match_info.handler)
    if action is None:
        return None
    app = request.app
    keyring = app[KEYRING]
    if keyring.open:
        principal = OPEN
    elif action is Action.ADMIN_VIEWS and app[LOOPBACK]:
        return None  # only this machine can ask
    else:
        principal = _bearer(request, keyring.find)
        if not principal.may(action):
            raise Forbidden(
                f"An API key with the role {principal.role.value} may not {action}",
                "role_not_allowed",
            )
    request[PRINCIPAL] = principal
    return principal


def _bearer(request: web.Request, find: Callable[[str], Principal | None]) -> Principal:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        raise Unauthorized(
            "An API key is required: send Authorization: Bearer <key>", "api_key_required"
        )
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("Authorization must be 'Bearer <key>'", "bad_authorization")
    principal = find(secret.strip())
    if principal is None:
        raise Unauthorized(
            "Unknown API key",
            "unknown_api_key",
            challenge='Bearer realm="holdsvc", error="invalid_token"',
        )
    return principal


def principal_of(request: web.Request) -> Principal:
    """The principal authenticate() found: every handler that acts has one."""
    return request[PRINCIPAL]
