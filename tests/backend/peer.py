"""A raw WebSocket peer of the embedded backend for tests: sends any frame, validates every
event it receives with the SDK's strict types for its dialect."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from ..conftest import SDK


class Peer:
    def __init__(self, ws: ClientConnection, beta: bool) -> None:
        self.ws = ws
        self.beta = beta
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, beta: bool = False, model: str = "gpt-realtime") -> Peer:
        headers = {"Authorization": "Bearer sk-test"}
        if beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        ws = await connect(f"{url}?model={model}", additional_headers=headers, max_size=None)
        peer = cls(ws, beta)
        first = await peer.recv()
        assert first["type"] == "session.created"
        return peer

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(event if isinstance(event, (str, bytes)) else json.dumps(event))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        adapter = SDK.BETA_SERVER if self.beta else SDK.GA_SERVER
        adapter.validate_python(event)  # every server event must be a valid SDK event
        self.events.append(event)
        return event

    async def until(self, etype: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Receive events up to and including the first of type ``etype``; return them all."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv(timeout)
                seen.append(event)
                if event["type"] == etype:
                    return seen

    async def text_turn(self, text: str) -> list[dict[str, Any]]:
        """A complete text turn; returns its events, the last being ``response.done``."""
        await self.send({"type": "conversation.item.create",
                         "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        await self.send({"type": "response.create"})
        return await self.until("response.done")

    async def close(self) -> None:
        await self.ws.close()


def transcript_of(events: list[dict[str, Any]]) -> str:
    done = [e for e in events if e["type"] in ("response.output_audio_transcript.done", "response.audio_transcript.done")]
    return done[-1]["transcript"] if done else ""
