"""The demo page in headless Chromium (Debian's, driven by Playwright; no browser download):
a recording as the fake microphone, the user transcript shown and the reply played; the page
reports what its AudioWorklet played, and the truncate after an interruption uses it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from ..conftest import read_recording, room_noise
from .conftest import serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def chromium_args(fake_mic: Path) -> list[str]:
    return ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={fake_mic}",
            "--autoplay-policy=no-user-gesture-required"]


async def test_the_demo_page_hears_the_microphone_and_plays_the_reply(make_gateway: Any, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    mic = tmp_path / "mic.wav"  # Chromium loops the file: speech, then a long pause
    soundfile.write(mic, np.concatenate((room_noise(500), read_recording("hello_there"), room_noise(6000))), 24_000,
                    subtype="PCM_16")
    gw = make_gateway()
    console: list[str] = []
    async with serving(gw.asgi_app()) as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(mic))
        try:
            context = await browser.new_context()
            await context.grant_permissions(["microphone"], origin=url)
            page = await context.new_page()
            page.on("console", lambda msg: console.append(msg.text))
            await page.goto(url)
            await page.click("#start")
            await page.wait_for_function("window.voicerelay.sessionStarted", timeout=15_000)
            await page.wait_for_function("window.voicerelay.userTranscript === 'hello there'", timeout=30_000)
            await page.wait_for_function("window.voicerelay.deltasPlayed > 5", timeout=30_000)
            state = await page.evaluate("window.voicerelay")
            assert state["assistantTranscript"] == "Hello! I am the voicerelay test assistant. How can I help?"
            assert state["chunksSent"] > 20 and state["errors"] == []
            assert "hello there" in await page.inner_text("#log")
            await page.click("#stop")
            await page.wait_for_function("window.voicerelay.sessionStarted === false", timeout=5_000)
        finally:
            await browser.close()
    assert not [line for line in console if "error" in line.lower()], console


async def test_the_page_reports_what_it_played_and_the_truncate_uses_it(make_gateway: Any, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    mic = tmp_path / "mic.wav"  # the user speaks again while the reply plays: an interruption
    soundfile.write(mic, np.concatenate((room_noise(500), read_recording("hello_there"), room_noise(1800),
                                         read_recording("how_are_you"), room_noise(8000))), 24_000, subtype="PCM_16")
    gw = make_gateway(record_dir=tmp_path / "rec")
    async with serving(gw.asgi_app()) as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(mic))
        try:
            context = await browser.new_context()
            await context.grant_permissions(["microphone"], origin=url)
            page = await context.new_page()
            await page.goto(url)
            await page.click("#start")
            await page.wait_for_function("window.voicerelay.interruptions > 0", timeout=30_000)
            await page.wait_for_function("window.voicerelay.positionsSent.some((p) => p.why === 'stopped')",
                                         timeout=5_000)
            [session] = gw.sessions.values()
            assert session.playback.reports > 0  # the gateway took the page's positions
            state = await page.evaluate("window.voicerelay")
            session_id = session.id
            await page.click("#stop")
            await page.wait_for_function("window.voicerelay.sessionStarted === false", timeout=5_000)
        finally:
            await browser.close()
    lines = [json.loads(line) for line in (tmp_path / "rec" / session_id / "session.jsonl").read_text().splitlines()]
    truncates = [e["event"] for e in lines if e["dir"] == "up" and e["event"]["type"] == "conversation.item.truncate"]
    assert truncates, "the interruption truncated nothing"
    truncate = truncates[0]
    reported = {p["played_ms"] for p in state["positionsSent"] if p["item_id"] == truncate["item_id"]}
    assert truncate["audio_end_ms"] in reported, (truncate, state["positionsSent"])
    assert state["errors"] == []


async def test_the_page_says_how_to_install_a_missing_socketio_client(make_gateway: Any, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    gw = make_gateway(node_modules=tmp_path)  # an empty node_modules: socket.io-client not installed
    assert gw.socketio_js is None
    async with serving(gw.asgi_app()) as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(tmp_path / "none.wav"))
        try:
            page = await browser.new_page()
            await page.goto(url)
            await page.click("#start")
            notice = await page.wait_for_selector("#notice:not([hidden])", timeout=5_000)
            assert "npm install" in await notice.inner_text()
        finally:
            await browser.close()


async def test_the_page_says_at_load_the_client_is_missing_and_finds_it_once_installed(make_gateway: Any,
                                                                                       tmp_path: Path) -> None:
    """Before Start, the page says the Socket.IO client is missing; after an ``npm install`` a
    reload works without restarting the gateway."""
    from playwright.async_api import async_playwright

    node_modules = tmp_path / "node_modules"
    node_modules.mkdir()
    gw = make_gateway(node_modules=node_modules)
    mic = tmp_path / "mic.wav"
    soundfile.write(mic, np.concatenate((room_noise(500), read_recording("hello_there"), room_noise(6000))), 24_000,
                    subtype="PCM_16")
    async with serving(gw.asgi_app()) as url, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(mic))
        try:
            context = await browser.new_context()
            await context.grant_permissions(["microphone"], origin=url)
            page = await context.new_page()
            await page.goto(url)
            notice = await page.wait_for_selector("#notice:not([hidden])", timeout=5_000)  # no click
            assert "npm install" in await notice.inner_text()
            # `npm install` while the gateway runs
            installed = node_modules / "socket.io-client" / "dist"
            installed.mkdir(parents=True)
            source = Path(os.environ.get("VOICERELAY_NODE_MODULES") or Path(__file__).parents[2] / "node_modules")
            shutil.copy(source / "socket.io-client" / "dist" / "socket.io.min.js", installed)
            await page.reload()
            assert await page.evaluate("typeof io") == "function"
            assert await page.is_hidden("#notice")
            await page.click("#start")
            await page.wait_for_function("window.voicerelay.sessionStarted", timeout=15_000)
            await page.click("#stop")
        finally:
            await browser.close()
