"""``gateway/monitor.py``: the ``/monitor`` namespace, in memory (a stand-in for python-socketio's
server) and against a real gateway (a monitor that stops reading, the admin token)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import socketio

from voicerelay.gateway import monitor as monitor_module
from voicerelay.gateway.monitor import EVENT_LOG, MAX_UNACKED, NAMESPACE, TRANSCRIPT_LOG, Monitor, SessionLog
from voicerelay.gateway.registry import SessionRegistry

from .conftest import Browser, serving, stalled_connection


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------- in memory


def test_a_session_log_keeps_the_newest_lines_and_elides_audio() -> None:
    log = SessionLog()
    for i in range(TRANSCRIPT_LOG + 5):
        log.add_transcript("user", f"line {i}")
    for _ in range(EVENT_LOG + 5):
        log.add_event("client", {"type": "input_audio_buffer.append", "audio": "A" * 5000})
    everything = log.since(0)
    assert len(everything["transcripts"]) == TRANSCRIPT_LOG
    assert everything["transcripts"][0]["text"] == "line 5"
    assert len(everything["events"]) == EVENT_LOG
    assert everything["events"][0]["event"]["audio"] == "<5000 chars of base64>"
    log.add_transcript("assistant", "the newest")
    assert log.since(log.seq - 1) == {"transcripts": [log.transcripts[-1][1]], "events": []}
    assert log.since(log.seq) == {"transcripts": [], "events": []}


class FakeServer:
    """Stands in for ``socketio.AsyncServer``: keeps the handlers, records what is emitted and
    holds the ack callbacks until the test acknowledges them (as a reading client would)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.sent: list[tuple[str, str, Any]] = []  # (to, event, data)
        self.acks: dict[str, list[Callable[..., None]]] = {}  # to -> the acks it owes

    def on(self, event: str, handler: Any, namespace: str | None = None) -> None:
        assert namespace == NAMESPACE
        self.handlers[event] = handler

    async def emit(self, event: str, data: Any, to: str | None = None, namespace: str | None = None,
                   ignore_queue: bool = False, callback: Callable[..., None] | None = None) -> None:
        assert namespace == NAMESPACE and to is not None
        assert ignore_queue, "a monitor is connected to this node: its batches never go through Redis"
        self.sent.append((to, event, data))
        if callback is not None:
            self.acks.setdefault(to, []).append(callback)

    def ack(self, to: str) -> None:
        """``to`` read everything it was sent: it acknowledges every batch."""
        for ack in self.acks.pop(to, []):
            ack()

    def events(self, to: str) -> list[str]:
        return [event for sid, event, _ in self.sent if sid == to]


class FakeSession:
    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.sid = session_id.removeprefix("vr_")
        self.log = SessionLog()
        self.version = 0

    def state(self) -> dict[str, Any]:
        return {"session_id": self.id, "version": self.version}


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_module, "MAX_RATE", 200)  # ticks of 5 ms


async def test_a_monitor_gets_the_picture_then_coalesced_updates_and_endings(fast: None) -> None:
    sio, registry = FakeServer(), SessionRegistry[FakeSession]()
    monitor = Monitor(sio, registry, admin_token=None)  # type: ignore[arg-type]
    session = FakeSession("vr_a")
    registry.add(session)
    await sio.handlers["connect"]("m1", {})
    try:
        await until(lambda: sio.sent)
        assert sio.sent[0] == ("m1", "sessions", {"sessions": [{"session_id": "vr_a", "version": 0}]})
        for version in (1, 2, 3):  # three changes within one tick: one update, the newest
            session.version = version
            monitor.touch(session)
        await until(lambda: "session_update" in sio.events("m1"))
        assert [d for _, e, d in sio.sent if e == "session_update"] == [{"session_id": "vr_a", "version": 3}]
        registry.remove(session)
        monitor.closed(session, "ended")
        await until(lambda: "session_closed" in sio.events("m1"))
        assert sio.sent[-1] == ("m1", "session_closed", {"session_id": "vr_a", "status": "ended"})
        assert monitor.skipped == 0
    finally:
        await monitor.close()


async def test_a_selected_session_sends_only_what_is_new(fast: None) -> None:
    sio, registry = FakeServer(), SessionRegistry[FakeSession]()
    monitor = Monitor(sio, registry, admin_token=None)  # type: ignore[arg-type]
    session = FakeSession("vr_a")
    registry.add(session)
    session.log.add_transcript("user", "hello")
    await sio.handlers["connect"]("m1", {})
    try:
        await sio.handlers["select"]("m1", {"session_id": "vr_a"})
        await until(lambda: "session_detail" in sio.events("m1"))
        details = lambda: [d for _, e, d in sio.sent if e == "session_detail"]  # noqa: E731
        assert [t["text"] for t in details()[0]["transcripts"]] == ["hello"]
        session.log.add_event("server", {"type": "response.done"})
        await until(lambda: len(details()) == 2)
        assert details()[1]["transcripts"] == []
        assert [e["event"]["type"] for e in details()[1]["events"]] == ["response.done"]
        await asyncio.sleep(0.05)  # nothing new: nothing more
        assert len(details()) == 2
    finally:
        await monitor.close()


async def test_a_monitor_that_stops_acknowledging_is_skipped_then_resynced(fast: None) -> None:
    sio, registry = FakeServer(), SessionRegistry[FakeSession]()
    monitor = Monitor(sio, registry, admin_token=None)  # type: ignore[arg-type]
    session = FakeSession("vr_a")
    registry.add(session)
    await sio.handlers["connect"]("reader", {})
    await sio.handlers["connect"]("stuck", {})
    try:
        # every tick has news; "reader" acknowledges each batch, "stuck" never does
        async with asyncio.timeout(10):
            while monitor.skipped < 5:
                session.version += 1
                monitor.touch(session)
                await asyncio.sleep(0.005)
                sio.ack("reader")
        sent_to_stuck = sio.events("stuck")
        assert len(sio.acks["stuck"]) == MAX_UNACKED + 1  # the batches it was sent, then nothing
        to_reader = len(sio.events("reader"))
        for _ in range(10):  # more news: the reader gets it, the stuck one still nothing
            session.version += 1
            monitor.touch(session)
            await asyncio.sleep(0.01)
            sio.ack("reader")
        assert len(sio.events("reader")) > to_reader
        assert sio.events("stuck") == sent_to_stuck
        # it reads again (acknowledges what it got): the next batch is the whole picture
        sio.ack("stuck")
        before = len(sent_to_stuck)
        await until(lambda: len(sio.events("stuck")) > before)
        assert sio.events("stuck")[before] == "sessions"
    finally:
        await monitor.close()


# ------------------------------------------------------------------------------- a real gateway


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


async def test_a_python_socketio_monitor_acknowledges_and_is_never_skipped(make_gateway: Any, browsers: Any) -> None:
    """python-socketio's client acknowledges each batch when its handler returns (as ``voicerelay
    inspect``'s does): a monitor that reads is never taken for one that stopped."""
    gw = make_gateway()
    async with serving(gw.asgi_app()) as url:
        talker = await browsers().connect(url)
        session_id = await talker.start()
        watcher = socketio.AsyncClient(reconnection=False)
        got: list[str] = []
        for name in ("sessions", "session_update", "session_detail"):
            watcher.on(name, lambda data, name=name: got.append(name), namespace="/monitor")
        await watcher.connect(url, namespaces=["/monitor"], transports=["websocket"])
        try:
            await watcher.emit("select", {"session_id": session_id}, namespace="/monitor")
            started = time.monotonic()
            while time.monotonic() - started < 2.5:  # > MAX_UNACKED batches at MAX_RATE a second
                await _first_audio_latency(talker, 1)
            assert got.count("session_update") + got.count("session_detail") > MAX_UNACKED * 2, got
            assert gw.monitor.skipped == 0
            assert got.count("sessions") == 1  # never resynced: it was never skipped
        finally:
            await watcher.disconnect()


def _monitor_event(packet: str) -> tuple[int | None, list[Any]] | None:
    """A Socket.IO EVENT packet on /monitor as ``(ack id or None, [name, data])``; else None."""
    prefix = "42/monitor,"
    if not packet.startswith(prefix):
        return None
    body = packet[len(prefix):]
    digits = len(body) - len(body.lstrip("0123456789"))
    return (int(body[:digits]) if digits else None), json.loads(body[digits:])


async def test_a_monitor_that_never_reads_does_not_slow_sessions(make_gateway: Any, browsers: Any) -> None:
    """A monitor stops reading: it no longer acknowledges the batches and is skipped (and the
    gateway's writes to it block after a few KB: small kernel buffers, as on a slow link), no
    session waits, and once it reads again (and acknowledges, as every Socket.IO client does) it
    gets a full resync."""
    gw = make_gateway()
    async with serving(gw.asgi_app(), send_buffer=8192) as url:
        talker = await browsers().connect(url)
        await talker.start()
        baseline = await _first_audio_latency(talker, 5)
        # a monitor on a raw engine.io socket with a tiny receive buffer, that stops reading
        stuck = await stalled_connection(url)
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
            assert gw.monitor.skipped >= 20, with_stuck  # it stopped acknowledging and was skipped
            assert statistics.median(with_stuck) < statistics.median(baseline) * 2 + 50, (baseline, with_stuck)
            assert not talker.of("error")
            # it reads again, acknowledging each batch: the backlog drains, then a full picture
            # replaces what it missed (the first "sessions" it reads is the one sent on connect)
            pictures = 0
            while pictures < 2:
                packet = str(await asyncio.wait_for(stuck.recv(), 10))
                if packet == "2":
                    await stuck.send("3")  # engine.io ping
                event = _monitor_event(packet)
                if event is None:
                    continue
                ack_id, (name, data) = event
                if ack_id is not None:
                    await stuck.send(f"43/monitor,{ack_id}[]")  # what a client sends once its handler returned
                if name == "sessions":
                    pictures += 1
            assert data["sessions"][0]["session_id"] == session_id
        finally:
            stuck.transport.abort()
