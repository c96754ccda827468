"""PostgreSQL migration 2: full-text search over messages (kept apart for its length)."""

from __future__ import annotations

# ASCII punctuation but '_', each turned into a space before parsing: PostgreSQL's parser
# would keep `example.com`, `a-b` or `3.14` whole, where SQLite's tokenizer (and a search's
# words) split them; the index then holds the same words as SQLite's.
_PUNCTUATION = "!\"#$%&''()*+,-./:;<=>?@[\\]^`{|}~"
_SPACES = " " * 31

# The search's indexes (a bulk load may drop them and make them again after).
INDEXES = """
CREATE INDEX messages_search ON messages USING gin (search);
CREATE INDEX messages_by_owner ON messages (owner, id);
"""

# `chatgate_search`: no stemming and no stop words (as SQLite's unicode61), case and
# diacritics folded (unaccent). Each message's tsvector also holds `#<owner>`, a word no text
# can produce, so the GIN index can intersect "this user's" with the words searched for; the
# (owner, id) index walks a user's messages newest first.
V2 = f"""
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE TEXT SEARCH CONFIGURATION chatgate_search (COPY = pg_catalog.simple);
ALTER TEXT SEARCH CONFIGURATION chatgate_search
    ALTER MAPPING FOR asciiword, word, numword, asciihword, hword, numhword, hword_asciipart,
        hword_part, hword_numpart
    WITH unaccent, simple;
ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS (
    to_tsvector('chatgate_search'::regconfig,
                translate(content, '{_PUNCTUATION}', '{_SPACES}'))
    || array_to_tsvector(ARRAY['#' || coalesce(owner, 0)::text])) STORED;
""" + INDEXES
