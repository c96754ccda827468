"""Prefix-cache model: a bounded LRU of hashed prompt prefixes, like vLLM's prefix caching."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence


def chain(segments: Sequence[str]) -> list[bytes]:
    """Return the hash of every leading run of segments: segments[:1], segments[:2], ..."""
    h = hashlib.blake2b(digest_size=16)
    out: list[bytes] = []
    for seg in segments:
        h.update(seg.encode("utf-8", "surrogatepass") + b"\x1e")
        out.append(h.copy().digest())
    return out


class PrefixCache:
    """Remembers recently seen prompt prefixes; a prompt whose prefix is known is a hit."""

    def __init__(self, size: int) -> None:
        """Keep at most `size` prefix hashes (0 turns the cache off)."""
        self.size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        """Prefix hashes held."""
        return len(self._seen)

    def _store(self, key: bytes) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def query(self, segments: Sequence[str]) -> bool:
        """Look up everything but the last segment, then remember every prefix of the prompt."""
        keys = chain(segments)
        hit = len(keys) > 1 and keys[-2] in self._seen
        if hit:
            self._seen.move_to_end(keys[-2])
        for key in keys:
            self._store(key)
        return hit

    def remember(self, segments: Sequence[str]) -> None:
        """Remember a whole sequence (a prompt followed by its reply)."""
        keys = chain(segments)
        if keys:
            self._store(keys[-1])

    def clear(self) -> None:
        """Forget everything."""
        self._seen.clear()
