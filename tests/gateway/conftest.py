"""A real gateway under uvicorn on a loopback port, and python-socketio clients for it."""

from __future__ import annotations

import asyncio
import socket
import time
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import socketio
import uvicorn

from voicerelay.backend.engines import Engines
from voicerelay.gateway.server import Gateway


@contextlib.asynccontextmanager
async def serving(app: Any, port: int = 0, send_buffer: int | None = None, **options: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a loopback port (ephemeral by default); yields its base URL.

    ``options`` go to ``uvicorn.Config`` (a gateway's ``uvicorn_options()``: as ``serve`` runs it).

    ``send_buffer`` fixes the kernel's send buffer of every accepted connection (Linux: they
    inherit the listening socket's), as on a slow link: a client that stops reading then
    blocks the server's writes after a few KB instead of the autotuned megabytes.
    """
    options = {"ws": "websockets-sansio", **options}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           **options))
    sockets = None
    if send_buffer is not None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        listener.bind(("127.0.0.1", port))
        sockets = [listener]
    task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def make_gateway(engines: Engines) -> Callable[..., Gateway]:
    def make(**kw: Any) -> Gateway:
        kw.setdefault("backend", "embedded")
        kw.setdefault("embedded_options", {"engines": engines, "pace": 20.0})
        return Gateway(**kw)

    return make


@pytest.fixture
async def gateway(make_gateway: Callable[..., Gateway]) -> AsyncIterator[tuple[Gateway, str]]:
    gw = make_gateway()
    async with serving(gw.asgi_app()) as url:
        yield gw, url


class Browser:
    """A python-socketio client that records every event it receives."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self._arrived = asyncio.Event()
        self.refusal: Any = None  # the server's reason when it refused the connection
        self.first_at: dict[str, float] = {}  # event name -> when the first of its kind arrived (monotonic)

        @self.sio.event
        async def connect_error(data: Any) -> None:
            self.refusal = data

        @self.sio.on("*")
        async def any_event(name: str, data: Any = None) -> None:
            self.first_at.setdefault(name, time.monotonic())
            self.events.append((name, data))
            self._arrived.set()

    async def connect(self, url: str, **kw: Any) -> Browser:
        kw.setdefault("transports", ["websocket"])
        try:
            await self.sio.connect(url, **kw)
        except socketio.exceptions.ConnectionError as exc:
            reason = self.refusal.get("message") if isinstance(self.refusal, dict) else self.refusal
            raise socketio.exceptions.ConnectionError(f"{exc} ({reason})") from None
        return self

    async def emit(self, name: str, data: Any = None) -> None:
        await self.sio.emit(name, data)

    def of(self, name: str) -> list[Any]:
        return [d for n, d in self.events if n == name]

    async def wait_for(self, name: str, predicate: Callable[[Any], bool] = lambda d: True,
                       timeout: float = 15.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for n, d in self.events:
                    if n == name and predicate(d):
                        return d
                self._arrived.clear()
                await self._arrived.wait()

    async def start(self) -> str:
        await self.emit("start_session", {"chat_payload": {"contextId": "ctx-1", "metadata": {"message_log": []}}})
        created = await self.wait_for("session_created")
        await self.wait_for("session_started")
        return created["session_id"]

    async def close(self) -> None:
        await self.sio.disconnect()


@pytest.fixture
async def browsers() -> AsyncIterator[Callable[[], Browser]]:
    made: list[Browser] = []

    def make() -> Browser:
        browser = Browser()
        made.append(browser)
        return browser

    yield make
    for browser in made:
        if browser.sio.connected:
            await browser.close()
        http = getattr(browser.sio.eio, "http", None)  # left open by a refused connection
        if http is not None and not http.closed:
            await http.close()


async def stalled_connection(url: str) -> Any:
    """A raw engine.io WebSocket to ``url`` with a 4 KiB receive buffer that reads only what the
    caller reads: a browser that can stop reading (its buffers fill at once)."""
    from websockets.asyncio.client import connect

    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return await connect(f"ws://{host}:{port}/socket.io/?EIO=4&transport=websocket", sock=sock,
                         max_queue=1, compression=None)
