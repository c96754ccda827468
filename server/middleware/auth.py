"""Authentication: a bearer token, an API key or the session cookie, each checked by its
service; /api/* and /v1/* need one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import keys
from ..services.apikeys import is_api_key
from ..services.gate import admit
from ..services.tokens import AuthError, Principal
from .errors import ApiError, unauthorized
from .sessions import session_token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_GUARDED = ("/api/", "/v1/")


def public(handler: Handler) -> Handler:
    """Mark an /api/ handler as needing no authentication."""
    handler.chatgate_public = True  # type: ignore[attr-defined]
    return handler


def ungated(handler: Handler) -> Handler:
    """Mark a handler that a pending account, or one that must change its password, may use."""
    handler.chatgate_ungated = True  # type: ignore[attr-defined]
    return handler


def principal_of(request: web.Request) -> Principal:
    """The authenticated principal that the middleware attached."""
    return request[keys.PRINCIPAL]


async def optional_principal(request: web.Request) -> Principal | None:
    """Who sent this request, if its credentials are valid; None otherwise (for routes that
    answer everyone but tell more to some)."""
    try:
        return await _verify(request, await _token(request))
    except (ApiError, AuthError):
        return None


async def _verify(request: web.Request, token: str) -> Principal:
    if is_api_key(token):
        return await request.app[keys.API_KEYS].verify(token)
    return await request.app[keys.TOKENS].verify(token)


async def _token(request: web.Request) -> str:
    """The bearer token, else the session cookie's (marking the request cookie-authenticated)."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization header must be 'Bearer <token>'")
        return token.strip()
    found = await session_token(request)
    if found is None:
        raise unauthorized()
    request[keys.VIA_COOKIE] = True
    return found


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a valid bearer token or session cookie on every non-public /api/ route."""
    route_handler = request.match_info.handler
    if request.path.startswith(_GUARDED) and request.match_info.http_exception is None \
            and not getattr(route_handler, "chatgate_public", False):
        principal = await _verify(request, await _token(request))
        admit(principal.user, getattr(route_handler, "chatgate_ungated", False))
        request[keys.PRINCIPAL] = principal
    return await handler(request)


def setup_auth(app: web.Application) -> None:
    """Install the authentication middleware (after sessions, before the CSRF check)."""
    app.middlewares.append(auth_middleware)
