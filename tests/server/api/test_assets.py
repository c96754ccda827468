"""The web client's files: sent gzip-compressed to a client that takes it, plain otherwise,
revalidated by ETag, and the same bytes as in server/static/."""

from __future__ import annotations

import gzip
import os

import aiohttp
import pytest

from server.api.assets import STATIC_DIR, compress_beside
from server.runner import Running


@pytest.mark.parametrize("path, file", [("/", "index.html"), ("/static/js/app.js", "js/app.js"),
                                        ("/static/app.css", "app.css")])
async def test_text_files_are_sent_compressed_when_the_client_takes_it(
        server: Running, path: str, file: str) -> None:
    source = (STATIC_DIR / file).read_bytes()
    async with aiohttp.ClientSession(server.url, auto_decompress=False) as s:
        async with s.get(path, headers={"Accept-Encoding": "gzip, deflate, br"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Encoding"] == "gzip"
            assert "Accept-Encoding" in resp.headers.get("Vary", "")
            packed = await resp.read()
            etag = resp.headers["ETag"]
        assert gzip.decompress(packed) == source and len(packed) < len(source) / 2
        async with s.get(path, headers={"Accept-Encoding": "identity"}) as resp:
            assert "Content-Encoding" not in resp.headers
            assert await resp.read() == source
        async with s.get(path, headers={"Accept-Encoding": "gzip",
                                        "If-None-Match": etag}) as resp:
            assert resp.status == 304


async def test_small_files_and_images_are_sent_as_they_are(server: Running) -> None:
    async with aiohttp.ClientSession(server.url, auto_decompress=False) as s, \
            s.get("/static/favicon.svg", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200
        body = await resp.read()
    source = (STATIC_DIR / "favicon.svg").read_bytes()
    assert body == source or gzip.decompress(body) == source  # below MIN_BYTES: plain


def test_copies_are_refreshed_when_stale_and_removed_when_their_file_goes(tmp_path) -> None:
    (tmp_path / "js").mkdir()
    source = tmp_path / "js" / "a.js"
    source.write_text("let x = 1;\n" * 100)
    (tmp_path / "tiny.css").write_text("a{}")
    assert compress_beside(tmp_path) == 1
    packed = tmp_path / "js" / "a.js.gz"
    assert gzip.decompress(packed.read_bytes()) == source.read_bytes()
    assert not (tmp_path / "tiny.css.gz").exists()
    assert compress_beside(tmp_path) == 0  # up to date: nothing written
    source.write_text("let y = 2;\n" * 100)
    os.utime(source, ns=(1, 2))  # edited: another time
    assert compress_beside(tmp_path) == 1
    assert gzip.decompress(packed.read_bytes()) == source.read_bytes()
    source.unlink()
    compress_beside(tmp_path)
    assert not packed.exists() and not list(tmp_path.rglob("*.tmp"))


async def test_no_path_leaves_the_static_directory(server: Running) -> None:
    async with aiohttp.ClientSession(server.url) as s:
        for path in ("/static/../app.py", "/static/%2e%2e/keys.py", "/static/js/../../app.py"):
            async with s.get(path) as resp:
                assert resp.status in (403, 404)
