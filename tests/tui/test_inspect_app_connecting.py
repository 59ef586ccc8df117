"""``voicerelay inspect`` at its edges: quitting, a gateway it cannot reach, the session table.

The command runs in a real terminal (tmux) against a real gateway; the app runs under Pilot
against real gateways and a real HTTP server that is not one.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from textual.geometry import Region
from textual.widgets import DataTable, Static

from voicerelay.gateway.server import Gateway
from voicerelay.tui.inspect_app import InspectApp

from ..conftest import read_recording
from ..gateway.conftest import Browser, serving
from . import terminal

needs_tmux = pytest.mark.skipif(not terminal.available(), reason="needs tmux: apt-get install tmux")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command_env() -> dict[str, str]:
    env = {**os.environ}
    for key in ("OPENAI_API_KEY", "VOICERELAY_ADMIN_TOKEN"):
        env.pop(key, None)
    return env


def inspect_in_a_terminal(url: str, *args: str) -> terminal.Terminal:
    return terminal.Terminal([sys.executable, "-m", "voicerelay", "inspect", url, *args], command_env())


async def until(predicate: Any, pilot: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await pilot.pause(0.05)


def status(app: InspectApp) -> str:
    return str(app.query_one("#status", Static).render())


async def plain_http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A web server that is not a voicerelay gateway: 404 for everything."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"not found"})


# ----------------------------------------------------------------------------- 15: quitting


@needs_tmux
async def test_quitting_after_watching_is_clean_and_exits_0(gateway: tuple[Gateway, str], browsers: Any) -> None:
    _, url = gateway
    browser = await browsers().connect(url)
    session_id = await browser.start()
    with inspect_in_a_terminal(url) as term:
        await asyncio.to_thread(term.wait_for, session_id)
        await asyncio.to_thread(term.wait_for, "connected")
        term.keys("q")
        code = await asyncio.to_thread(term.exit_code)
        left = term.after_exit()
    assert code == 0, left
    assert left.strip() == "", left  # no traceback (NoMatches '#status'), nothing at all


# ----------------------------------------------------------------------------- 16: cannot reach


async def test_a_refused_url_says_so_and_connects_once_the_gateway_is_up(make_gateway: Any) -> None:
    port = free_port()
    app = InspectApp(f"http://127.0.0.1:{port}")
    async with app.run_test(size=(160, 30)) as pilot:
        await until(lambda: "connection refused" in status(app), pilot, timeout=4)
        assert "retrying" in status(app)
        assert app.failure is not None and app.failure.exit_code == 1
        async with serving(make_gateway().asgi_app(), port):  # it kept trying in the background
            await until(lambda: app.model.connected, pilot, timeout=10)
            assert "connected" in status(app) and "refused" not in status(app)
            assert app.failure is None


async def test_a_server_that_is_not_a_gateway_is_named_so() -> None:
    async with serving(plain_http) as url:
        app = InspectApp(url)
        async with app.run_test(size=(160, 30)) as pilot:
            await until(lambda: "not a voicerelay gateway" in status(app), pilot, timeout=4)
            assert "HTTP 404" in status(app)


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_a_missing_or_wrong_admin_token_is_named_so(make_gateway: Any, token: str | None) -> None:
    async with serving(make_gateway(admin_token="adm1n").asgi_app()) as url:
        app = InspectApp(url, token)
        async with app.run_test(size=(200, 30)) as pilot:
            said = "requires an admin token" if token is None else "rejected the admin token"
            await until(lambda: said in status(app), pilot, timeout=4)
            assert "--token" in status(app) and "retrying" in status(app)
            assert type(app.failure).__name__ == "AuthenticationError"


@needs_tmux
@pytest.mark.parametrize("case", ["refused", "token"])
async def test_quitting_without_ever_connecting_is_one_line_and_exit_1(make_gateway: Any, case: str) -> None:
    async def run(url: str, *args: str) -> tuple[int, str, str]:
        with inspect_in_a_terminal(url, *args) as term:
            shown = (await asyncio.to_thread(term.wait_for, r"refused|rejected", 6))[0]
            term.keys("q")
            return await asyncio.to_thread(term.exit_code), shown, term.after_exit()

    if case == "refused":
        code, shown, left = await run(f"http://127.0.0.1:{free_port()}")
        assert shown == "refused"
    else:
        async with serving(make_gateway(admin_token="adm1n").asgi_app()) as url:
            code, shown, left = await run(url, "--token", "wrong")
        assert shown == "rejected"
    assert code == 1, left
    lines = left.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voicerelay: error: never connected:"), left
    assert shown in lines[0]


def test_inspect_help_documents_its_exit_codes() -> None:
    result = subprocess.run([sys.executable, "-m", "voicerelay", "inspect", "--help"], capture_output=True,
                            text=True, env={**command_env(), "COLUMNS": "400"}, timeout=30, check=True)
    assert "Exit codes: 0 quit after watching; 1 quit without ever reaching the gateway" in result.stdout
    assert "2 a bad URL" in result.stdout


# ----------------------------------------------------------------------------- 17: the table


def table_text(table: DataTable[Any]) -> list[str]:
    """What the table draws, line by line."""
    width, height = table.size
    return [strip.text for strip in table.render_lines(Region(0, 0, width, height))]


async def test_the_state_shows_whole_and_a_single_node_shows_a_dash(gateway: tuple[Gateway, str],
                                                                     browsers: Any) -> None:
    _, url = gateway
    browser = await browsers().connect(url)
    session_id = await browser.start()
    app = InspectApp(url)
    async with app.run_test(size=(200, 30)) as pilot:
        table = app.query_one("#sessions", DataTable)
        await until(lambda: session_id in table.rows, pilot)
        await pilot.pause(0.3)  # drawn as "listening" first
        # half an utterance: the gateway's VAD hears speech start and nothing after it
        speech = read_recording("what_can_you_do")
        loud = int(np.argmax(np.abs(speech) > 2000))
        half = speech[: loud + 24_000 // 2]
        for chunk in np.array_split(half, max(1, len(half) // 2400)):
            await browser.emit("audio_data", {"audio": base64.b64encode(chunk.tobytes()).decode()})
        await until(lambda: app.model.sessions[session_id].state["ai_state"] == "user_speaking", pilot)
        await pilot.pause(0.3)
        header, *rows = table_text(table)
        assert "node" in header.split(), header
        row = next(line for line in rows if session_id in line)
        cells = row.split()
        assert cells[:2] == [session_id, "-"], row
        assert "user_speaking" in cells, row  # whole, not cut to the width "listening" had


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
async def test_a_cluster_shows_each_session_with_its_node(make_gateway: Any, tmp_path: Any) -> None:
    from ..gateway.test_cluster import RedisServer

    redis = RedisServer(tmp_path)
    redis.start()
    try:
        node_a = make_gateway(redis_url=redis.url, node_id="node-a")
        node_b = make_gateway(redis_url=redis.url, node_id="node-b")
        async with serving(node_a.asgi_app()) as url_a, serving(node_b.asgi_app()) as url_b:
            on_a, on_b = await Browser().connect(url_a), await Browser().connect(url_b)
            id_a, id_b = await on_a.start(), await on_b.start()
            app = InspectApp(url_a)
            async with app.run_test(size=(200, 30)) as pilot:
                table = app.query_one("#sessions", DataTable)
                await until(lambda: id_a in table.rows and id_b in table.rows, pilot, timeout=15)
                await pilot.pause(0.2)
                rows = table_text(table)[1:]
                assert next(r for r in rows if id_a in r).split()[1] == "node-a", rows
                assert next(r for r in rows if id_b in r).split()[1] == "node-b", rows
            for browser in (on_a, on_b):
                await browser.close()
    finally:
        redis.stop()
