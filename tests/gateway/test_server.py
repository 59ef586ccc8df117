"""``gateway/server.py``: the ``Gateway`` as a library: how it is built (and refused), what it
says about itself (``health``, ``session_config``), whether its upstream is reachable, and
mounted in a host app."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from voicerelay.errors import GatewayConfigError
from voicerelay.gateway.server import Gateway

from .conftest import serving

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.mark.parametrize(("kw", "message"), [
    ({"backend": "carrier-pigeon"}, "--backend must be"),
    ({"backend": "embedded", "config_overrides": {"turn_detection_mode": "sometimes"}}, "turn_detection_mode"),
    ({"backend": "embedded", "redis_url": "http://localhost:6379"}, "--redis takes"),
])
def test_a_gateway_built_wrong_is_a_gateway_config_error(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(GatewayConfigError, match=message):
        Gateway(**kw)


def test_health_and_session_config_say_how_it_was_built() -> None:
    plain = Gateway(backend="embedded", token="s3cret", max_chunk_b64=4096)
    assert plain.health() == {"status": "ok", "sessions": 0, "connections": 0, "backend": "embedded"}
    config = plain.session_config()
    assert (config["mode"], config["token_required"], config["max_chunk_b64"]) == ("realtime", True, 4096)
    assert "s3cret" not in json.dumps(config)
    agent = Gateway(backend="embedded", on_transcript=lambda *a: None)
    assert agent.session_config()["mode"] == "agent" and agent.config.create_response is False
    functions = Gateway(backend="ws://127.0.0.1:1/v1/realtime", tools=[WEATHER], function_map={"get_weather": print})
    assert functions.session_config()["mode"] == "functions" and functions.health()["backend"] == "custom"
    assert [t["name"] for t in functions.config.tools] == ["get_weather"]


async def test_a_degraded_cluster_makes_health_degraded() -> None:
    gw = Gateway(backend="embedded", redis_url="redis://127.0.0.1:1", node_id="node-x")
    # not checked yet: never "ok" before Redis answered
    assert gw.health()["cluster"] == {"node": "node-x", "redis": "starting", "error": None, "remote_sessions": 0}
    assert gw.health()["status"] == "degraded"
    assert gw.cluster is not None
    try:
        await gw.startup()  # port 1: refused
        health = gw.health()
        assert health["status"] == "degraded" and health["cluster"]["redis"] == "degraded"
        assert health["cluster"]["error"].startswith("ConnectionError: ") and "\n" not in health["cluster"]["error"]
    finally:
        await gw.close()


async def test_upstream_reachable() -> None:
    assert await Gateway(backend="embedded").upstream_reachable()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert await Gateway(backend=f"ws://127.0.0.1:{port}/v1/realtime").upstream_reachable()
    # closed now: nothing listens on that port
    assert not await Gateway(backend=f"ws://127.0.0.1:{port}/v1/realtime").upstream_reachable()


async def test_mounted_in_fastapi_with_ragent_overrides(engines: Any, browsers: Any) -> None:
    import httpx
    from fastapi import FastAPI

    gw = Gateway(backend="embedded", embedded_options={"engines": engines, "pace": 20.0},
                 config_overrides={"voice": "echo", "turn_detection_mode": "aggressive", "max_output_tokens": 200})
    app = FastAPI(lifespan=gw.lifespan)

    @app.get("/api/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    app.mount("/voice", gw.asgi_app())
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/api/ping")).json() == {"pong": "yes"}
        config = (await http.get("/voice/session-config")).json()
        assert config["voice"] == "echo" and config["turn_detection"]["silence_duration_ms"] == 250
        assert config["max_output_tokens"] == 200
        browser = await browsers().connect(url, socketio_path="/voice/socket.io")
        await browser.start()
        await browser.emit("text_input", {"text": "how are you"})
        assert (await browser.wait_for("ai_response"))["response"] == "I am fine, thank you for asking."
        assert json.dumps(config).count("sk-") == 0


