"""A stand-in node for the load balancer's own tests: raw HTTP/1.1 on loopback that answers
/ready as told, counts what it reads, and can die after reading a request or hold an SSE
stream open until the test lets it go on (so buffering or a dropped stream shows)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.support.procs import free_port


@dataclass
class StandIn:
    """One node's behaviour, changed by the tests while it runs."""

    name: str
    port: int = field(default_factory=free_port)
    ready: int = 200  # the /ready status HAProxy's checks get
    die_after_read: bool = False  # close without answering, as a node killed mid-request
    seen: list[str] = field(default_factory=list)  # "METHOD path" of each request (not /ready)
    step: asyncio.Event = field(default_factory=asyncio.Event)  # lets a held stream go on
    _server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """host:port, as deploy/haproxy.cfg's NODEn_ADDR."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (again) on its port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def close(self) -> None:
        """Stop listening: connections are refused from now on."""
        if self._server is not None:
            self._server.close()  # open connections (a held stream) are left alone
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if path == "/ready":
                    await _answer(writer, self.ready, "ready")
                    continue
                self.seen.append(f"{method} {path}")
                if self.die_after_read:
                    # Closed with nothing said, as the kernel closes a killed process's socket
                    # whose request it had read (a FIN; finally: below).
                    return
                if path == "/stream":
                    await self._stream(writer)
                    return
                await _answer(writer, 200, self.name)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        """Two SSE events, the second only once the test has seen the first, then the end."""
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n in (1, 2):
            if n == 2:
                await self.step.wait()
                self.step.clear()
            event = f"id: {n}\r\ndata: {{\"n\": {n}, \"node\": \"{self.name}\"}}\r\n\r\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _answer(writer: asyncio.StreamWriter, status: int, body: str) -> None:
    data = body.encode()
    writer.write(b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                 % (status, len(data), data))
    await writer.drain()


async def start_standins(count: int = 3) -> list[StandIn]:
    """`count` listening stand-ins, named node1, node2, ..."""
    nodes = [StandIn(f"node{i}") for i in range(1, count + 1)]
    for node in nodes:
        await node.start()
    return nodes
