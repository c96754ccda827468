"""Chat completions beyond one plain reply: n, logprobs, tool calls, seed, lenient fields."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.vllm_sim.wire import (
    TIME_TOOL,
    WEATHER_TOOL,
    MakeSim,
    Session,
    ask,
    chat_body,
    is_error,
    post,
    stream,
)

pytestmark = pytest.mark.asyncio
WEATHER = "What's the weather in Paris today?"


def by_choice(chunks: list[Any]) -> dict[int, list[dict[str, Any]]]:
    """The streamed choice objects grouped by index (usage chunks left out)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for c in chunks:
        for choice in c["choices"]:
            out.setdefault(choice["index"], []).append(choice)
    return out


def content(choices: list[dict[str, Any]]) -> str:
    """The text a streamed choice adds up to."""
    return "".join(c["delta"].get("content") or "" for c in choices)


async def test_n_choices_non_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=20)
    status, _, data = await post(session, sim, "chat/completions", chat_body(n=3))
    assert status == 200
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in data["choices"]]
    assert all(t.startswith("Simulated reply 1 to: Hello there") for t in texts)
    assert len(set(texts)) == 3, "each choice is its own sample"
    _, _, single = await post(session, sim, "chat/completions", chat_body())
    assert texts[0] == single["choices"][0]["message"]["content"]  # choice 0 is the n=1 reply
    usage = data["usage"]
    assert usage["prompt_tokens"] == single["usage"]["prompt_tokens"]  # the prompt counts once
    assert usage["completion_tokens"] == 60
    assert usage["total_tokens"] == usage["prompt_tokens"] + 60


async def test_n_choices_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=10)
    _, _, full = await post(session, sim, "chat/completions", chat_body(n=2))
    body = chat_body(n=2, stream_options={"include_usage": True})
    _, chunks = await stream(session, sim, "chat/completions", body)
    assert len({c["id"] for c in chunks}) == 1
    assert all(len(c["choices"]) == 1 for c in chunks[:-1])
    # Every choice opens with its role chunk, before any token.
    assert [c["choices"][0] for c in chunks[:2]] == [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None} for i in (0, 1)]  # fmt: skip
    groups = by_choice(chunks)
    assert sorted(groups) == [0, 1]
    for i, choice in enumerate(full["choices"]):
        assert content(groups[i]) == choice["message"]["content"]
        assert [g["finish_reason"] for g in groups[i]] == [None] * 10 + ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


async def test_logprobs_non_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=6)
    body = chat_body(logprobs=True, top_logprobs=3)
    _, _, data = await post(session, sim, "chat/completions", body)
    choice = data["choices"][0]
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    for e in entries:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
        assert e["bytes"] == list(e["token"].encode()) and e["logprob"] < 0
        tops = e["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == e["token"]
        assert tops[0]["logprob"] == e["logprob"]
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert len({t["token"] for t in tops}) == 3
        assert sum(math.exp(t["logprob"]) for t in tops) < 1
        assert all(t["bytes"] == list(t["token"].encode()) for t in tops)
    # logprobs without top_logprobs: the sampled token only, an empty top list.
    _, _, plain = await post(session, sim, "chat/completions", chat_body(logprobs=True))
    assert all(e["top_logprobs"] == [] for e in plain["choices"][0]["logprobs"]["content"])
    # Not asked for: null, as before.
    _, _, none = await post(session, sim, "chat/completions", chat_body())
    assert none["choices"][0]["logprobs"] is None


async def test_logprobs_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=6)
    body = chat_body(logprobs=True, top_logprobs=2)
    _, _, full = await post(session, sim, "chat/completions", body)
    _, chunks = await stream(session, sim, "chat/completions", body)
    role, *tokens = chunks
    assert role["choices"][0]["logprobs"] is None
    streamed = []
    for c in tokens:
        choice = c["choices"][0]
        (entry,) = choice["logprobs"]["content"]
        assert entry["token"] == choice["delta"]["content"]
        streamed.append(entry)
    assert streamed == full["choices"][0]["logprobs"]["content"]


async def test_tool_call_required_non_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    body = ask("Plan my trip to Rome", tools=[TIME_TOOL, WEATHER_TOOL], tool_choice="required")
    _, _, data = await post(session, sim, "chat/completions", body)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["role"] == "assistant" and msg["content"] is None
    (call,) = msg["tool_calls"]
    assert call["id"].startswith("chatcmpl-tool-") and call["type"] == "function"
    assert call["function"]["name"] == "get_time"  # no weather asked: the first tool
    assert json.loads(call["function"]["arguments"]) == {"timezone": "Plan my trip to Rome"}
    assert data["usage"]["completion_tokens"] > 0


async def test_tool_call_auto_weather_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    body = ask(WEATHER, tools=[TIME_TOOL, WEATHER_TOOL], stream_options={"include_usage": True})
    _, chunks = await stream(session, sim, "chat/completions", body)
    role, head, *fragments, usage = chunks
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    first = head["choices"][0]
    (tc,) = first["delta"]["tool_calls"]
    assert tc["index"] == 0 and tc["id"].startswith("chatcmpl-tool-") and tc["type"] == "function"
    assert tc["function"] == {"name": "get_weather", "arguments": ""}
    assert first["finish_reason"] is None
    assert fragments, "arguments arrive in fragments"
    args = ""
    for c in fragments:
        (piece,) = c["choices"][0]["delta"]["tool_calls"]
        assert piece.keys() == {"index", "function"} and piece["function"].keys() == {"arguments"}
        args += piece["function"]["arguments"]
    assert json.loads(args) == {"location": "Paris", "unit": "celsius"}
    finishes = [c["choices"][0]["finish_reason"] for c in fragments]
    assert finishes == [None] * (len(fragments) - 1) + ["tool_calls"]
    assert usage["usage"]["completion_tokens"] == 1 + len(fragments)
    # The same request without streaming gives the same call.
    _, _, data = await post(session, sim, "chat/completions", {**body, "stream_options": None})
    (call,) = data["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": args}
    assert data["usage"] == usage["usage"]


async def test_named_tool_choice_and_n(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    named = {"type": "function", "function": {"name": "get_weather"}}
    body = ask("hello", tools=[TIME_TOOL, WEATHER_TOOL], tool_choice=named, n=2)
    _, _, data = await post(session, sim, "chat/completions", body)
    calls = [c["message"]["tool_calls"][0] for c in data["choices"]]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_weather"]
    assert calls[0]["id"] != calls[1]["id"]
    _, chunks = await stream(session, sim, "chat/completions", body)
    heads = [c["choices"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]
             and "id" in c["choices"][0]["delta"]["tool_calls"][0]]  # fmt: skip
    assert sorted(h["index"] for h in heads) == [0, 1]


async def test_no_tool_call_without_reason(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    cases = [ask("hello", tools=[WEATHER_TOOL]),  # auto, no weather asked
             ask(WEATHER, tools=[WEATHER_TOOL], tool_choice="none"),
             ask(WEATHER)]  # weather, but no tools  # fmt: skip
    for body in cases:
        _, _, data = await post(session, sim, "chat/completions", body)
        choice = data["choices"][0]
        assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
        assert choice["message"]["content"].startswith("Simulated reply")


async def test_tool_call_cut_by_max_tokens(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    body = ask(WEATHER, tools=[WEATHER_TOOL], max_tokens=2)
    _, _, data = await post(session, sim, "chat/completions", body)
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"location":'
    assert data["usage"]["completion_tokens"] == 2


async def test_seed_makes_replies_repeatable(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=30)

    async def text(**kw: Any) -> str:
        _, _, data = await post(session, sim, "chat/completions", ask("Hi", **kw))
        reply: str = data["choices"][0]["message"]["content"]
        return reply

    assert await text(seed=1, temperature=1.0) == await text(seed=1, temperature=1.0)
    assert await text(seed=1) != await text(seed=2)
    body = ask("Hi", seed=5)
    _, chunks = await stream(session, sim, "chat/completions", body)
    assert content(by_choice(chunks)[0]) == await text(seed=5)


async def test_unknown_fields_are_ignored(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    extra: dict[str, Any] = {
        "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "top_p": 0.9,
        "response_format": {"type": "json_object"}, "stop": ["\n\n"], "stop_token_ids": [2],
        "presence_penalty": 0.1, "frequency_penalty": 0.2, "user": "u-1",
        "chat_template_kwargs": {"enable_thinking": False}, "parallel_tool_calls": True,
        "guided_json": {"type": "object"}, "skip_special_tokens": True,
        "some_future_field": {"nested": [1, 2]},
    }  # fmt: skip
    status, _, data = await post(session, sim, "chat/completions", chat_body(**extra))
    assert status == 200 and data["choices"][0]["message"]["content"].startswith("Simulated")


BAD = [
    chat_body(n=0), chat_body(n="2"), chat_body(logprobs="yes"),
    chat_body(top_logprobs=2), chat_body(logprobs=True, top_logprobs=-1),
    chat_body(logprobs=True, top_logprobs=21), chat_body(seed="x"),
    chat_body(tool_choice="auto"), chat_body(tools=[{"type": "function"}]),
    chat_body(tools="nope"), chat_body(tools=[WEATHER_TOOL], tool_choice="sometimes"),
    chat_body(tools=[WEATHER_TOOL], tool_choice={"type": "function",
                                                 "function": {"name": "missing"}}),
]  # fmt: skip


@pytest.mark.parametrize("body", BAD)
async def test_errors_in_vllm_shape(make_sim: MakeSim, session: Session, body: Any) -> None:
    got, _, err = await post(session, await make_sim(), "chat/completions", body)
    assert is_error(got, err), err
