"""POST /v1/completions, the legacy text completions endpoint, over real TCP."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.vllm_sim.wire import MakeSim, Session, is_error, post, stream

pytestmark = pytest.mark.asyncio


def text_body(prompt: Any = "Once upon a time", **kw: Any) -> dict[str, Any]:
    """A completions request body."""
    return {"model": "vllm-simulator", "prompt": prompt, **kw}


async def test_non_stream_shape(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=6)
    status, _, data = await post(session, sim, "completions", text_body(max_tokens=50))
    assert status == 200
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
    assert isinstance(data["created"], int) and data["model"] == "vllm-simulator"
    (choice,) = data["choices"]
    assert choice == {"index": 0, "text": choice["text"], "logprobs": None,
                      "finish_reason": "stop", "stop_reason": None}  # fmt: skip
    # A continuation: a new word after the prompt, six words long.
    assert choice["text"].startswith(" Simulated reply 1 to: Once upon")
    assert len(choice["text"].split()) == 6
    assert data["usage"] == {"prompt_tokens": 1 + math.ceil(len("Once upon a time") / 4),
                             "completion_tokens": 6, "total_tokens": 11}  # fmt: skip


async def test_stream_matches_non_stream(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=8)
    _, _, full = await post(session, sim, "completions", text_body())
    body = text_body(stream_options={"include_usage": True})
    _, chunks = await stream(session, sim, "completions", body)
    *pieces, usage = chunks
    assert len(pieces) == 8 and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("cmpl-")
    for c in pieces:
        assert set(c) == {"id", "object", "created", "model", "choices"}
        assert c["object"] == "text_completion"
        (choice,) = c["choices"]
        assert set(choice) == {"index", "text", "logprobs", "finish_reason", "stop_reason"}
    assert [c["choices"][0]["finish_reason"] for c in pieces] == [None] * 7 + ["stop"]
    assert "".join(c["choices"][0]["text"] for c in pieces) == full["choices"][0]["text"]
    assert usage["object"] == "text_completion" and usage["choices"] == []
    assert usage["usage"] == full["usage"]


async def test_usage_chunk_only_when_asked(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=3)
    for body in (text_body(), text_body(stream_options={"include_usage": False})):
        _, chunks = await stream(session, sim, "completions", body)
        assert len(chunks) == 3 and all("usage" not in c and c["choices"] for c in chunks)


async def test_max_tokens_finish_length(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    _, _, data = await post(session, sim, "completions", text_body(max_tokens=2))
    assert data["choices"][0]["text"] == " Simulated reply"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 2
    _, chunks = await stream(session, sim, "completions", text_body(max_tokens=2))
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]


async def test_prompt_list_and_n(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=12)
    prompts = ["The cat", "A dog barked at"]
    body = text_body(prompts, n=2, stream_options={"include_usage": True})
    _, _, data = await post(session, sim, "completions", text_body(prompts, n=2))
    # vLLM numbers choices prompt by prompt: prompt p, sample i -> index p * n + i.
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in data["choices"]]
    assert texts[0].startswith(" Simulated reply 1 to: The cat")
    assert texts[2].startswith(" Simulated reply 1 to: A dog barked at")
    assert texts[0] != texts[1], "the n samples of one prompt differ"
    prompt_tokens = sum(1 + math.ceil(len(p) / 4) for p in prompts)  # once per prompt, not per n
    assert data["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 48,
                             "total_tokens": prompt_tokens + 48}  # fmt: skip
    _, chunks = await stream(session, sim, "completions", body)
    *pieces, usage = chunks
    assert all(len(c["choices"]) == 1 for c in pieces)
    for index, text in enumerate(texts):
        mine = [c["choices"][0] for c in pieces if c["choices"][0]["index"] == index]
        assert "".join(m["text"] for m in mine) == text
        assert mine[-1]["finish_reason"] == "stop"
    assert usage["usage"] == data["usage"]


async def test_echo(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=4)
    _, _, data = await post(session, sim, "completions", text_body("Hi you", echo=True))
    text = data["choices"][0]["text"]
    assert text == "Hi you Simulated reply 1 to:"
    assert data["usage"]["completion_tokens"] == 4  # the echoed prompt is not generated
    _, chunks = await stream(session, sim, "completions", text_body("Hi you", echo=True))
    assert chunks[0]["choices"][0]["text"] == "Hi you Simulated"  # prompt rides the first chunk
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    # max_tokens 0 with echo returns the prompt alone.
    _, _, only = await post(session, sim, "completions",
                            text_body("Hi you", echo=True, max_tokens=0))  # fmt: skip
    assert only["choices"][0]["text"] == "Hi you" and only["usage"]["completion_tokens"] == 0
    _, chunks = await stream(session, sim, "completions",
                             text_body("Hi you", echo=True, max_tokens=0))  # fmt: skip
    assert [c["choices"][0]["text"] for c in chunks] == ["Hi you"]


async def test_logprobs(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(reply_tokens=5)
    _, _, data = await post(session, sim, "completions", text_body("Hi", logprobs=3))
    choice = data["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
    assert "".join(lp["tokens"]) == choice["text"] and len(lp["tokens"]) == 5
    assert lp["text_offset"] == [sum(map(len, lp["tokens"][:i])) for i in range(5)]
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                 strict=True):  # fmt: skip
        assert value < 0 and len(top) == 3 and top[token] == value
        assert max(top.values()) == value and sum(math.exp(v) for v in top.values()) < 1
    # Streamed logprobs are the same numbers, chunk by chunk, offsets continuing.
    _, chunks = await stream(session, sim, "completions", text_body("Hi", logprobs=3))
    got = [c["choices"][0]["logprobs"] for c in chunks]
    assert [g["tokens"][0] for g in got] == lp["tokens"]
    assert [g["token_logprobs"][0] for g in got] == lp["token_logprobs"]
    assert [g["text_offset"][0] for g in got] == lp["text_offset"]
    # With echo, the prompt's tokens come first and the very first has no logprob.
    _, _, echoed = await post(session, sim, "completions",
                              text_body("Hi there", echo=True, logprobs=1))  # fmt: skip
    elp = echoed["choices"][0]["logprobs"]
    assert elp["tokens"][:2] == ["Hi", " there"] and elp["token_logprobs"][0] is None
    assert elp["top_logprobs"][0] is None and elp["token_logprobs"][1] < 0


BAD = [
    (text_body(prompt=None), 400), (text_body(prompt=[]), 400), (text_body(prompt=[1, 2]), 400),
    (text_body(max_tokens=0), 400), (text_body(n=0), 400), (text_body(logprobs=21), 400),
    (text_body(logprobs=True), 400), (text_body(echo="yes"), 400),
    (text_body(stream_options={"include_usage": True}), 400),
    (text_body(max_tokens=10**6), 400), ({"model": "gpt-4", "prompt": "x"}, 404),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status"), BAD)
async def test_errors_in_vllm_shape(
    make_sim: MakeSim, session: Session, body: Any, status: int
) -> None:
    got, _, err = await post(session, await make_sim(), "completions", body)
    assert is_error(got, err, status), err


async def test_unknown_fields_accepted(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    extra: dict[str, Any] = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "stop": ["\n"],
                             "suffix": "!", "best_of": 1, "user": "u1", "seed": 7,
                             "guided_json": {"type": "object"}}  # fmt: skip
    status, _, data = await post(session, sim, "completions", text_body(**extra))
    assert status == 200 and data["object"] == "text_completion"


async def test_x_request_id_names_completion(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    _, headers, data = await post(session, sim, "completions", text_body(),
                                  **{"X-Request-Id": "legacy-7"})  # fmt: skip
    assert data["id"] == "cmpl-legacy-7" and headers["X-Request-Id"] == "legacy-7"
    headers, chunks = await stream(session, sim, "completions", text_body(),
                                   **{"X-Request-Id": "legacy-8"})  # fmt: skip
    assert {c["id"] for c in chunks} == {"cmpl-legacy-8"}
    assert headers["X-Request-Id"] == "legacy-8"
