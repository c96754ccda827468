"""The web client's files, served gzip-compressed to browsers that take it.

At start-up (off the event loop) a `.gz` is written beside each text file of `server/static/`
whose copy is missing or older than it, the way Python keeps its `__pycache__`: aiohttp's
FileResponse then sends the `.gz` to a client whose Accept-Encoding allows it, with its own
ETag, and the plain file otherwise. Compressed once, never per request; each copy is written
under a temporary name and renamed, so processes starting together never serve half a file.
Where the directory is read-only the files are served as they are. Editing a file takes a
restart to refresh its copy.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
COMPRESSED = frozenset({".css", ".html", ".js", ".json", ".svg", ".txt"})
MIN_BYTES = 256  # smaller files gain nothing worth a second variant
log = logging.getLogger(__name__)


def compress_beside(root: Path) -> int:
    """Write `name.gz` beside each text file under `root` whose copy is missing or stale (its
    time differs from the file's), and remove copies whose file is gone; how many written."""
    written = 0
    for packed in root.rglob("*.gz"):
        if not packed.with_suffix("").exists():
            packed.unlink(missing_ok=True)
    for path in root.rglob("*"):
        if path.suffix not in COMPRESSED or not path.is_file():
            continue
        stat = path.stat()
        packed = path.with_name(path.name + ".gz")
        if stat.st_size < MIN_BYTES:
            packed.unlink(missing_ok=True)
            continue
        try:
            if packed.stat().st_mtime_ns == stat.st_mtime_ns:
                continue
        except FileNotFoundError:
            pass
        scratch = packed.with_name(f".{packed.name}.{os.getpid()}.tmp")
        scratch.write_bytes(gzip.compress(path.read_bytes(), 9, mtime=0))
        os.utime(scratch, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the copy's time: its file's
        os.replace(scratch, packed)
        written += 1
    return written


async def compressed(app: web.Application) -> AsyncIterator[None]:
    """The cleanup context that brings the compressed copies up to date at start-up."""
    try:
        await asyncio.get_running_loop().run_in_executor(None, compress_beside, STATIC_DIR)
    except OSError as err:  # a read-only install: served uncompressed, nothing else changes
        log.warning("the web client's files are served uncompressed: %s", err)
    yield
