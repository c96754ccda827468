"""The load for bench/replicas.py: closed-loop clients holding conversations, each turn
streamed, through chatgate's /api/chat or straight to a replica; time to first token seen here."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

MODEL = "chat"  # the simulator serves this name, so chatgate's model name needs no mapping


@dataclass
class Turn:
    """One answered turn as the client saw it."""

    ttft: float  # seconds from sending to the first token
    sent: float  # perf_counter when the turn was sent
    done: float  # perf_counter when the reply ended
    follow_up: bool  # a later turn of a conversation (not its first)


@dataclass
class Load:
    """What one measured run produced."""

    turns: list[Turn] = field(default_factory=list)
    failed: int = 0
    first_turns: int = 0  # conversations opened, warm-up included (for the hit ratio)
    follow_ups: int = 0  # follow-up turns sent, warm-up included
    client_cpu_s: float = 0.0

    def rate(self, start: float, end: float) -> float:
        """Turns completed per second within [start, end)."""
        return sum(start <= t.done < end for t in self.turns) / (end - start)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile in milliseconds (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000


# One turn: (session, client index, conversation state, text, first turn?) -> time to first token.
TurnFn = Callable[[aiohttp.ClientSession, int, dict[str, object], str, bool], Awaitable[float]]


async def run_load(turn: TurnFn, clients: int, turns: int, warmup: float, seconds: float,
                   tag: str, think: float = 0.0) -> tuple[Load, float, float]:
    """`clients` closed-loop clients, each sending conversations of `turns` turns, pausing
    0.5-1.5 x `think` s between two turns of a conversation as a person reads and types;
    returns the load and the measured window (turns before `warmup` s are not counted)."""
    load = Load()
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    start = time.perf_counter()
    window = (start + warmup, start + warmup + seconds)
    conns = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=conns, timeout=timeout) as session:

        async def client(i: int) -> None:
            dice = random.Random(i)
            for c in itertools.count():
                state: dict[str, object] = {}
                for t in range(turns):
                    if t and think:
                        await asyncio.sleep(think * dice.uniform(0.5, 1.5))
                    if time.perf_counter() >= window[1]:
                        return
                    text = f"{tag} client {i} conversation {c} turn {t}: tell me about quokkas"
                    load.first_turns += t == 0
                    load.follow_ups += t > 0
                    sent = time.perf_counter()
                    try:
                        ttft = await turn(session, i, state, text, t == 0)
                    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                        load.failed += 1
                        if load.failed <= 3:
                            print(f"  turn failed: {exc!r}", file=sys.stderr)
                        break  # start a new conversation
                    load.turns.append(Turn(ttft, sent, time.perf_counter(), t > 0))

        await asyncio.gather(*(client(i) for i in range(clients)))
    load.client_cpu_s = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
    return load, window[0], window[1]


def chatgate_turn(base: str, tokens: list[str], max_tokens: int) -> TurnFn:
    """A turn through chatgate's /api/chat, streamed; the conversation id comes from `meta`."""

    async def turn(s: aiohttp.ClientSession, i: int, state: dict[str, object], text: str,
                   first: bool) -> float:
        body: dict[str, object] = {"message": text, "stream": True, "max_tokens": max_tokens}
        if not first:
            body["conversation_id"] = state["conversation_id"]
        sent = time.perf_counter()
        ttft = 0.0
        headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
        async with s.post(base + "/api/chat", json=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/api/chat {resp.status}: {(await resp.text())[:200]}")
            event = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    if event == "meta":
                        state["conversation_id"] = json.loads(line[6:])["conversation_id"]
                    elif event == "error":
                        raise RuntimeError(f"stream error: {line[6:200]}")
                    elif event == "done":
                        return ttft
                    elif not ttft and event == "":
                        ttft = time.perf_counter() - sent
                elif not line:
                    event = ""
        raise RuntimeError("stream ended without done")

    return turn


def direct_turn(urls: list[str], pick: str, max_tokens: int, system_prompt: str) -> TurnFn:
    """A turn sent straight to a replica's /v1/chat/completions, streamed, with the history
    chatgate would send. `pick`: "round-robin" or "random" per turn, or "sticky" (a
    conversation stays where its first turn went, round-robin)."""
    counter = itertools.count()
    dice = random.Random(13)

    async def turn(s: aiohttp.ClientSession, i: int, state: dict[str, object], text: str,
                   first: bool) -> float:
        history = state.setdefault(
            "history", [{"role": "system", "content": system_prompt}] if system_prompt else [])
        assert isinstance(history, list)
        if pick == "random":  # not round-robin: identical clients in step would make it sticky
            state["url"] = dice.choice(urls)
        elif first or pick == "round-robin":
            state["url"] = urls[next(counter) % len(urls)]
        history.append({"role": "user", "content": text})
        body = {"model": MODEL, "messages": history, "stream": True, "max_tokens": max_tokens}
        sent = time.perf_counter()
        ttft = 0.0
        reply: list[str] = []
        async with s.post(f"{state['url']}/chat/completions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"replica {resp.status}: {(await resp.text())[:200]}")
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                piece = choices[0].get("delta", {}).get("content")
                if piece:
                    ttft = ttft or time.perf_counter() - sent
                    reply.append(piece)
        history.append({"role": "assistant", "content": "".join(reply)})
        return ttft

    return turn
