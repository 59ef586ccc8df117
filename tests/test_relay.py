"""Relay's send path against a real loopback WebSocket upstream that records what it receives."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from voicerelay.protocol.config import RealtimeConfig
from voicerelay.protocol.lifetime import append_ms
from voicerelay.protocol.session import PlayAudio
from voicerelay.relay import Relay
from voicerelay.upstream import UpstreamSpec


def chunk(seq: int, ms: int = 40) -> str:
    """``ms`` of PCM16 whose first two bytes number it."""
    return base64.b64encode(seq.to_bytes(2, "little") + b"\0" * (ms * 48 - 2)).decode()


def seq_of(event: dict[str, Any]) -> int:
    return int.from_bytes(base64.b64decode(event["audio"][:4])[:2], "little")


class Upstream:
    """Answers session.update; echoes each append as a reply delta when ``echo``; records every
    connection's events; drops a connection after ``drop_after`` appends (once)."""

    def __init__(self) -> None:
        self.connections: list[list[dict[str, Any]]] = []
        self.echo = False
        self.drop_after: int | None = None
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        got: list[dict[str, Any]] = []
        self.connections.append(got)
        await ws.send(json.dumps({"type": "session.created", "session": {"id": "s"}}))
        async for message in ws:
            event = json.loads(message)
            got.append(event)
            if event["type"] == "session.update":
                await ws.send(json.dumps({"type": "session.updated", "session": event.get("session") or {}}))
            elif event["type"] == "input_audio_buffer.append":
                appends = sum(e["type"] == "input_audio_buffer.append" for e in got)
                if self.drop_after is not None and appends >= self.drop_after:
                    self.drop_after = None
                    await ws.close(1011, "dropped by the test")
                    return
                if self.echo:
                    await ws.send(json.dumps({"type": "response.output_audio.delta", "response_id": "r",
                                              "item_id": "i", "delta": event["audio"]}))

    def appends(self, connection: int = -1) -> list[int]:
        return [seq_of(e) for e in self.connections[connection] if e["type"] == "input_audio_buffer.append"]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    async with serve(up.handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        up.url = f"ws://127.0.0.1:{port}/v1/realtime"
        yield up


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(relay.run())
    try:
        await relay.wait_ready(10)
        yield task
    finally:
        await relay.stop()
        await asyncio.wait_for(task, 10)


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def relay_for(upstream: Upstream, **kw: Any) -> Relay:
    return Relay(RealtimeConfig(), UpstreamSpec(upstream.url), **kw)


async def test_forwarded_audio_is_sent_by_the_callers_task_when_nothing_is_queued(upstream: Upstream) -> None:
    relay = relay_for(upstream)
    async with running(relay):
        await relay.forward_audio(chunk(1))
        # written before forward_audio returned: no sender task had to run
        assert relay.snapshot()["queued_events"] == 0 and relay.queued_audio_ms == 0
        await until(lambda: upstream.appends() == [1])
        assert upstream.connections[-1][-1]["audio"] == chunk(1)  # the caller's base64, as it is
        assert relay.session.audio_sent_ms == 40


async def test_the_resend_ledger_drops_forwarded_audio_as_it_counted_it(upstream: Upstream) -> None:
    relay = relay_for(upstream)
    padded = base64.b64encode(b"\x01\x00" * 961).decode()  # 1922 bytes: its base64 ends in "="
    assert padded.endswith("=")
    async with running(relay):
        for _ in range(500):  # 20 s: past the ledger's bound, so it drops the oldest as it goes
            await relay.forward_audio(padded)
        await until(lambda: len(upstream.appends()) == 500)
        held = len(relay.resend)
        assert 0 < held < 500
        assert relay.resend.ms == pytest.approx(held * append_ms({"audio": padded}))  # no drift per chunk


async def test_forwarded_audio_keeps_its_place_behind_queued_events(upstream: Upstream) -> None:
    relay = relay_for(upstream)
    async with running(relay):
        relay.send_audio_nowait(base64.b64decode(chunk(1)))  # queued: the sender task has not run yet
        relay.say("hello")
        await relay.forward_audio(chunk(2))  # must not overtake them
        await relay.forward_audio(chunk(3))
        await until(lambda: len(upstream.appends()) == 3)
        kinds = [e["type"] for e in upstream.connections[-1][1:]]
        assert kinds == ["input_audio_buffer.append", "response.create", "input_audio_buffer.append",
                         "input_audio_buffer.append"]
        assert upstream.appends() == [1, 2, 3]
        await relay.forward_audio(chunk(4))  # the queue is empty again: direct
        await until(lambda: upstream.appends() == [1, 2, 3, 4])
        assert relay.queued_audio_ms == 0


async def test_forwarded_audio_is_queued_and_dropped_like_send_audio_nowait(upstream: Upstream) -> None:
    relay = relay_for(upstream, max_queued_audio_ms=100)
    # not connected yet: queued up to the limit, then dropped and counted
    assert [await relay.forward_audio(chunk(i)) for i in range(4)] == [True, True, True, False]
    assert relay.queued_audio_ms == 120 and relay.dropped_audio_ms == 40
    with pytest.raises(ValueError, match="odd byte count"):
        await relay.forward_audio(base64.b64encode(b"\0\0\0").decode())
    async with running(relay):
        await until(lambda: upstream.appends() == [0, 1, 2])
        await until(lambda: relay.queued_audio_ms == 0)
        assert relay.snapshot()["dropped_audio_ms"] == 40


async def test_unanswered_audio_is_sent_again_after_a_dropped_connection(upstream: Upstream) -> None:
    upstream.drop_after = 3
    relay = relay_for(upstream)
    async with running(relay):
        for i in range(1, 4):
            await relay.forward_audio(chunk(i))
            await asyncio.sleep(0.01)
        await until(lambda: len(upstream.connections) == 2 and relay.ready)
        await relay.forward_audio(chunk(4))
        await until(lambda: upstream.appends() == [1, 2, 3, 4] or len(upstream.appends()) > 4)
        # the new connection is configured first, then gets the turn's audio again, in order
        assert upstream.connections[1][0]["type"] == "session.update"
        assert upstream.appends(0) == [1, 2, 3] and upstream.appends(1) == [1, 2, 3, 4]
        assert relay.queued_audio_ms == 0 and relay.connections == 2


async def test_flush_runs_in_the_reader_after_each_events_observers(upstream: Upstream) -> None:
    upstream.echo = True
    seen: list[int] = []
    flushed: list[int] = []  # how many deltas the observer had seen at each flush
    reader: list[asyncio.Task[Any] | None] = []

    async def flush() -> None:
        flushed.append(len(seen))
        reader.append(asyncio.current_task())

    relay = relay_for(upstream, flush=flush)
    follows: set[bool] = set()

    def observe(obs: Any) -> None:
        if isinstance(obs, PlayAudio):
            seen.append(seq_of({"audio": obs.audio_b64}))
            follows.add(relay.flush_follows)

    relay.subscribe(observe)
    async with running(relay):
        for i in range(1, 4):
            await relay.forward_audio(chunk(i))
        await until(lambda: seen == [1, 2, 3])
        await until(lambda: bool(flushed) and flushed[-1] == 3)
    # one flush per server event, each after the observers saw that event's effects
    assert flushed == sorted(flushed) and flushed[-3:] == [1, 2, 3]
    assert len({id(t) for t in reader}) == 1  # all in one task: the reader
    assert follows == {True} and not relay.flush_follows  # observers are told a flush follows


async def test_a_failing_flush_does_not_end_the_session(upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    upstream.echo = True
    calls = 0

    async def flush() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a front door's bug")

    relay = relay_for(upstream, flush=flush)
    async with running(relay) as task:
        await relay.forward_audio(chunk(1))
        await relay.forward_audio(chunk(2))
        await until(lambda: calls >= 3)
        assert not task.done() and relay.connections == 1
    assert "flush" in caplog.text and "a front door's bug" in caplog.text


async def test_audio_kept_for_resending_adds_no_objects_for_the_garbage_collector(upstream: Upstream) -> None:
    """Up to 15 s of unanswered audio per session is kept (all of it with manual turns); kept as
    GC-tracked objects it made the collector's full passes (which stop everything) long under load."""
    relay = Relay(RealtimeConfig(turn_detection_mode="disabled"), UpstreamSpec(upstream.url))
    async with running(relay):
        for i in range(20):
            await relay.forward_audio(chunk(i))
        gc.collect()
        before = len(gc.get_objects())
        for i in range(300):  # 12 s: all kept (no turn is answered)
            await relay.forward_audio(chunk(i))
        await until(lambda: len(upstream.appends()) == 320)
        gc.collect()
        assert len(gc.get_objects()) - before < 100
        assert relay.resend.ms == pytest.approx(320 * 40)


async def test_with_server_vad_a_listening_session_keeps_two_seconds_for_resending(upstream: Upstream) -> None:
    relay = relay_for(upstream)  # server VAD, as the session.updated says
    async with running(relay):
        for i in range(300):  # 12 s in which the server hears no speech
            await relay.forward_audio(chunk(i))
        await until(lambda: len(upstream.appends()) == 300)
        assert relay.resend.server_vad and relay.resend.ms == pytest.approx(2000)
