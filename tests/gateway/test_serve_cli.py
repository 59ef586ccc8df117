"""``voicerelay serve`` as a user starts it: configuration errors are one line and exit 2; a
TOML config and --record work; the session length limit ends sessions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .conftest import Browser


def serve(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(cwd or "")}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "voicerelay", "serve", "--port", "0", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


@pytest.fixture
def agent_pkg(tmp_path: Path) -> Path:
    (tmp_path / "myagent.py").write_text(
        "TOOLS = [{'type': 'function', 'name': 'get_weather', 'description': 'weather'}]\n"
        "FUNCTION_MAP = {'get_weather': lambda city='': {'temp_c': 18}}\n"
        "def on_transcript(session_id, transcript, chat_payload, emitter, tts):\n    return None\n")
    return tmp_path


@pytest.mark.parametrize(("args", "message"), [
    (["--agent", "myagent:on_transcript", "--tools", "myagent:TOOLS", "--functions", "myagent:FUNCTION_MAP"],
     "cannot be used together"),
    (["--agent", "nosuchmodule:fn"], "cannot import nosuchmodule"),
    (["--agent", "myagent:missing"], "has no attribute missing"),
    (["--tools", "myagent:TOOLS"], "needs both"),
    (["--config", "missing.toml"], "no such file"),
    (["--backend", "http://nope"], "--backend"),
])
def test_configuration_errors_are_one_line(agent_pkg: Path, args: list[str], message: str) -> None:
    result = serve(*args, cwd=agent_pkg)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("voicerelay: error:") and message in last
    assert "Traceback" not in result.stderr


def test_a_bad_toml_value_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "voicerelay.toml").write_text('voice = "echo"\nturn_detection_mode = "sometimes"\n')
    result = serve("--config", "voicerelay.toml", cwd=tmp_path)
    assert result.returncode == 2 and "turn_detection_mode" in result.stderr


@contextlib.asynccontextmanager
async def serving_cli(*args: str, own_group: bool = False) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``voicerelay serve --port 0 ARGS`` as a subprocess; yields it and its URL (read from its log).
    ``own_group``: in a process group of its own, as a terminal runs it (for Ctrl-C to the group)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "voicerelay", "serve", "--port", "0", *args,
                                                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=own_group)
    assert proc.stderr is not None
    try:
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "serve exited early"
                match = re.search(r"voicerelay gateway on (http://127\.0\.0\.1:\d+)", line)
                url = match and match.group(1)
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def test_toml_config_record_and_session_limit(tmp_path: Path) -> None:
    (tmp_path / "voicerelay.toml").write_text(
        'voice = "echo"\ninstructions = "Be brief."\nturn_detection_mode = "aggressive"\n'
        "[turn_detection_params]\nsilence_duration_ms = 300\n")
    async with serving_cli("--config", str(tmp_path / "voicerelay.toml"), "--record", str(tmp_path / "rec"),
                     "--max-session-seconds", "3") as (_, url):
        import httpx

        async with httpx.AsyncClient(base_url=url) as http:
            config = (await http.get("/session-config")).json()
        assert config["voice"] == "echo" and config["turn_detection"]["silence_duration_ms"] == 300
        browser = await Browser().connect(url)
        try:
            session_id = await browser.start()
            await browser.emit("text_input", {"text": "hello"})
            await browser.wait_for("ai_response")
            error = await browser.wait_for("error", timeout=10)
            assert error["code"] == "session_timeout"
            assert (await browser.wait_for("session_ended"))["status"] == "expired"
        finally:
            await browser.close()
        folder = tmp_path / "rec" / session_id
        assert {p.name for p in folder.iterdir()} == {"session.jsonl", "input.wav", "output.wav"}
        assert "hello" in (folder / "session.jsonl").read_text()


async def test_ctrl_c_ends_each_session_before_stopping() -> None:
    async with serving_cli() as (proc, url):
        assert proc.stderr is not None
        browsers = [await Browser().connect(url) for _ in range(2)]
        for browser in browsers:
            await browser.start()
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        for browser in browsers:  # each hears why, before its connection closes
            assert (await browser.wait_for("session_ended", timeout=5))["status"] == "shutdown"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert time.monotonic() - started < 5
        for browser in browsers:
            await browser.close()
        rest = (await proc.stderr.read()).decode()
        assert "Traceback" not in rest and "ERROR" not in rest, rest


def test_a_port_in_use_is_one_line_exit_2_and_no_banner() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**os.environ, "NO_COLOR": "1"}
        env.pop("OPENAI_API_KEY", None)
        result = subprocess.run([sys.executable, "-m", "voicerelay", "serve", "--port", str(port)],
                                capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"voicerelay: error: cannot listen on 127.0.0.1:{port}: address already "
                                          "in use (pick another --port)"]


def test_agent_modules_are_imported_from_the_current_directory(agent_pkg: Path) -> None:
    import shutil

    script = shutil.which("voicerelay")
    assert script is not None, "the console script is installed with the package"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_API_KEY")}
    import socket

    with socket.socket() as busy:  # serve stops at the port, right after it loaded the agent
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([script, "serve", "--agent", "myagent:on_transcript", "--port", str(port)],
                                capture_output=True, text=True, timeout=30, env=env, cwd=agent_pkg)
    assert "cannot import myagent" not in result.stderr, result.stderr
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr


async def test_a_missing_socketio_client_is_one_line_at_startup(tmp_path: Path) -> None:
    """The demo page cannot work without npm's socket.io-client: serve says so once, in one line,
    before its banner, and says that no restart is needed after installing it."""
    empty = tmp_path / "node_modules"
    empty.mkdir()
    env = {**os.environ, "COLUMNS": "60", "NO_COLOR": "1", "VOICERELAY_NODE_MODULES": str(empty)}
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "voicerelay", "serve", "--port", "0",
                                                stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not lines or "voicerelay gateway on" not in lines[-1]:
                line = (await proc.stderr.readline()).decode()
                assert line, f"serve exited early: {lines}"
                lines.append(line.rstrip("\n"))
    finally:
        proc.terminate()
        await proc.wait()
    hints = [line for line in lines if "socket.io-client" in line or "Socket.IO client" in line]
    assert len(hints) == 1, lines
    assert "npm install" in hints[0] and "VOICERELAY_NODE_MODULES" in hints[0] and "no restart" in hints[0], hints
    assert lines.index(hints[0]) < len(lines) - 1  # before the banner
