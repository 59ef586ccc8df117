"""``voicerelay talk --tui``: the screen over a live session, driven with Textual's Pilot.

The session is real: PortAudio in this process opens the PulseAudio rig's virtual microphone and
speakers (``tests/audio_rig.py``), a recording is played into the microphone, and the embedded
backend of the test answers over a WebSocket. The assertions read the widgets.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
from textual.widgets import Static

from voicerelay.backend.server import BackendServer
from voicerelay.cost import cost_state, format_usd
from voicerelay.protocol.config import RealtimeConfig
from voicerelay.protocol.events import Dialect
from voicerelay.talk import TalkOptions
from voicerelay.tui.events_view import EventLog
from voicerelay.tui.talk_app import HelpScreen, TalkApp

from .. import audio_rig
from ..test_talk import say

pytestmark = pytest.mark.skipif(not audio_rig.available(),
                                reason="needs PulseAudio for the virtual sound card: "
                                       "apt-get install pulseaudio pulseaudio-utils")


#: The environment this process's PortAudio enumerated its devices under (it does so once, when
#: sounddevice is first imported, and sounddevice has no public way to enumerate them again).
_portaudio_env: dict[str, str] | None = None


@pytest.fixture
def rig_devices(rig: audio_rig.AudioRig, monkeypatch: pytest.MonkeyPatch) -> Iterator[audio_rig.AudioRig]:
    """This process's PortAudio on the rig: the Pulse server, its microphone and speakers."""
    global _portaudio_env
    env = {key: value for key, value in rig.env().items() if key in rig.client_env or key.startswith("PULSE_")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if "sounddevice" in sys.modules and _portaudio_env != env:
        pytest.fail("sounddevice was imported in this process before the rig's environment was set, so PortAudio "
                    "lists other devices: import it only under this fixture")
    import sounddevice  # noqa: F401 - PortAudio enumerates the rig's devices now, once for the process

    _portaudio_env = env
    yield rig


def text_of(app: TalkApp, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def event_log(app: TalkApp) -> list[str]:
    return [strip.text for strip in app.query_one(EventLog).lines]


async def until(condition: Callable[[], Any], timeout: float = 20.0, every: float = 0.02) -> Any:
    """Poll ``condition`` until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


async def test_a_live_session_fills_the_screen(rig_devices: audio_rig.AudioRig, backend: BackendServer, tmp_path: Path) -> None:
    options = TalkOptions(config=RealtimeConfig(), backend=backend.url, dialect=Dialect.GA,
                          record=tmp_path / "first")
    app = TalkApp(options)
    states: list[str] = []  # the state widget's label, each time it changed
    playback_seen: list[str] = []  # the playback buffer line, while it was not empty

    def sample() -> None:
        note_state(text_of(app, "#state"))
        playback_seen.extend(line for line in text_of(app, "#queues").splitlines()
                             if line.startswith("playback buffer") and line != "playback buffer 0 ms")

    async def watch() -> None:
        while True:
            sample()
            await asyncio.sleep(0.01)

    def note_state(shown: str) -> None:
        label = shown.split("   ")[0].removeprefix("● ")
        if not states or states[-1] != label:
            states.append(label)

    async with app.run_test(size=(150, 44)) as pilot:
        # every label the state widget is given, however briefly it shows (THINKING can last less
        # than a millisecond once recognition finished during the turn's closing silence)
        state_widget = app.query_one("#state", Static)
        show = state_widget.update

        def update(content: Any = "", *args: Any, **kwargs: Any) -> None:
            show(content, *args, **kwargs)
            note_state(str(content))

        state_widget.update = update  # type: ignore[method-assign]
        watcher = asyncio.create_task(watch())
        await until(lambda: app.talk is not None and "LISTENING" in text_of(app, "#state"))
        assert "talking to" in str(app.sub_title) and "REC" in text_of(app, "#state")

        # a spoken turn: the transcripts, the states it went through, the queues, the latency
        await say(rig_devices, "hello_there")
        await until(lambda: "Hello! I am the voicerelay test assistant" in text_of(app, "#transcript"))
        await until(lambda: "LISTENING" in text_of(app, "#state") and app.view.status.playback_ms == 0)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        sample()
        transcript = text_of(app, "#transcript")
        assert "     user  hello there" in transcript, transcript
        assert states == ["CONNECTING", "LISTENING", "USER SPEAKING", "THINKING", "SPEAKING", "LISTENING"], states
        assert playback_seen, "the playback buffer never showed the reply"  # it filled, then drained
        latency = app.talk.relay.session.turns[0].first_audio_ms
        assert f"last {latency:.0f} ms" in text_of(app, "#latency") and f"p50 {latency:.0f} ms" in text_of(
            app, "#latency")
        assert "turns 1" in text_of(app, "#latency")
        queued = re.search(r"mic → upstream  (\d+) frames? \((\d+) ms\)", text_of(app, "#queues"))
        assert queued and int(queued[1]) * 20 == int(queued[2]) and int(queued[1]) < 50, text_of(app, "#queues")
        assert "dropped         0 ms" in text_of(app, "#queues")
        assert "dBFS" in str(app.query_one("#meter", Static).content)
        tokens = app.talk.relay.session.turns[0].usage["total_tokens"]
        assert f"total {tokens}" in text_of(app, "#session"), text_of(app, "#session")
        assert "remaining" in text_of(app, "#session") and "remaining -" not in text_of(app, "#session")
        cost = cost_state(app.talk.relay.session, app.talk.relay.spec)  # the panel shows the session's cost
        assert cost["usd"] > 0 and f"cost      {format_usd(cost['usd'], cost['estimate'])}" in text_of(app, "#session")
        assert "lint      0 findings" in text_of(app, "#session")  # linted live, and nothing wrong

        # the event log: raw events, audio hidden and base64 elided; filter and pause
        log = event_log(app)
        assert any(line.startswith('← {"type":"response.done"') for line in log), log
        assert any(line.startswith('→ {"type":"session.update"') for line in log), log
        assert not any("input_audio_buffer.append" in line or "output_audio.delta" in line for line in log)
        await pilot.press("a")  # audio events too: with their base64 elided
        await until(lambda: any("input_audio_buffer.append" in line for line in event_log(app)))
        assert all("chars of base64" in line for line in event_log(app) if "input_audio_buffer.append" in line)
        await pilot.press("a", "slash", *"speech", "enter")
        await until(lambda: event_log(app) and all("speech" in line for line in event_log(app)))
        await pilot.press("p")
        assert "paused" in str(app.query_one(EventLog).border_title)

        # keys: stop the --record recording, mute, help
        await pilot.press("r")
        await until(lambda: "REC" not in text_of(app, "#state"))
        recorded = [json.loads(line) for line in (tmp_path / "first" / "session.jsonl").read_text().splitlines()]
        assert any(line["event"].get("type") == "response.done" for line in recorded)
        await pilot.press("r")  # a new recording, beside the first
        folder = Path((await until(lambda: re.search(r"REC (\S+)", text_of(app, "#state")))).group(1))
        assert folder.parent == tmp_path and folder.name.startswith("talk-")
        await pilot.press("r")
        await until(lambda: "REC" not in text_of(app, "#state"))
        lines = [json.loads(line) for line in (folder / "session.jsonl").read_text().splitlines()]
        assert lines[0]["event"]["type"] == "voicerelay.recording" and lines[0]["event"]["command"] == "talk"
        assert any(line["event"]["type"] == "input_audio_buffer.append" for line in lines[1:])  # the microphone
        await pilot.press("m")
        await until(lambda: "microphone muted" in text_of(app, "#state")
                    and "muted" in str(app.query_one("#meter", Static).content))
        await say(rig_devices, "what_is_your_name")  # not heard: the microphone sends silence
        await asyncio.sleep(1.0)
        assert "what is your name" not in text_of(app, "#transcript") and len(app.talk.relay.session.turns) == 1
        await pilot.press("m")
        await until(lambda: "microphone muted" not in text_of(app, "#state"))
        await pilot.press("question_mark")
        await until(lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(lambda: not isinstance(app.screen, HelpScreen))

        # `i` cuts a reply off: the conversation says how much was heard, the log shows the truncate
        await pilot.press("p")  # resume the log: what arrived while paused is written
        await pilot.press("slash", *"truncate", "enter")
        await say(rig_devices, "what_can_you_do")  # a 4 s reply
        await until(lambda: "SPEAKING" in text_of(app, "#state") and app.view.status.playback_ms > 0)
        await asyncio.sleep(0.5)
        await pilot.press("i")
        heard = await until(lambda: re.search(r"\[interrupted: ([\d.]+) s of ([\d.]+) s heard\]",
                                              text_of(app, "#transcript")))
        assert 0.3 < float(heard[1]) < float(heard[2]), heard[0]
        await until(lambda: any('"type":"conversation.item.truncate"' in line for line in event_log(app)))

        started = time.monotonic()
        await pilot.press("q")
        await until(lambda: app.return_code is not None, timeout=5)
    assert app.return_code == 0 and app.failure is None
    assert time.monotonic() - started < 2


async def test_a_lint_finding_shows_in_the_conversation_and_the_session_pane(
        rig_devices: audio_rig.AudioRig, backend: BackendServer, tmp_path: Path) -> None:
    """A microphone that delivers telephone-band audio (here: speech that went through 8 kHz, played
    into the virtual microphone) is what VR108 finds; talk --tui shows it as it is found."""
    from ..conftest import read_recording
    from ..lint.scenarios import through

    narrow = tmp_path / "narrow.wav"
    soundfile.write(narrow, through(read_recording("what_can_you_do"), 8000), 24_000, subtype="PCM_16")
    app = TalkApp(TalkOptions(config=RealtimeConfig(), backend=backend.url, dialect=Dialect.GA))
    async with app.run_test(size=(150, 44)):
        await until(lambda: app.talk is not None and "LISTENING" in text_of(app, "#state"))
        proc = await asyncio.create_subprocess_exec("paplay", "--device=vr_mic_feed", str(narrow),
                                                    env=rig_devices.env(None, None))
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await until(lambda: "VR108" in text_of(app, "#transcript"))
        assert "nothing above 4 kHz" in text_of(app, "#transcript")
        await until(lambda: "1 finding, newest VR108" in text_of(app, "#session"))
        await app.action_quit()


async def test_push_to_talk_and_typing_from_the_screen(rig_devices: audio_rig.AudioRig,
                                                      backend: BackendServer) -> None:
    app = TalkApp(TalkOptions(backend=backend.url, push_to_talk=True, text=True))
    async with app.run_test(size=(150, 44)) as pilot:
        await until(lambda: app.talk is not None and "push-to-talk: space starts a turn" in text_of(app, "#state"))
        await pilot.press("space")
        await until(lambda: "talking: space sends" in text_of(app, "#state"))
        await say(rig_devices, "hello_there")
        await pilot.press("space")  # no turn detection: this sends the turn
        await until(lambda: "Hello! I am the voicerelay test assistant" in text_of(app, "#transcript"))
        assert "     user  hello there" in text_of(app, "#transcript")
        await pilot.press("t", *"what is your name", "enter")
        await until(lambda: "My name is voicerelay" in text_of(app, "#transcript"))
        assert "     user  what is your name" in text_of(app, "#transcript")
        await pilot.press("escape", "q")
        await until(lambda: app.return_code is not None, timeout=5)
    assert app.return_code == 0


async def test_an_unusable_device_ends_the_app_with_its_message(rig_devices: audio_rig.AudioRig, backend: BackendServer) -> None:
    app = TalkApp(TalkOptions(backend=backend.url, input_device="no such microphone"))
    async with app.run_test() as pilot:
        await until(lambda: app.return_code is not None, timeout=10)
        await pilot.pause()
    assert app.return_code == 2
    assert app.failure is not None and "no such microphone" in str(app.failure)


def _run_in_a_terminal(args: list[str], env: dict[str, str], ready: bytes, keys: bytes,
                       timeout: float = 30.0) -> tuple[int, bytes, float]:
    """Run a command in a pseudo-terminal; once ``ready`` appears on its screen, type ``keys``.

    Returns (exit code, everything it wrote, seconds from the keys to its exit).
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the command
        os.execvpe(args[0], args, env)
    out, typed_at = b"", None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # the child closed the terminal: it exited
                    break
                if not data:
                    break
                out += data
            if typed_at is None and ready in out:
                os.write(fd, keys)
                typed_at = time.monotonic()
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out, (time.monotonic() - typed_at) if typed_at else -1.0


async def test_talk_tui_in_a_terminal(rig: audio_rig.AudioRig, backend: BackendServer) -> None:
    """The command itself: the screen comes up in a terminal, `q` ends it cleanly."""
    env = {**rig.env(), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("OPENAI_API_KEY", None)
    code, out, quit_s = await asyncio.to_thread(
        _run_in_a_terminal, [sys.executable, "-m", "voicerelay", "talk", "--tui", "--backend", backend.url],
        env, b"LISTENING", b"q")
    screen = out.decode("utf-8", "replace")
    assert code == 0 and 0 <= quit_s < 2, (code, quit_s, screen[-500:])
    assert "Traceback" not in screen and "error" not in screen.lower()
    assert "\x1b[?1049l" in screen  # it left the alternate screen, and printed nothing after it
    assert re.sub(r"\x1b\[[<>?]?[\d;]*[a-zA-Z]", "", screen.rsplit("\x1b[?1049l", 1)[1]).strip() == ""


def test_talk_tui_with_an_unusable_device_is_one_line(rig: audio_rig.AudioRig) -> None:
    result = subprocess.run([sys.executable, "-m", "voicerelay", "talk", "--tui", "--input-device", "no such mic"],
                            env={**rig.env(), "COLUMNS": "200"}, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "voicerelay: error: no input device matches 'no such mic'; input devices: 0 'pulse', 1 'default'"]
