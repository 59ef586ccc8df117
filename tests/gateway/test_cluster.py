"""Multi-node serve on a real Redis: two gateway processes, actions and monitoring across
nodes, a Redis outage that local audio does not notice, and what a program following another
node's session is told when that node dies or Redis restarts; why a session left the registry,
decided without Redis (``Departures``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import socketio

from voicerelay.gateway.cluster import Departures

from ..conftest import read_recording, room_noise
from .conftest import Browser

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([REDIS or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.1):
                return
            import time

            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------- without Redis


def test_a_session_that_leaves_the_registry_ended_or_was_lost_with_its_node() -> None:
    d = Departures(grace_s=7)
    one = {"s1": ("b", "boot1")}
    assert d.update(0, one, {}, {"b": "boot1"}, outage=False) == [("s1", "b", "ended")]  # b said so itself
    assert d.update(0, one, {}, {"b": "boot2"}, outage=False) == [("s1", "b", "node")]  # b restarted
    assert d.update(0, one, {}, {}, outage=False) == [("s1", "b", "node")]  # b's keys expired: it stopped
    assert d.update(0, one, {}, {"b": "boot1"}, outage=True) == [("s1", "b", "outage")]  # its end was lost
    assert d.update(0, one, one, {"b": "boot1"}, outage=False) == []


def test_just_after_redis_comes_back_a_missing_node_is_waited_for() -> None:
    """Redis restarted (its data gone) or was down: until the nodes registered again, a node
    missing from it is not taken for dead."""
    one = {"s1": ("b", "boot1")}
    back = Departures(grace_s=7)
    back.redis_back(10)
    assert back.update(10, one, {}, {}, outage=True) == []  # b has not registered again yet
    assert back.update(11, {}, one, {"b": "boot1"}, outage=False) == []  # it did, with the session: nothing left
    assert back.update(12, one, one, {"b": "boot1"}, outage=False) == []
    ended = Departures(grace_s=7)
    ended.redis_back(10)
    assert ended.update(10, one, {}, {}, outage=True) == []
    assert ended.update(11, {}, {}, {"b": "boot1"}, outage=False) == [("s1", "b", "outage")]  # ended meanwhile
    gone = Departures(grace_s=7)
    gone.redis_back(10)
    assert gone.update(10, one, {}, {}, outage=True) == []
    assert gone.update(16, {}, {}, {}, outage=False) == []
    assert gone.update(17.5, {}, {}, {}, outage=False) == [("s1", "b", "node")]  # never came back


# ------------------------------------------------------------------------------- real nodes


@contextlib.asynccontextmanager
async def node(name: str, redis_url: str, handle: dict[str, Any] | None = None) -> AsyncIterator[str]:
    """``voicerelay serve --redis`` as a subprocess; yields its URL (``handle["proc"]``: the process)."""
    port = free_port()
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicerelay", "serve", "--port", str(port), "--redis", redis_url, "--node-id", name,
        "--log-level", "warning", stderr=asyncio.subprocess.DEVNULL, env=env)
    if handle is not None:
        handle["proc"] = proc
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(30):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed by the test
            proc.terminate()
        await proc.wait()


async def health(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:
        return (await http.get("/health")).json()


async def until_health(url: str, predicate: Any, timeout: float = 15.0) -> None:
    async def check() -> bool:
        return bool(predicate(await health(url)))

    await eventually(check, timeout)


async def eventually(check: Any, timeout: float = 15.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.1)


async def test_two_nodes_share_sessions_and_survive_a_redis_outage(redis_server: RedisServer) -> None:
    async with node("node-a", redis_server.url) as url_a, node("node-b", redis_server.url) as url_b:
        browser_b = await Browser().connect(url_b)
        browser_a = await Browser().connect(url_a)
        program = await Browser().connect(url_a)  # a program on node A acting on node B's session
        monitor = socketio.AsyncClient(reconnection=False)
        seen: dict[str, dict[str, Any]] = {}

        def remember(data: Any) -> None:
            for state in data.get("sessions", [data]):
                seen[state["session_id"]] = state

        monitor.on("sessions", remember, namespace="/monitor")
        monitor.on("session_update", remember, namespace="/monitor")
        try:
            session_b = await browser_b.start()
            session_a = await browser_a.start()
            await until_health(url_a, lambda h: h["cluster"]["remote_sessions"] == 1)
            # a GatewayClient on node A acts on the session on node B, and its replies come back
            from voicerelay.client import GatewayClient

            async with GatewayClient(url_a, client_id="ops-bot") as client:
                replies: list[dict[str, Any]] = []
                client.on("ai_response", replies.append)
                attached = await client.attach(session_b)
                assert attached.followed and attached.server["node"] == "node-b"
                await client.send_text("what is your name", session_id=session_b)
                await eventually(lambda: _async(replies))
                assert replies[0]["session_id"] == session_b
                assert replies[0]["response"] == "My name is voicerelay. I am an offline test assistant."
                reply = await browser_b.wait_for("ai_response")  # the browser on B heard it too
                assert reply["response"] == replies[0]["response"]
            # inspect on node A lists both nodes' sessions
            await monitor.connect(url_a, namespaces=["/monitor"], transports=["websocket"])
            await eventually(lambda: _async({session_a, session_b} <= set(seen)))
            assert {seen[session_a]["node"], seen[session_b]["node"]} == {"node-a", "node-b"}
            # and from node B too
            monitor_b = socketio.AsyncClient(reconnection=False)
            seen_b: dict[str, Any] = {}
            monitor_b.on("sessions", lambda d: seen_b.update({x["session_id"]: x for x in d["sessions"]}),
                         namespace="/monitor")
            monitor_b.on("session_update", lambda d: seen_b.update({d["session_id"]: d}), namespace="/monitor")
            await monitor_b.connect(url_b, namespaces=["/monitor"], transports=["websocket"])
            await eventually(lambda: _async({session_a, session_b} <= set(seen_b)))
            await monitor_b.disconnect()

            # Redis goes away: local audio keeps flowing, cross-node actions report degraded
            redis_server.stop()
            await until_health(url_b, lambda h: h["status"] == "degraded")
            browser_b.events.clear()
            pcm = np.concatenate((read_recording("how_are_you"), room_noise(800)))
            for i in range(0, pcm.size, 1200):
                await browser_b.emit("audio_data", {"audio": base64.b64encode(pcm[i:i + 1200].tobytes()).decode()})
            reply = await browser_b.wait_for("ai_response")
            assert reply == {"transcript": "how are you today", "response": "I am fine, thank you for asking.",
                             "session_id": session_b}
            assert browser_b.of("audio_delta")
            program.events.clear()
            await until_health(url_a, lambda h: h["status"] == "degraded")
            await program.emit("text_input", {"text": "hello", "session_id": session_b})
            assert (await program.wait_for("error"))["code"] == "cluster_degraded"

            # Redis is back: cross-node actions work again by themselves
            redis_server.start()
            await until_health(url_a, lambda h: h["status"] == "ok", timeout=20)
            await until_health(url_b, lambda h: h["status"] == "ok", timeout=20)
            program.events.clear()

            async def acted() -> bool:
                await program.emit("text_input", {"text": "thanks", "session_id": session_b})
                with contextlib.suppress(TimeoutError):
                    await program.wait_for("ai_response", timeout=3)
                    return True
                return False

            await eventually(acted, timeout=25)
        finally:
            await monitor.disconnect()
            for browser in (browser_a, browser_b, program):
                await browser.close()


async def _async(value: Any) -> Any:
    return value


def test_redis_url_must_be_usable(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "voicerelay", "serve", "--redis", "not-a-url", "--port", "0"],
                            capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2 and "--redis" in result.stderr


@contextlib.asynccontextmanager
async def logged_node(name: str, redis_url: str, log: Path, wait_ok: bool = True) -> AsyncIterator[str]:
    """``voicerelay serve --redis`` as a subprocess whose stderr goes to ``log``; yields its URL
    once it answers /health (its first answer: nothing was asked of it before)."""
    port = free_port()
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    env.pop("OPENAI_API_KEY", None)
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicerelay", "serve", "--port", str(port), "--redis", redis_url, "--node-id", name,
            "--log-level", "warning", stderr=err, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(30):
            while True:
                assert proc.returncode is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        await proc.wait()


def redis_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "redis" in line.lower()]


async def test_a_dead_redis_at_startup_is_one_line_and_health_says_so_at_once(tmp_path: Path) -> None:
    """Item 18: serve starts degraded (documented), says so in one line, /health is degraded from
    its first answer, each Redis error is logged once (not twice in two formats, not per retry),
    and the node recovers by itself when Redis comes."""
    redis = RedisServer(tmp_path)  # not started: nothing listens on its port
    log = tmp_path / "serve.log"
    async with logged_node("node-a", redis.url, log) as url:
        first = await health(url)
        assert first["status"] == "degraded" and first["cluster"]["redis"] == "degraded", first
        assert "ConnectionError" in first["cluster"]["error"]
        browser = await Browser().connect(url)  # a browser on a degraded node: its session works
        try:
            await browser.start()
            await asyncio.sleep(3.5)  # python-socketio retries its subscription meanwhile (1 s, 2 s, ...)
            assert (await health(url))["status"] == "degraded"
            lines = redis_lines(log)
            assert len(lines) == 1, lines
            assert "cluster degraded" in lines[0] and redis.url in lines[0] and "start-up" in lines[0], lines
            redis.start()
            try:
                await until_health(url, lambda h: h["status"] == "ok", timeout=20)
                lines = redis_lines(log)
                assert len(lines) == 2 and "cluster recovered" in lines[1], lines
            finally:
                redis.stop()
        finally:
            await browser.close()
    help_text = subprocess.run([sys.executable, "-m", "voicerelay", "serve", "--help"], capture_output=True, text=True,
                               timeout=30, env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}).stdout
    assert "starts degraded" in help_text  # the choice is documented where a user looks


async def test_an_outage_is_two_lines_and_ok_means_reachable_again(redis_server: RedisServer, tmp_path: Path) -> None:
    """Item 18b: a session followed from another node logs one line when Redis goes and one when
    it is back, not one per event; once both nodes say ok an action from the other node reaches
    the session at the first try; errors about a followed session name it, so GatewayClient
    gives them to that session's handlers."""
    from voicerelay.client import GatewayClient

    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    async with logged_node("node-a", redis_server.url, log_a) as url_a, \
            logged_node("node-b", redis_server.url, log_b) as url_b:
        await until_health(url_a, lambda h: h["status"] == "ok")
        await until_health(url_b, lambda h: h["status"] == "ok")
        browser_b = await Browser().connect(url_b)
        program = await Browser().connect(url_a)
        try:
            session_b = await browser_b.start()
            await until_health(url_a, lambda h: h["cluster"]["remote_sessions"] == 1)  # B's heartbeat registered it
            async with GatewayClient(url_a, client_id="ops-bot") as client:
                errors: list[dict[str, Any]] = []
                client.on("error", errors.append)
                await client.attach(session_b)  # node B now also emits this session's events to node A
                redis_server.stop()
                await until_health(url_b, lambda h: h["status"] == "degraded")
                await until_health(url_a, lambda h: h["status"] == "degraded")
                for text in ("hello", "what is your name"):  # text turns: dozens of events each, all followed
                    browser_b.events.clear()
                    await browser_b.emit("text_input", {"text": text})
                    await browser_b.wait_for("response_complete")
                await client.send_text("hello", session_id=session_b)
                await eventually(lambda: _async(errors))
                assert errors[0]["code"] == "cluster_degraded" and errors[0]["session_id"] == session_b, errors
                await program.emit("text_input", {"text": "hello", "session_id": "vr_nosuchsession"})
                error = await program.wait_for("error")
                assert error["session_id"] == "vr_nosuchsession", error

                redis_server.start()
                async with asyncio.timeout(25):  # both ok: checked as often as a script would
                    while not all([(await health(u))["status"] == "ok" for u in (url_a, url_b)]):
                        await asyncio.sleep(0.02)
                program.events.clear()
                await program.emit("text_input", {"text": "thanks", "session_id": session_b})  # the first try
                reply = await program.wait_for("ai_response", timeout=10)
                assert not program.of("error"), program.events
                assert reply["session_id"] == session_b
        finally:
            for browser in (browser_b, program):
                await browser.close()
    for log in (log_a, log_b):
        text = log.read_text()
        assert "Cannot publish" not in text and "Cannot receive" not in text, text
        lines = redis_lines(log)
        assert len(lines) == 2, lines
        assert "cluster degraded" in lines[0] and "cluster recovered" in lines[1], lines


async def test_a_program_following_a_session_of_a_node_that_dies_is_told_it_is_lost(redis_server: RedisServer) -> None:
    """A program on node A follows a session of node B and only listens. Redis restarts (its data
    gone): the program is told the session's events cannot arrive, then sent its state again, and
    the session is not taken for lost. Node B is SIGKILLed: the program is told the session was lost
    with its node (a coded error, then session_ended), where before it heard nothing, ever; the
    GatewayClient mirror of the session ends."""
    from voicerelay.client import GatewayClient

    b: dict[str, Any] = {}
    async with node("node-a", redis_server.url) as url_a, node("node-b", redis_server.url, b) as url_b:
        browser_b = await Browser().connect(url_b)
        program = await Browser().connect(url_a)
        try:
            session_b = await browser_b.start()
            await until_health(url_a, lambda h: h["cluster"]["remote_sessions"] == 1)
            await program.emit("get_state", {"session_id": session_b})  # follows it from now on
            assert (await program.wait_for("session_state"))["session_id"] == session_b
            async with GatewayClient(url_a, client_id="ops-bot") as client:
                ended: list[dict[str, Any]] = []
                client.on("session_ended", ended.append)
                await client.attach(session_b)

                program.events.clear()
                redis_server.stop()
                told = await program.wait_for("error", lambda d: d["code"] == "cluster_degraded")
                assert told["session_id"] == session_b and "cannot reach you" in told["message"], told
                redis_server.start()
                try:
                    state = await program.wait_for("session_state", timeout=30)  # sent again once Redis is back
                except TimeoutError:
                    raise AssertionError(program.events) from None
                assert state["session_id"] == session_b and state["chat_active"] is True
                await until_health(url_a, lambda h: h["status"] == "ok", timeout=20)
                assert not program.of("session_ended") and not ended

                program.events.clear()
                b["proc"].kill()
                error = await program.wait_for("error", lambda d: d["code"] == "node_lost", timeout=20)
                assert error["session_id"] == session_b and "node-b" in error["message"], error
                assert (await program.wait_for("session_ended"))["status"] == "node_lost"
                await eventually(lambda: _async(ended))
                assert ended[0]["session_id"] == session_b and ended[0]["status"] == "node_lost", ended
        finally:
            for browser in (browser_b, program):
                await browser.close()
