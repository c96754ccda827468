"""The application factory: middlewares, routes, and one cleanup context per resource."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from aiolimiter import AsyncLimiter

from workers.errors import JobCancelled
from workers.pace import Pace
from workers.pool import WorkerPool
from workers.probe import Prober
from workers.replica import Replica
from workers.router import ModelRoute, Router
from workers.upstream import UpstreamClient, create_session

from . import keys
from .api import assets
from .api.routes import setup_routes
from .config import Config
from .coordination import RedisLink
from .coordination.leases import RedisLeases, whole
from .coordination.limits import RedisLimits, RedisPace
from .coordination.revocations import Revocations
from .coordination.turns import RedisTurns
from .middleware.access import setup_access
from .middleware.auth import setup_auth
from .middleware.cors import setup_cors
from .middleware.csrf import setup_csrf
from .middleware.deadline import setup_body_deadline, setup_header_deadline
from .middleware.errors import setup_errors
from .middleware.headers import setup_headers
from .middleware.metrics import setup_metrics
from .middleware.sessions import setup_sessions
from .processes import ProcessInfo, split
from .secret import resolve_secret
from .services.account_jobs import AccountJobs
from .services.account_settings import AccountSettingsService
from .services.accounts import AccountService
from .services.admin import AdminService
from .services.apikeys import ApiKeyService
from .services.background import BackgroundService
from .services.caps import Caps
from .services.chat import ChatService
from .services.completions import CompletionService
from .services.conversations import ConversationService
from .services.limits import LocalLimits
from .services.marks import TurnMarks
from .services.memories import MemoryService
from .services.memory import MemoryManager
from .services.metrics_merge import ProcessMetrics
from .services.password_policy import PasswordPolicy, load_common
from .services.passwords import Passwords
from .services.profile import Profiles
from .services.prompt import PromptAssembler
from .services.ratelimit import FailureBackoff
from .services.render import Renderer
from .services.revocations import RevocationPoller
from .services.sharing import TurnSharing, sweep
from .services.status import StatusService
from .services.suggestions import SuggestionService
from .services.summaries import SummaryService
from .services.titles import TitleService
from .services.tokens import TokenService
from .services.transfer import TransferService
from .services.usage import UsageMeter
from .storage import open_storage

log = logging.getLogger(__name__)
Context = Callable[[web.Application], AsyncIterator[None]]


async def create_app(config: Config, process: ProcessInfo | None = None) -> web.Application:
    """Build the app; resources open on start-up and close in reverse order on cleanup.
    `process`: this is one of several server processes (see server/master.py)."""
    secret = await resolve_secret(config.auth.secret, config.database.path)
    server = config.server
    app = web.Application(client_max_size=server.max_body_bytes)
    app[keys.CONFIG] = config
    app[keys.CAPS] = Caps(config.limits, config.queue)
    setup_cors(app, server.cors_origins)  # outermost: error responses get it too
    setup_access(app, server.access_log)  # outside the error middleware: sees final statuses
    setup_metrics(app)
    setup_errors(app)
    setup_header_deadline(app)
    setup_headers(app)
    setup_sessions(app, secret, config.auth.token_ttl_s, server.proxy_hops)
    setup_auth(app)
    setup_body_deadline(app, server.body_timeout_s)  # after auth: no body read for a 401
    setup_csrf(app, server.proxy_hops, server.cors_origins)
    setup_routes(app)
    app.cleanup_ctx.extend([_shared_metrics(process), assets.compressed, _render,
                            _coordination, _storage, _accounts(secret), _revocation_poll,
                            _revocations, _usage, _router, _leases(process), _pool,
                            _background, _chat])
    app.on_shutdown.append(_stop_intake)
    return app


def _shared_metrics(process: ProcessInfo | None) -> Context:
    """With several processes, /metrics shows them all: this one writes its series to the
    master's folder every second (and once more last, after everything else has closed)."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if process is None:
            yield
            return
        metrics = app[keys.METRICS]
        metrics.shared = shared = ProcessMetrics(metrics.registry, process.metrics_dir,
                                                 os.getpid())
        writing = asyncio.create_task(shared.run(), name="metrics-write")
        yield
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        await shared.write()
    return ctx


async def _render(app: web.Application) -> AsyncIterator[None]:
    app[keys.RENDERER] = renderer = Renderer(app[keys.CONFIG].render)
    app[keys.METRICS].watch_render(renderer.stats.counts)
    yield
    await renderer.close()


async def _coordination(app: web.Application) -> AsyncIterator[None]:
    """The Redis link, when configured: opened before what shares state through it; and the
    rate limits, shared through it (or this process's own, also its fallback)."""
    config = app[keys.CONFIG]
    link = RedisLink(config.coordination) if config.coordination.redis_url else None
    app[keys.COORDINATION] = link
    limits = config.limits

    async def month_used(user_id: int) -> int:  # the meter opens later; asked per request
        return await app[keys.USAGE].month_used(user_id)

    local = LocalLimits(month_used, FailureBackoff(limits.login_failures_per_account,
                                                   limits.login_backoff_max_s))
    if link is None:
        app[keys.CAPS].use(local)
        yield
        return

    async def month_read(user_id: int) -> int:  # the database's count, to seed Redis's
        return await app[keys.USAGE].month_read(user_id)

    shared = RedisLimits(link, local, month_read, limits.login_failures_per_account,
                         limits.login_backoff_max_s, flush_s=config.usage.flush_interval_s)
    app[keys.CAPS].use(shared)
    app[keys.SHARED_LIMITS] = shared
    await link.start()
    await shared.start()
    yield
    await shared.close()
    await link.close()


async def _revocations(app: web.Application) -> AsyncIterator[None]:
    """With Redis: revocations made here are published, other nodes' ones heard."""
    link = app[keys.COORDINATION]
    if link is None:
        yield
        return
    tokens = app[keys.TOKENS]
    bus = Revocations(link, tokens.forget)
    tokens.announce.append(bus.publish)
    app[keys.API_KEYS].announce.append(bus.publish)
    app[keys.REVOCATIONS] = bus
    await bus.start()
    yield
    await bus.close()


async def _storage(app: web.Application) -> AsyncIterator[None]:
    storage = await open_storage(app[keys.CONFIG].database)
    app[keys.STORAGE] = storage
    app[keys.METRICS].watch_storage(lambda: storage.stats)
    app[keys.CONVERSATIONS] = ConversationService(storage.conversations, storage.search,
                                                  app[keys.CAPS], app[keys.RENDERER],
                                                  storage.branches)
    app[keys.TRANSFER] = TransferService(storage.transfer, storage.conversations,
                                         app[keys.CAPS])
    memories = app[keys.CONFIG].memories
    app[keys.PROFILES] = profiles = Profiles(storage.memories, memories.max_tokens,
                                             memories.cache_size)
    app[keys.MEMORIES] = MemoryService(storage.memories, profiles, app[keys.CAPS], memories)
    app[keys.ACCOUNT_SETTINGS] = AccountSettingsService(storage.account_settings, profiles,
                                                        app[keys.CAPS])
    yield
    await storage.close()


def _accounts(secret: str) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config, storage = app[keys.CONFIG], app[keys.STORAGE]
        a = config.auth
        passwords = Passwords()
        tokens = TokenService(storage.users, storage.tokens, secret, a.token_ttl_s,
                              a.cache_ttl_s, a.cache_size)
        policy = PasswordPolicy(await asyncio.to_thread(load_common))  # a file read: off the loop
        api_keys = ApiKeyService(storage.keys, secret, a.cache_ttl_s, a.cache_size,
                                 app[keys.CAPS])
        tokens.also_forget(api_keys.forget)  # revocations from elsewhere reach keys too
        app[keys.TOKENS] = tokens
        app[keys.API_KEYS] = api_keys
        app[keys.ACCOUNTS] = accounts = AccountService(
            storage.users, passwords, tokens, api_keys, app[keys.CAPS].limits,
            config.limits.login_per_ip_per_minute, policy, a.registration_mode, a.admins)
        app[keys.PASSWORDS] = passwords
        app[keys.POLICY] = policy
        promoted = await accounts.bootstrap()
        if promoted:
            log.warning("made admin at start-up: %s", ", ".join(promoted))
            await storage.audit.add(None, "(config)", "user.promote", None,
                                    ", ".join(promoted), {"names": promoted})
        unclaimed = await accounts.unclaimed_admins()
        if unclaimed:
            log.warning("auth.admins names with no account yet (whoever registers one first "
                        "becomes admin): %s", ", ".join(unclaimed))
        if a.registration_mode == "closed" and not a.admins:
            log.warning("registration is closed and auth.admins is empty: nobody can sign up; "
                        "only an existing administrator can create accounts")
        app[keys.METRICS].watch_cache(lambda: (tokens.stats.hits, tokens.stats.misses))
        yield
        passwords.close()
    return ctx


def polls_revocations(config: Config) -> bool:
    """Whether others may revoke what this process cached: several processes on one database,
    or a shared database (PostgreSQL: other nodes)."""
    return config.auth.revocation_poll_s > 0 and (config.server.processes > 1
                                                  or bool(config.database.url))


async def _revocation_poll(app: web.Application) -> AsyncIterator[None]:
    """Revocations written by other processes reach this one's caches within a poll (the
    database is the truth; with Redis, pub/sub brings them sooner)."""
    config = app[keys.CONFIG]
    if not polls_revocations(config):
        yield
        return
    poller = RevocationPoller(app[keys.STORAGE].auth_events, app[keys.TOKENS].forget,
                              config.auth.revocation_poll_s, config.auth.cache_ttl_s + 60)
    await poller.start()
    app[keys.REVOCATION_POLL] = poller
    polling = asyncio.create_task(poller.run(), name="revocation-poll")
    yield
    polling.cancel()
    await asyncio.gather(polling, return_exceptions=True)


async def _usage(app: web.Application) -> AsyncIterator[None]:
    config, storage = app[keys.CONFIG], app[keys.STORAGE]
    api_keys = app[keys.API_KEYS]

    async def touch_keys() -> None:
        used = api_keys.used()  # kept in memory until written: a listing meanwhile shows it
        if used:
            await storage.keys.touch(used)
            api_keys.written(used)

    meter = UsageMeter(storage.usage, config.usage.flush_interval_s, touch_keys)
    app[keys.USAGE] = meter
    shared = app.get(keys.SHARED_LIMITS)
    if shared is not None:
        meter.counted.append(shared.used)  # the monthly budgets, counted in Redis too
    flusher = asyncio.create_task(meter.run(), name="usage-flush")
    yield
    flusher.cancel()
    await asyncio.gather(flusher, return_exceptions=True)
    await meter.flush()  # the last second's counting, before the database closes


async def _router(app: web.Application) -> AsyncIterator[None]:
    """The models' replicas, each with its own session, and the prober that checks them."""
    config = app[keys.CONFIG]
    routing, llm = config.routing, config.llm
    specs = [r for model in config.model_list for r in model.replicas]
    # Probes get their own connections, so replicas busy streaming never fail them.
    probes = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                   connector=aiohttp.TCPConnector(limit=2 * len(specs)))
    sessions: list[aiohttp.ClientSession] = []
    routes: list[ModelRoute] = []
    for model in config.model_list:
        replicas: list[Replica] = []
        for spec in model.replicas:
            session = create_session(spec.max_concurrency or config.queue.workers, llm,
                                     spec.api_key)
            sessions.append(session)
            client = UpstreamClient(session, spec.url, probes, spec.api_key)
            replicas.append(Replica(spec, client, routing))
        routes.append(ModelRoute(model.name, model.served_name, replicas, routing))
    router = Router(routes, llm)
    router.on_first_token = app[keys.METRICS].first_token
    prober = Prober(router, routing)
    await prober.round()  # start knowing who is there (a model's name, if unconfigured)
    for route in routes:
        if not route.available:
            log.warning("model %s: no replica reachable at start-up (%s); probing every "
                        "%g s", route.name or "(unnamed)",
                        "; ".join(f"{r.label}: {r.reason}" for r in route.replicas),
                        routing.probe_interval_s)
    app[keys.ROUTER] = router
    app[keys.METRICS].watch_router(router)
    probing = asyncio.create_task(prober.run(), name="replica-probes")
    yield
    probing.cancel()
    await asyncio.gather(probing, return_exceptions=True)
    for session in sessions:
        await session.close()
    await probes.close()


def _leases(process: ProcessInfo | None) -> Context:
    """With Redis, upstream caps held across every process and node: a lease per in-flight
    request (workers, each replica's max_concurrency, a user's running and waiting jobs);
    while Redis is down, this process keeps to its share of them."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config, link = app[keys.CONFIG], app[keys.COORDINATION]
        if link is None:
            app[keys.LEASES] = None
            yield
            return
        c, q = config.coordination, config.queue
        mine: Callable[[int], int] = (
            (lambda total: split(total, process.index, process.count)) if process else whole)
        leases = RedisLeases(link, workers=q.workers,
                             background_cap=max(1, int(q.workers * config.background.share)),
                             ttl_s=c.lease_ttl_s,
                             renew_s=min(c.lease_renew_s, c.lease_ttl_s / 2), share=mine,
                             batcher=app[keys.SHARED_LIMITS].batcher,  # one pipeline a process
                             # a grant takes its upstream slot too: no pace call of its own
                             upstream_rps=config.limits.upstream_rps)
        app[keys.LEASES] = leases
        app[keys.METRICS].watch_leases(lambda: len(leases.line))
        await leases.start_tasks()
        yield
        await leases.close()
    return ctx


async def _pool(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    q = config.queue
    link = app[keys.COORDINATION]
    paces: list[RedisPace] = []

    def shared_pace(local: AsyncLimiter) -> Pace:
        """limits.upstream_rps for every node together, this process's own as fallback (an
        attempt whose lease was granted in Redis has its slot already: this paces the rest,
        those granted while Redis was down)."""
        assert link is not None
        paces.append(RedisPace(link, config.limits.upstream_rps, local.acquire,
                               app[keys.SHARED_LIMITS].batcher))
        return paces[0]

    pool = WorkerPool(app[keys.ROUTER], workers=q.workers, max_queue=q.max_size,
                      max_per_owner=q.max_per_user, max_running_per_owner=q.running_cap,
                      rps=config.limits.upstream_rps,
                      background_share=config.background.share,
                      background_max_waiting=config.background.max_waiting,
                      leases=app[keys.LEASES],
                      pace=shared_pace if link is not None else None)
    pool.start()
    app[keys.POOL] = pool
    storage = app[keys.STORAGE]
    app[keys.ADMIN] = AdminService(storage.users, storage.keys, storage.audit,
                                   app[keys.PASSWORDS], app[keys.POLICY], app[keys.TOKENS],
                                   app[keys.API_KEYS],
                                   app[keys.USAGE], pool.cancel_owner, pool.unblock_owner)
    app[keys.ACCOUNTS].stop_jobs_with(lambda user_id: pool.cancel_owner(
        user_id, JobCancelled("the account was deleted"), True))  # user ids are never reused
    # ...and as here when another process or node disabled or deleted the account (heard as
    # a revocation of the user's credentials: the poll or pub/sub calls TokenService.forget).
    account_jobs = AccountJobs(storage.users, pool.cancel_owner, pool.unblock_owner)
    app[keys.TOKENS].also_forget(account_jobs.changed)
    app[keys.ACCOUNT_JOBS] = account_jobs
    app[keys.STATUS] = StatusService(pool, app[keys.ROUTER], q.workers, app[keys.METRICS],
                                     None if link is None else lambda: link.up)
    shared = app.get(keys.SHARED_LIMITS)
    if link is not None and shared is not None:
        app[keys.METRICS].watch_redis(lambda: link.up, lambda: {
            "checks": shared.fallbacks, "upstream_rps": sum(p.fallbacks for p in paces)},
            lambda: shared.batcher.stats)
    app[keys.METRICS].watch_pool(pool.queue.qsize, lambda: pool.stats.running)
    yield
    await account_jobs.close()
    await pool.stop()


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Low-priority jobs through the same pool, and what uses them: generated titles,
    summaries of older turns and memory suggestions."""
    config = app[keys.CONFIG]
    background = BackgroundService(app[keys.POOL], app[keys.METRICS])
    app[keys.BACKGROUND] = background
    app[keys.TITLES] = titles = TitleService(background, app[keys.STORAGE].conversations,
                                             config.background.titles)
    app[keys.SUMMARIES] = summaries = SummaryService(
        background, app[keys.STORAGE].summaries, config.memory,
        config.background.summary_max_tokens, config.background.summaries)
    app[keys.SUGGESTIONS] = suggestions = SuggestionService(
        background, app[keys.MEMORIES], config.memories.suggestions)
    yield
    await background.close()  # stopped, not drained: their results become None at once
    # ...so what is being stored is the only wait, before storage closes.
    await asyncio.gather(titles.close(), summaries.close(), suggestions.close())


async def _chat(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    memory = MemoryManager(app[keys.STORAGE].messages, config.memory)
    meter, metrics, caps = app[keys.USAGE], app[keys.METRICS], app[keys.CAPS]
    app[keys.PROMPTS] = prompts = PromptAssembler(
        app[keys.PROFILES], app[keys.ROUTER], config.model_list, config.llm, config.memory,
        memory, app[keys.STORAGE].prompts)
    app[keys.CHAT] = chat = ChatService(memory, app[keys.POOL], config.llm,
                                        config.limits.chat_per_user_per_minute, meter,
                                        metrics, caps, config.model_list, config.chat,
                                        prompts=prompts,
                                        marks=TurnMarks(app[keys.STORAGE].messages))
    chat.replied += [app[keys.TITLES].after_reply, app[keys.SUMMARIES].after_reply,
                     app[keys.SUGGESTIONS].after_reply]
    app[keys.COMPLETIONS] = CompletionService(app[keys.POOL], app[keys.ROUTER], meter,
                                              config.llm.max_tokens, metrics, caps)
    link, shared, sweeper = app[keys.COORDINATION], None, None
    if link is not None:  # turns followed and stopped through any node; dead nodes' ended
        c = config.coordination
        shared = RedisTurns(link, app[keys.SHARED_LIMITS].batcher,
                            config.chat.finished_turn_ttl_s, c.stream_flush_s,
                            c.heartbeat_s, c.node_ttl_s, c.stream_max_records)
        shared.on_stop = chat.stop_here
        chat.sharing = sharing = TurnSharing(shared, chat.store_orphan, chat.marks.unmark)
        shared.start()
        sweeper = asyncio.create_task(sweep(sharing, c.heartbeat_s), name="turns-sweep")
    renewer = asyncio.create_task(chat.marks.renew(chat.running_marks), name="turn-marks")
    yield
    for task in (renewer, sweeper):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await chat.close()  # every running turn stores its partial reply before the pool stops
    if shared is not None:
        await shared.close()  # their ends reach the other nodes' followers


async def _stop_intake(app: web.Application) -> None:
    """On shutdown: take no new jobs and answer queued ones with 503; running ones go on."""
    app[keys.POOL].close_intake()
