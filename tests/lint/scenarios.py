"""Real sessions for the lint rules: a raw WebSocket client makes one mistake (or does it right)
against the embedded backend, and voicerelay's ``Recorder`` records both directions.

Each scenario is what some app really sends; ``SCENARIOS`` maps a recording's name to it and to
the rule it must trigger (``None``: a clean session, no finding at all). The recordings in
``tests/lint/recordings/`` were made by running this file::

    PYTHONPATH=. python tests/lint/scenarios.py [NAME...]     # all of them, or the ones named

and ``tests/lint/test_lint.py`` lints them (and makes two afresh, to show they still come out so).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
from websockets.asyncio.client import ClientConnection, connect

from voicerelay.backend.server import BackendServer
from voicerelay.protocol.audio import BYTES_PER_MS, pcm16_to_b64
from voicerelay.recording import Recorder

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "recordings"

GA_VAD_OFF = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Get the weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Client:
    """A raw Realtime client whose every frame, both ways, goes through a Recorder."""

    def __init__(self, ws: ClientConnection, recorder: Recorder) -> None:
        self.ws = ws
        self.recorder = recorder
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        self.recorder.record("up", event)
        await self.ws.send(json.dumps(event))

    async def recv(self, timeout: float = 15.0) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.recorder.record("down", event)
        self.events.append(event)
        return event

    async def until(self, etype: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                seen.append(await self.recv(timeout))
                if seen[-1]["type"] == etype:
                    return seen

    async def drain(self, seconds: float) -> None:
        """Receive whatever comes for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                await self.recv(left)
            except TimeoutError:
                return

    async def say_text(self, text: str) -> str:
        """A user text item; returns its item id (from conversation.item.added)."""
        await self.send({"type": "conversation.item.create",
                         "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        added = await self.until("conversation.item.added")
        return added[-1]["item"]["id"]

    async def text_turn(self, text: str) -> list[dict[str, Any]]:
        await self.say_text(text)
        await self.send({"type": "response.create"})
        return await self.until("response.done")

    async def append(self, pcm: np.ndarray, chunk_ms: int = 20) -> None:
        step = chunk_ms * 24
        for start in range(0, len(pcm), step):
            await self.send({"type": "input_audio_buffer.append", "audio": pcm16_to_b64(pcm[start:start + step])})


def speech(stem: str = "hello_there") -> np.ndarray:
    pcm, rate = soundfile.read(ROOT / "recordings" / f"{stem}.wav", dtype="int16")
    assert rate == 24_000
    return pcm


def through(pcm: np.ndarray, rate: int) -> np.ndarray:
    """``pcm`` (24 kHz) as an app that captured or converted it at ``rate`` sends it: resampled down and up."""
    low = soxr.resample(pcm.astype(np.float32) / 32768, 24_000, rate)
    back = soxr.resample(low, rate, 24_000)
    return np.clip(np.round(back * 32768), -32768, 32767).astype(np.int16)


def audio_item(events: list[dict[str, Any]]) -> tuple[str, int]:
    """The assistant item that got audio, and the ms received of it."""
    deltas = [e for e in events if e["type"] in ("response.output_audio.delta", "response.audio.delta")]
    return deltas[0]["item_id"], sum(len(base64.b64decode(d["delta"])) for d in deltas) // BYTES_PER_MS


# ------------------------------------------------------------------------------------ scenarios


async def truncate_past_received(c: Client) -> None:
    """Truncates at the reply's length as the app estimated it, past the audio it had received."""
    item, received = audio_item(await c.text_turn("tell me a joke"))
    await c.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                  "audio_end_ms": received + 1000})
    await c.until("error")


async def truncate_within_received(c: Client) -> None:
    item, received = audio_item(await c.text_turn("tell me a joke"))
    await c.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                  "audio_end_ms": received // 2})
    await c.until("conversation.item.truncated")


async def _barge_in(c: Client, pre_roll_s: float | None) -> None:
    """A reply streams faster than real time; 0.6 s after its first delta the user barges in.

    ``pre_roll_s=None``: the truncate is the time since the first delta (openai-agents, Pipecat);
    else a real-time player that started after ``pre_roll_s`` reports what it played.
    """
    await c.say_text("what can you do")
    await c.send({"type": "response.create"})
    first: float | None = None
    item, received = "", 0
    while first is None or time.monotonic() - first < 0.6:
        try:
            event = await c.recv(0.6 if first is None else max(0.001, first + 0.6 - time.monotonic()))
        except TimeoutError:
            continue
        if event["type"] == "response.output_audio.delta":
            first = first or time.monotonic()
            item = event["item_id"]
            received += len(base64.b64decode(event["delta"]))
    # the reply has long been generated (response.done): no cancel, only the truncate
    elapsed = time.monotonic() - first
    if pre_roll_s is None:
        end_ms = int(elapsed * 1000)
    else:
        end_ms = min(received // BYTES_PER_MS, int(max(0.0, elapsed - pre_roll_s) * 1000))
    await c.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": end_ms})
    await c.until("conversation.item.truncated")
    await c.drain(0.3)


async def truncate_wall_clock(c: Client) -> None:
    await _barge_in(c, None)


async def truncate_played(c: Client) -> None:
    await _barge_in(c, 0.15)


async def _tool_call(c: Client) -> str:
    await c.send({"type": "session.update", "session": {"type": "realtime", "tools": [WEATHER_TOOL]}})
    await c.until("session.updated")
    done = (await c.text_turn("what is the weather in paris"))[-1]
    call = next(o for o in done["response"]["output"] if o["type"] == "function_call")
    await c.send({"type": "conversation.item.create",
                  "item": {"type": "function_call_output", "call_id": call["call_id"], "output": '{"temp_c": 18}'}})
    await c.until("conversation.item.added")
    return call["call_id"]


async def tool_output_without_response(c: Client) -> None:
    """Returns the tool's result and waits for the model, which never speaks."""
    await _tool_call(c)
    await c.drain(1.0)


async def tool_output_with_response(c: Client) -> None:
    await _tool_call(c)
    await c.send({"type": "response.create"})
    await c.until("response.done")


async def create_while_active(c: Client) -> None:
    """A second response.create as soon as the first response started (a retry, a second input)."""
    await c.say_text("hello there")
    await c.send({"type": "response.create"})
    await c.until("response.created")
    await c.send({"type": "response.create"})
    await c.until("response.done")


async def create_after_done(c: Client) -> None:
    await c.text_turn("hello there")
    await c.text_turn("how are you")


async def commit_with_vad(c: Client) -> None:
    """Push-to-talk on top of the default server VAD: the app commits as well."""
    await c.append(speech("hello_there"))
    await c.send({"type": "input_audio_buffer.commit"})
    await c.drain(2.0)


async def manual_turn(c: Client, pcm: np.ndarray | None = None) -> None:
    """Turn detection off, then a whole utterance, commit, response.create: the push-to-talk way."""
    await c.send(GA_VAD_OFF)
    await c.until("session.updated")
    await c.append(speech("hello_there") if pcm is None else pcm)
    await c.send({"type": "input_audio_buffer.commit"})
    await c.until("input_audio_buffer.committed")
    await c.send({"type": "response.create"})
    await c.until("response.done", timeout=30)


async def cancel_nothing(c: Client) -> None:
    """Cancels 'just in case' before anything was asked."""
    await c.send({"type": "response.cancel"})
    await c.until("error")


async def cancel_active(c: Client) -> None:
    await c.say_text("tell me a joke")
    await c.send({"type": "response.create"})
    await c.until("response.created")
    await c.send({"type": "response.cancel"})
    await c.until("response.done")


BETA_SESSION = {"modalities": ["audio", "text"], "voice": "alloy", "input_audio_format": "pcm16",
                "turn_detection": None}


async def beta_shape_to_ga(c: Client) -> None:
    """Code written for the beta interface, pointed at a GA endpoint."""
    await c.send({"type": "session.update", "session": BETA_SESSION})
    await c.until("error")


async def beta_shape_to_beta(c: Client) -> None:
    await c.send({"type": "session.update", "session": BETA_SESSION})
    await c.until("session.updated")


async def narrowband_input(c: Client) -> None:
    """Telephony audio (8 kHz) upsampled to 24 kHz and appended as PCM16."""
    await manual_turn(c, through(speech("hello_there"), 8000))


async def voice_after_audio(c: Client) -> None:
    await c.text_turn("hello there")
    await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "echo"}}}})
    await c.until("session.updated")


async def voice_before_audio(c: Client) -> None:
    await c.send({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "echo"}}}})
    await c.until("session.updated")
    await c.text_turn("hello there")


async def runs_into_cap(c: Client) -> None:
    """Talks on until the server's cap (the scenario's backend caps sessions at 2 s)."""
    await c.text_turn("hello there")
    await c.until("error", timeout=10)


async def growing_history(c: Client) -> None:
    for text in ("hello there", "how are you", "what is your name", "tell me a joke", "thank you"):
        await c.text_turn(text)


async def pruned_history(c: Client) -> None:
    """The same five turns, deleting each turn's items once it is answered."""
    for text in ("hello there", "how are you", "what is your name", "tell me a joke", "thank you"):
        user = await c.say_text(text)
        await c.send({"type": "response.create"})
        done = (await c.until("response.done"))[-1]
        for item_id in [user] + [o["id"] for o in done["response"]["output"]]:
            await c.send({"type": "conversation.item.delete", "item_id": item_id})
            await c.until("conversation.item.deleted")


async def clear_output_buffer(c: Client) -> None:
    """A WebRTC habit over a WebSocket: clears the server's output buffer on barge-in."""
    await c.text_turn("hello there")
    await c.send({"type": "output_audio_buffer.clear"})
    await c.until("error")


async def short_commit(c: Client) -> None:
    """Push-to-talk tapped too briefly: 40 ms of audio, then commit."""
    await c.send(GA_VAD_OFF)
    await c.until("session.updated")
    await c.append(speech("hello_there")[: 40 * 24])
    await c.send({"type": "input_audio_buffer.commit"})
    await c.until("error")


Scenario = Callable[[Client], Awaitable[None]]

#: recording name -> (scenario, the rule it triggers or None for a clean session, options)
SCENARIOS: dict[str, tuple[Scenario, str | None, dict[str, Any]]] = {
    "vr101_truncate_past_received": (truncate_past_received, "VR101", {}),
    "vr101_clean": (truncate_within_received, None, {}),
    "vr102_truncate_wall_clock": (truncate_wall_clock, "VR102", {}),
    "vr102_clean": (truncate_played, None, {}),
    "vr103_tool_output_without_response": (tool_output_without_response, "VR103", {}),
    "vr103_clean": (tool_output_with_response, None, {}),
    "vr104_create_while_active": (create_while_active, "VR104", {}),
    "vr104_clean": (create_after_done, None, {}),
    "vr105_commit_with_vad": (commit_with_vad, "VR105", {}),
    "vr105_clean": (manual_turn, None, {}),
    "vr106_cancel_nothing": (cancel_nothing, "VR106", {}),
    "vr106_clean": (cancel_active, None, {}),
    "vr107_beta_shape_to_ga": (beta_shape_to_ga, "VR107", {}),
    "vr107_clean": (beta_shape_to_beta, None, {"beta": True}),
    "vr108_narrowband_input": (narrowband_input, "VR108", {}),
    "vr109_voice_after_audio": (voice_after_audio, "VR109", {}),
    "vr109_clean": (voice_before_audio, None, {}),
    "vr110_runs_into_cap": (runs_into_cap, "VR110", {"max_session_seconds": 2.0}),
    "vr111_growing_history": (growing_history, "VR111", {}),
    "vr111_clean": (pruned_history, None, {}),
    "vr112_clear_output_buffer": (clear_output_buffer, "VR112", {}),
    "vr113_short_commit": (short_commit, "VR113", {}),
}
#: rule -> the clean recording that shows it does not fire on the right way of doing the same thing
CLEAN = {"VR101": "vr101_clean", "VR102": "vr102_clean", "VR103": "vr103_clean", "VR104": "vr104_clean",
         "VR105": "vr105_clean", "VR106": "vr106_clean", "VR107": "vr107_clean", "VR108": "vr105_clean",
         "VR109": "vr109_clean", "VR110": "vr104_clean", "VR111": "vr111_clean", "VR112": "vr104_clean",
         "VR113": "vr105_clean"}


async def record(name: str, folder: Path, *, engines: Any = None, pace: float = 20.0) -> Path:
    """Run scenario ``name`` against a fresh embedded backend, recording it into ``folder``."""
    scenario, _, options = SCENARIOS[name]
    async with BackendServer(port=0, engines=engines, pace=pace,
                             max_session_seconds=options.get("max_session_seconds", 3600.0)) as server:
        headers = {"Authorization": "Bearer sk-test"}
        if options.get("beta"):
            headers["OpenAI-Beta"] = "realtime=v1"
        with Recorder(folder, {"command": "tests/lint/scenarios.py", "scenario": name}) as recorder:
            async with connect(f"{server.url}?model=gpt-realtime", additional_headers=headers, max_size=None) as ws:
                client = Client(ws, recorder)
                await client.until("session.created")
                await scenario(client)
    return folder


async def _main(names: list[str]) -> None:
    from voicerelay.backend.engines import Engines

    engines = Engines()
    await asyncio.to_thread(engines.warm_up)
    try:
        for name in names or list(SCENARIOS):
            folder = HERE / name
            shutil.rmtree(folder, ignore_errors=True)
            await record(name, folder, engines=engines)
            print(f"recorded {folder.relative_to(ROOT)}")
    finally:
        engines.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
