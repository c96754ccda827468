"""Search on both backends: any text a user types is safe (fuzzed), the results are the user's
own only and shaped alike."""

from __future__ import annotations

import random

from server.storage import Storage

HIT_KEYS = {"conversation_id", "message_id", "title", "snippet", "highlights", "created_at"}
# Characters with a meaning to FTS5, tsquery, SQL, regular expressions or text encodings.
NASTY = list("\"'`\\*:&|!<>()[]{}^~%_-+.,;=?@#$/ \t\n") + [
    "\x00", "\u202e", "\u200b", "\ufeff", "🦘", "é", "e\u0301", "日本", "ß", "İ", "ﬁ",
    "AND", "OR", "NOT", "NEAR", "<->", ":*", "'a'", "owner", "content", "#1", "#2", "1",
]


def hostile(rng: random.Random) -> str:
    """A random string of tokens anyone could type."""
    return "".join(rng.choice(NASTY) for _ in range(rng.randint(1, 24)))


async def test_fuzzed_queries_are_safe_and_stay_in_scope(store: Storage) -> None:
    alice = (await store.users.create("alice", "h"))["id"]
    bob = (await store.users.create("bob", "h"))["id"]
    mine, *_ = await store.messages.add_user_message(
        alice, None, "a owner content 1 #2 é e\u0301 日本 ß ﬁ 'a' AND OR NOT NEAR", "a")
    await store.messages.add_user_message(bob, None, "a owner content 1 #1 é 日本 AND OR", "b")
    rng = random.Random(16)
    found = 0
    for _ in range(400):
        text = hostile(rng)
        hits = await store.search.search(alice, text, 20)
        assert isinstance(hits, list), text
        for hit in hits:
            assert set(hit) == HIT_KEYS and hit["conversation_id"] == mine, (text, hit)
            for start, end in hit["highlights"]:
                assert 0 <= start < end <= len(hit["snippet"])
        found += bool(hits)
    assert found > 20  # the fuzz reached real matches, not only empty queries
    # The store still answers after all that.
    assert [h["conversation_id"] for h in await store.search.search(alice, "owner", 5)] == [mine]


async def test_words_case_diacritics_and_prefixes_match_alike(store: Storage) -> None:
    user = (await store.users.create("reader", "h"))["id"]
    conv, row, _, _ = await store.messages.add_user_message(
        user, None, "Über das Café: see example.com, a well-known site (v3.14)", "Café")
    for query, marked in (("cafe", ["Café"]), ("CAFÉ über", ["Über", "Café"]),
                          ("exam", ["example"]), ("example com", ["example", "com"]),
                          ("well known", ["well", "known"]), ("v3", ["v3"]), ("14", ["14"])):
        hits = await store.search.search(user, query, 20)
        assert [h["message_id"] for h in hits] == [row["id"]], query
        shown = hits[0]["snippet"]
        assert [shown[a:b] for a, b in hits[0]["highlights"]] == marked, query
        assert hits[0]["title"] == "Café" and hits[0]["conversation_id"] == conv
    for query in ("caf", "exampl", "xample", "cafés", "c"):
        expected = [row["id"]] if query in ("caf", "exampl") else []
        assert [h["message_id"] for h in await store.search.search(user, query, 20)] == \
            expected, query
