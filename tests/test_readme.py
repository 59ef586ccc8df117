"""Every Python block of the README runs as written, against real servers where it needs one."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from voicerelay.backend.server import BackendServer
from voicerelay.gateway.server import Gateway

from .gateway.conftest import make_gateway, serving  # noqa: F401  (fixtures)

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def block_with(marker: str) -> str:
    [block] = [b for b in python_blocks() if marker in b]
    return block


async def run_block(block: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    full_env.pop("OPENAI_API_KEY", None)
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-c", block], capture_output=True, text=True,
                                   timeout=timeout, env=full_env)


def test_every_python_block_is_one_of_these() -> None:
    assert len(python_blocks()) == 4  # a new block needs its own test below


def test_the_modes_block_defines_what_serve_loads() -> None:
    namespace: dict[str, Any] = {}
    exec(block_with("FUNCTION_MAP = "), namespace)  # noqa: S102 - the README's own code
    assert callable(namespace["on_transcript"]) and namespace["FUNCTION_MAP"]["get_weather"]("Paris") == {"temp_c": 18}
    Gateway(tools=namespace["TOOLS"], function_map=namespace["FUNCTION_MAP"])  # a valid configuration


async def test_the_fastapi_block_serves_the_gateway_under_its_mount() -> None:
    namespace: dict[str, Any] = {}
    exec(block_with("from fastapi import FastAPI"), namespace)  # noqa: S102 - the README's own code
    transport = httpx.ASGITransport(app=namespace["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        health = await http.get("/voice/health")
        config = await http.get("/voice/session-config")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert config.json()["voice"] == "echo" and config.json()["mode"] == "agent"
    await namespace["gateway"].close()


async def test_the_gateway_client_block_talks_to_a_gateway(make_gateway: Callable[..., Gateway]) -> None:  # noqa: F811
    gateway = make_gateway(token="s3cret")
    async with serving(gateway.asgi_app()) as url:
        result = await run_block(block_with("GatewayClient("), {"VOICERELAY_URL": url})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "My name is voicerelay. I am an offline test assistant." in lines
    assert any(line.startswith("listening {") or line.startswith("speaking {") for line in lines), lines
    assert "ended: ended" in lines


async def test_the_openai_sdk_block_talks_to_the_backend(backend: BackendServer) -> None:
    result = await run_block(block_with("AsyncOpenAI("), {"VOICERELAY_BACKEND": f"ws://127.0.0.1:{backend.port}/v1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello! I am the voicerelay test assistant. How can I help?",
                                          "session.created"]
