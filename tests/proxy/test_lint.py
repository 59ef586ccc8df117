"""Live lint in the proxy: a real client makes protocol mistakes through the real proxy to the
embedded backend; each becomes one warning line, named by the session, as soon as it is known."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from websockets.asyncio.client import connect

from voicerelay.backend.server import BackendServer
from voicerelay.proxy.lint import LiveLint
from voicerelay.proxy.server import ProxyServer


async def next_of(ws: object, etype: str) -> dict[str, object]:
    async with asyncio.timeout(10):
        while True:
            event = json.loads(await ws.recv())  # type: ignore[attr-defined]
            if event["type"] == etype:
                return event


async def test_mistakes_are_found_live_and_a_clean_session_has_none(backend: BackendServer,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    lint = LiveLint()
    caplog.set_level(logging.WARNING, logger="voicerelay.proxy.lint")
    async with ProxyServer(backend.url, observers=[lint]) as proxy:
        async with connect(proxy.url + "?model=gpt-realtime") as ws:
            await next_of(ws, "session.created")
            await ws.send(json.dumps({"type": "response.cancel"}))  # nothing to cancel: VR106
            await next_of(ws, "error")
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # server VAD is on: VR105
            await next_of(ws, "error")
        async with connect(proxy.url + "?model=gpt-realtime") as ws:  # a clean text turn
            await next_of(ws, "session.created")
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            await next_of(ws, "response.done")
        await asyncio.sleep(0.2)  # the proxy has seen both closes
    first, second = list(lint.findings)
    assert sorted(f.code for f in lint.findings[first]) == ["VR105", "VR106"]
    assert lint.findings[second] == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(line.startswith(f"session {first} ") for line in lines)
    assert any(" VR106 " in line and "(do instead: " in line for line in lines)


def test_an_unknown_code_to_ignore_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="unknown lint code VR999"):
        LiveLint(ignore=["VR999"])
