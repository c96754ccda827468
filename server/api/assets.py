"""The web client's files, served gzip-compressed to browsers that take it.

At start-up the files of `server/static/` are copied to a temporary directory with a `.gz`
beside each text file (off the event loop); aiohttp's FileResponse then sends the `.gz` to a
client whose Accept-Encoding allows it, with its own ETag, and the plain file otherwise.
Compressed once per start, never per request. Editing a file in `server/static/` takes a
restart to be served.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import tempfile
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
COMPRESSED = frozenset({".css", ".html", ".js", ".json", ".svg", ".txt"})
MIN_BYTES = 256  # smaller files gain nothing worth a second request variant


def copy_compressed(source: Path, target: Path) -> None:
    """Copy `source`'s tree into `target`, with a `.gz` beside each text file; the copies keep
    their source's times, so ETags stay the same from one start to the next."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    for path in target.rglob("*"):
        if path.suffix not in COMPRESSED or not path.is_file():
            continue
        data = path.read_bytes()
        if len(data) < MIN_BYTES:
            continue
        packed = path.with_name(path.name + ".gz")
        packed.write_bytes(gzip.compress(data, 9, mtime=0))
        stat = path.stat()
        os.utime(packed, ns=(stat.st_atime_ns, stat.st_mtime_ns))


async def prepare(app: web.Application) -> Path:
    """A directory with the web client's files and their compressed copies, removed when
    the app cleans up."""
    loop = asyncio.get_running_loop()
    target = Path(await loop.run_in_executor(None, tempfile.mkdtemp, "", "chatgate-static-"))
    await loop.run_in_executor(None, copy_compressed, STATIC_DIR, target)

    async def remove(_: web.Application) -> None:
        await loop.run_in_executor(None, shutil.rmtree, target, True)

    app.on_cleanup.append(remove)
    return target
