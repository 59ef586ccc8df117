"""``voicerelay inspect`` against a real gateway (the ``/monitor`` namespace itself:
``tests/gateway/test_monitor.py``)."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

from voicerelay.gateway.server import Gateway
from voicerelay.tui.events_view import EventLog
from voicerelay.tui.inspect_app import InspectApp

from ..gateway.conftest import serving


async def until(predicate: Any, timeout: float = 10.0, pause: Any = None) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await (pause() if pause is not None else asyncio.sleep(0.05))


async def test_inspect_lists_live_sessions_and_one_ending(gateway: tuple[Gateway, str], browsers: Any) -> None:
    gw, url = gateway
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
        # the cost column: what the gateway's state says the session cost, an estimate here
        [talking] = [s for s in gw.sessions.values() if s.id == first_id]
        await until(lambda: table.get_cell(first_id, "cost") == f"~${talking.state()['cost']['usd']:.4f}" != "~$0.0000",
                    pause=lambda: pilot.pause(0.05))
        assert table.get_cell(second_id, "cost") == "~$0.0000"  # no turn yet
        assert re.fullmatch(r"\d+:\d\d", table.get_cell(first_id, "time left"))
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
        assert gw.monitor.skipped == 0  # inspect acknowledged every batch: it never counted as stuck


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
