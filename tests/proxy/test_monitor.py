"""Proxied sessions in ``voicerelay inspect``: a real client talks through the real proxy to the
embedded backend while a real Socket.IO monitor (what ``inspect`` is) watches the proxy's
``/monitor``: one row per session with its state, turns, latency, lint findings and cost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import socketio
from websockets.asyncio.client import connect

from voicerelay.backend.server import BackendServer
from voicerelay.protocol.audio import pcm16_to_b64
from voicerelay.proxy.lint import LiveLint
from voicerelay.proxy.monitor import MonitorServer
from voicerelay.proxy.server import ProxyServer

from ..conftest import read_recording


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


class Watcher:
    """A monitor client, as ``inspect`` connects: every batch it gets, acknowledged."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.rows: dict[str, dict[str, Any]] = {}
        self.closed: dict[str, str] = {}
        self.transcripts: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.sio.on("sessions", self._sessions, namespace="/monitor")
        self.sio.on("session_update", self._update, namespace="/monitor")
        self.sio.on("session_closed", self._closed, namespace="/monitor")
        self.sio.on("session_detail", self._detail, namespace="/monitor")

    async def _sessions(self, data: dict[str, Any]) -> None:
        self.rows.update({s["session_id"]: s for s in data["sessions"]})

    async def _update(self, data: dict[str, Any]) -> None:
        self.rows[data["session_id"]] = data

    async def _closed(self, data: dict[str, Any]) -> None:
        self.closed[data["session_id"]] = data["status"]

    async def _detail(self, data: dict[str, Any]) -> None:
        self.transcripts += data["transcripts"]
        self.events += data["events"]

    async def until(self, check: Any, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)


@pytest.fixture
async def watched(backend: BackendServer) -> AsyncIterator[tuple[ProxyServer, MonitorServer]]:
    sock = listening()
    async with MonitorServer(sock, token=None, estimate=True, lint=LiveLint()) as monitor:
        async with ProxyServer(backend.url, observers=[monitor.observer]) as proxy:
            yield proxy, monitor
    sock.close()


async def next_of(ws: Any, etype: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == etype:
                return event


async def test_a_proxied_session_is_one_row_with_its_state_findings_and_cost(
        watched: tuple[ProxyServer, MonitorServer]) -> None:
    proxy, monitor = watched
    watcher = Watcher()
    await watcher.sio.connect(monitor.url, namespaces=["/monitor"], transports=["websocket"])
    try:
        async with connect(proxy.url + "?model=gpt-realtime") as ws:
            await next_of(ws, "session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
                "input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}}))
            await next_of(ws, "session.updated")
            await watcher.until(lambda: len(watcher.rows) == 1)
            [session_id] = watcher.rows
            await watcher.sio.emit("select", {"session_id": session_id}, namespace="/monitor")
            await ws.send(json.dumps({"type": "response.cancel"}))  # nothing to cancel: VR106
            await next_of(ws, "error")
            speech = np.concatenate([read_recording("what_is_your_name"), np.zeros(24_000, dtype=np.int16)])
            noise = np.random.default_rng(7).normal(0, 30, len(speech)).astype(np.int16)  # a room, not silence
            pcm = (speech + noise).tobytes()
            for i in range(0, len(pcm), 4800):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm16_to_b64(pcm[i:i + 4800])}))
            await next_of(ws, "response.done")
            await watcher.until(lambda: watcher.rows[session_id]["turns"] == 1
                                and watcher.rows[session_id]["ai_state"] == "listening")
            row = watcher.rows[session_id]
            assert row["node"] == "proxy" and row["chat_active"] is True
            assert row["errors"] == 1 and row["last_latency_ms"] is not None and row["last_latency_ms"] > 0
            assert row["cost"]["usd"] > 0 and row["cost"]["estimate"] is True and row["cost"]["model"]
            assert row["lint"]["count"] == 1 and row["lint"]["findings"][0]["code"] == "VR106"
            assert row["session_remaining_s"] is not None and 0 < row["session_remaining_s"] <= 3600
            await watcher.until(lambda: any(t["role"] == "assistant" for t in watcher.transcripts))
        await watcher.until(lambda: session_id in watcher.closed)
        roles = [t["role"] for t in watcher.transcripts]
        assert roles.index("lint") < roles.index("user") < roles.index("assistant")
        assert "VR106" in next(t["text"] for t in watcher.transcripts if t["role"] == "lint")
        assert {"up", "down"} <= {e["dir"] for e in watcher.events}
        assert len(monitor.registry) == 0  # an ended session leaves the registry
    finally:
        await watcher.sio.disconnect()


async def test_concurrent_proxied_sessions_are_a_row_each_and_each_is_linted(
        watched: tuple[ProxyServer, MonitorServer]) -> None:
    proxy, monitor = watched
    watcher = Watcher()
    await watcher.sio.connect(monitor.url, namespaces=["/monitor"], transports=["websocket"])
    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(proxy.url + "?model=gpt-realtime"))
                       for _ in range(3)]
            for ws in clients:
                await next_of(ws, "session.created")
                await ws.send(json.dumps({"type": "response.cancel"}))  # nothing to cancel: VR106
                await next_of(ws, "error")
            await watcher.until(lambda: len(watcher.rows) == 3
                                and all((row["lint"] or {}).get("count") == 1 for row in watcher.rows.values()))
            assert len(monitor.registry) == 3
            assert {row["lint"]["findings"][0]["code"] for row in watcher.rows.values()} == {"VR106"}
        await watcher.until(lambda: len(watcher.closed) == 3)
        assert len(monitor.registry) == 0
    finally:
        await watcher.sio.disconnect()


async def test_the_monitor_requires_the_proxys_token(backend: BackendServer) -> None:
    sock = listening()
    async with MonitorServer(sock, token="s3cret", estimate=True) as monitor:
        refused = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(monitor.url, namespaces=["/monitor"], transports=["websocket"], wait_timeout=5)
        allowed = socketio.AsyncClient(reconnection=False)
        await allowed.connect(monitor.url, namespaces=["/monitor"], transports=["websocket"],
                              auth={"token": "s3cret"}, wait_timeout=5)
        assert allowed.connected
        await allowed.disconnect()
    sock.close()


async def test_sessions_of_a_proxy_without_lint_show_no_findings_column(backend: BackendServer) -> None:
    sock = listening()
    async with MonitorServer(sock, token=None, estimate=True) as monitor:
        async with ProxyServer(backend.url, observers=[monitor.observer]) as proxy:
            async with connect(proxy.url + "?model=gpt-realtime") as ws:
                await next_of(ws, "session.created")
                [session] = monitor.registry.sessions()
                assert session.state()["lint"] is None and session.state()["ai_state"] == "listening"
    sock.close()


async def test_inspect_shows_a_proxied_session_with_its_finding_and_cost(tmp_path: Any) -> None:
    """What docs/inspect-proxy.svg shows, from the same real run: ``inspect`` on the proxy's monitor."""
    import importlib.util
    from pathlib import Path

    from voicerelay.tui.monitor_state import COLUMNS

    script = Path(__file__).resolve().parents[2] / "docs" / "make_screenshots.py"
    spec = importlib.util.spec_from_file_location("make_screenshots", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = await module.proxy_screen(tmp_path, "inspect-proxy.svg")
    [view] = app.model.sessions.values()
    row = dict(zip(COLUMNS, app.model.row(view)))
    assert row["node"] == "proxy" and row["lint"] == "1 VR106" and row["turns"] == "1"
    assert row["cost"].startswith("~$") and row["queued audio"] == "-"
    svg = (tmp_path / "inspect-proxy.svg").read_text().replace("&#160;", " ")
    assert "1 VR106" in svg and "what is your name" in svg and "~$" in svg
