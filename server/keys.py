"""Every typed application and request key, in one place (it imports no web layer)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from workers.pool import WorkerPool
from workers.router import Router

from .config import Config
from .coordination import RedisLink
from .coordination.leases import RedisLeases
from .coordination.limits import RedisLimits
from .coordination.revocations import Revocations
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
from .services.memories import MemoryService
from .services.metrics import Metrics
from .services.password_policy import PasswordPolicy
from .services.passwords import Passwords
from .services.profile import Profiles
from .services.prompt import PromptAssembler
from .services.render import Renderer
from .services.revocations import RevocationPoller
from .services.status import StatusService
from .services.suggestions import SuggestionService
from .services.summaries import SummaryService
from .services.titles import TitleService
from .services.tokens import Principal, TokenService
from .services.transfer import TransferService
from .services.usage import UsageMeter
from .storage import Storage

CONFIG = web.AppKey("config", Config)
STORAGE = web.AppKey("storage", Storage)
# The Redis link; None when coordination.redis_url is empty (each process alone).
COORDINATION: web.AppKey[RedisLink | None] = web.AppKey("coordination")
# Upstream caps shared through Redis; None without it (the pool's own counts are the caps).
LEASES: web.AppKey[RedisLeases | None] = web.AppKey("leases")
# The rate limits kept in Redis (absent without Redis: Caps.limits is then this process's).
SHARED_LIMITS = web.AppKey("shared_limits", RedisLimits)
REVOCATIONS = web.AppKey("revocations", Revocations)  # with Redis: pushed to every node
TOKENS = web.AppKey("tokens", TokenService)
ACCOUNTS = web.AppKey("accounts", AccountService)
ADMIN = web.AppKey("admin", AdminService)
POLICY = web.AppKey("policy", PasswordPolicy)
PASSWORDS = web.AppKey("passwords", Passwords)
API_KEYS = web.AppKey("api_keys", ApiKeyService)
USAGE = web.AppKey("usage", UsageMeter)
COMPLETIONS = web.AppKey("completions", CompletionService)
CONVERSATIONS = web.AppKey("conversations", ConversationService)
TRANSFER = web.AppKey("transfer", TransferService)
RENDERER = web.AppKey("renderer", Renderer)
ROUTER = web.AppKey("router", Router)
POOL = web.AppKey("pool", WorkerPool)
CHAT = web.AppKey("chat", ChatService)
BACKGROUND = web.AppKey("background", BackgroundService)
TITLES = web.AppKey("titles", TitleService)
SUMMARIES = web.AppKey("summaries", SummaryService)
SUGGESTIONS = web.AppKey("suggestions", SuggestionService)  # memories proposed from turns
STATUS = web.AppKey("status", StatusService)
REVOCATION_POLL = web.AppKey("revocation_poll", RevocationPoller)  # when others may revoke
# Stops (and refuses) the jobs of an account disabled or deleted by another process or node.
ACCOUNT_JOBS = web.AppKey("account_jobs", AccountJobs)
CAPS = web.AppKey("caps", Caps)
PROFILES = web.AppKey("profiles", Profiles)  # each user's settings and memories, cached
MEMORIES = web.AppKey("memories", MemoryService)  # long-term memories (not the history budget)
ACCOUNT_SETTINGS = web.AppKey("account_settings", AccountSettingsService)
PROMPTS = web.AppKey("prompts", PromptAssembler)
PRINCIPAL = web.RequestKey("principal", Principal)
VIA_COOKIE = web.RequestKey("via_cookie", bool)
REQUEST_ID = web.RequestKey("request_id", str)
UPSTREAM_S = web.RequestKey("upstream_s", float)  # time the request spent with the model
METRICS = web.AppKey("metrics", Metrics)
# Called after each request with (request, route pattern, status, seconds).
RequestDone = Callable[[web.Request, str, int, float], None]
REQUEST_DONE = web.AppKey("request_done", list[RequestDone])
