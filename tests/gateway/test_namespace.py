"""The default namespace: the ragent event contract over a real Socket.IO connection, every bad-input
row, the limits, and shutting down."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest
import socketio
from websockets.asyncio.server import serve

from voicerelay.gateway.server import Gateway
from voicerelay.gateway.session import GatewaySession

from ..conftest import read_recording, room_noise
from ..test_relay import Upstream
from .conftest import Browser, serving


async def send_wav(browser: Browser, pcm: np.ndarray, chunk_ms: int = 50, realtime: float = 0.0) -> None:
    step = chunk_ms * 24
    for i in range(0, pcm.size, step):
        await browser.emit("audio_data", {"audio": base64.b64encode(pcm[i:i + step].astype("<i2").tobytes()).decode()})
        if realtime:
            await asyncio.sleep(chunk_ms / 1000 / realtime)


async def test_a_voice_session_follows_the_contract(gateway: tuple[Gateway, str], browsers: Any) -> None:
    gw, url = gateway
    browser = await browsers().connect(url)
    session_id = await browser.start()
    assert session_id and browser.of("session_created")[0]["status"] == "created"
    await send_wav(browser, np.concatenate((read_recording("hello_there"), room_noise(800))))
    response = await browser.wait_for("ai_response")
    assert response == {"transcript": "hello there", "session_id": session_id,
                        "response": "Hello! I am the voicerelay test assistant. How can I help?"}
    complete = await browser.wait_for("response_complete")
    assert complete["response_id"].startswith("resp_") and complete["status"] == "completed"
    deltas = browser.of("audio_delta")
    assert [d["index"] for d in deltas] == list(range(1, len(deltas) + 1))
    audio = b"".join(base64.b64decode(d["audio"]) for d in deltas)
    assert len(audio) >= 24_000  # at least half a second of PCM16
    finals = [d["text"] for d in browser.of("user_transcript") if d["final"]]
    assert finals == ["hello there"]
    states = [d["state"] for d in browser.of("ai_state")]
    assert states[:4] == ["listening", "user_speaking", "thinking", "speaking"]
    await browser.emit("end_session")
    assert (await browser.wait_for("session_ended"))["status"] == "ended"
    assert not browser.of("error")
    assert gw.sessions == {}


async def test_text_input_gets_an_answer(gateway: tuple[Gateway, str], browsers: Any) -> None:
    _, url = gateway
    browser = await browsers().connect(url)
    await browser.start()
    await browser.emit("text_input", {"text": "what is your name"})
    response = await browser.wait_for("ai_response")
    assert response["response"] == "My name is voicerelay. I am an offline test assistant."


BAD = [
    ("audio before start_session", False, "audio_data", {"audio": "AAAA"}, "no_session"),
    ("commit before start_session", False, "commit_audio", None, "no_session"),
    ("second start_session", True, "start_session", {}, "session_exists"),
    ("invalid base64", True, "audio_data", {"audio": "%%% not base64 %%%"}, "invalid_audio"),
    ("odd byte count", True, "audio_data", {"audio": base64.b64encode(b"\x00\x01\x02").decode()}, "invalid_audio"),
    ("odd byte count, padded", True, "audio_data", {"audio": base64.b64encode(b"\x00").decode()}, "invalid_audio"),
    ("whitespace in base64", True, "audio_data", {"audio": "AAAA AAAA"}, "invalid_audio"),
    ("padding after a whole group", True, "audio_data", {"audio": "AAAA="}, "invalid_audio"),
    ("oversized chunk", True, "audio_data", {"audio": "A" * (64 * 1024 + 4)}, "chunk_too_large"),
    ("audio_data not an object", True, "audio_data", "AAAA", "invalid_payload"),
    ("audio not a string", True, "audio_data", {"audio": 1234}, "invalid_payload"),
    ("start_session not an object", False, "start_session", 42, "invalid_payload"),
    ("chat_payload not an object", False, "start_session", {"chat_payload": "x"}, "invalid_payload"),
    ("empty text_input", True, "text_input", {"text": "  "}, "invalid_payload"),
    ("playback_position before start_session", False, "playback_position", {"item_id": "x", "played_ms": 1},
     "no_session"),
    ("playback_position without a position", True, "playback_position", {"item_id": "x"}, "invalid_payload"),
]


@pytest.mark.parametrize(("started", "event", "data", "code"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_bad_input_gets_its_code_and_nobody_else_notices(gateway: tuple[Gateway, str], browsers: Any,
                                                               started: bool, event: str, data: Any,
                                                               code: str) -> None:
    _, url = gateway
    browser, bystander = await browsers().connect(url), await browsers().connect(url)
    await bystander.start()
    if started:
        await browser.start()
    await browser.emit(event, data)
    error = await browser.wait_for("error")
    assert error["code"] == code and error["message"]
    # the session (or the connection, before start) goes on working
    if not started:
        await browser.start()
    await browser.emit("text_input", {"text": "hello"})
    assert (await browser.wait_for("ai_response"))["response"].startswith("Hello!")
    await bystander.emit("text_input", {"text": "how are you"})
    assert (await bystander.wait_for("ai_response"))["response"] == "I am fine, thank you for asking."
    assert not bystander.of("error")


async def test_a_chunk_of_any_size_gets_a_coded_error_or_the_documented_close(make_gateway: Any, browsers: Any,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Served as ``serve`` serves it: chunks of 0.9, 1.1 and 5 MB (over the gateway's 64 KiB chunk
    limit, under the transport's 8 MiB) each get ``chunk_too_large`` and the session goes on; one of
    20 MB cannot be read: the connection is closed (WebSocket 1009), the session ends with its
    upstream, the gateway says why in one line, and the neighbour notices nothing."""
    gw = make_gateway()
    async with serving(gw.asgi_app(), **gw.uvicorn_options()) as url:
        browser, neighbour = await browsers().connect(url), await browsers().connect(url)
        await neighbour.start()
        await browser.start()
        backend = gw.backend_server
        for size in (900_000, 1_100_000, 5_000_000):
            browser.events.clear()
            await browser.emit("audio_data", {"audio": "A" * size})
            error = await browser.wait_for("error")
            assert error["code"] == "chunk_too_large" and f"{size} base64 characters" in error["message"], error
            assert browser.sio.connected
        browser.events.clear()
        await send_wav(browser, np.concatenate((read_recording("hello_there"), room_noise(800))))
        assert (await browser.wait_for("ai_response"))["transcript"] == "hello there"  # the session goes on
        assert not browser.of("error")
        assert backend.connections == 2
        with caplog.at_level("WARNING", logger="voicerelay.gateway.namespace"):
            await browser.emit("audio_data", {"audio": "A" * 20_000_000})
            async with asyncio.timeout(10):
                while browser.sio.connected or backend.connections > 1 or len(gw.sessions) > 1:
                    await asyncio.sleep(0.05)
        assert not browser.of("error") and not browser.of("session_ended")  # nothing can reach it: it is closed
        lines = [r.getMessage() for r in caplog.records if "over the transport's limit" in r.getMessage()]
        assert len(lines) == 1 and "8388608 bytes" in lines[0] and "1009" in lines[0], lines
        await neighbour.emit("text_input", {"text": "how are you"})
        assert (await neighbour.wait_for("ai_response"))["response"] == "I am fine, thank you for asking."
        assert not neighbour.of("error") and not neighbour.of("session_ended")
        again = await browsers().connect(url)  # the same page, reconnected, is served again
        await again.start()


async def test_a_host_whose_uvicorn_reads_bigger_messages_still_gets_the_reason_logged(
        make_gateway: Any, browsers: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Mounted under a uvicorn left at its own 16 MiB: a 10 MB message is read by uvicorn but over
    engine.io's buffer, which drops the connection; the gateway still says why, with the size."""
    gw = make_gateway()
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        await browser.start()
        with caplog.at_level("WARNING", logger="voicerelay.gateway.namespace"):
            await browser.emit("audio_data", {"audio": "A" * 10_000_000})
            async with asyncio.timeout(10):
                while browser.sio.connected or gw.sessions:
                    await asyncio.sleep(0.05)
        lines = [r.getMessage() for r in caplog.records if "over the transport's limit" in r.getMessage()]
        packet = len('42["audio_data",{"audio":""}]') + 10_000_000  # the WebSocket message it was
        assert len(lines) == 1 and f"a message of {packet} bytes" in lines[0], lines


async def test_audio_passes_through_both_ways_as_it_is_and_in_order(browsers: Any) -> None:
    """In front of an upstream that echoes each append as a reply delta: every delta reaches the
    browser as the very base64 the browser sent, in order, numbered, with nothing else in between."""
    upstream = Upstream()
    upstream.echo = True
    async with serve(upstream.handler, "127.0.0.1", 0, compression=None) as echo:
        port = next(iter(echo.sockets)).getsockname()[1]
        gw = Gateway(backend=f"ws://127.0.0.1:{port}/v1/realtime")
        async with serving(gw.asgi_app()) as url:
            browser = await browsers().connect(url)
            await browser.start()
            rng = np.random.default_rng(6)
            sent = [base64.b64encode(rng.integers(-3000, 3000, 960, dtype="<i2").tobytes()).decode()
                    for _ in range(30)]
            for i, chunk in enumerate(sent):
                await browser.emit("audio_data", {"audio": chunk})
                if i % 10 == 9:
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(10):
                while len(browser.of("audio_delta")) < len(sent):
                    await asyncio.sleep(0.01)
            deltas = browser.of("audio_delta")
            assert [d["audio"] for d in deltas] == sent
            assert [d["index"] for d in deltas] == list(range(1, len(sent) + 1))
            assert all(d["session_id"] == browser.of("session_started")[0]["session_id"] for d in deltas)
            assert [e["audio"] for e in upstream.connections[0] if e["type"] == "input_audio_buffer.append"] == sent
            assert not browser.of("error")
            state = gw.sessions[next(iter(gw.sessions))].state()
            assert state["queues"]["queued_audio_ms"] == 0 and state["queues"]["dropped_audio_ms"] == 0
            await gw.close()


async def test_say_and_get_state(gateway: tuple[Gateway, str], browsers: Any) -> None:
    _, url = gateway
    browser = await browsers().connect(url)
    await browser.emit("get_state")
    assert (await browser.wait_for("session_state")) == {"session_id": None, "chat_active": False, "ai_state": None}
    session_id = await browser.start()
    await browser.emit("say", {"text": "The kitchen is now open."})
    assert (await browser.wait_for("ai_response"))["response"] == "The kitchen is now open."
    browser.events.clear()
    await browser.emit("get_state")
    state = await browser.wait_for("session_state")
    assert state["session_id"] == session_id and state["chat_active"] is True
    assert state["ai_state"] in ("listening", "speaking") and state["queues"]["dropped_audio_ms"] == 0
    await browser.emit("say", {"text": ""})
    assert (await browser.wait_for("error"))["code"] == "invalid_payload"


async def test_unknown_events_are_ignored(gateway: tuple[Gateway, str], browsers: Any) -> None:
    _, url = gateway
    browser = await browsers().connect(url)
    await browser.start()
    await browser.emit("make_coffee", {"sugar": 2})
    await browser.emit("text_input", {"text": "thanks"})
    assert (await browser.wait_for("ai_response"))["response"] == "You are welcome."
    assert not browser.of("error")


async def test_audio_sent_right_after_start_session_is_heard(gateway: tuple[Gateway, str], browsers: Any) -> None:
    """A browser need not wait for ``session_started``: its events are handled in the order it sent
    them, so the audio that follows ``start_session`` at once (while the gateway still starts its
    embedded backend, this being its first session) finds the session and is queued for the
    upstream, not refused or lost."""
    gw, url = gateway
    assert gw.backend_server is None  # the first session: the backend starts with it
    browser = await browsers().connect(url)
    await browser.emit("start_session", {"chat_payload": {"contextId": "ctx-1", "metadata": {"message_log": []}}})
    await send_wav(browser, np.concatenate((read_recording("hello_there"), room_noise(800))))
    assert (await browser.wait_for("ai_response"))["transcript"] == "hello there"
    assert not browser.of("error")


async def test_a_bug_below_an_event_is_one_error_for_its_browser_and_the_session_goes_on(
        gateway: tuple[Gateway, str], browsers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that raises what the contract does not expect (a bug, injected here) answers its
    browser ``error {code: "internal_error"}``; the connection, its session and the others go on."""
    _, url = gateway
    browser, neighbour = await browsers().connect(url), await browsers().connect(url)
    await browser.start()
    await neighbour.start()

    def broken(self: GatewaySession, item_id: str, played_ms: float) -> None:
        raise RuntimeError("injected bug")

    with monkeypatch.context() as patch:
        patch.setattr(GatewaySession, "playback_position", broken)
        await browser.emit("playback_position", {"item_id": "item_1", "played_ms": 120})
        error = await browser.wait_for("error")
    assert error["code"] == "internal_error" and "RuntimeError: injected bug" in error["message"]
    assert browser.sio.connected
    await browser.emit("text_input", {"text": "thanks"})
    assert (await browser.wait_for("ai_response"))["response"] == "You are welcome."
    await neighbour.emit("text_input", {"text": "thanks"})
    assert (await neighbour.wait_for("ai_response"))["response"] == "You are welcome."
    assert len(browser.of("error")) == 1 and not neighbour.of("error")


async def test_audio_faster_than_twice_real_time_is_cut_off(gateway: tuple[Gateway, str], browsers: Any) -> None:
    _, url = gateway
    browser = await browsers().connect(url)
    await browser.start()
    noise = room_noise(12_000)  # 12 s of audio sent in well under 5 s
    await send_wav(browser, noise, chunk_ms=500)
    error = await browser.wait_for("error", lambda d: d["code"] == "rate_limited")
    assert "2x real time" in error["message"]
    async with asyncio.timeout(5):
        while browser.sio.connected:
            await asyncio.sleep(0.05)


async def test_token_is_checked_before_anything_opens(make_gateway: Any, browsers: Any) -> None:
    gw = make_gateway(token="s3cret")
    async with serving(gw.asgi_app()) as url:
        with pytest.raises(socketio.exceptions.ConnectionError, match="unauthorized"):
            await browsers().connect(url)
        with pytest.raises(socketio.exceptions.ConnectionError, match="unauthorized"):
            await browsers().connect(url, auth={"token": "wrong"})
        assert gw.sessions == {} and gw.backend_server is None  # nothing was opened upstream
        browser = await browsers().connect(url, auth={"token": "s3cret"})
        await browser.start()


async def test_origins_and_session_count(make_gateway: Any, browsers: Any) -> None:
    gw = make_gateway(max_sessions=1)
    async with serving(gw.asgi_app()) as url:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await browsers().connect(url, headers={"Origin": "http://evil.example"})
        first = await browsers().connect(url, headers={"Origin": url})
        with pytest.raises(socketio.exceptions.ConnectionError, match="too many sessions"):
            await browsers().connect(url)
        await first.close()
        await asyncio.sleep(0.1)
        await browsers().connect(url)
    allowed = make_gateway(allow_origins=["http://app.example"])
    async with serving(allowed.asgi_app()) as url:
        await browsers().connect(url, headers={"Origin": "http://app.example"})


async def test_upstream_failure_is_reported_then_the_session_ends(make_gateway: Any, browsers: Any) -> None:
    gw = make_gateway(backend="ws://127.0.0.1:9/v1/realtime")
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        await browser.emit("start_session", {})
        error = await browser.wait_for("error")
        assert error["code"] == "upstream_error" and "cannot reach" in error["message"]
        assert (await browser.wait_for("session_ended"))["status"] == "error"


async def test_disconnect_mid_stream_cleans_up_within_a_second(make_gateway: Any, browsers: Any, engines: Any) -> None:
    gw = make_gateway()
    async with serving(gw.asgi_app()) as url:
        warm = await browsers().connect(url)
        await warm.start()  # starts the shared embedded backend
        await warm.close()
        await asyncio.sleep(0.3)
        backend = gw.backend_server
        baseline = set(asyncio.all_tasks())
        assert backend.connections == 0
        browser = await browsers().connect(url)
        await browser.start()
        assert backend.connections == 1
        await send_wav(browser, read_recording("how_are_you")[:24_000])
        await browser.sio.eio.disconnect(abort=True)  # the browser just goes away
        async with asyncio.timeout(1.0):
            while backend.connections or gw.sessions:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        # engine.io's per-socket ping timer notices the closed socket at its next tick: not ours
        leftover = [t for t in asyncio.all_tasks() - baseline
                    if not t.done() and "_send_ping" not in repr(t.get_coro())]
        assert leftover == [], [repr(t.get_coro()) for t in leftover]


async def test_shutting_down_ends_sessions_and_refuses_new_connections(make_gateway: Any, browsers: Any) -> None:
    gw = make_gateway()
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        await browser.start()
        await gw.shut_down_sessions()
        assert (await browser.wait_for("session_ended"))["status"] == "shutdown"
        assert not gw.sessions
        with pytest.raises(socketio.exceptions.ConnectionError, match="the gateway is shutting down"):
            await browsers().connect(url)
