"""Bad input gets OpenAI's error codes; the connection stays usable; other sessions never notice."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voicerelay.backend.server import BackendServer

from .peer import Peer, transcript_of

B64_ODD = base64.b64encode(b"\x00\x01\x02").decode()
B64_50MS = base64.b64encode(b"\x00" * 2400).decode()

BAD_INPUTS: list[tuple[str, Any, str, str | None]] = [
    ("not json", "{this is not json", "invalid_json", None),
    ("binary frame", b"\x00\x01binary", "invalid_event", None),
    ("a JSON array", "[1, 2]", "invalid_json", None),
    ("unknown type", {"type": "ping"}, "invalid_value", "type"),
    ("no type", {"event_id": "evt_1"}, "missing_required_parameter", "type"),
    ("bad base64", {"type": "input_audio_buffer.append", "audio": "@@not-base64@@"}, "invalid_value", "audio"),
    ("odd byte count", {"type": "input_audio_buffer.append", "audio": B64_ODD}, "invalid_value", "audio"),
    ("audio not a string", {"type": "input_audio_buffer.append", "audio": 42}, "invalid_value", "audio"),
    ("truncate ms not int", {"type": "conversation.item.truncate", "item_id": "item_x", "content_index": 0,
                             "audio_end_ms": "soon"}, "invalid_value", "audio_end_ms"),
    ("item not an object", {"type": "conversation.item.create", "item": "hello"}, "invalid_value", "item"),
    ("bad item type", {"type": "conversation.item.create", "item": {"type": "banana"}}, "invalid_value", "item.type"),
    ("session without type", {"type": "session.update", "session": {"instructions": "x"}},
     "missing_required_parameter", "session.type"),
    ("GA session with temperature", {"type": "session.update", "session": {"type": "realtime", "temperature": 0.8}},
     "unknown_parameter", "session.temperature"),
    ("input rate below 24 kHz", {"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}},
     "integer_below_min_value", "session.audio.input.format.rate"),
    ("cancel with nothing running", {"type": "response.cancel"}, "response_cancel_not_active", None),
    ("truncate unknown item", {"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
                               "audio_end_ms": 10}, "invalid_value", "item_id"),
]


@pytest.mark.parametrize(("frame", "code", "param"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_gets_its_code_and_the_session_goes_on(backend: BackendServer, frame: Any, code: str,
                                                               param: str | None) -> None:
    peer = await Peer.open(backend.url)
    bystander = await Peer.open(backend.url)
    if isinstance(frame, dict):
        frame = {**frame, "event_id": "evt_bad"} if "event_id" not in frame and "type" in frame else frame
    await peer.send(frame)
    error = (await peer.until("error"))[-1]["error"]
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]
    if isinstance(frame, dict) and "type" in frame:
        assert error["event_id"] == "evt_bad"  # OpenAI echoes the failing event's id
    # the same connection then completes a normal turn
    events = await peer.text_turn("what is your name")
    assert events[-1]["response"]["status"] == "completed"
    assert "voicerelay" in transcript_of(events)
    # and a concurrent session never noticed
    events = await bystander.text_turn("hello")
    assert not [e for e in bystander.events if e["type"] == "error"]
    assert events[-1]["response"]["status"] == "completed"
    await peer.close()
    await bystander.close()


async def test_commit_of_under_100ms_is_refused(backend: BackendServer) -> None:
    peer = await Peer.open(backend.url)
    await peer.send({"type": "session.update", "session": {"type": "realtime",
                                                           "audio": {"input": {"turn_detection": None}}}})
    await peer.until("session.updated")
    await peer.send({"type": "input_audio_buffer.append", "audio": B64_50MS})
    await peer.send({"type": "input_audio_buffer.commit"})
    error = (await peer.until("error"))[-1]["error"]
    assert error["code"] == "input_audio_buffer_commit_empty" and "50.00ms" in error["message"]
    await peer.send({"type": "input_audio_buffer.append", "audio": B64_50MS})  # now 100 ms buffered
    await peer.send({"type": "input_audio_buffer.commit"})
    committed = (await peer.until("input_audio_buffer.committed"))[-1]
    assert committed["item_id"].startswith("item_")
    await peer.close()


async def test_second_response_create_during_a_response_is_refused(backend: BackendServer) -> None:
    peer = await Peer.open(backend.url)
    await peer.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me a joke"}]}})
    await peer.send({"type": "response.create"})
    await peer.until("response.created")
    await peer.send({"type": "response.create", "event_id": "evt_2"})
    seen = await peer.until("response.done")
    errors = [e["error"] for e in seen if e["type"] == "error"]
    assert [(e["code"], e["event_id"]) for e in errors] == [("conversation_already_has_active_response", "evt_2")]
    assert seen[-1]["response"]["status"] == "completed"
    await peer.close()


async def test_session_expires_like_openais_cap(engines: Any) -> None:
    async with BackendServer(port=0, engines=engines, max_session_seconds=0.5) as server:
        peer = await Peer.open(server.url)
        error = (await peer.until("error", timeout=5))[-1]["error"]
        assert error["code"] == "session_expired" and "0.5 seconds" in error["message"]
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(peer.ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.reason.endswith("session_expired")
        await asyncio.sleep(0.05)
        assert server.connections == 0


async def test_missing_model_is_an_error_then_close_4000(backend: BackendServer) -> None:
    async with connect(backend.url) as ws:
        event = json.loads(await ws.recv())
        assert event["type"] == "error" and event["error"]["code"] == "missing_model"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4000


async def test_wrong_path_is_404(backend: BackendServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{backend.port}/v1/other?model=x"):
            pass
    assert info.value.response.status_code == 404


async def test_a_client_that_vanishes_mid_response_leaves_nothing_behind(backend: BackendServer) -> None:
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    peer = await Peer.open(backend.url)
    await peer.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me a joke"}]}})
    await peer.send({"type": "response.create"})
    await peer.until("response.output_audio.delta")
    peer.ws.transport.abort()  # no close handshake: the peer just vanishes
    for _ in range(100):
        await asyncio.sleep(0.02)
        if backend.connections == 0:
            break
    assert backend.connections == 0
    await asyncio.sleep(0.05)
    leftover = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} - before
    assert not [t for t in leftover if not t.done() and "response" in t.get_name()]
