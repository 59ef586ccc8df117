"""One browser's session over a real gateway (embedded backend, python-socketio client): what the
truncate on barge-in carries, with and without the browser's ``playback_position`` reports.

The truncate is read where it went: the upstream recording (``Gateway(record_dir=...)``)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

from ..barge_in import assert_truncate_is_what_was_heard
from .conftest import Browser, serving


async def speaking(browser: Browser) -> tuple[str, float]:
    """Ask for a reply of a few seconds; return its item id once all its audio has arrived, and
    when its first delta did (the browser starts playing it then)."""
    await browser.emit("text_input", {"text": "hello"})
    await browser.wait_for("response_complete")
    deltas = browser.of("audio_delta")
    assert {d["item_id"] for d in deltas} == {deltas[0]["item_id"]}  # additive: {audio, index, item_id, session_id}
    return deltas[0]["item_id"], browser.first_at["audio_delta"]


def received_ms(browser: Browser, item_id: str) -> int:
    return sum(len(base64.b64decode(d["audio"])) for d in browser.of("audio_delta") if d["item_id"] == item_id) // 48


def truncates(folder: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (folder / "session.jsonl").read_text().splitlines()]
    return [e["event"] for e in lines if e["dir"] == "up" and e["event"]["type"] == "conversation.item.truncate"]


async def interrupted(browser: Browser, tmp_path: Path, session_id: str) -> dict[str, Any]:
    await browser.emit("interrupt")
    await browser.wait_for("interrupted")
    await browser.emit("end_session")
    await browser.wait_for("session_ended")
    [truncate] = truncates(tmp_path / session_id)
    return truncate


async def test_the_truncate_carries_the_reported_position(make_gateway: Any, browsers: Any, tmp_path: Path) -> None:
    gw = make_gateway(record_dir=tmp_path)
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        session_id = await browser.start()
        item_id, _ = await speaking(browser)
        assert received_ms(browser, item_id) > 2000
        await browser.emit("playback_position", {"item_id": item_id, "played_ms": 640.5})
        truncate = await interrupted(browser, tmp_path, session_id)
        assert truncate["item_id"] == item_id and truncate["audio_end_ms"] == 640
        assert_truncate_is_what_was_heard(truncate["audio_end_ms"], received_ms(browser, item_id), 640.5)
        assert not browser.of("error")


async def test_a_reported_position_is_clamped_to_what_was_received(make_gateway: Any, browsers: Any,
                                                                   tmp_path: Path) -> None:
    gw = make_gateway(record_dir=tmp_path)
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        session_id = await browser.start()
        item_id, _ = await speaking(browser)
        await browser.emit("playback_position", {"item_id": item_id, "played_ms": 10 ** 7})
        truncate = await interrupted(browser, tmp_path, session_id)
        assert truncate["audio_end_ms"] == received_ms(browser, item_id)


async def test_without_reports_the_estimate_is_the_real_time_play_position(make_gateway: Any, browsers: Any,
                                                                           tmp_path: Path) -> None:
    gw = make_gateway(record_dir=tmp_path)
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        session_id = await browser.start()
        item_id, first_at = await speaking(browser)
        await asyncio.sleep(max(0.0, first_at + 1.2 - time.monotonic()))
        playing_for = (time.monotonic() - first_at) * 1000  # a browser playing from its first delta
        truncate = await interrupted(browser, tmp_path, session_id)
        assert truncate["item_id"] == item_id
        assert_truncate_is_what_was_heard(truncate["audio_end_ms"], received_ms(browser, item_id), playing_for)


async def test_a_bad_playback_position_is_refused_and_the_session_goes_on(make_gateway: Any, browsers: Any) -> None:
    gw = make_gateway()
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        await browser.start()
        for bad in (None, {"played_ms": 5}, {"item_id": "", "played_ms": 5}, {"item_id": "x", "played_ms": -1},
                    {"item_id": "x", "played_ms": "5"}, {"item_id": "x", "played_ms": True}):
            browser.events.clear()
            await browser.emit("playback_position", bad)
            assert (await browser.wait_for("error"))["code"] == "invalid_payload", bad
        browser.events.clear()
        await browser.emit("playback_position", {"item_id": "never_sent", "played_ms": 5})  # ignored
        await browser.emit("text_input", {"text": "thanks"})
        assert (await browser.wait_for("ai_response"))["response"] == "You are welcome."
        assert browser.of("error") == []


async def test_an_upstream_lost_mid_reply_and_back_is_told_and_nothing_is_replayed(engines: Any, browsers: Any) -> None:
    from voicerelay.backend.server import BackendServer
    from voicerelay.gateway.server import Gateway

    first = BackendServer(port=0, engines=engines, pace=1.0)  # a 4 s reply streams for 4 s
    await first.start()
    port = first.port
    gw = Gateway(backend=f"ws://127.0.0.1:{port}/v1/realtime")
    try:
        async with serving(gw.asgi_app()) as url:
            browser = await browsers().connect(url)
            await browser.start()
            await browser.emit("text_input", {"text": "what can you do"})
            first_delta = await browser.wait_for("audio_delta")
            await asyncio.sleep(0.3)
            await first.close()  # the upstream dies mid-reply ...
            second = BackendServer(port=port, engines=engines, pace=20.0)
            await second.start()  # ... and is back within the relay's reconnect window
            try:
                lost = await browser.wait_for("upstream_status", timeout=10)
                assert lost["status"] == "lost" and lost["session_id"] == first_delta["session_id"]
                cut = await browser.wait_for("response_complete", lambda d: d["status"] == "interrupted",
                                             timeout=10)
                assert (await browser.wait_for("upstream_status", lambda d: d["status"] == "recovered",
                                               timeout=10))["message"]
                await asyncio.sleep(0.5)
                replayed = [d for d in browser.of("audio_delta") if d["item_id"] == first_delta["item_id"]]
                assert browser.of("audio_delta")[-1]["item_id"] == first_delta["item_id"]  # nothing new after
                assert len(replayed) == len(browser.of("audio_delta"))
                assert cut["response_id"]
                browser.events.clear()
                await browser.emit("text_input", {"text": "thanks"})  # the session goes on
                assert (await browser.wait_for("ai_response", timeout=15))["response"] == "You are welcome."
                assert not [e for e in browser.of("error") if e["code"] != "response_cancel_not_active"]
            finally:
                await second.close()
    finally:
        await gw.close()


async def test_the_state_carries_the_sessions_cost_as_an_estimate_on_the_embedded_backend(
        gateway: tuple[Any, str], browsers: Any) -> None:
    """``state()`` (what ``session_state`` and the monitor send) says what the session cost so far."""
    from voicerelay.cost import load_prices, usage_cost

    gw, url = gateway
    browser = await browsers().connect(url)
    session_id = await browser.start()
    [session] = [s for s in gw.sessions.values() if s.id == session_id]
    assert session.state()["cost"] == {"model": "gpt-realtime", "usd": 0.0, "estimate": True,
                                       "note": "the embedded backend's usage figures are estimates (no model ran)"}
    for text in ("hello there", "what is your name"):
        browser.events.clear()
        await browser.emit("text_input", {"text": text})
        await browser.wait_for("response_complete")
    turns = session.relay.session.turns
    assert len(turns) == 2 and all(t.usage for t in turns)
    prices = load_prices().find("gpt-realtime")
    expected = sum(usage_cost(t.usage, prices).usd or 0 for t in turns)
    cost = session.state()["cost"]
    assert cost["usd"] == round(expected, 6) and cost["usd"] > 0 and cost["estimate"] is True


async def test_live_lint_finds_a_browser_sending_audio_at_the_wrong_rate(
        gateway: tuple[Any, str], browsers: Any, caplog: Any) -> None:
    """The linter runs over every session's wire events: a browser that captured at 8 kHz and sends
    it as 24 kHz gets VR108 in the session's state (what ``inspect`` shows) and one warning line;
    a browser sending real 24 kHz speech gets none."""
    import logging

    import numpy as np

    from ..conftest import read_recording, room_noise
    from ..lint.scenarios import through

    caplog.set_level(logging.WARNING, logger="voicerelay.gateway.session")
    gw, url = gateway
    speech = read_recording("what_can_you_do")
    sessions = {}
    for name, pcm in (("narrow", through(speech, 8000)), ("clean", speech)):
        browser = await browsers().connect(url)
        session_id = await browser.start()
        audio = np.concatenate((pcm, room_noise(800)))
        for i in range(0, len(audio), 2400):
            await browser.emit("audio_data", {"audio": base64.b64encode(audio[i:i + 2400].astype("<i2").tobytes()).decode()})
        await browser.wait_for("response_complete")
        [session] = [s for s in gw.sessions.values() if s.id == session_id]
        sessions[name] = session.state()["lint"]
        await browser.emit("end_session")
        await browser.wait_for("session_ended")
    assert sessions["clean"] == {"count": 0, "findings": []}
    assert sessions["narrow"]["count"] == 1 and sessions["narrow"]["findings"][0]["code"] == "VR108"
    [line] = [r.getMessage() for r in caplog.records if " VR108 " in r.getMessage()]
    assert "nothing above 4 kHz" in line


async def test_lint_can_be_turned_off(make_gateway: Any, browsers: Any) -> None:
    gw = make_gateway(lint=False)
    async with serving(gw.asgi_app()) as url:
        browser = await browsers().connect(url)
        session_id = await browser.start()
        [session] = [s for s in gw.sessions.values() if s.id == session_id]
        assert session.state()["lint"] is None and session.lint is None


async def test_events_reach_the_browser_in_order_with_binary_attachments_and_its_followers(
        gateway: tuple[Any, str], browsers: Any) -> None:
    """What a session sends its own browser goes straight to engine.io, one packet per event:
    in the order emitted, bytes as Socket.IO binary attachments (an agent's ``event_emitter``
    may send any payload), and to a follower (another connection that acted on the session)
    through python-socketio as before."""
    gw, url = gateway
    browser = await browsers().connect(url)
    session_id = await browser.start()
    follower = await browsers().connect(url)
    await follower.emit("get_state", {"session_id": session_id})
    await follower.wait_for("session_state")
    session = gw.sessions[browser.sio.get_sid()]
    blob = bytes(range(256)) * 8
    for i in range(40):
        await session.emit("note", {"i": i})
        if i == 20:
            await session.emit("blob", {"data": blob, "n": 2})
    await session.emit("note", "not a dict")  # (no session_id added)
    for receiver in (browser, follower):
        await receiver.wait_for("note", lambda d: d == "not a dict")
        names = [n for n, _ in receiver.events if n in ("note", "blob")]
        assert names == ["note"] * 21 + ["blob"] + ["note"] * 20
        assert [d["i"] for d in receiver.of("note")[:-1]] == list(range(40))
        assert receiver.of("blob") == [{"data": blob, "n": 2, "session_id": session_id}]


async def test_an_event_for_a_browser_that_is_gone_is_dropped_quietly(gateway: tuple[Any, str],
                                                                      browsers: Any) -> None:
    gw, url = gateway
    browser = await browsers().connect(url)
    await browser.start()
    session = gw.sessions[browser.sio.get_sid()]
    await browser.close()
    async with asyncio.timeout(10):
        while not session.ended:
            await asyncio.sleep(0.02)
    await session.emit("note", {"i": 1})  # raises nothing, sends nothing
    await session.emit("blob", {"data": b"\x00\x01"})
