"""The upstream edge: --backend resolution, the one embedded-backend starter, connections over real
loopback WebSockets and the translation of websockets' errors into the error tree."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from voicerelay.backend.engines import Engines
from voicerelay.errors import ConnectionLost, UpstreamRejected, UpstreamUnavailable, UsageError
from voicerelay.protocol.events import Dialect
from voicerelay.upstream import (
    UpstreamSpec,
    choose_backend,
    open_connection,
    remote_spec,
    start_upstream,
    with_realtime_path,
)


def test_backend_choice_and_its_errors() -> None:
    assert choose_backend(None, {}) == "embedded" and choose_backend(None, {"OPENAI_API_KEY": "k"}) == "openai"
    assert choose_backend("wss://x/v1/realtime", {}) == "wss://x/v1/realtime"
    with pytest.raises(ValueError, match="--backend must be embedded, openai or a ws:// or wss:// URL"):
        choose_backend("http://x", {})
    with pytest.raises(UsageError, match="set OPENAI_API_KEY"):
        remote_spec("openai", "gpt-realtime", Dialect.GA, {})


def test_a_url_without_a_path_gets_the_realtime_path_and_the_model() -> None:
    assert with_realtime_path("ws://h:8765") == "ws://h:8765/v1/realtime"
    assert with_realtime_path("ws://h:8765/custom") == "ws://h:8765/custom"
    spec = remote_spec("ws://h:8765", "m1", Dialect.BETA, {"OPENAI_API_KEY": "sk-x"})
    assert spec.url == "ws://h:8765/v1/realtime?model=m1" and spec.headers() == {
        "Authorization": "Bearer sk-x", "OpenAI-Beta": "realtime=v1"}
    assert "sk-x" not in repr(spec)


@pytest.fixture
async def closing_server() -> AsyncIterator[str]:
    """Sends one frame, then closes with 4000 after the client's first message; 404 elsewhere."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"type":"hello"}')
        await ws.recv()
        await ws.close(4000, "bye")

    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"


async def test_a_closed_connection_is_connection_lost_with_its_code(closing_server: str) -> None:
    conn = await open_connection(UpstreamSpec(closing_server))
    assert await conn.recv(5) == b'{"type":"hello"}' and conn.extensions == []  # no permessage-deflate
    await conn.send("{}")
    with pytest.raises(ConnectionLost) as lost:
        await conn.recv(5)
    assert lost.value.close_code == 4000 and conn.close_code == 4000
    with pytest.raises(ConnectionLost):
        await conn.send("{}")
    await conn.close()


async def test_refused_and_rejected_connections_are_their_errors() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamUnavailable, match=f"cannot reach ws://127.0.0.1:{port}"):
        await open_connection(UpstreamSpec(f"ws://127.0.0.1:{port}/v1/realtime"), retries=0)

    async def refuse(connection: ServerConnection, request: object) -> object:
        return connection.respond(404, "no\n")

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/realtime"
        with pytest.raises(UpstreamRejected, match="HTTP 404 .Realtime servers listen at /v1/realtime") as rejected:
            await open_connection(UpstreamSpec(url), retries=0)
    assert rejected.value.status == 404


async def test_the_embedded_backend_starts_and_stops_in_one_place(engines: Engines) -> None:
    upstream = await start_upstream("embedded", "gpt-realtime", env={}, engines=engines)
    assert upstream.server is not None and upstream.spec.describe().startswith("embedded backend")
    conn = await upstream.spec.connect()
    assert '"session.created"' in str(await conn.recv(5))
    await conn.close()
    await upstream.close()
    assert upstream.server is None
    remote = await start_upstream("ws://127.0.0.1:9/v1/realtime", "gpt-realtime", env={})
    assert remote.server is None and remote.spec.url.endswith("?model=gpt-realtime")
