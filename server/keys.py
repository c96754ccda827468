"""Every typed application and request key, in one place."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from workers.pool import WorkerPool
    from workers.upstream import UpstreamClient

    from .auth import Principal, TokenService
    from .chat import ChatService
    from .config import Config
    from .passwords import Passwords
    from .ratelimit import KeyedRateLimiter
    from .storage import Database

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
