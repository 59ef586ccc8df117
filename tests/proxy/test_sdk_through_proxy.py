"""The official ``openai`` SDK (GA and beta clients) through the real proxy to the embedded
backend: a voice turn, a text turn, a tool call and garbage, with a wire tap on each side of the
proxy proving that no byte changed and nothing was reordered; the recording it made replays.

    SDK ──► tap A ──► proxy ──► tap B ──► embedded backend
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from rich.console import Console

from voicerelay.backend.server import BackendServer
from voicerelay.cost import load_prices, usage_cost
from voicerelay.proxy.record import Recordings
from voicerelay.proxy.server import ProxyServer
from voicerelay.protocol.audio import pcm16_to_b64
from voicerelay.recording import RecordedSession
from voicerelay.replay import ReplayOptions, replay_all

from ..conftest import SDK, read_recording, room_noise
from .tap import Tap

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PROXY_KEY = "sk-proxy-side-secret-0123456789"
APP_KEY = "sk-app-placeholder-9876543210"


class Conn:
    """An SDK connection; every event it receives is checked against the SDK's strict types."""

    def __init__(self, conn: Any, beta: bool) -> None:
        self.conn, self.beta, self.events = conn, beta, []  # type: ignore[var-annotated]

    async def until(self, *types: str, timeout: float = 20) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while not seen or seen[-1]["type"] not in types:
                event = json.loads(await self.conn.recv_bytes())
                (SDK.BETA_SERVER if self.beta else SDK.GA_SERVER).validate_python(event)
                seen.append(event)
        self.events += seen
        return seen

    async def send_audio(self, pcm: np.ndarray, chunk_ms: int = 100) -> None:
        step = chunk_ms * 24
        for i in range(0, pcm.size, step):
            await self.conn.input_audio_buffer.append(audio=pcm16_to_b64(pcm[i: i + step]))


class Rig:
    def __init__(self, proxy: ProxyServer, tap_a: Tap, tap_b: Tap, records: Path) -> None:
        self.proxy, self.tap_a, self.tap_b, self.records = proxy, tap_a, tap_b, records

    def assert_byte_identical(self) -> None:
        a, b = self.tap_a, self.tap_b
        assert len(a.up) > 5 and len(a.down) > 20
        assert a.up == b.up, "what the client sent is not what the upstream received"
        assert a.down == b.down, "what the upstream sent is not what the client received"

    def recording(self) -> RecordedSession:
        (folder,) = [p for p in self.records.iterdir() if p.is_dir()]
        return RecordedSession.open(folder)


@pytest.fixture
async def rig(backend: BackendServer, tmp_path: Path) -> AsyncIterator[Rig]:
    host_b = backend.url.removesuffix("/v1/realtime")
    async with Tap(host_b) as tap_b:
        async with ProxyServer(f"ws://127.0.0.1:{tap_b.port}/v1/realtime", key=PROXY_KEY,
                               observers=[Recordings(tmp_path / "rec")]) as proxy:
            async with Tap(f"ws://127.0.0.1:{proxy.port}") as tap_a:
                yield Rig(proxy, tap_a, tap_b, tmp_path / "rec")


async def connect(rig: Rig, beta: bool) -> AsyncIterator[Conn]:
    client = AsyncOpenAI(api_key=APP_KEY, websocket_base_url=rig.tap_a.base_url)
    realtime = client.beta.realtime if beta else client.realtime
    async with realtime.connect(model="gpt-realtime") as conn:
        wrapped = Conn(conn, beta)
        assert (await wrapped.until("session.created"))[0]["type"] == "session.created"
        yield wrapped
    await client.close()


async def wait_closed(rig: Rig) -> None:
    async with asyncio.timeout(5):
        while rig.proxy.sessions:
            await asyncio.sleep(0.01)


def transcript(events: list[dict[str, Any]], etype: str = "response.output_audio_transcript.done") -> str:
    return next(e for e in events if e["type"] == etype)["transcript"]


async def test_ga_client_voice_text_tool_and_garbage_byte_for_byte(rig: Rig, backend: BackendServer) -> None:
    async for ga in connect(rig, beta=False):
        await ga.conn.session.update(session={"type": "realtime", "tools": [WEATHER], "audio": {"input": {
            "transcription": {"model": "gpt-4o-mini-transcribe"}}}})
        await ga.until("session.updated")
        # a voice turn: a shipped recording, server VAD
        await ga.send_audio(np.concatenate((read_recording("hello_there"), room_noise(800))))
        events = await ga.until("response.done")
        assert transcript(events).startswith("Hello!")
        if not any(e["type"] == "conversation.item.input_audio_transcription.completed" for e in ga.events):
            await ga.until("conversation.item.input_audio_transcription.completed")
        # a text turn
        await ga.conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "what is your name"}]})
        await ga.conn.response.create()
        events = await ga.until("response.done")
        assert transcript(events) == "My name is voicerelay. I am an offline test assistant."
        # a tool call and its result
        await ga.conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "what is the weather in paris"}]})
        await ga.conn.response.create()
        events = await ga.until("response.done")
        call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert call["name"] == "get_weather"
        await ga.conn.conversation.item.create(item={"type": "function_call_output", "call_id": call["call_id"],
                                                     "output": json.dumps({"temp_c": 18})})
        await ga.conn.response.create()
        events = await ga.until("response.done")
        assert transcript(events) == "The result of get weather is temp c 18."
        # garbage: the proxy passes it on, and the upstream's own answer comes back
        await ga.conn.send_raw("this is not json")
        error = (await ga.until("error"))[-1]["error"]
        assert error["code"] == "invalid_json"
    await wait_closed(rig)

    rig.assert_byte_identical()
    # the app's placeholder never went upstream; the proxy's key did
    (upstream_headers,) = rig.tap_b.handshakes
    auth = [v for k, v in upstream_headers if k.lower() == "authorization"]
    assert auth == [f"Bearer {PROXY_KEY}"]
    assert not any(k.lower() == "openai-beta" for k, _ in upstream_headers)
    assert rig.tap_b.paths == ["/v1/realtime?model=gpt-realtime"]  # the client's path and query

    recording = rig.recording()
    text = (recording.folder / "session.jsonl").read_text()
    assert PROXY_KEY not in text and APP_KEY not in text
    assert recording.metadata["command"] == "proxy" and recording.metadata["dialect"] == "ga"
    assert recording.metadata["path"] == "/v1/realtime?model=gpt-realtime"
    ups = [e for e in recording.events if e.direction == "up"]
    costs = [e.event for e in recording.events if e.event["type"] == "voicerelay.cost"]
    downs = [e for e in recording.events if e.direction == "down" and e.event["type"] != "voicerelay.cost"]
    assert len(ups) == len(rig.tap_a.up) + 1 and ups[-1].event["type"] == "voicerelay.closed"  # the client closed
    assert len(downs) == len(rig.tap_a.down)
    # each response's cost follows its response.done: 4 responses (voice, text, tool call, its answer)
    done = [e.event for e in downs if e.event["type"] == "response.done"]
    assert [c["response_id"] for c in costs] == [d["response"]["id"] for d in done] and len(costs) == 4
    prices = load_prices().find("gpt-realtime")
    for cost, response in zip(costs, done):
        assert cost["in_conversation"] and cost["model"] == "gpt-realtime"
        assert cost["usd"] == round(usage_cost(response["response"]["usage"], prices).usd, 6) > 0
    assert costs[-1]["session_usd"] == pytest.approx(sum(c["usd"] for c in costs), abs=1e-5)
    assert [e.event["type"] for e in downs] == [json.loads(m)["type"] for _, m in rig.tap_a.down]
    assert any(e.event["type"] == "voicerelay.unparsed" and e.event["text"] == "this is not json" for e in ups)
    sent_audio = b"".join(pcm for _, pcm in recording.input_chunks())
    expected = np.concatenate((read_recording("hello_there"), room_noise(800))).astype("<i2").tobytes()
    assert sent_audio == expected
    assert recording.transcripts()["user"][0] == "hello there"
    assert (recording.folder / "output.wav").stat().st_size > 24_000

    # the recording replays with `voicerelay replay`
    out = io.StringIO()
    options = ReplayOptions(path=Path(), backend=backend.url, speed=0, timeout=30, progress=False)
    code = await replay_all([recording.folder], options, Console(file=out, width=200), Console(file=out, width=200))
    assert code == 0, out.getvalue()
    assert "hello there" in out.getvalue()


async def test_beta_client_voice_and_tool_call_byte_for_byte(rig: Rig) -> None:
    async for beta in connect(rig, beta=True):
        await beta.conn.session.update(session={"tools": [WEATHER], "input_audio_transcription": {"model": "whisper-1"}})
        await beta.until("session.updated")
        await beta.send_audio(np.concatenate((read_recording("what_is_your_name"), room_noise(800))))
        events = await beta.until("response.done")
        assert transcript(events, "response.audio_transcript.done") == \
            "My name is voicerelay. I am an offline test assistant."
        await beta.conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "what is the weather in paris"}]})
        await beta.conn.response.create()
        events = await beta.until("response.done")
        call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        await beta.conn.conversation.item.create(item={"type": "function_call_output", "call_id": call["call_id"],
                                                       "output": "sunny"})
        await beta.conn.response.create()
        events = await beta.until("response.done")
        assert transcript(events, "response.audio_transcript.done") == "The result of get weather is sunny."
    await wait_closed(rig)
    rig.assert_byte_identical()
    (upstream_headers,) = rig.tap_b.handshakes
    assert [v for k, v in upstream_headers if k.lower() == "openai-beta"] == ["realtime=v1"]
    recording = rig.recording()
    assert recording.metadata["dialect"] == "beta"
    assert "response.audio.delta" in {e.event["type"] for e in recording.events}
    assert recording.transcripts()["assistant"][0].startswith("My name is voicerelay")
