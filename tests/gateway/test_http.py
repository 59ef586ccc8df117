"""The HTTP routes and the lifespan of a standalone gateway."""

from __future__ import annotations

from typing import Any

import pytest

from voicerelay.gateway.http import GC_YOUNG_THRESHOLD, find_socketio_client

from .conftest import serving


async def test_http_routes(make_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-shown-0123456789")
    gw = make_gateway(backend="ws://127.0.0.1:9/v1/realtime")
    async with serving(gw.asgi_app()) as url, httpx.AsyncClient(base_url=url) as http:
        health = (await http.get("/health")).json()
        assert health["status"] == "ok" and health["sessions"] == 0 and health["upstream_reachable"] is False
        config = await http.get("/session-config")
        assert config.json()["audio_format"]["sample_rate"] == 24000
        assert "sk-never-shown" not in config.text and "127.0.0.1:9" not in config.text
        page = await http.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert (await http.get("/static/app.js")).status_code == 200
        assert (await http.get("/static/../server.py")).status_code == 404
        assert (await http.post("/health")).status_code == 405


async def test_a_standalone_gateway_tunes_the_garbage_collector(make_gateway: Any) -> None:
    """Owning the process (its own lifespan), the gateway freezes what start-up loaded, so the
    collector's full passes, which pause every session, skip it, and collects the young generation
    less often; mounted in a host app it leaves the host's collector alone."""
    import gc

    async def lifespan(app: Any) -> list[str]:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[str] = []

        async def receive() -> dict[str, str]:
            return next(messages)

        async def send(message: dict[str, str]) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan"}, receive, send)
        return sent

    gc.unfreeze()
    threshold = gc.get_threshold()
    try:
        hosted = []

        async def host(scope: Any, receive: Any, send: Any) -> None:  # a host app that owns the lifespan
            hosted.append(scope["type"])
            await send({"type": "lifespan.startup.complete"})

        assert await lifespan(make_gateway().asgi_app(host)) == ["lifespan.startup.complete"]
        assert hosted == ["lifespan"] and gc.get_freeze_count() == 0 and gc.get_threshold() == threshold
        assert await lifespan(make_gateway().asgi_app()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_socketio_client_is_found_in_a_node_modules_folder(tmp_path: Any) -> None:
    assert find_socketio_client(tmp_path) is None
    js = tmp_path / "socket.io-client" / "dist" / "socket.io.min.js"
    js.parent.mkdir(parents=True)
    js.write_text("// io")
    assert find_socketio_client(tmp_path) == js
