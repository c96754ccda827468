"""Demo replies: canned Markdown answers picked by the prompt, streamed like any reply."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aiohttp
import pytest

from tests.support.paths import ROOT
from tests.vllm_sim.wire import MakeSim, Session, ask, post, stream
from vllm_sim.__main__ import build_parser, settings_from_args

pytestmark = pytest.mark.asyncio
MARKER = "*(simulated reply)*"


async def reply(session: Session, sim: Any, body: dict[str, Any]) -> str:
    """The non-streaming reply text."""
    _, _, data = await post(session, sim, "chat/completions", body)
    text: str = data["choices"][0]["message"]["content"]
    return text


async def test_code_question_gets_a_fenced_block(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(demo=True)
    text = await reply(session, sim, ask("How do I write a Python function that greets?"))
    assert text.startswith(MARKER + "\n\n")
    assert "```python\n" in text and text.count("```") == 2
    assert "def " in text


async def test_table_list_and_paragraph(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(demo=True)
    table = await reply(session, sim, ask("Compare lists and sets, please"))
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) >= 3 and rows[1].replace(" ", "").startswith("|---|")
    assert len({row.count("|") for row in rows}) == 1, "every row has the same columns"
    steps = await reply(session, sim, ask("What are the steps to bake bread?"))
    numbered = [line for line in steps.splitlines() if line[:1].isdigit()]
    assert [line[:3] for line in numbered] == ["1. ", "2. ", "3. ", "4. "]
    plain = await reply(session, sim, ask("Why is the sky blue?"))
    assert "**" in plain and "`" in plain and "Why is the sky blue?" in plain
    assert "```" not in plain and "|" not in plain
    assert all(t.startswith(MARKER) for t in (table, steps, plain))


async def test_second_turn_quotes_first_message(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(demo=True)
    first = await reply(session, sim, ask("My name is Ada Lovelace."))
    assert "You first said" not in first
    history = [{"role": "user", "content": "My name is Ada Lovelace."},
               {"role": "assistant", "content": first},
               {"role": "user", "content": "Show me python code"}]  # fmt: skip
    second = await reply(session, sim, {"messages": history})
    assert second.startswith(MARKER)
    assert "> You first said: My name is Ada Lovelace." in second
    assert "```python" in second


async def test_a_request_for_a_title_gets_a_short_title(make_sim: MakeSim,
                                                       session: Session) -> None:
    """As chatgate asks for a conversation's title: the demo's sidebar then reads well."""
    sim = await make_sim(demo=True)
    asked = {"messages": [
        {"role": "system", "content": "You write titles for chat conversations."},
        {"role": "user", "content": "User: how do I read a big file line by line?\n\n"
                                    "Assistant: Use a loop.\n\nWrite a title."}]}
    assert await reply(session, sim, asked) == "How do I read a big"
    plain = await reply(session, sim, ask("Suggest a title for my essay"))  # not a system ask
    assert plain.startswith(MARKER)


async def test_streamed_token_by_token(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim(demo=True)
    body = ask("Give me a table comparing tea and coffee")
    full = await reply(session, sim, body)
    _, chunks = await stream(session, sim, "chat/completions", body)
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:]]
    assert "".join(deltas) == full
    assert len(deltas) > 20 and all(d.strip() for d in deltas)  # word by word, no blank pieces
    assert deltas[0] == "*(simulated"


async def test_demo_ignores_reply_tokens_but_not_max_tokens(
    make_sim: MakeSim, session: Session
) -> None:
    sim = await make_sim(demo=True, reply_tokens=3)
    assert len((await reply(session, sim, ask("hello"))).split()) > 3
    _, _, data = await post(session, sim, "chat/completions", ask("hello", max_tokens=2))
    assert data["choices"][0]["message"]["content"] == "*(simulated reply)*"
    assert data["choices"][0]["finish_reason"] == "length"


async def test_off_by_default_and_runtime_knob(make_sim: MakeSim, session: Session) -> None:
    sim = await make_sim()
    assert (await reply(session, sim, ask("Show me python code"))).startswith("Simulated reply")
    async with session.post(f"{sim.root_url}/sim/config", json={"demo": True}) as resp:
        assert resp.status == 200 and (await resp.json())["demo"] is True
    assert (await reply(session, sim, ask("Show me python code"))).startswith(MARKER)
    _, _, legacy = await post(session, sim, "completions", {"prompt": "Show me python code"})
    assert legacy["choices"][0]["text"].lstrip().startswith(MARKER)


async def test_cli_flag() -> None:
    assert settings_from_args(build_parser().parse_args(["--demo-replies"])).demo is True
    assert settings_from_args(build_parser().parse_args([])).demo is False
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_sim", "--port", "0", "--ttft-ms", "0", "--tpot-ms", "0",
        "--demo-replies", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        url = line.split(" at ")[1].strip()
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{url}/chat/completions", json=ask("hi")) as resp:
                data = await resp.json()
        assert data["choices"][0]["message"]["content"].startswith(MARKER)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
