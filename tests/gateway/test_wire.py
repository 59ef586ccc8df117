"""``gateway/wire.py`` and the bounds it makes possible, against a real gateway under uvicorn:
a browser that stops reading (its socket buffers full) ends its session at the backlog bound,
over a WebSocket and over long-polling; a connection that upgrades keeps its wire; a stopped
browser process is dropped by the heartbeat, either layer of it, and its upstream with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from voicerelay.gateway.server import Gateway

from .conftest import serving, stalled_connection

ROOT = Path(__file__).resolve().parents[2]
BOUND = 64 * 1024  # the backlog bound of these tests' gateways (1 MiB by default)


async def until(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def packets(raw: str) -> list[str]:
    """Engine.IO packets of a long-polling body (separated by the record separator)."""
    return [p for p in raw.split("\x1e") if p]


def event(packet: str) -> tuple[str, Any] | None:
    """A Socket.IO EVENT on the default namespace (``42[name, data]``) as ``(name, data)``."""
    if not packet.startswith("42["):
        return None
    name, *data = json.loads(packet[2:])
    return name, data[0] if data else None


async def test_a_browser_that_stops_reading_ends_its_session_at_the_bound(make_gateway: Any, browsers: Any) -> None:
    """A WebSocket client with small socket buffers starts a session, then only writes: it asks
    for replies and reads nothing. Once the gateway's send to it blocks and more than the bound was
    queued for it since, its session ends and its upstream is closed; a neighbour notices nothing;
    when the client reads again, the coded error and the end are the last events waiting for it."""
    gw: Gateway = make_gateway(max_backlog_bytes=BOUND)
    async with serving(gw.asgi_app(), send_buffer=8192, **gw.uvicorn_options()) as url:
        neighbour = await browsers().connect(url)
        await neighbour.start()
        backend = gw.backend_server
        stuck = await stalled_connection(url)
        try:
            assert str(await stuck.recv()).startswith("0{")  # engine.io's open packet
            await stuck.send("40")
            await stuck.send('42["start_session",{}]')
            while True:  # read until the session is up, then never again (until the end)
                got = event(str(await asyncio.wait_for(stuck.recv(), 15)))
                if got and got[0] == "session_started":
                    break
            session = next(s for s in gw.sessions.values() if s.id == got[1]["session_id"])
            assert session.wire is not None and backend.connections == 2
            for _ in range(12):  # replies, each a few hundred KB of audio, that nobody reads
                await stuck.send('42["text_input",{"text":"tell me a joke"}]')
                await asyncio.sleep(0.3)
                if session.ended:
                    break
            await until(lambda: session.ended and backend.connections == 1)
            assert session.wire.stalled and session.wire.stalled_bytes > BOUND
            await neighbour.emit("text_input", {"text": "how are you"})
            assert (await neighbour.wait_for("ai_response"))["response"] == "I am fine, thank you for asking."
            assert not neighbour.of("error") and not neighbour.of("session_ended")
            # it reads again: everything queued for it, then the error and the end
            seen: list[tuple[str, Any]] = []
            while not seen or seen[-1][0] != "session_ended":
                got = event(str(await asyncio.wait_for(stuck.recv(), 15)))
                if got:
                    seen.append(got)
            assert seen[-2][0] == "error" and seen[-2][1]["code"] == "not_reading", seen[-3:]
            assert f"the limit is {BOUND // 1024} KiB" in seen[-2][1]["message"]
            assert seen[-1][1]["status"] == "not_reading"
            assert sum(1 for name, _ in seen if name == "audio_delta") > 10  # it was sent replies meanwhile
        finally:
            stuck.transport.abort()


async def test_a_long_polling_browser_that_stops_polling_ends_its_session_at_the_bound(make_gateway: Any,
                                                                                        browsers: Any) -> None:
    """The same over long-polling: between one poll's answer and the next, nothing reaches the
    browser; a client that stops polling while it asks for replies has its session ended at the
    bound, and its next poll brings the coded error and the end."""
    gw: Gateway = make_gateway(max_backlog_bytes=BOUND)
    async with serving(gw.asgi_app(), **gw.uvicorn_options()) as url:
        backend_url = f"{url}/socket.io/?EIO=4&transport=polling"
        async with aiohttp.ClientSession() as http:
            async with http.get(backend_url) as response:
                opened = packets(await response.text())[0]
            sid = json.loads(opened[1:])["sid"]
            polling = f"{backend_url}&sid={sid}"

            async def post(*items: str) -> None:
                async with http.post(polling, data="\x1e".join(items)) as response:
                    assert response.status == 200, await response.text()

            async def poll() -> list[str]:
                async with http.get(polling) as response:
                    return packets(await response.text())

            await post("40", '42["start_session",{}]')
            seen: list[tuple[str, Any]] = []
            while not any(name == "session_started" for name, _ in seen):
                for packet in await poll():
                    if packet == "2":
                        await post("3")  # engine.io's ping
                    got = event(packet)
                    if got:
                        seen.append(got)
            session = next(iter(gw.sessions.values()))
            assert session.wire is not None
            for _ in range(12):  # no poll from here on: what is queued waits in the gateway
                await post('42["text_input",{"text":"tell me a joke"}]')
                await asyncio.sleep(0.3)
                if session.ended:
                    break
            await until(lambda: session.ended and gw.backend_server.connections == 0)
            seen = []
            while not seen or seen[-1][0] != "session_ended":
                seen += [got for got in map(event, await poll()) if got]
            assert [name for name, _ in seen[-2:]] == ["error", "session_ended"]
            assert seen[-2][1]["code"] == "not_reading" and seen[-1][1]["status"] == "not_reading"


async def test_a_connection_that_upgrades_from_polling_keeps_its_wire(make_gateway: Any, browsers: Any) -> None:
    """socket.io-client's default: long-polling first, then the WebSocket. The session's wire is
    the one the WebSocket's sends go through: replies flow and it is never left stalled (a wire
    only the polls knew would look stalled from the last poll on)."""
    gw: Gateway = make_gateway()
    async with serving(gw.asgi_app(), **gw.uvicorn_options()) as url:
        browser = await browsers().connect(url, transports=["polling", "websocket"])
        await browser.start()
        await until(lambda: browser.sio.transport() == "websocket")
        session = next(iter(gw.sessions.values()))
        await browser.emit("text_input", {"text": "what is your name"})
        await browser.wait_for("response_complete")
        assert browser.of("audio_delta")
        assert session.wire is not None and not session.wire.stalled


FROZEN_BROWSER = """
import asyncio, sys
import socketio

async def main():
    sio = socketio.AsyncClient(reconnection=False)
    started = asyncio.Event()
    sio.on("session_started", lambda data: started.set())
    await sio.connect(sys.argv[1], transports=["websocket"])
    await sio.emit("start_session", {"chat_payload": {}})
    await asyncio.wait_for(started.wait(), 30)
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.parametrize("layer", ["websocket ping", "socket.io heartbeat"])
async def test_a_stopped_browser_process_is_dropped_by_the_heartbeat_with_its_upstream(
        make_gateway: Any, browsers: Any, layer: str) -> None:
    """A browser process SIGSTOPped (its TCP connection open, nothing read or answered) is dropped
    by the heartbeat and its upstream closed, by the WebSocket ping or, with that one off, by
    Socket.IO's own; a neighbour notices nothing. (A 1 s heartbeat, to keep the test short.)"""
    gw: Gateway = make_gateway(ping_interval=1, ping_timeout=1)
    options = gw.uvicorn_options()
    if layer == "socket.io heartbeat":
        options["ws_ping_interval"] = None
    async with serving(gw.asgi_app(), **options) as url:
        neighbour = await browsers().connect(url)
        await neighbour.start()
        backend = gw.backend_server
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", FROZEN_BROWSER, url,
                                                    stdout=asyncio.subprocess.PIPE, env=env)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"ready"
            assert len(gw.sessions) == 2 and backend.connections == 2
            proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            await until(lambda: len(gw.sessions) == 1 and backend.connections == 1)
            dropped_after = time.monotonic() - stopped
            await neighbour.emit("text_input", {"text": "how are you"})
            assert (await neighbour.wait_for("ai_response"))["response"] == "I am fine, thank you for asking."
            assert not neighbour.of("error") and not neighbour.of("session_ended")
            print(f"{layer}: the stopped browser's session and upstream were closed {dropped_after:.1f} s after SIGSTOP")
        finally:
            proc.kill()
            proc.send_signal(signal.SIGCONT)
            await proc.wait()
