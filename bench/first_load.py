"""First-load transfer of the web client, measured in Chromium: the login page, the signed-in app
(every file a first visit downloads until it is idle on a new chat) and the account page's first
visit. Prints each file's size uncompressed, on the wire (the body as the server sent it) and
the Content-Encoding the server used (the server sends gzip copies of its text files).

    .venv/bin/python bench/first_load.py

Needs /usr/bin/chromium (as the browser tests). Starts its own simulator and server on
loopback ports, in a temporary directory.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.async_api import Response, async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from server.runner import start
from tests.support.app import make_config
from tests.support.browser import api_user, launch, login_context
from vllm_sim import SimSettings, start_simulator


class Files:
    """The non-API responses of a page, by URL: (bytes uncompressed, bytes on the wire,
    encoding)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen: dict[str, tuple[int, int, str]] = {}
        self._pending: list[asyncio.Future[None]] = []

    def watch(self, resp: Response) -> None:
        if resp.url.startswith(self.base) and "/api/" not in resp.url:
            self._pending.append(asyncio.ensure_future(self._size(resp)))

    async def _size(self, resp: Response) -> None:
        body = await resp.body()  # decoded by the browser
        encoding = (await resp.all_headers()).get("content-encoding", "none")
        sizes = await resp.request.sizes()
        self.seen[resp.url] = (len(body), sizes["responseBodySize"], encoding)

    async def settle(self) -> None:
        await asyncio.gather(*self._pending)
        self._pending.clear()


def report(title: str, files: dict[str, tuple[int, int, str]], base: str) -> None:
    raw = sum(v[0] for v in files.values())
    packed = sum(v[1] for v in files.values())
    print(f"\n{title}: {len(files)} files, {raw / 1000:.1f} KB uncompressed,"
          f" {packed / 1000:.1f} KB on the wire")
    for url, (size, gz, enc) in sorted(files.items()):
        print(f"  {url.removeprefix(base):32} {size:7} {gz:7}  content-encoding: {enc}")


async def main() -> None:
    sim = await start_simulator(SimSettings(ttft_ms=5, tpot_ms=5, reply_tokens=12))
    with tempfile.TemporaryDirectory() as tmp:
        running = await start(make_config(Path(tmp), sim.url))
        try:
            async with async_playwright() as playwright:
                browser = await launch(playwright)
                user = await api_user(running.url, "measure")
                for signed_in in (False, True):
                    context = await browser.new_context(base_url=running.url)
                    if signed_in:
                        await login_context(context, running.url, user)
                    page = await context.new_page()
                    files = Files(running.url)
                    page.on("response", files.watch)
                    await page.goto("/")
                    await page.locator("#who:not(:empty)" if signed_in else "#auth").wait_for()
                    await page.wait_for_load_state("networkidle")
                    await files.settle()
                    first: dict[str, Any] = dict(files.seen)
                    report("Signed in, first visit" if signed_in else "Login page", first,
                           running.url)
                    if signed_in:
                        await page.locator("#who").click()
                        await page.locator("#account-page").wait_for()
                        await page.wait_for_load_state("networkidle")
                        await files.settle()
                        more = {u: v for u, v in files.seen.items() if u not in first}
                        report("Account page, first visit (extra)", more, running.url)
                    await context.close()
                await browser.close()
        finally:
            await running.stop()
            await sim.close()


if __name__ == "__main__":
    asyncio.run(main())
