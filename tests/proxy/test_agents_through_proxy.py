"""openai-agents' realtime agents (``agents.realtime``) through the real proxy to the embedded
backend. Pointing it at a local server needs only public configuration: the model config's
``url`` (the whole Realtime URL, query included) and ``api_key`` (a placeholder: the proxy holds
the real key). A wire tap between proxy and backend proves every message passed unchanged."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from voicerelay.backend.server import BackendServer
from voicerelay.proxy.server import ProxyServer

from ..conftest import read_recording, room_noise
from .tap import Tap

realtime = pytest.importorskip("agents.realtime")
agents = pytest.importorskip("agents")


@agents.function_tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"sunny in {city}"


async def events_until(session: Any, done: Any, timeout: float = 30) -> list[Any]:
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        async for event in session:
            seen.append(event)
            if done(seen):
                return seen
    raise AssertionError(f"the session ended early: {[e.type for e in seen]}")


def responses_done(seen: list[Any]) -> int:
    return sum(1 for e in seen if e.type == "raw_model_event" and getattr(e.data, "type", "") == "raw_server_event"
               and e.data.data.get("type") == "response.done")


async def test_a_realtime_agent_completes_voice_text_and_tool_turns(backend: BackendServer) -> None:
    async with Tap(backend.url.removesuffix("/v1/realtime")) as tap, \
            ProxyServer(f"ws://127.0.0.1:{tap.port}/v1/realtime", key="sk-proxy-key") as proxy, \
            Tap(f"ws://127.0.0.1:{proxy.port}") as front:
        agent = realtime.RealtimeAgent(name="assistant", instructions="Be brief.", tools=[get_weather])
        runner = realtime.RealtimeRunner(agent)
        session = await runner.run(model_config={
            "url": f"ws://127.0.0.1:{front.port}/v1/realtime?model=gpt-realtime", "api_key": "sk-placeholder"})
        async with session:
            # a text turn
            await session.send_message("what is your name")
            seen = await events_until(session, lambda s: responses_done(s) >= 1)
            # a tool call: the agent runs get_weather and asks for the answer itself (a second response)
            await session.send_message("what is the weather in paris")
            seen += await events_until(session, lambda s: any(e.type == "tool_end" for e in s)
                                       and responses_done(s) >= 2)
            tool_end = next(e for e in seen if e.type == "tool_end")
            assert tool_end.tool.name == "get_weather" and tool_end.output == "sunny in paris"
            # a voice turn (server VAD)
            pcm = np.concatenate((read_recording("hello_there"), room_noise(800)))
            for i in range(0, pcm.size, 2400):
                await session.send_audio(pcm[i:i + 2400].astype("<i2").tobytes())
            seen += await events_until(session, lambda s: responses_done(s) >= 1)
            assert any(e.type == "audio" for e in seen)
            errors = [e for e in seen if e.type == "error"]
            assert not errors, errors
        async with asyncio.timeout(5):
            while proxy.sessions:
                await asyncio.sleep(0.01)
    assert front.up == tap.up and front.down == tap.down
    sent = [json.loads(m)["type"] for _, m in front.up]
    got = [json.loads(m) for _, m in front.down]
    assert "session.update" in sent and "input_audio_buffer.append" in sent
    assert any(e["type"] == "response.function_call_arguments.done" for e in got)
    assistant = [e["transcript"] for e in got if e["type"] == "response.output_audio_transcript.done"]
    assert assistant[0] == "My name is voicerelay. I am an offline test assistant."
    assert "sunny in paris" in assistant[1]  # the answer from the tool's output
    assert assistant[-1].startswith("Hello!")
    (upstream_headers,) = tap.handshakes
    assert [v for k, v in upstream_headers if k.lower() == "authorization"] == ["Bearer sk-proxy-key"]
