"""Agent-wrapper and function-calling modes over real sockets (the Gateway as a library:
``test_server.py``)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
import pytest

from voicerelay.gateway.agent import GatewayConfigError
from voicerelay.gateway.server import Gateway

from ..conftest import read_recording, room_noise
from .conftest import serving

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


async def say_wav(browser: Any, stem: str) -> None:
    pcm = np.concatenate((read_recording(stem), room_noise(800)))
    for i in range(0, pcm.size, 1200):
        await browser.emit("audio_data", {"audio": base64.b64encode(pcm[i:i + 1200].astype("<i2").tobytes()).decode()})


async def test_agent_wrapper_speaks_emits_and_updates_context(make_gateway: Any, browsers: Any) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    async def on_transcript(session_id: str, transcript: str, chat_payload: dict[str, Any], event_emitter: Any,
                            tts: Any) -> dict[str, Any]:
        calls.append((session_id, transcript, dict(chat_payload)))
        await event_emitter.emit("agent_note", {"heard": transcript})
        said = await tts(f"Agent heard {transcript}.")
        return {"last_said": said}

    gw = make_gateway(on_transcript=on_transcript)
    assert gw.config.create_response is False  # upstream auto-responses are off in this mode
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        session_id = await browser.start()
        await say_wav(browser, "what_is_your_name")
        response = await browser.wait_for("ai_response")
        assert response == {"transcript": "what is your name", "response": "Agent heard what is your name.",
                            "session_id": session_id}
        assert (await browser.wait_for("agent_note")) == {"heard": "what is your name", "session_id": session_id}
        assert browser.of("audio_delta")  # TTS reached the browser as audio
        # only the agent spoke: the responder's own answer never came
        assert [d["response"] for d in browser.of("ai_response")] == ["Agent heard what is your name."]
        await asyncio.sleep(0.1)
        assert calls[0][:2] == (session_id, "what is your name") and calls[0][2]["contextId"] == "ctx-1"
        assert gw.sessions[browser.sio.get_sid()].chat_payload["last_said"] == "Agent heard what is your name."


async def test_agent_errors_are_reported_and_the_session_goes_on(make_gateway: Any, browsers: Any) -> None:
    def on_transcript(session_id: str, transcript: str, chat_payload: Any, emitter: Any, tts: Any) -> None:
        if "name" in transcript:
            raise RuntimeError("the agent tripped")

    async with serving(make_gateway(on_transcript=on_transcript).asgi_app()) as url:
        browser = await browsers().connect(url)
        await browser.start()
        await browser.emit("text_input", {"text": "what is your name"})
        error = await browser.wait_for("error")
        assert error["code"] == "agent_error" and "the agent tripped" in error["message"]
        await browser.emit("text_input", {"text": "hello"})  # a sync agent that returns None: fine
        await asyncio.sleep(0.3)
        assert len(browser.of("error")) == 1 and browser.sio.connected


async def test_function_calling_runs_sync_functions_off_the_loop(make_gateway: Any, browsers: Any) -> None:
    seen: list[str] = []

    def get_weather(city: str) -> dict[str, Any]:
        time.sleep(0.2)  # a blocking call: must not stall the event loop
        seen.append(city)
        return {"temp_c": 18, "sky": "clear"}

    gw = make_gateway(tools=[WEATHER], function_map={"get_weather": get_weather})
    async with serving(gw.asgi_app()) as url:
        browser, other = await browsers().connect(url), await browsers().connect(url)
        await browser.start()
        await other.start()
        await say_wav(browser, "weather_in_paris")
        await other.emit("text_input", {"text": "hello"})  # answered while get_weather sleeps
        response = await browser.wait_for("ai_response")
        assert response["response"] == "The result of get weather is temp c 18, sky clear."
        assert seen == ["paris"]
        assert (await other.wait_for("ai_response"))["response"].startswith("Hello!")


async def test_a_failing_function_returns_an_error_upstream_and_to_the_browser(make_gateway: Any,
                                                                               browsers: Any) -> None:
    async def get_weather(city: str) -> dict[str, Any]:
        raise ConnectionError("weather service down")

    gw = make_gateway(tools=[WEATHER], function_map={"get_weather": get_weather})
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        await browser.start()
        await browser.emit("text_input", {"text": "what is the weather in paris"})
        error = await browser.wait_for("error")
        assert error["code"] == "tool_error" and "weather service down" in error["message"]
        response = await browser.wait_for("ai_response")
        assert response["response"].startswith("Sorry, get weather failed:")


@pytest.mark.parametrize(("kw", "message"), [
    ({"on_transcript": lambda *a: None, "tools": [WEATHER], "function_map": {"get_weather": print}},
     "cannot be used together"),
    ({"tools": [WEATHER]}, "needs both"),
    ({"tools": [WEATHER], "function_map": {"other": print}}, "no function for tool"),
    ({"config_overrides": {"turn_detection_mode": "sometimes"}}, "turn_detection_mode"),
])
def test_configuration_errors_at_start_up(kw: dict[str, Any], message: str) -> None:
    with pytest.raises((GatewayConfigError, ValueError), match=message):
        Gateway(backend="embedded", **kw)


async def test_a_function_that_hangs_is_cut_off_by_the_timeout(make_gateway: Any, browsers: Any) -> None:
    async def get_weather(city: str) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    gw = make_gateway(tools=[WEATHER], function_map={"get_weather": get_weather}, tool_timeout=0.5)
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        await browser.start()
        started = time.monotonic()
        await browser.emit("text_input", {"text": "what is the weather in paris"})
        error = await browser.wait_for("error")
        assert error["code"] == "tool_error" and "timed out after 0.5 s" in error["message"]
        assert time.monotonic() - started < 5
        assert (await browser.wait_for("ai_response"))["response"].startswith("Sorry, get weather failed:")
