"""X-Request-Id and the request history: what reached the model server, exactly."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from tests.vllm_sim.wire import MakeSim, Session, chat_body, history, post, stream

pytestmark = pytest.mark.asyncio
RID = {"X-Request-Id": "req-42_abc"}


async def test_request_id_names_the_completion(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    _, headers, data = await post(session, sim, "chat/completions", chat_body(), **RID)
    assert data["id"] == "chatcmpl-req-42_abc" and headers["X-Request-Id"] == "req-42_abc"
    body = chat_body(stream_options={"include_usage": True})
    headers, chunks = await stream(session, sim, "chat/completions", body, **RID)
    assert headers["X-Request-Id"] == "req-42_abc"
    assert {c["id"] for c in chunks} == {"chatcmpl-req-42_abc"}  # the usage chunk too


async def test_request_id_made_up_when_absent(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    _, headers, first = await post(session, sim, "chat/completions", chat_body())
    _, _, second = await post(session, sim, "chat/completions", chat_body())
    assert first["id"] == f"chatcmpl-{headers['X-Request-Id']}"
    assert first["id"] != second["id"]
    records = await history(session, sim, detail=True)
    assert records[0]["request_id"] == headers["X-Request-Id"]


async def test_request_id_on_errors_not_on_control(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(api_key="k")
    status, headers, _ = await post(session, sim, "chat/completions", chat_body(), **RID)
    assert status == 401 and headers["X-Request-Id"] == "req-42_abc"
    auth = {"Authorization": "Bearer k", **RID}
    status, headers, err = await post(session, sim, "chat/completions", chat_body(n=0), **auth)
    assert status == 400 and err["object"] == "error" and headers["X-Request-Id"] == "req-42_abc"
    for url in (f"{sim.root_url}/health", f"{sim.root_url}/sim/stats"):
        async with session.get(url, headers=RID) as resp:
            assert "X-Request-Id" not in resp.headers


async def test_history_keeps_bodies_and_request_ids(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    # Field order, unknown fields, unicode and odd numbers must all come through untouched.
    body = {"stream": False, "messages": [{"role": "user", "content": "héllo 🎉", "name": "ada"}],
            "model": "vllm-simulator", "top_k": 40, "min_p": 0.05, "temperature": 0.7,
            "x_custom": {"nested": [1, 2.5, None, True]}, "max_tokens": 5}  # fmt: skip
    await post(session, sim, "chat/completions", body, **RID)
    legacy = {"prompt": ["a", "b"], "model": "vllm-simulator", "logit_bias": {"50256": -100}}
    await post(session, sim, "completions", legacy, **{"X-Request-Id": "legacy-1"})
    # The plain view is the list of bodies, as it always was.
    plain = await history(session, sim)
    assert plain == [body, legacy]
    assert list(plain[0]) == list(body), "field order kept"
    records = await history(session, sim, detail=True)
    assert [(r["path"], r["request_id"]) for r in records] == [
        ("/v1/chat/completions", "req-42_abc"), ("/v1/completions", "legacy-1")]  # fmt: skip
    assert [r["body"] for r in records] == [body, legacy]


async def test_history_raw_is_byte_exact(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    # Spacing, escapes and key order a re-encoder would change.
    raw = ('{ "model" : "vllm-simulator",\n  "messages": [{"role": "user", '
           '"content": "caf\\u00e9 \\"quoted\\""}], "temperature": 1.0e0 }')  # fmt: skip
    headers = {"Content-Type": "application/json", **RID}
    async with session.post(f"{sim.url}/chat/completions", data=raw.encode(),
                            headers=headers) as resp:  # fmt: skip
        assert resp.status == 200
    (record,) = await history(session, sim, detail=True)
    assert record["raw"] == raw
    assert record["body"] == orjson.loads(raw)
    assert record["body"]["messages"][0]["content"] == 'café "quoted"'


async def test_rejected_requests_are_recorded(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    bad = chat_body(n=0, top_k=3)
    status, _, _ = await post(session, sim, "chat/completions", bad, **RID)
    assert status == 400
    assert await history(session, sim) == [bad]
    async with aiohttp.ClientSession() as s, s.post(f"{sim.root_url}/sim/reset") as resp:
        assert resp.status == 200
    assert await history(session, sim, detail=True) == []
