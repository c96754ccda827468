"""schemathesis fuzzes every route from GET /openapi.json with every check and its stateful
phase: no 5xx, every response matches the document, every request it calls valid accepted."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.support.app import register_over_http
from tests.support.procs import start_server_process, start_simulator_process

ST = Path(sys.executable).with_name("st")
MAX_EXAMPLES = os.environ.get("CHATGATE_FUZZ_EXAMPLES", "25")
PHASES = "examples,coverage,fuzzing,stateful"
# Every check is on. A few rules depend on data or state that no JSON Schema can say, and
# are documented as 400 instead: a common password or one holding the username (register,
# adminCreateUser, changePassword; and changePassword's new one equal to the current one),
# a prompt + max_tokens beyond the model's context (chat, decided by the model server), an
# `expires_at` in the past (createKey), a `from` more than 366 days before today (getUsage),
# a memory with nothing visible or over 500 characters once cleaned, or past
# memories.max_per_user (createMemory, updateMemory: 429), a `model` that is not
# configured (conversationPrompt, newChatPrompt, newChatPromptWithSettings: 404), and a
# new message's `settings` beside a `conversation_id` (chat: only a new conversation's).
# Any write that stores text may be refused for the user's stored-text cap (413
# storage_quota_exceeded) or conversation cap (429), which the fuzzer, an admin, can lower on
# itself (adminSetLimits).
# The stateful phase links UsageDay.key_id (0: "not an API key") to deleteKey's id, which the
# schema says must be at least 1.
# The admin's actions on an account answer 409 when its state does not fit (approve a
# non-pending account, enable an enabled one) or it is the admin's own (disable, delete,
# reset oneself): the fuzzer cannot know which account is which.
CONFIG = """
[[operations]]
include-operation-id = ["adminApproveUser", "adminEnableUser", "adminDisableUser",
                        "adminDeleteUser", "adminResetPassword"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409"]

[[operations]]
include-operation-id = ["register", "adminCreateUser", "changePassword", "chat", "createKey",
                        "deleteKey", "getUsage", "createMemory", "updateMemory",
                        "conversationPrompt", "newChatPrompt", "newChatPromptWithSettings"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409",
                                                     "413", "429"]

[[operations]]
include-operation-id = ["createConversation", "renameConversation", "importConversations",
                        "updateAccount"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "413",
                                                     "429"]
"""


@pytest.mark.skipif(not ST.exists() and not shutil.which("st"), reason="schemathesis not installed")
async def test_fuzz_every_route_against_the_openapi_document(tmp_path: Path) -> None:
    sim = await start_simulator_process("--ttft-ms", "1", "--tpot-ms", "1", "--reply-tokens", "4")
    server = await start_server_process(tmp_path / "fuzz.db", sim.url + "/v1",
                                        QUEUE__WORKERS=8)
    try:
        user = await register_over_http(server.url, "fuzzer")
        (tmp_path / "schemathesis.toml").write_text(CONFIG, encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            str(ST if ST.exists() else shutil.which("st")),
            "--config-file", str(tmp_path / "schemathesis.toml"),
            "run", f"{server.url}/openapi.json",
            "--checks", "all",
            "--max-examples", MAX_EXAMPLES, "--workers", "1",
            "--header", f"Authorization: Bearer {user.token}",
            # Logging out or deleting the account would end the run's own session.
            "--exclude-path", "/api/auth/logout", "--exclude-path", "/api/auth/account",
            "--phases", PHASES, "--request-timeout", "30",
            "--suppress-health-check", "all",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=dict(os.environ, NO_COLOR="1"))
        out, _ = await asyncio.wait_for(proc.communicate(), 600)
        report = out.decode(errors="replace")
        assert proc.returncode == 0, report[-6000:]
        async_alive = server.proc.returncode is None
        assert async_alive, "the server died under fuzzing"
    finally:
        await server.signal(signal.SIGTERM)
        await sim.signal(signal.SIGTERM)
