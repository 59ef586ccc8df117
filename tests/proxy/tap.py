"""A wire tap for tests: a plain websockets relay that logs every message it passes, each way,
as ``(kind, bytes)``, and the handshake headers it received. Two taps around the proxy (client →
tap → proxy → tap → backend) prove that the proxy changes no byte: what the first tap passed
to the proxy must be what the second received from it, message by message, and back.

It shares no code with the proxy, on purpose: it is the measuring instrument.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_HOP = {"host", "connection", "upgrade", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
        "user-agent"}


def kind_bytes(message: str | bytes) -> tuple[str, bytes]:
    return ("text", message.encode()) if isinstance(message, str) else ("binary", message)


class Tap:
    def __init__(self, target: str) -> None:
        self.target = target  # ws://host:port (the path and query are the client's)
        self.up: list[tuple[str, bytes]] = []
        self.down: list[tuple[str, bytes]] = []
        self.handshakes: list[list[tuple[str, str]]] = []
        self.paths: list[str] = []
        self.server: Any = None

    async def __aenter__(self) -> Tap:
        self.server = await serve(self._handle, "127.0.0.1", 0, max_size=None, compression=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        headers = list(ws.request.headers.raw_items())
        self.handshakes.append(headers)
        self.paths.append(ws.request.path)
        forwarded = [(k, v) for k, v in headers if k.lower() not in _HOP]
        async with connect(self.target + ws.request.path, additional_headers=forwarded, max_size=None,
                           compression=None) as upstream:
            async def pump(src: Any, dst: Any, log: list[tuple[str, bytes]]) -> None:
                try:
                    async for message in src:
                        log.append(kind_bytes(message))
                        await dst.send(message)
                except ConnectionClosed:
                    pass
                finally:
                    rcvd = getattr(src, "close_code", None)
                    with contextlib.suppress(Exception):
                        await dst.close(rcvd or 1000, src.close_reason or "")

            await asyncio.gather(pump(ws, upstream, self.up), pump(upstream, ws, self.down))
