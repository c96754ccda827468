"""URL table: every route of the API and the web client."""

from __future__ import annotations

from aiohttp import web

from . import (
    account,
    admin,
    auth,
    chat,
    conversations,
    exports,
    keys,
    memories,
    openai,
    system,
    usage,
)
from .assets import STATIC_DIR


def setup_routes(app: web.Application) -> None:
    """Register the routes."""
    app.router.add_get("/health", system.health)
    app.router.add_get("/ready", system.ready)
    app.router.add_get("/openapi.json", system.openapi)
    app.router.add_post("/api/auth/register", auth.register)
    app.router.add_post("/api/auth/login", auth.login)
    app.router.add_post("/api/auth/logout", auth.logout)
    app.router.add_get("/api/auth/verify", auth.verify)
    app.router.add_delete("/api/auth/account", auth.delete_account)
    app.router.add_post("/api/auth/password", auth.change_password)
    app.router.add_get("/api/admin/users", admin.list_users)
    app.router.add_post("/api/admin/users", admin.create_user)
    app.router.add_delete(r"/api/admin/users/{id:\d+}", admin.delete_user)
    app.router.add_post(r"/api/admin/users/{id:\d+}/approve", admin.approve)
    app.router.add_post(r"/api/admin/users/{id:\d+}/disable", admin.disable)
    app.router.add_post(r"/api/admin/users/{id:\d+}/enable", admin.enable)
    app.router.add_put(r"/api/admin/users/{id:\d+}/limits", admin.set_limits)
    app.router.add_post(r"/api/admin/users/{id:\d+}/password", admin.reset_password)
    app.router.add_get("/api/admin/audit", admin.audit)
    app.router.add_get("/api/conversations", conversations.list_conversations)
    app.router.add_post("/api/conversations", conversations.create_conversation)
    app.router.add_get(r"/api/conversations/{id:\d+}", conversations.get_conversation)
    app.router.add_patch(r"/api/conversations/{id:\d+}", conversations.rename_conversation)
    app.router.add_delete(r"/api/conversations/{id:\d+}", conversations.delete_conversation)
    app.router.add_post(r"/api/conversations/{id:\d+}/branch", conversations.show_branch)
    app.router.add_delete(r"/api/conversations/{id:\d+}/messages/{message_id:\d+}",
                          conversations.delete_branch)
    app.router.add_get(r"/api/conversations/{id:\d+}/export", exports.export_conversation)
    app.router.add_post("/api/conversations/import", exports.import_conversations)
    app.router.add_get("/api/export", exports.export_all)
    app.router.add_get(r"/api/conversations/{id:\d+}/prompt", account.conversation_prompt)
    app.router.add_get("/api/prompt", account.new_chat_prompt)
    app.router.add_post("/api/prompt", account.new_chat_prompt_with)
    app.router.add_get("/api/search", conversations.search)
    app.router.add_get("/api/memories", memories.list_memories)
    app.router.add_post("/api/memories", memories.create_memory)
    app.router.add_patch(r"/api/memories/{id:\d+}", memories.update_memory)
    app.router.add_delete(r"/api/memories/{id:\d+}", memories.delete_memory)
    app.router.add_post(r"/api/memories/{id:\d+}/accept", memories.accept_memory)
    app.router.add_get("/api/account", account.get_account)
    app.router.add_patch("/api/account", account.update_account)
    app.router.add_post("/api/chat", chat.chat)
    app.router.add_get("/api/models", chat.models)
    app.router.add_get("/api/turns/{turn_id}/events", chat.follow)
    app.router.add_post("/api/turns/{turn_id}/stop", chat.stop)
    app.router.add_post("/api/keys", keys.create_key)
    app.router.add_get("/api/keys", keys.list_keys)
    app.router.add_delete(r"/api/keys/{id:\d+}", keys.delete_key)
    app.router.add_get("/api/usage", usage.usage)
    app.router.add_get("/v1/models", openai.models)
    app.router.add_post("/v1/chat/completions", openai.chat_completions)
    app.router.add_post("/v1/completions", openai.completions)
    app.router.add_get("/metrics", system.metrics)
    app.router.add_get("/", system.index)
    # FileResponse answers If-None-Match/If-Modified-Since with 304 (ETag + Last-Modified).
    # FileResponse sends a file's `.gz` (assets.py) to a client that takes gzip, and answers
    # If-None-Match/If-Modified-Since with 304 (ETag + Last-Modified).
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)
