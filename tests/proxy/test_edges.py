"""The proxy's edges on real sockets: an upstream that drops or closes (the client gets the same
close code, the recording is complete), a client that closes, the token and origin rules, an
upstream that refuses the handshake, the observer hook, and the command line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import socketio
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voicerelay.backend.server import BackendServer
from voicerelay.proxy.observe import Frame, SessionEnd, SessionInfo
from voicerelay.proxy.record import Recordings
from voicerelay.proxy.server import ProxyServer
from voicerelay.recording import RecordedSession

Handler = Callable[[ServerConnection], Awaitable[None]]


async def upstream_server(handler: Handler) -> Any:
    """A small real Realtime-ish upstream whose behaviour a test chooses."""
    return await serve(handler, "127.0.0.1", 0, compression=None)


def url_of(server: Any) -> str:
    return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"


async def closed_code(ws: Any, timeout: float = 5) -> tuple[int | None, str]:
    """Read until the connection closes; its close code and reason as the client saw them."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "")


async def test_upstream_going_away_ends_the_client_with_1001_and_the_recording_is_complete(
        backend: BackendServer, tmp_path: Path) -> None:
    async with ProxyServer(backend.url, observers=[Recordings(tmp_path)]) as proxy:
        async with connect(proxy.url + "?model=gpt-realtime") as ws:
            received = [json.loads(await ws.recv())]
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me a joke"}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            while received[-1]["type"] != "response.output_audio.delta":
                received.append(json.loads(await ws.recv()))
            await backend.close()  # the upstream goes away mid-response
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    received.append(json.loads(await ws.recv()))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        while proxy.sessions:
            await asyncio.sleep(0.01)
    (folder,) = list(tmp_path.iterdir())
    recording = RecordedSession.open(folder)
    downs = [e.event for e in recording.events if e.direction == "down"]
    assert [e["type"] for e in downs[:-1]] == [e["type"] for e in received]  # every event the client got
    assert downs[-1] == {"type": "voicerelay.closed", "by": "upstream", "code": 1001, "reason": ""}


@pytest.mark.parametrize("code, reason", [(4000, "invalid_request_error.session_expired"), (1011, "boom"),
                                          (1000, "")])
async def test_an_upstream_close_code_and_reason_reach_the_client(code: int, reason: str) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"type":"session.created"}')
        await ws.close(code, reason)

    server = await upstream_server(handler)
    async with ProxyServer(url_of(server)) as proxy, connect(proxy.url) as ws:
        assert await ws.recv() == '{"type":"session.created"}'
        assert await closed_code(ws) == (code, reason)
    server.close()


async def test_an_upstream_that_drops_without_a_close_drops_the_client(tmp_path: Path) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"type":"session.created"}')
        await asyncio.sleep(0.05)
        ws.transport.abort()  # TCP reset: no close frame

    ends: list[SessionEnd] = []
    server = await upstream_server(handler)
    async with ProxyServer(url_of(server), observers=[Recordings(tmp_path), watcher(ends)]) as proxy:
        async with connect(proxy.url) as ws:
            assert await closed_code(ws) == (1006, "")
        while proxy.sessions:
            await asyncio.sleep(0.01)
    assert [(e.by, e.code) for e in ends] == [("upstream", 1006)]
    (folder,) = list(tmp_path.iterdir())
    last = RecordedSession.open(folder).events[-1].event
    assert last == {"type": "voicerelay.closed", "by": "upstream", "code": 1006, "reason": ""}
    server.close()


async def test_a_client_close_code_reaches_the_upstream() -> None:
    seen: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            seen.set_result((exc.rcvd.code, exc.rcvd.reason))

    server = await upstream_server(handler)
    async with ProxyServer(url_of(server)) as proxy:
        async with connect(proxy.url) as ws:
            await ws.close(4321, "bye")
        assert await asyncio.wait_for(seen, 5) == (4321, "bye")
    server.close()


def watcher(ends: list[SessionEnd], frames: list[Frame] | None = None, infos: list[SessionInfo] | None = None) -> Any:
    class Watch:
        def event(self, frame: Frame) -> None:
            if frames is not None:
                frames.append(frame)

        def closed(self, end: SessionEnd) -> None:
            ends.append(end)

    def observer(info: SessionInfo) -> Watch:
        if infos is not None:
            infos.append(info)
        return Watch()

    return observer


async def test_observers_see_every_event_both_ways_and_a_failing_one_is_detached(backend: BackendServer) -> None:
    frames: list[Frame] = []
    ends: list[SessionEnd] = []
    infos: list[SessionInfo] = []

    class Broken:
        def event(self, frame: Frame) -> None:
            raise RuntimeError("observer bug")

        def closed(self, end: SessionEnd) -> None:
            raise RuntimeError("observer bug")

    async with ProxyServer(backend.url, observers=[lambda info: Broken(), watcher(ends, frames, infos)]) as proxy:
        async with connect(proxy.url + "?model=gpt-realtime", additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
            first = await ws.recv()
            await ws.send(b"\x00binary garbage")
            answer = await ws.recv()
        while proxy.sessions:
            await asyncio.sleep(0.01)
    assert [(f.direction, f.data) for f in frames] == [("down", first), ("up", b"\x00binary garbage"), ("down", answer)]
    assert frames[0].event is not None and frames[0].event["type"] == "session.created"
    assert frames[1].event is None  # not JSON: observed as it is, forwarded as it is
    assert infos[0].dialect == "beta" and infos[0].path == "/v1/realtime?model=gpt-realtime"
    assert ends[0].by == "client" and ends[0].code == 1000


async def test_token_rule(backend: BackendServer) -> None:
    seen: list[SessionInfo] = []
    async with ProxyServer(backend.url, token="s3cret-token", observers=[watcher([], None, seen)]) as proxy:
        for wrong in ("sk-placeholder", None):
            client = AsyncOpenAI(api_key=wrong or "x", websocket_base_url=proxy.base_url)
            if wrong is None:
                with pytest.raises(InvalidStatus) as info:
                    await connect(proxy.url + "?model=gpt-realtime")
            else:
                with pytest.raises(InvalidStatus) as info:
                    async with client.realtime.connect(model="gpt-realtime"):
                        pass
            assert info.value.response.status_code == 401
            await client.close()
        client = AsyncOpenAI(api_key="s3cret-token", websocket_base_url=proxy.base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            assert json.loads(await conn.recv_bytes())["type"] == "session.created"
        await client.close()
    assert len(seen) == 1 and not any(k.lower() == "authorization" for k, _ in seen[0].headers)


async def test_origins_path_and_capacity(backend: BackendServer) -> None:
    async with ProxyServer(backend.url, allow_origins=["http://app.example"], max_sessions=1) as proxy:
        with pytest.raises(InvalidStatus) as info:
            await connect(proxy.url + "?model=gpt-realtime", origin="http://evil.example")  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as info:
            await connect(proxy.url.replace("/v1/realtime", "/v1/other"))
        assert info.value.response.status_code == 404
        async with connect(proxy.url + "?model=gpt-realtime", origin="http://app.example") as ws:  # type: ignore[arg-type]
            await ws.recv()
            with pytest.raises(InvalidStatus) as info:
                await connect(proxy.url + "?model=gpt-realtime")
            assert info.value.response.status_code == 503
        while proxy.sessions:
            await asyncio.sleep(0.01)
        async with connect(proxy.url + "?model=gpt-realtime") as ws:  # a slot is free again
            await ws.recv()


async def test_the_upstreams_own_refusals_reach_the_client(backend: BackendServer) -> None:
    # an HTTP refusal: the client gets the upstream's status and body
    async with ProxyServer(backend.url.replace("/v1/realtime", "/elsewhere")) as proxy:
        with pytest.raises(InvalidStatus) as info:
            await connect(proxy.url + "?model=gpt-realtime")
        assert info.value.response.status_code == 404
        assert b"The Realtime endpoint is /v1/realtime" in info.value.response.body
    # a session refused after the handshake (no model): the same error event and close code
    async with ProxyServer(backend.url) as proxy, connect(proxy.url) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["code"] == "missing_model"
        assert await closed_code(ws) == (4000, "invalid_request_error.missing_model")
    # nobody there: 502 and one line
    async with ProxyServer("ws://127.0.0.1:9/v1/realtime") as proxy:
        with pytest.raises(InvalidStatus) as info:
            await connect(proxy.url + "?model=gpt-realtime")
        assert info.value.response.status_code == 502


# --------------------------------------------------------------------------------- the command line


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicerelay", "proxy", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_a_busy_monitor_port_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("--port", "0", "--monitor-port", str(port))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f":{port}" in lines[0], result.stderr


def test_listening_wider_than_loopback_needs_a_token() -> None:
    result = run_cli("--host", "0.0.0.0", "--port", "0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "needs --token" in lines[0], result.stderr
    result = run_cli("--backend", "openai", env={"OPENAI_API_KEY": ""})
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("voicerelay: error: ")
    assert "Traceback" not in result.stderr


@pytest.fixture
async def cli_proxy(backend: BackendServer, tmp_path: Path) -> AsyncIterator[tuple[str, Path, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicerelay", "proxy", "--host", "0.0.0.0", "--port", "0", "--token", "tok",
        "--backend", backend.url, "--record", str(tmp_path / "rec"), "--monitor-port", "0",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "300"})
    assert proc.stderr is not None
    lines = ""
    async with asyncio.timeout(20):
        while "Watch its sessions" not in lines:
            line = (await proc.stderr.readline()).decode()
            assert line, "the proxy exited early"
            lines += line
    port = re.search(r"ws://0\.0\.0\.0:(\d+)/v1/realtime", lines)
    monitor = re.search(r"voicerelay inspect (http://0\.0\.0\.0:\d+)", lines)
    assert port and monitor, lines
    yield f"ws://127.0.0.1:{port.group(1)}/v1", tmp_path / "rec", monitor.group(1)
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    rest = (await proc.stderr.read()).decode()
    assert "Traceback" not in rest and "tok" not in rest.replace("token", ""), rest


async def test_the_command_proxies_records_and_stops_on_ctrl_c(cli_proxy: tuple[str, Path, str]) -> None:
    base_url, records, monitor_url = cli_proxy
    client = AsyncOpenAI(api_key="tok", websocket_base_url=base_url)
    watcher = socketio.AsyncClient(reconnection=False)
    sessions: list[dict[str, object]] = []
    watcher.on("session_update", sessions.append, namespace="/monitor")
    watcher.on("sessions", lambda data: sessions.extend(data["sessions"]), namespace="/monitor")
    await watcher.connect(monitor_url, namespaces=["/monitor"], transports=["websocket"], auth={"token": "tok"})
    async with client.realtime.connect(model="gpt-realtime") as conn:
        assert json.loads(await conn.recv_bytes())["type"] == "session.created"
        async with asyncio.timeout(10):
            while not sessions:  # inspect sees the session (with the proxy's token), linted
                await asyncio.sleep(0.05)
        assert sessions[-1]["node"] == "proxy" and sessions[-1]["lint"] == {"count": 0, "findings": []}
    await watcher.disconnect()
    await client.close()
    await asyncio.sleep(0.3)
    (folder,) = list(records.iterdir())
    assert RecordedSession.open(folder).events[0].event["type"] == "session.created"
