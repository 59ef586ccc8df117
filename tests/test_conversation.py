"""The conversation core: the barge-in rule computed once, readiness, idle playback. Against the
embedded backend over a real loopback WebSocket; the sinks are small real Playback classes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from voicerelay.backend.server import BackendServer
from voicerelay.conversation import Conversation, InstantPlayback, Interrupted, Playback
from voicerelay.errors import UpstreamTimeout
from voicerelay.protocol.config import RealtimeConfig
from voicerelay.protocol.events import Dialect
from voicerelay.protocol.session import PlayAudio, State
from voicerelay.relay import Relay
from voicerelay.upstream import UpstreamSpec, embedded_spec

TEXT_ONLY = RealtimeConfig(turn_detection_mode="disabled")


class WireLog:
    """The relay's recorder hook: every event both ways."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, direction: str, event: dict[str, Any]) -> None:
        self.events.append((direction, event))

    def sent(self, etype: str) -> list[dict[str, Any]]:
        return [e for d, e in self.events if d == "up" and e.get("type") == etype]


class FractionPlayback(InstantPlayback):
    """A sink that has played ``fraction`` of what it received (``fraction`` > 1 is a sink that
    claims more than it got: the rule must still never truncate past what was received)."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction
        self.stopped = 0

    def played_ms(self, item_id: str) -> int:
        return int(self.received_ms(item_id) * self.fraction)

    def stop(self) -> None:
        self.stopped += 1


def test_every_sink_kind_is_a_playback() -> None:
    assert isinstance(InstantPlayback(), Playback) and isinstance(FractionPlayback(0.5), Playback)


async def _talk_over_a_reply(backend: BackendServer, playback: Playback) -> tuple[Conversation, WireLog,
                                                                                   list[Interrupted]]:
    """Ask for a long answer, interrupt once some of its audio arrived; return what happened."""
    wire = WireLog()
    relay = Relay(TEXT_ONLY, embedded_spec(backend.url, "gpt-realtime", Dialect.GA), recorder=wire)
    conversation = Conversation(relay, playback)
    cuts: list[Interrupted] = []
    conversation.subscribe(lambda obs: cuts.append(obs) if isinstance(obs, Interrupted) else None)
    async with conversation:
        relay.user_text("what can you do")
        deadline = time.monotonic() + 10
        while relay.session.playing_item is None or playback.received_ms(relay.session.playing_item) < 300:
            assert time.monotonic() < deadline, "no reply audio"
            await asyncio.sleep(0.005)
        relay.interrupt()
        while not wire.sent("conversation.item.truncate") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    return conversation, wire, cuts


@pytest.mark.parametrize("fraction", [0.5, 1.0, 3.0])
async def test_the_truncate_is_min_of_played_and_received(backend: BackendServer, fraction: float) -> None:
    playback = FractionPlayback(fraction)
    conversation, wire, cuts = await _talk_over_a_reply(backend, playback)
    [truncate] = wire.sent("conversation.item.truncate")
    [cut] = cuts
    received = playback.received_ms(truncate["item_id"])
    assert cut.item_id == truncate["item_id"] and cut.received_ms >= truncate["audio_end_ms"]
    assert truncate["audio_end_ms"] == min(int(cut.received_ms * fraction), cut.received_ms) == cut.played_ms
    assert truncate["audio_end_ms"] <= received and playback.stopped == 1
    assert conversation.interrupted[cut.item_id] == cut
    # the cancel went first: the truncate follows it on the wire
    order = [e["type"] for d, e in wire.events if d == "up"]
    assert order.index("response.cancel") < order.index("conversation.item.truncate")


async def test_nothing_heard_truncates_nothing(backend: BackendServer) -> None:
    _, wire, cuts = await _talk_over_a_reply(backend, FractionPlayback(0.0))
    assert wire.sent("response.cancel") and not wire.sent("conversation.item.truncate")
    assert cuts and cuts[0].played_ms == 0 and cuts[0].received_ms > 0


async def test_the_state_returns_to_listening_once_the_sink_played_everything(backend: BackendServer) -> None:
    class Slow(InstantPlayback):
        """Plays in real time from the first audio: pending until then."""

        def __init__(self) -> None:
            super().__init__()
            self.first: float | None = None
            self.total_ms = 0

        def feed(self, audio: PlayAudio) -> None:
            super().feed(audio)
            self.first = self.first or time.monotonic()
            self.total_ms += audio.nbytes // 48

        def pending_ms(self) -> float:
            assert self.first is not None
            return max(0.0, self.total_ms - (time.monotonic() - self.first) * 1000)

    playback = Slow()
    relay = Relay(TEXT_ONLY, embedded_spec(backend.url, "gpt-realtime", Dialect.GA))
    states: list[tuple[float, State]] = []
    async with Conversation(relay, playback) as conversation:
        conversation.subscribe(lambda obs: states.append((time.monotonic(), obs.new))
                               if hasattr(obs, "new") else None)
        relay.user_text("hello there")
        deadline = time.monotonic() + 15
        while not (states and states[-1][1] is State.LISTENING) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        listening_at, last = states[-1]
    assert last is State.LISTENING and State.SPEAKING in [s for _, s in states]
    assert playback.first is not None
    played_until = playback.first + playback.total_ms / 1000
    # listening once the sink ran out (not when the last delta arrived, which at pace 20 is far earlier)
    assert listening_at >= played_until - 0.05


@pytest.fixture
async def mute_server() -> AsyncIterator[str]:
    """Accepts the WebSocket and never says a word: a server that does not configure the session."""

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime"


async def test_a_server_that_never_configures_the_session_times_out(mute_server: str) -> None:
    relay = Relay(TEXT_ONLY, UpstreamSpec(mute_server))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="did not accept the session configuration within 0.5 s"):
        async with Conversation(relay, InstantPlayback(), ready_timeout=0.5):
            pass
    assert time.monotonic() - started < 3
    assert UpstreamTimeout.exit_code == 1


async def test_wait_ready_returns_false_when_stopped_first(mute_server: str) -> None:
    conversation = Conversation(Relay(TEXT_ONLY, UpstreamSpec(mute_server)), InstantPlayback(), ready_timeout=5)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    assert await conversation.wait_ready(stop) is False
    await conversation.close()
    assert conversation.running.done()
