"""The search text both backends share: the snippet and highlights are FTS5's own, computed in
Python for PostgreSQL (checked here against SQLite's snippet() on random texts)."""

from __future__ import annotations

import random
import sqlite3

import pytest

from server.storage.sqlite.search import fts_query
from server.storage.textsearch import (
    CLOSE,
    OPEN,
    highlights,
    prefix_last,
    query_words,
    snippet,
)

VOCABULARY = ["alpha", "beta", "Gamma", "delta", "café", "Über", "x1", "foo_bar", "quokka",
              "qu", "zeta", "eta", "theta", "iota", "kappa", "日本語", "naïve"]
# Separators both tokenizers agree on (a newer emoji is part of a word for SQLite's tables).
SEPARATORS = [" ", " ", " ", ", ", ". ", ": ", "! ", "-", "\n", " — ", "? ", " (", ") ", ".",
              ":", "«", " 'x' ", "\t"]


def fts5_snippet(conn: sqlite3.Connection, text: str, query: str) -> str | None:
    """SQLite's snippet() of `text` for `query`, as the SQLite backend asks for it."""
    conn.execute("DELETE FROM t")
    conn.execute("INSERT INTO t (rowid, content, owner) VALUES (1, ?, '1')", (text,))
    row = conn.execute(
        f"SELECT snippet(t, 0, '{OPEN}', '{CLOSE}', '…', 16) FROM t WHERE t MATCH ?",
        (f'owner : "1" AND content : ({fts_query(query)})',)).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize("seed", range(4))
def test_the_snippet_is_fts5s_own(seed: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(content, owner, "
                 "tokenize='unicode61 remove_diacritics 2', prefix='2 3')")
    rng = random.Random(seed)
    compared = 0
    for _ in range(500):
        text = rng.choice(["", " ", "«", "..."]) + "".join(
            rng.choice(VOCABULARY) + rng.choice(SEPARATORS) for _ in range(rng.randint(1, 60)))
        query = " ".join(rng.choice([*VOCABULARY, "ka", "al", "the", "QUOK", "cafe"])
                         for _ in range(rng.randint(1, 3)))
        expected = fts5_snippet(conn, text, query)
        if expected is None:  # no match: nothing to show
            continue
        assert snippet(text, query) == expected, (text, query)
        compared += 1
    assert compared > 200


def test_highlights_are_code_point_spans_of_the_marks() -> None:
    shown, spans = highlights(snippet("Über das Café: ein großer Kaffee mit Milch", "cafe milch"))
    assert shown == "Über das Café: ein großer Kaffee mit Milch"
    assert [shown[a:b] for a, b in spans] == ["Café", "Milch"]
    long = " ".join(f"w{n}" for n in range(40)) + " quokka " + " ".join("x" * 40)
    shown, spans = highlights(snippet(long, "quokka"))
    assert shown.startswith("…") and shown.endswith("…")
    assert [shown[a:b] for a, b in spans] == ["quokka"]


def test_query_words_are_words_only() -> None:
    assert query_words('"a" OR b* (c) -d NEAR(e f) content:g') == \
        ["a", "OR", "b", "c", "d", "NEAR", "e", "f", "content", "g"]
    assert len(query_words("w " * 100)) == 32
    assert query_words("'; -- \x00 🦘") == []
    assert prefix_last(["ab"]) and not prefix_last(["a"]) and not prefix_last([])
