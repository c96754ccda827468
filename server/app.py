"""The application factory: middlewares, routes, and one cleanup context per resource."""

from __future__ import annotations

import logging
from typing import AsyncIterator, Callable

from aiohttp import web

from workers.pool import WorkerPool
from workers.upstream import UpstreamClient, UpstreamSettings, create_session

from . import keys
from .auth import TokenService, setup_auth
from .chat import ChatService
from .config import Config
from .cors import setup_cors
from .errors import setup_errors
from .headers import setup_headers
from .memory import MemoryManager
from .metrics import setup_metrics
from .passwords import Passwords
from .ratelimit import KeyedRateLimiter
from .routes import setup_routes
from .secret import resolve_secret
from .sessions import setup_sessions
from .storage import Database, migrate

log = logging.getLogger(__name__)


async def create_app(config: Config) -> web.Application:
    """Build the app; resources open on start-up and close in reverse order on cleanup."""
    secret = await resolve_secret(config.auth.secret, config.database.path)
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[keys.CONFIG] = config
    setup_cors(app, config.server.cors_origins)  # outermost: error responses get it too
    setup_errors(app)
    setup_metrics(app)
    setup_headers(app)
    setup_sessions(app, secret, config.auth.token_ttl_s, config.server.trust_forwarded)
    setup_auth(app)
    setup_routes(app)
    app.cleanup_ctx.extend([_database, _passwords, _tokens(secret), _upstream, _pool, _chat])
    app.on_shutdown.append(_stop_intake)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    c = app[keys.CONFIG].database
    db = Database(c.path, readers=c.read_connections, busy_timeout_ms=c.busy_timeout_ms,
                  synchronous=c.synchronous, max_batch=c.max_batch)
    await db.open(migrate)
    app[keys.DB] = db
    yield
    await db.close()


async def _passwords(app: web.Application) -> AsyncIterator[None]:
    app[keys.PASSWORDS] = passwords = Passwords()
    app[keys.LOGIN_LIMITER] = KeyedRateLimiter(app[keys.CONFIG].limits.login_per_ip_per_minute)
    yield
    passwords.close()


def _tokens(secret: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        a = app[keys.CONFIG].auth
        app[keys.TOKENS] = TokenService(app[keys.DB], secret, a.token_ttl_s, a.cache_ttl_s,
                                        a.cache_size)
        yield
    return ctx


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    llm = config.llm
    settings = UpstreamSettings(llm.base_url, llm.api_key, llm.model, llm.connect_timeout_s,
                                llm.first_token_timeout_s, llm.request_timeout_s, llm.retries,
                                llm.retry_backoff_s)
    session = create_session(config.queue.workers, settings)
    probes = create_session(1, settings)
    upstream = UpstreamClient(session, settings, probes)
    try:
        await upstream.resolve_model()
    except Exception as err:  # noqa: BLE001 - start anyway; /ready says why
        log.warning("model server not reachable at start-up (%s); will retry per request", err)
    app[keys.UPSTREAM] = upstream
    yield
    await session.close()
    await probes.close()


async def _pool(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    pool = WorkerPool(app[keys.UPSTREAM], workers=config.queue.workers,
                      max_queue=config.queue.max_size, max_per_owner=config.queue.max_per_user,
                      rps=config.limits.upstream_rps)
    pool.start()
    app[keys.POOL] = pool
    yield
    await pool.stop()


async def _chat(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    memory = MemoryManager(app[keys.DB], config.memory)
    app[keys.CHAT] = ChatService(app[keys.DB], memory, app[keys.POOL], config)
    yield


async def _stop_intake(app: web.Application) -> None:
    """On shutdown: take no new jobs and answer queued ones with 503; running ones go on."""
    app[keys.POOL].close_intake()
