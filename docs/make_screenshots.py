"""Write the README's pictures of the screens (Textual's own SVG export):

    python docs/make_screenshots.py      # docs/inspect.svg, docs/talk.svg and docs/inspect-proxy.svg

The first two from fixed data (``voicerelay/tui/demo.py``). The third from a real run: an
embedded backend, ``voicerelay proxy`` in front of it (linting, with its monitor), a client that
makes a protocol mistake and then asks a question by voice, and ``inspect`` connected to the
proxy's monitor, showing that session's row (state, cost, lint finding) and its transcripts.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import json
import socket
from typing import Any

import numpy as np

from voicerelay.tui.demo import EVENTS, URL, show_talk
from voicerelay.tui.inspect_app import InspectApp
from voicerelay.tui.talk_app import TalkApp

HERE = Path(__file__).resolve().parent


async def inspect_screen() -> None:
    app = InspectApp(URL, connect=False)
    async with app.run_test(size=(130, 34)) as pilot:
        for name, data in EVENTS:
            await app.feed(name, data)
        await pilot.pause(0.2)
        app.save_screenshot(filename="inspect.svg", path=str(HERE))
    print(f"wrote {HERE / 'inspect.svg'}")


async def talk_screen() -> None:
    app = TalkApp(None)
    async with app.run_test(size=(130, 34)) as pilot:
        show_talk(app.view)
        await pilot.pause(0.2)
        app.save_screenshot(filename="talk.svg", path=str(HERE))
    print(f"wrote {HERE / 'talk.svg'}")


async def proxied_session(url: str, answered: asyncio.Event, done: asyncio.Event) -> None:
    """A client of the proxy: a ``response.cancel`` with nothing to cancel (lint VR106), then a
    question by voice (a shipped recording, over a quiet room's noise) and its answer; it sets
    ``answered`` and keeps the session open until ``done``."""
    import soundfile
    from websockets.asyncio.client import connect

    async def next_of(ws: Any, etype: str) -> None:
        async with asyncio.timeout(30):
            while json.loads(await ws.recv())["type"] != etype:
                pass

    speech, _ = soundfile.read(HERE.parent / "recordings" / "what_is_your_name.wav", dtype="int16")
    speech = np.concatenate([speech, np.zeros(24_000, dtype=np.int16)])
    pcm = (speech + np.random.default_rng(7).normal(0, 30, len(speech)).astype(np.int16)).tobytes()
    async with connect(url + "?model=gpt-realtime") as ws:
        await next_of(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}}))
        await next_of(ws, "session.updated")
        await ws.send(json.dumps({"type": "response.cancel"}))
        await next_of(ws, "error")
        for i in range(0, len(pcm), 4800):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(pcm[i:i + 4800]).decode()}))
        await next_of(ws, "response.done")
        answered.set()
        await done.wait()


async def proxy_screen(out: Path = HERE, name: str = "inspect-proxy.svg") -> InspectApp:
    """``inspect`` on a proxied session, from a real run; returns the app (its table, for tests)."""
    from voicerelay.backend.server import BackendServer
    from voicerelay.proxy.lint import LiveLint
    from voicerelay.proxy.monitor import MonitorServer
    from voicerelay.proxy.server import ProxyServer

    sock = socket.create_server(("127.0.0.1", 0))
    async with BackendServer(port=0) as backend, \
            MonitorServer(sock, token=None, estimate=True, lint=LiveLint()) as monitor, \
            ProxyServer(backend.url, observers=[monitor.observer]) as proxy:
        app = InspectApp(monitor.url)
        async with app.run_test(size=(160, 30)) as pilot:
            async with asyncio.timeout(60):
                while not app.reached:
                    await pilot.pause(0.1)
                answered, done = asyncio.Event(), asyncio.Event()
                session = asyncio.create_task(proxied_session(proxy.url, answered, done))
                await answered.wait()
                while not any(v.state.get("turns") and v.transcripts for v in app.model.sessions.values()):
                    await pilot.pause(0.05)
            await pilot.pause(0.3)
            app.save_screenshot(filename=name, path=str(out))
            done.set()
            await session
    sock.close()
    print(f"wrote {out / name}")
    return app


if __name__ == "__main__":
    asyncio.run(inspect_screen())
    asyncio.run(talk_screen())
    asyncio.run(proxy_screen())
