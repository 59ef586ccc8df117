"""``voicerelay inspect`` and the /monitor namespace against a real gateway."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from typing import Any

import pytest
import socketio
from websockets.asyncio.client import connect

from voicerelay.gateway.server import Gateway
from voicerelay.tui.events_view import EventLog
from voicerelay.tui.inspect_app import InspectApp

from ..gateway.conftest import Browser, serving


async def until(predicate: Any, timeout: float = 10.0, pause: Any = None) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await (pause() if pause is not None else asyncio.sleep(0.05))


async def test_inspect_lists_live_sessions_and_one_ending(gateway: tuple[Gateway, str], browsers: Any) -> None:
    _, url = gateway
    first, second = await browsers().connect(url), await browsers().connect(url)
    first_id, second_id = await first.start(), await second.start()
    app = InspectApp(url)
    async with app.run_test(size=(160, 40)) as pilot:
        table = app.query_one("#sessions")
        await until(lambda: len(table.rows) == 2, pause=lambda: pilot.pause(0.05))
        assert {app.model.sessions[i].state["ai_state"] for i in (first_id, second_id)} == {"listening"}
        # select the first session and talk in it: its transcripts and events appear
        table.move_cursor(row=list(table.rows).index(first_id))
        await pilot.pause(0.3)
        assert app.selected == first_id
        await first.emit("text_input", {"text": "what is your name"})
        await until(lambda: len(app.model.sessions[first_id].transcripts) >= 2, pause=lambda: pilot.pause(0.05))
        lines = [t["text"] for t in app.model.sessions[first_id].transcripts]
        assert lines[:2] == ["what is your name", "My name is voicerelay. I am an offline test assistant."]
        events = [e["event"]["type"] for e in app.model.sessions[first_id].events]
        assert "response.done" in events
        log_text = "\n".join(str(line) for line in app.query_one("#events").lines)
        assert "response.done" in log_text
        # one session ends: the table says so
        await second.emit("end_session")
        await until(lambda: app.model.sessions[second_id].ended is not None, pause=lambda: pilot.pause(0.05))
        await pilot.pause(0.2)
        assert table.get_cell(second_id, "state") == "ended"
        assert table.get_cell(first_id, "state") in ("listening", "speaking")
        # a paused event log writes nothing until it is resumed, then all it held
        log = app.query_one(EventLog)
        await pilot.press("p")
        await pilot.pause()
        assert log.paused and "paused" in str(log.border_title)
        before = len(log.lines)
        await first.emit("text_input", {"text": "hello there"})
        await until(lambda: len(app.model.sessions[first_id].transcripts) >= 4, pause=lambda: pilot.pause(0.05))
        await pilot.pause(0.3)
        assert len(log.lines) == before
        await pilot.press("p")
        await pilot.pause()
        assert '"text":"hello there"' in "\n".join(line.text for line in log.lines[before:])


async def test_inspect_survives_a_gateway_restart(make_gateway: Any, browsers: Any) -> None:
    with socket.socket() as probe:  # a free port to restart on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = InspectApp(f"http://127.0.0.1:{port}")
    async with app.run_test(size=(160, 40)) as pilot:
        wait = lambda: pilot.pause(0.05)  # noqa: E731
        async with serving(make_gateway().asgi_app(), port) as url:
            first = await browsers().connect(url)
            old_id = await first.start()
            await until(lambda: old_id in app.model.sessions, pause=wait)
        await until(lambda: not app.model.connected, pause=wait)
        assert "reconnecting" in str(app.query_one("#status").render())
        async with serving(make_gateway().asgi_app(), port) as url:
            second = await browsers().connect(url)
            new_id = await second.start()
            await until(lambda: new_id in app.model.sessions and app.model.connected, timeout=15, pause=wait)
            assert app.model.sessions[old_id].ended is not None  # resynced: the old session is gone
            assert app.model.sessions[new_id].ended is None
            await second.close()


async def test_monitor_requires_the_admin_token(make_gateway: Any) -> None:
    gw = make_gateway(admin_token="adm1n")
    async with serving(gw.asgi_app()) as url:
        client = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(url, namespaces=["/monitor"], transports=["websocket"])
        if client.eio.http is not None:
            await client.eio.http.close()
        ok = socketio.AsyncClient(reconnection=False)
        got: list[Any] = []
        ok.on("sessions", lambda data: got.append(data), namespace="/monitor")
        await ok.connect(url, namespaces=["/monitor"], transports=["websocket"], auth={"token": "adm1n"})
        await until(lambda: got)
        assert got[0] == {"sessions": []}
        await ok.disconnect()


async def _first_audio_latency(browser: Browser, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        browser.events.clear()
        started = time.monotonic()
        await browser.emit("text_input", {"text": "hello"})
        await browser.wait_for("audio_delta")
        latencies.append((time.monotonic() - started) * 1000)
        await browser.wait_for("response_complete")
    return latencies


async def test_a_monitor_that_never_reads_does_not_slow_sessions(make_gateway: Any, browsers: Any) -> None:
    """A monitor stops reading: it is skipped (the gateway's writes to it block after a few KB:
    small kernel buffers, as on a slow link), no session waits, and once it reads again it
    gets a full resync."""
    gw = make_gateway()
    async with serving(gw.asgi_app(), send_buffer=8192) as url:
        talker = await browsers().connect(url)
        await talker.start()
        baseline = await _first_audio_latency(talker, 5)
        # a monitor on a raw engine.io socket with a tiny receive buffer, that stops reading
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        stuck = await connect(f"ws://{host}:{port}/socket.io/?EIO=4&transport=websocket", sock=sock,
                              max_queue=1, compression=None)
        try:
            await stuck.recv()  # engine.io open packet
            await stuck.send("40/monitor,")
            await until(lambda: gw.monitor.watchers)
            session_id = next(iter(gw.sessions.values())).id
            await stuck.send("42/monitor," + json.dumps(["select", {"session_id": session_id}]))
            # from here on it does not read; the talker keeps talking and the monitor is fed
            with_stuck: list[float] = []
            while len(with_stuck) < 60 and gw.monitor.skipped < 20:  # until it has been skipped for 2 s
                with_stuck += await _first_audio_latency(talker, 5)
            assert gw.monitor.skipped >= 20, with_stuck  # its queue backed up and it was skipped
            assert statistics.median(with_stuck) < statistics.median(baseline) * 2 + 50, (baseline, with_stuck)
            assert not talker.of("error")
            skipped = gw.monitor.skipped
            # it reads again: the backlog drains, then a full picture replaces what it missed
            resynced = False
            while not resynced:
                packet = await asyncio.wait_for(stuck.recv(), 10)
                if packet == "2":
                    await stuck.send("3")  # engine.io ping
                resynced = str(packet).startswith('42/monitor,["sessions",') and gw.monitor.skipped >= skipped
            assert json.loads(str(packet).split(",", 1)[1])[1]["sessions"][0]["session_id"] == session_id
        finally:
            stuck.transport.abort()
