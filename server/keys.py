"""Every typed application and request key, in one place."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # the keys' types, named in strings below (linters think them unused)
    from workers.pool import WorkerPool  # noqa: F401
    from workers.upstream import UpstreamClient  # noqa: F401

    from .auth import Principal, TokenService  # noqa: F401
    from .chat import ChatService  # noqa: F401
    from .config import Config  # noqa: F401
    from .passwords import Passwords  # noqa: F401
    from .ratelimit import KeyedRateLimiter  # noqa: F401
    from .storage import Database  # noqa: F401

CONFIG = web.AppKey["Config"]("config")
DB = web.AppKey["Database"]("db")
TOKENS = web.AppKey["TokenService"]("tokens")
PASSWORDS = web.AppKey["Passwords"]("passwords")
LOGIN_LIMITER = web.AppKey["KeyedRateLimiter"]("login_limiter")
UPSTREAM = web.AppKey["UpstreamClient"]("upstream")
POOL = web.AppKey["WorkerPool"]("pool")
CHAT = web.AppKey["ChatService"]("chat")
REQUESTS = web.AppKey("requests", Counter)
PRINCIPAL = web.RequestKey["Principal"]("principal")
