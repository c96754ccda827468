"""Versioned schema migrations, applied at start-up through PRAGMA user_version."""

from __future__ import annotations

import sqlite3

from ..errors import SchemaTooNew

# AUTOINCREMENT: an id, once shown to a client, never names another row later.
V1 = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX conversations_by_user ON conversations(user_id, updated_at DESC, id DESC);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete'
        CHECK (status IN ('complete', 'incomplete', 'error')),
    created_at TEXT NOT NULL,
    usage TEXT
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Full-text search and counters kept in step by triggers, so every write path is covered.
V2 = """
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    UPDATE conversations SET message_count = message_count + 1, updated_at = new.created_at
        WHERE id = new.conversation_id;
END;
CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    UPDATE conversations SET message_count = message_count - 1 WHERE id = old.conversation_id;
END;
CREATE TRIGGER messages_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
UPDATE conversations SET message_count =
    (SELECT count(*) FROM messages WHERE messages.conversation_id = conversations.id);
"""

# Search scoped inside the index: each message carries its owner, indexed in its own FTS column,
# so a query intersects "this user" with the words instead of filtering all users' matches.
V3 = """
DROP TRIGGER messages_ai;
DROP TRIGGER messages_ad;
DROP TRIGGER messages_au;
DROP TABLE messages_fts;
ALTER TABLE messages ADD COLUMN owner INTEGER;
UPDATE messages SET owner =
    (SELECT user_id FROM conversations WHERE conversations.id = messages.conversation_id);
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, owner, content='messages', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2', prefix='2 3'
);
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content, owner) VALUES (new.id, new.content, new.owner);
    -- A write that did not name the owner (plain SQL) gets it here; messages_au re-indexes.
    UPDATE messages SET owner =
        (SELECT user_id FROM conversations WHERE conversations.id = new.conversation_id)
        WHERE id = new.id AND new.owner IS NULL;
    UPDATE conversations SET message_count = message_count + 1, updated_at = new.created_at
        WHERE id = new.conversation_id;
END;
CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, owner)
        VALUES ('delete', old.id, old.content, old.owner);
    UPDATE conversations SET message_count = message_count - 1 WHERE id = old.conversation_id;
END;
CREATE TRIGGER messages_au AFTER UPDATE OF content, owner ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content, owner)
        VALUES ('delete', old.id, old.content, old.owner);
    INSERT INTO messages_fts(rowid, content, owner) VALUES (new.id, new.content, new.owner);
END;
"""

# API keys (only a keyed hash of each is kept, found by its indexed prefix) and token usage
# per user, key (0: none) and UTC day, added to in batches.
V4 = """
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at INTEGER,
    last_used_at TEXT,
    rpm INTEGER,
    tpm INTEGER
);
CREATE INDEX api_keys_by_user ON api_keys(user_id, id);
CREATE TABLE usage_daily (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    day TEXT NOT NULL,
    key_id INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, key_id)
) WITHOUT ROWID;
"""

# What each user keeps stored (conversations; characters of titles and messages), kept by
# triggers on every write path, cascades included, so a storage cap costs one row read.
V5 = """
CREATE TABLE user_storage (
    user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    conversations INTEGER NOT NULL DEFAULT 0,
    chars INTEGER NOT NULL DEFAULT 0
);
INSERT INTO user_storage (user_id, conversations, chars)
    SELECT u.id,
        (SELECT count(*) FROM conversations c WHERE c.user_id = u.id),
        (SELECT coalesce(sum(length(c.title)), 0) FROM conversations c WHERE c.user_id = u.id)
        + (SELECT coalesce(sum(length(m.content)), 0) FROM messages m WHERE m.owner = u.id)
    FROM users u;
CREATE TRIGGER user_storage_new AFTER INSERT ON users BEGIN
    INSERT INTO user_storage (user_id) VALUES (new.id);
END;
CREATE TRIGGER user_storage_conv_ai AFTER INSERT ON conversations BEGIN
    UPDATE user_storage SET conversations = conversations + 1, chars = chars + length(new.title)
        WHERE user_id = new.user_id;
END;
CREATE TRIGGER user_storage_conv_ad AFTER DELETE ON conversations BEGIN
    UPDATE user_storage SET conversations = conversations - 1, chars = chars - length(old.title)
        WHERE user_id = old.user_id;
END;
CREATE TRIGGER user_storage_conv_au AFTER UPDATE OF title ON conversations BEGIN
    UPDATE user_storage SET chars = chars - length(old.title) + length(new.title)
        WHERE user_id = new.user_id;
END;
CREATE TRIGGER user_storage_msg_ai AFTER INSERT ON messages BEGIN
    UPDATE user_storage SET chars = chars + length(new.content) WHERE user_id = coalesce(
        new.owner, (SELECT user_id FROM conversations WHERE id = new.conversation_id));
END;
CREATE TRIGGER user_storage_msg_ad AFTER DELETE ON messages BEGIN
    UPDATE user_storage SET chars = chars - length(old.content) WHERE user_id = old.owner;
END;
CREATE TRIGGER user_storage_msg_au AFTER UPDATE OF content ON messages BEGIN
    UPDATE user_storage SET chars = chars - length(old.content) + length(new.content)
        WHERE user_id = new.owner;
END;
"""

# Roles, account status, forced password change, per-user cap overrides (JSON, {} = the
# config's defaults), a token epoch (bumped to kill every token and session of a user) and the
# audit log of admin actions (names copied in, so a row outlives the accounts it names).
V6 = """
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'user'
    CHECK (role IN ('admin', 'user'));
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'disabled', 'pending'));
ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
ALTER TABLE users ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0;
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor_id INTEGER,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_id INTEGER,
    target TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
-- A database from before roles: its oldest account (whoever set it up) administers it.
UPDATE users SET role = 'admin' WHERE id = (SELECT min(id) FROM users);
"""

# Several models: the one a conversation uses (NULL = the first configured) and the one that
# wrote each reply.
V7 = """
ALTER TABLE conversations ADD COLUMN model TEXT;
ALTER TABLE messages ADD COLUMN model TEXT;
"""

# A failed reply is stored even when nothing was generated, with why: a page loaded later
# shows the error (and Retry) as the live answer did. JSON {"code", "message"}.
V8 = """
ALTER TABLE messages ADD COLUMN error TEXT;
"""

# Per-conversation settings (system prompt, temperature, max tokens) as JSON; '' = none. They
# count towards the user's stored characters like titles and messages.
V9 = """
ALTER TABLE conversations ADD COLUMN settings TEXT NOT NULL DEFAULT '';
CREATE TRIGGER user_storage_conv_settings_au AFTER UPDATE OF settings ON conversations BEGIN
    UPDATE user_storage SET chars = chars - length(old.settings) + length(new.settings)
        WHERE user_id = new.user_id;
END;
DROP TRIGGER user_storage_conv_ad;
CREATE TRIGGER user_storage_conv_ad AFTER DELETE ON conversations BEGIN
    UPDATE user_storage SET conversations = conversations - 1,
        chars = chars - length(old.title) - length(old.settings)
        WHERE user_id = old.user_id;
END;
"""

# Branches: each message hangs from the one it answers or follows (`parent_id`; NULL for a
# conversation's first), and the conversation shows the path to its active leaf (`leaf_id`).
# Existing conversations become one branch. No foreign key on parent_id: a cascade down a long
# chain passes SQLite's trigger depth; the storage code deletes a branch's subtree itself.
# A new message becomes the leaf when it follows the leaf (the usual turn) or is the user's
# (an edit starts a branch and shows it), in the insert trigger: no extra statement per turn.
V10 = """
ALTER TABLE messages ADD COLUMN parent_id INTEGER;
ALTER TABLE conversations ADD COLUMN leaf_id INTEGER;
UPDATE messages SET parent_id = (SELECT max(p.id) FROM messages p
    WHERE p.conversation_id = messages.conversation_id AND p.id < messages.id);
UPDATE conversations SET leaf_id =
    (SELECT max(id) FROM messages WHERE messages.conversation_id = conversations.id);
CREATE INDEX messages_by_parent ON messages(conversation_id, parent_id);
DROP TRIGGER messages_ai;
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content, owner) VALUES (new.id, new.content, new.owner);
    -- A write that did not name the owner (plain SQL) gets it here; messages_au re-indexes.
    UPDATE messages SET owner =
        (SELECT user_id FROM conversations WHERE conversations.id = new.conversation_id)
        WHERE id = new.id AND new.owner IS NULL;
    UPDATE conversations SET message_count = message_count + 1, updated_at = new.created_at,
        leaf_id = CASE WHEN new.role = 'user' OR leaf_id IS NULL
                       OR leaf_id IS new.parent_id THEN new.id ELSE leaf_id END
        WHERE id = new.conversation_id;
END;
"""

# Long-term memories: short facts a user keeps, added to the system prompt of their turns
# ('proposed' ones wait for the user to accept them), and account settings (JSON object; '' =
# none). Both count towards the user's stored characters, like titles and messages.
V11 = """
ALTER TABLE users ADD COLUMN settings TEXT NOT NULL DEFAULT '';
CREATE TABLE memories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    content TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'proposed')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX memories_by_user ON memories(user_id, id);
CREATE TRIGGER user_storage_memory_ai AFTER INSERT ON memories BEGIN
    UPDATE user_storage SET chars = chars + length(new.content) WHERE user_id = new.user_id;
END;
CREATE TRIGGER user_storage_memory_ad AFTER DELETE ON memories BEGIN
    UPDATE user_storage SET chars = chars - length(old.content) WHERE user_id = old.user_id;
END;
CREATE TRIGGER user_storage_memory_au AFTER UPDATE OF content ON memories BEGIN
    UPDATE user_storage SET chars = chars - length(old.content) + length(new.content)
        WHERE user_id = new.user_id;
END;
CREATE TRIGGER user_storage_user_settings_au AFTER UPDATE OF settings ON users BEGIN
    UPDATE user_storage SET chars = chars - length(old.settings) + length(new.settings)
        WHERE user_id = new.id;
END;
"""

# Where a conversation's title came from: 'first_line' (the first message's first line, or
# "New chat": automatic, may be replaced by a generated title), 'generated' (asked of the
# model after the first reply) or 'user' (renamed, given at creation, or imported: never
# replaced). Existing conversations keep their title as automatic.
V12 = """
ALTER TABLE conversations ADD COLUMN title_source TEXT NOT NULL DEFAULT 'first_line'
    CHECK (title_source IN ('first_line', 'generated', 'user'));
"""

# Summaries of older turns, each on the last message it covers: a turn's history walks up its
# branch to the newest summary and sends it instead of what lies above. A branch that leaves
# the path above a summary gets its own; deleting the message deletes its summary.
V13 = """
CREATE TABLE summaries (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    content TEXT NOT NULL,
    model TEXT,
    created_at TEXT NOT NULL
);
"""

# Auth events: what every other process and node must drop from its cache of verified tokens
# and keys, written by triggers in the transaction of the change itself (a revoked token, a
# user's new status, token epoch or role, a deleted user or API key). Each process reads the
# new ones twice a second (server/services/revocations.py) and prunes old ones. A revoked
# token now names its user (0 for tokens revoked before this version).
V14 = """
ALTER TABLE revoked_tokens ADD COLUMN user_id INTEGER NOT NULL DEFAULT 0;
CREATE TABLE auth_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    jti TEXT,
    key_id INTEGER
);
CREATE INDEX auth_events_by_time ON auth_events(at);
CREATE TRIGGER auth_events_token AFTER INSERT ON revoked_tokens BEGIN
    INSERT INTO auth_events (at, user_id, jti)
        VALUES (CAST(strftime('%s', 'now') AS INTEGER), new.user_id, new.jti);
END;
CREATE TRIGGER auth_events_user AFTER UPDATE OF status, token_epoch, role ON users
    WHEN old.status IS NOT new.status OR old.token_epoch IS NOT new.token_epoch
        OR old.role IS NOT new.role BEGIN
    INSERT INTO auth_events (at, user_id)
        VALUES (CAST(strftime('%s', 'now') AS INTEGER), new.id);
END;
CREATE TRIGGER auth_events_user_gone AFTER DELETE ON users BEGIN
    INSERT INTO auth_events (at, user_id)
        VALUES (CAST(strftime('%s', 'now') AS INTEGER), old.id);
END;
CREATE TRIGGER auth_events_key_gone AFTER DELETE ON api_keys BEGIN
    INSERT INTO auth_events (at, user_id, key_id)
        VALUES (CAST(strftime('%s', 'now') AS INTEGER), old.user_id, old.id);
END;
"""

# Turns on the rows: a user's message names the turn that answers it and marks the
# conversation (`running_turn`, from `running_since`) until that turn's reply is stored, one
# turn at a time on every process and node (a mark older than a turn may last is stale); a
# reply names its turn and is stored once, whichever node stores it first (the unique index).
# The insert trigger sets and ends the mark: no extra statement per turn.
V15 = """
ALTER TABLE messages ADD COLUMN turn TEXT;
ALTER TABLE conversations ADD COLUMN running_turn TEXT;
ALTER TABLE conversations ADD COLUMN running_since TEXT;
CREATE UNIQUE INDEX messages_by_turn ON messages(turn)
    WHERE turn IS NOT NULL AND role = 'assistant';
CREATE INDEX conversations_by_running_turn ON conversations(running_turn)
    WHERE running_turn IS NOT NULL;
DROP TRIGGER messages_ai;
CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content, owner) VALUES (new.id, new.content, new.owner);
    -- A write that did not name the owner (plain SQL) gets it here; messages_au re-indexes.
    UPDATE messages SET owner =
        (SELECT user_id FROM conversations WHERE conversations.id = new.conversation_id)
        WHERE id = new.id AND new.owner IS NULL;
    UPDATE conversations SET message_count = message_count + 1, updated_at = new.created_at,
        leaf_id = CASE WHEN new.role = 'user' OR leaf_id IS NULL
                       OR leaf_id IS new.parent_id THEN new.id ELSE leaf_id END,
        running_since = CASE WHEN new.role = 'user' AND new.turn IS NOT NULL
                             THEN new.created_at ELSE running_since END,
        running_turn = CASE WHEN new.role = 'user' AND new.turn IS NOT NULL THEN new.turn
                            WHEN new.role = 'assistant' AND running_turn = new.turn THEN NULL
                            ELSE running_turn END
        WHERE id = new.conversation_id;
END;
"""

MIGRATIONS: list[str] = [V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14, V15]
LATEST = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = LATEST) -> int:
    """Bring the schema up to `target`, each step in its own transaction; return the version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > LATEST:
        raise SchemaTooNew(f"database schema v{version} is newer than this program (v{LATEST})")
    for number in range(version + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Several processes may open a new file at once: the first to hold the write lock
            # applies each step, the others find it done.
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= number:
                conn.execute("COMMIT")
                continue
            for statement in _statements(MIGRATIONS[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(version, target)


def _statements(script: str) -> list[str]:
    """Split a script on complete statements (triggers contain inner semicolons)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return [s for s in out if s]
