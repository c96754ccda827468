"""The OpenAI-compatible front door: requests passed to the model server through the fair
queue and the workers, answers passed back untouched, usage counted, limits applied."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from workers import job as jobs
from workers.pool import WorkerPool
from workers.router import Router

from .caps import Caps, Overrides
from .feed import Feed
from .limits import Rate, check_and_admit
from .metrics import Metrics
from .tokens import KeyGrant
from .usage import UsageMeter

# Most sequences (`n`, `best_of`) one request may ask the model for: a bound on what a single
# job weighs against its owner's running cap, far above any sane use.
MAX_SEQUENCES = 128
Outcome = jobs.Finished | jobs.Failed


@dataclass(frozen=True, slots=True)
class Failure:
    """The request failed; what came before it (if anything) was passed on."""

    error: Exception


class Forwarded(Feed["bytes | Outcome"]):
    """One forwarded request: its job feeds bytes in; its follower passes them on."""

    def __init__(self, job: jobs.Job, stream: bool,
                 on_end: Callable[[Forwarded, Outcome], None]) -> None:
        super().__init__()
        self.job = job
        self.stream = stream
        self._on_end = on_end
        self._ended = False
        job.events = self

    def put_nowait(self, item: jobs.Event) -> None:
        """The job's event sink."""
        if isinstance(item, jobs.Raw):
            self.push(item.data)
        elif isinstance(item, (jobs.Finished, jobs.Failed)) and not self._ended:
            self._ended = True
            self._on_end(self, item)
            self.push(item)

    async def follow(self) -> AsyncGenerator[bytes | Failure, None]:
        """The answer's bytes as they come, then a Failure if it failed; it ends when the
        answer does. Leaving early stops the job."""
        try:
            while True:
                if not self._events:
                    await self.wait()
                    continue
                item = self._events.popleft()
                if isinstance(item, bytes):
                    yield item
                    continue
                if isinstance(item, jobs.Failed):
                    yield Failure(item.error)
                return
        finally:
            self.job.cancel()  # a no-op once the job is done


class CompletionService:
    """Checks the model and the caller's allowances, queues the request, counts its usage."""

    def __init__(self, pool: WorkerPool, router: Router, meter: UsageMeter,
                 default_max_tokens: int, metrics: Metrics, caps: Caps) -> None:
        self._metrics = metrics
        self._caps = caps
        self._pool = pool
        self._router = router
        self._meter = meter
        self._default_max_tokens = default_max_tokens
        self._created = int(time.time())

    async def models(self) -> dict[str, Any]:
        """The configured models, in OpenAI's list shape."""
        return {"object": "list", "data": [
            {"id": route.name, "object": "model", "created": self._created,
             "owned_by": "chatgate"} for route in await self._router.named()]}

    async def start(self, user_id: int, key: KeyGrant | None, path: str, body: dict[str, Any],
                    request_id: str, limits: Overrides = None,
                    session: str | None = None) -> Forwarded:
        """Admit and queue one request (`limits`: the user's overrides of the caps); the
        caller follows the answer. Requests with the same `session` (or body `user`) of one
        user go to the same replica while it is healthy."""
        route = await self._router.lookup(str(body["model"]))
        self._router.check(route)
        # The key's requests and tokens per minute and the monthly budget: one check, all
        # charged or none; then the user's place in the queue. With Redis, one round trip.
        tokens = self._tokens_rate(key, body)
        place = await check_and_admit(
            self._caps.limits,
            (*self._requests_rate(key), *tokens, self._caps.budget(user_id, limits)),
            lambda: self._pool.admit(user_id), self._pool.shared)
        stream = body.get("stream") is True
        options = body.get("stream_options")
        hide_usage = stream and not (isinstance(options, dict) and options.get("include_usage"))
        if hide_usage:  # we need the usage for accounting; the client never sees it
            body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        job = jobs.Job(owner=user_id, request=jobs.ForwardRequest(path, body, stream,
                                                                  hide_usage, request_id),
                       max_running=self._caps.running(limits), weight=weight_of(body),
                       model=route.name, affinity=_affinity(user_id, session, body))

        def ended(_: Forwarded, outcome: Outcome) -> None:
            self._metrics.job_ended(job, outcome)
            usage: dict[str, Any] = {}
            if isinstance(outcome, jobs.Finished):  # a reply, counted as /api/chat counts one
                usage = outcome.completion.usage
                self._meter.record(user_id, key.id if key else None, usage)
            for rate in tokens:  # what was reserved but not used goes back
                used = _int(usage.get("prompt_tokens")) + _int(usage.get("completion_tokens"))
                self._caps.limits.give_back(rate, rate.cost - used)

        forwarded = Forwarded(job, stream, ended)
        try:
            self._pool.submit(job, place)
        except BaseException:
            place.release()
            raise
        return forwarded

    @staticmethod
    def _requests_rate(key: KeyGrant | None) -> tuple[Rate, ...]:
        """The key's requests per minute, as a check (none without a key or a limit)."""
        if key is None or not key.rpm:
            return ()
        return (Rate("rpm", key.id, key.rpm,
                     "this API key's requests-per-minute limit is reached"),)

    def _tokens_rate(self, key: KeyGrant | None, body: dict[str, Any]) -> tuple[Rate, ...]:
        """The key's tokens per minute, as a check reserving the most the request may use
        (corrected once its usage is known)."""
        if key is None or not key.tpm:
            return ()
        reserve = _max_tokens(body, self._default_max_tokens) + _prompt_estimate(body)
        return (Rate("tpm", key.id, key.tpm, "this API key's tokens-per-minute limit is "
                     "reached", cost=reserve),)


def _affinity(user_id: int, session: str | None, body: dict[str, Any]) -> tuple[Any, ...] | None:
    """The key that keeps a client's requests on one replica: its session header, else the
    body's `user` (within this user's own requests only)."""
    if session:
        return ("session", user_id, session[:200])
    user = body.get("user")
    if isinstance(user, str) and user:
        return ("user", user_id, user[:200])
    return None


def weight_of(body: dict[str, Any]) -> int:
    """The sequences a request asks the model for, max(1, n, best_of): what its job counts
    against its owner's running cap (vLLM carries each as a sequence)."""
    return max(1, _int(body.get("n")), _int(body.get("best_of")))


def _max_tokens(body: dict[str, Any], default: int) -> int:
    """The reply tokens a request may use: its max_tokens (times n), or the default."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    n = body.get("n")
    per_choice = asked if isinstance(asked, int) and asked > 0 else default
    return per_choice * (n if isinstance(n, int) and n > 0 else 1)


def _prompt_estimate(body: dict[str, Any]) -> int:
    """About four characters a token, from the request's own text."""
    return len(str(body.get("messages") or body.get("prompt") or "")) // 4


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
