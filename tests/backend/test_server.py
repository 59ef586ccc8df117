"""The official ``openai`` SDK against ``voicerelay backend``: voice turns in both dialects,
a function-call round trip, cancel, truncate, barge-in and out-of-band speech.

Events are read raw (``recv_bytes``) and validated with the SDK's strict unions, because the
SDK's own ``recv()`` never validates.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from voicerelay.backend.engines import Engines
from voicerelay.backend.server import BackendServer
from voicerelay.protocol.audio import pcm16_to_b64, rms_dbfs
from voicerelay.protocol.events import say_exactly

from ..conftest import SDK, read_recording, room_noise

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Conn:
    """An SDK connection plus strict validation of every received event."""

    def __init__(self, conn: Any, beta: bool) -> None:
        self.conn, self.beta, self.events = conn, beta, []  # type: ignore[var-annotated]

    async def recv(self, timeout: float = 15) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.conn.recv_bytes(), timeout))
        (SDK.BETA_SERVER if self.beta else SDK.GA_SERVER).validate_python(event)
        self.events.append(event)
        return event

    async def until(self, *types: str, timeout: float = 20) -> list[dict[str, Any]]:
        seen = []
        async with asyncio.timeout(timeout):
            while not seen or seen[-1]["type"] not in types:
                seen.append(await self.recv())
        return seen

    async def send_audio(self, pcm: np.ndarray, chunk_ms: int = 100) -> None:
        step = chunk_ms * 24
        for i in range(0, pcm.size, step):
            await self.conn.input_audio_buffer.append(audio=pcm16_to_b64(pcm[i : i + step]))


async def open_conn(server: BackendServer, beta: bool = False) -> AsyncIterator[Conn]:
    client = AsyncOpenAI(api_key="sk-local", websocket_base_url=server.base_url)
    realtime = client.beta.realtime if beta else client.realtime
    async with realtime.connect(model="gpt-realtime") as conn:
        wrapped = Conn(conn, beta)
        first = await wrapped.recv()
        assert first["type"] == "session.created"
        yield wrapped
    await client.close()


@pytest.fixture
async def ga(backend: BackendServer) -> AsyncIterator[Conn]:
    async for conn in open_conn(backend):
        yield conn


def with_tail(pcm: np.ndarray, ms: int = 800) -> np.ndarray:
    """The recording plus more background noise, so server VAD surely closes the turn."""
    return np.concatenate((pcm, room_noise(ms)))


def decoded_audio(events: list[dict[str, Any]], etype: str = "response.output_audio.delta") -> np.ndarray:
    raw = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == etype)
    return np.frombuffer(raw, dtype="<i2")


async def test_ga_voice_turn(ga: Conn) -> None:
    await ga.conn.session.update(session={"type": "realtime", "audio": {"input": {
        "transcription": {"model": "gpt-4o-mini-transcribe"}}}})
    await ga.until("session.updated")
    await ga.send_audio(with_tail(read_recording("hello_there")))
    events = await ga.until("response.done")
    types = [e["type"] for e in events]
    if "conversation.item.input_audio_transcription.completed" not in types:
        events += await ga.until("conversation.item.input_audio_transcription.completed")
        types = [e["type"] for e in events]
    started, stopped = (next(e for e in events if e["type"] == t) for t in
                        ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"))
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= 2500
    assert started["item_id"] == stopped["item_id"]
    assert types.index("input_audio_buffer.committed") > types.index("input_audio_buffer.speech_stopped")
    completed = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == "hello there"
    deltas = "".join(e["delta"] for e in events if e["type"] == "conversation.item.input_audio_transcription.delta")
    assert deltas == "hello there"
    audio = decoded_audio(events)
    assert audio.size >= 24_000 // 2 and rms_dbfs(audio) > -35  # at least 0.5 s, clearly not silence
    response_types = [t for t in types if t.startswith("response.")]
    assert response_types[0] == "response.created" and response_types[-1] == "response.done"
    done = events[types.index("response.done")]["response"]
    assert done["status"] == "completed" and done["usage"]["total_tokens"] > 0
    assert done["output"][0]["content"][0]["transcript"].startswith("Hello!")


async def test_beta_voice_turn_uses_beta_names(backend: BackendServer) -> None:
    async for beta in open_conn(backend, beta=True):
        await beta.conn.session.update(session={"input_audio_transcription": {"model": "whisper-1"}})
        await beta.until("session.updated")
        await beta.send_audio(with_tail(read_recording("what_is_your_name")))
        events = await beta.until("response.done")
        types = {e["type"] for e in events}
        assert "response.audio.delta" in types and "response.audio_transcript.done" in types
        assert "conversation.item.created" in types
        assert not types & {"response.output_audio.delta", "conversation.item.added", "conversation.item.done"}
        assert decoded_audio(events, "response.audio.delta").size >= 12_000
        transcript = next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"]
        assert transcript == "My name is voicerelay. I am an offline test assistant."


async def test_function_call_round_trip(ga: Conn) -> None:
    await ga.conn.session.update(session={"type": "realtime", "tools": [WEATHER]})
    await ga.until("session.updated")
    await ga.send_audio(with_tail(read_recording("weather_in_paris")))
    events = await ga.until("response.done")
    args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert args_done["name"] == "get_weather" and json.loads(args_done["arguments"]) == {"city": "paris"}
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert deltas == args_done["arguments"]
    output = events[-1]["response"]["output"]
    assert output[0]["type"] == "function_call" and output[0]["call_id"] == args_done["call_id"]
    await ga.conn.conversation.item.create(item={"type": "function_call_output", "call_id": args_done["call_id"],
                                                 "output": json.dumps({"temp_c": 18, "sky": "clear"})})
    await ga.until("conversation.item.done")
    await ga.conn.response.create()
    events = await ga.until("response.done")
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert transcript == "The result of get weather is temp c 18, sky clear."


async def test_cancel_then_truncate_mid_response(ga: Conn) -> None:
    await ga.conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    await ga.until("session.updated")
    await ga.conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "tell me a joke about a microphone and a speaker"}]})
    await ga.conn.response.create()
    first = (await ga.until("response.output_audio.delta"))[-1]
    await ga.conn.response.cancel()
    events = await ga.until("response.done")
    done = events[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    assert done["output"][0]["status"] == "incomplete"
    received_ms = (decoded_audio([first, *events]).size * 2) // 48
    full_ms = len(read_recording("hello_there")) // 24  # any full reply is longer than what arrived
    assert 0 < received_ms < full_ms
    # truncating past what was generated is refused; within it, it works
    await ga.conn.conversation.item.truncate(item_id=first["item_id"], content_index=0, audio_end_ms=received_ms + 500)
    error = (await ga.until("error"))[-1]["error"]
    assert error["code"] == "invalid_value" and "shorter than" in error["message"]
    await ga.conn.conversation.item.truncate(item_id=first["item_id"], content_index=0, audio_end_ms=received_ms // 2)
    truncated = (await ga.until("conversation.item.truncated"))[-1]
    assert truncated["audio_end_ms"] == received_ms // 2 and truncated["item_id"] == first["item_id"]


async def test_speech_during_a_response_barges_in(ga: Conn) -> None:
    await ga.conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "tell me a joke"}]})
    await ga.conn.response.create()
    await ga.until("response.output_audio.delta")
    await ga.send_audio(with_tail(read_recording("how_are_you")))
    events = await ga.until("response.done")
    types = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" in types
    assert events[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    # the new turn is answered after the interrupted one
    events = await ga.until("response.done")
    assert events[-1]["response"]["status"] == "completed"
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "I am fine, thank you for asking."


async def test_out_of_band_say_is_spoken_verbatim(ga: Conn) -> None:
    text = "Your table for two is booked at eight."
    await ga.conn.send(say_exactly(text))
    events = await ga.until("response.done")
    types = [e["type"] for e in events]
    assert "conversation.item.added" not in types  # out of band: not written to the conversation
    assert events[-1]["response"]["conversation_id"] is None
    assert next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"] == text
    assert decoded_audio(events).size > 24_000


async def test_manual_commit_with_turn_detection_disabled(ga: Conn) -> None:
    await ga.conn.session.update(session={"type": "realtime", "audio": {"input": {
        "turn_detection": None, "transcription": {"model": "whisper-1"}}}})
    await ga.until("session.updated")
    await ga.send_audio(with_tail(read_recording("what_can_you_do")))
    await asyncio.sleep(0.3)
    assert not [e for e in ga.events if e["type"].startswith("input_audio_buffer.speech")]
    await ga.conn.input_audio_buffer.commit()
    await ga.until("input_audio_buffer.committed")
    completed = (await ga.until("conversation.item.input_audio_transcription.completed"))[-1]
    assert completed["transcript"] == "what can you do"
    await ga.conn.response.create()
    events = await ga.until("response.done")
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"].startswith("I can greet you")


async def test_the_backend_declines_permessage_deflate_that_clients_offer(backend: BackendServer) -> None:
    from websockets.asyncio.client import connect

    async with connect(backend.url + "?model=gpt-realtime", compression="deflate") as ws:
        assert ws.request is not None and "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_concurrent_sessions_are_independent(backend: BackendServer) -> None:
    async def one(stem: str, expect: str) -> str:
        async for conn in open_conn(backend):
            await conn.send_audio(with_tail(read_recording(stem)))
            events = await conn.until("response.done")
            assert not [e for e in conn.events if e["type"] == "error"]
            return events[-1]["response"]["output"][0]["content"][0]["transcript"]
        raise AssertionError("no connection")

    a, b = await asyncio.gather(one("hello_there", "Hello"), one("how_are_you", "fine"))
    assert a.startswith("Hello!") and b == "I am fine, thank you for asking."


# ------------------------------------------------------------------------- parity with OpenAI


async def flush(conn: Conn) -> list[dict[str, Any]]:
    """Every event the server sends for what was sent so far: events are handled in order, so the
    error answering a retrieve of an unknown item comes after all of them (no waiting on a clock)."""
    await conn.conn.conversation.item.retrieve(item_id="item_barrier")
    events = await conn.until("error")
    assert events[-1]["error"]["param"] == "item_id"
    return events[:-1]


@pytest.mark.parametrize("beta", [False, True])
async def test_session_updated_echoes_each_turn_detection_type_with_its_own_fields(backend: BackendServer,
                                                                                  beta: bool) -> None:
    from openai.types.beta.realtime.session import TurnDetection as BetaTurnDetection
    from openai.types.realtime.realtime_audio_input_turn_detection import SemanticVad, ServerVad

    semantic = {"type": "semantic_vad", "eagerness": "low", "create_response": False}
    server = {"type": "server_vad", "silence_duration_ms": 300}
    async for conn in open_conn(backend, beta=beta):
        echoed = []
        for td in (semantic, server):
            session = {"turn_detection": td} if beta else {"type": "realtime", "audio": {"input": {"turn_detection": td}}}
            await conn.conn.session.update(session=session)  # type: ignore[arg-type]
            updated = (await conn.until("session.updated"))[-1]["session"]  # validated by the SDK's strict types
            echoed.append(updated["turn_detection"] if beta else updated["audio"]["input"]["turn_detection"])
        assert echoed[0] == {"type": "semantic_vad", "eagerness": "low", "create_response": False,
                             "interrupt_response": True}
        assert echoed[1]["silence_duration_ms"] == 300 and echoed[1]["threshold"] == 0.5
        if beta:  # beta's one flat type: each echo holds its own type's share of it
            assert set(echoed[1]) == set(BetaTurnDetection.model_fields) - {"eagerness"}
        else:
            assert set(echoed[0]) == set(SemanticVad.model_fields) and set(echoed[1]) == set(ServerVad.model_fields)


async def test_eagerness_low_lets_a_speaker_pause_and_high_ends_the_turn_at_the_pause(backend: BackendServer) -> None:
    """The same audio, two utterances about 1 s apart: high eagerness (400 ms of silence) ends a turn at
    the pause, low (1.6 s) waits for the second utterance. Judged on the backend's audio_end_ms, not a clock."""
    # the recordings hold about 0.6 s of quiet after their speech and 0.3 s before it: 0.1 s more makes 1 s
    audio = np.concatenate((room_noise(300), read_recording("hello_there"), room_noise(100),
                            read_recording("what_is_your_name"), room_noise(2500)))
    ends = {}
    for eagerness in ("high", "low"):
        async for conn in open_conn(backend):
            await conn.conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "semantic_vad", "eagerness": eagerness, "create_response": False}}}})
            await conn.until("session.updated")
            await conn.send_audio(audio)
            events = await flush(conn)
            ends[eagerness] = [e["audio_end_ms"] for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
            assert not [e for e in events if e["type"].startswith("response.")]  # create_response false
    first_end = 300 + len(read_recording("hello_there")) // 24
    assert len(ends["high"]) == 2 and len(ends["low"]) == 1, ends
    assert ends["high"][0] < ends["low"][0]
    assert ends["high"][0] <= first_end + 100 < ends["low"][0]  # high: at the pause; low: after the second utterance
    assert ends["high"][1] == ends["low"][0]  # both end the second utterance at the same point


async def test_a_system_item_is_answered_like_pipecat_expects(backend: BackendServer) -> None:
    async for beta in open_conn(backend, beta=True):  # Pipecat speaks the beta dialect
        await beta.conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hello there"}]})
        await beta.conn.response.create()
        first = await beta.until("response.done")
        await beta.conn.conversation.item.create(item={"type": "message", "role": "system", "content": [
            {"type": "input_text", "text": 'The user came back. Say "Welcome back." to the user.'}]})
        await beta.conn.response.create()
        second = await beta.until("response.done")
    said = [next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"]
            for events in (first, second)]
    assert said == ["Hello! I am the voicerelay test assistant. How can I help?", "Welcome back."]


async def test_a_client_that_reconnects_after_expiry_and_resends_gets_no_spurious_reply(engines: Engines) -> None:
    """The session cap ends the session; the client opens another, sends its history and the audio
    it still held (room noise) again, commits and asks for a response: nothing is said, and an
    empty commit is an error, as on OpenAI."""
    joke = "Why did the microphone blush? It saw the speaker."
    async with BackendServer(port=0, engines=engines, pace=20.0, max_session_seconds=1.0) as server:
        async for first in open_conn(server):
            expired = (await first.until("error", timeout=30))[-1]["error"]
            assert expired["code"] == "session_expired"
        server.max_session_seconds = 600.0  # the new session must not race a second expiry on a busy machine
        async for again in open_conn(server):
            await again.conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            await again.until("session.updated")
            for role, part, text in (("user", "input_text", "tell me a joke"), ("assistant", "output_text", joke)):
                await again.conn.conversation.item.create(item={"type": "message", "role": role,  # type: ignore[misc]
                                                                "content": [{"type": part, "text": text}]})
            await again.send_audio(room_noise(1200))
            await again.conn.input_audio_buffer.commit()
            await again.conn.response.create()
            events = await again.until("response.done")
            done = events[-1]["response"]
            assert (done["status"], done["output"]) == ("completed", [])
            assert not [e for e in events if e["type"] in ("response.output_audio.delta",
                                                           "response.output_audio_transcript.delta")]
            await again.conn.input_audio_buffer.commit()  # nothing buffered now
            error = (await again.until("error"))[-1]["error"]
            assert error["code"] == "input_audio_buffer_commit_empty"
            assert not [e for e in await flush(again) if e["type"].startswith("response.")]


async def test_an_idle_timeout_prompts_a_silent_user_through_the_sdk(ga: Conn) -> None:
    """server_vad's idle_timeout_ms: a user who says nothing after a reply is prompted, as OpenAI
    documents (timeout_triggered, the silence committed, a response); the time is the audio's."""
    await ga.conn.session.update(session={"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "idle_timeout_ms": 1500}}}})
    updated = (await ga.until("session.updated"))[-1]["session"]
    assert updated["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 1500
    await ga.send_audio(with_tail(read_recording("hello_there")))
    first = await ga.until("response.done")
    assert "input_audio_buffer.timeout_triggered" not in [e["type"] for e in first]
    reply_ms = decoded_audio(first).size // 24
    await ga.send_audio(room_noise(reply_ms + 2000))  # the reply plays out, then 2 s of the room: no speech
    events = await ga.until("response.done")
    types = [e["type"] for e in events]
    triggered = events[types.index("input_audio_buffer.timeout_triggered")]
    assert types.index("input_audio_buffer.committed") > types.index("input_audio_buffer.timeout_triggered")
    assert "input_audio_buffer.speech_started" not in types
    assert 1500 <= triggered["audio_end_ms"] - triggered["audio_start_ms"] <= 1700  # one 100 ms append late at most
    committed = events[types.index("input_audio_buffer.committed")]
    assert committed["item_id"] == triggered["item_id"]
    assert transcript_of(events) == "Are you still there?"


def transcript_of(events: list[dict[str, Any]]) -> str:
    done = [e for e in events if e["type"] == "response.output_audio_transcript.done"]
    return done[-1]["transcript"] if done else ""
