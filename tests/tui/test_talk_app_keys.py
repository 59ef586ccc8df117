"""``voicerelay talk --tui`` at its edges: the footer shows the keys that apply, the message box
gives the keys back after sending, Ctrl-C quits from the help screen.

Real sessions on the PulseAudio rig against the embedded backend: the command in tmux, the app
under Pilot.
"""

from __future__ import annotations

import asyncio
import sys
import pytest
from textual.widgets import Input

from voicerelay.backend.server import BackendServer
from voicerelay.talk import TalkOptions
from voicerelay.tui.talk_app import HelpScreen, TalkApp

from .. import audio_rig
from . import terminal
from .test_talk_app import rig_devices, text_of, until  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not audio_rig.available(), reason="needs PulseAudio: apt-get install pulseaudio"),
    pytest.mark.skipif(not terminal.available(), reason="needs tmux: apt-get install tmux"),
]


def talk_in_a_terminal(rig: audio_rig.AudioRig, backend: BackendServer, *args: str) -> terminal.Terminal:
    env = rig.env()
    env.pop("OPENAI_API_KEY", None)
    return terminal.Terminal([sys.executable, "-m", "voicerelay", "talk", "--tui", "--backend", backend.url, *args],
                             env, size=(150, 40))


def footer(screen: str) -> str:
    return screen.rstrip().splitlines()[-1]


@pytest.mark.parametrize("flags", [(), ("--push-to-talk", "--text")])
async def test_the_footer_shows_the_keys_that_apply(rig: audio_rig.AudioRig, backend: BackendServer,
                                                    flags: tuple[str, ...]) -> None:
    with talk_in_a_terminal(rig, backend, *flags) as term:
        await asyncio.to_thread(term.wait_for, "LISTENING|PUSH-TO-TALK|push-to-talk: space", 20)
        keys = footer(term.screen())
        if not flags:  # pressed anyway, the hidden keys say why they do nothing
            term.keys("t")
            await asyncio.to_thread(term.wait_for, "typing is off: start talk with --text", 5)
            term.keys("Space")
            await asyncio.to_thread(term.wait_for, "push-to-talk is off", 5)
        term.keys("q")
        assert await asyncio.to_thread(term.exit_code) == 0, term.after_exit()
    assert "mute" in keys and "interrupt" in keys and "quit" in keys, keys
    if flags:
        assert "space push-to-talk" in keys and "t type a message" in keys, keys
    else:
        assert "push-to-talk" not in keys and "type" not in keys, keys


async def test_ctrl_c_quits_from_the_help_screen(rig: audio_rig.AudioRig, backend: BackendServer) -> None:
    with talk_in_a_terminal(rig, backend) as term:
        await asyncio.to_thread(term.wait_for, "LISTENING", 20)
        term.keys("?")
        await asyncio.to_thread(term.wait_for, "this help", 5)
        term.keys("C-c")
        code = await asyncio.to_thread(term.exit_code, 5)
        left = term.after_exit()
    assert code == 0, left
    assert left.strip() == "", left


async def test_ctrl_c_on_the_help_screen_under_pilot(rig_devices: audio_rig.AudioRig,  # noqa: F811
                                                     backend: BackendServer) -> None:
    app = TalkApp(TalkOptions(backend=backend.url))
    async with app.run_test(size=(150, 44)) as pilot:
        await until(lambda: app.talk is not None and "LISTENING" in text_of(app, "#state"))
        await pilot.press("question_mark")
        await until(lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("ctrl+c")
        await until(lambda: app.return_code is not None, timeout=5)
    assert app.return_code == 0


async def test_sending_a_message_gives_the_keys_back(rig_devices: audio_rig.AudioRig,  # noqa: F811
                                                     backend: BackendServer) -> None:
    app = TalkApp(TalkOptions(backend=backend.url, text=True))
    async with app.run_test(size=(150, 44)) as pilot:
        await until(lambda: app.talk is not None and "LISTENING" in text_of(app, "#state"))
        box = app.query_one("#message", Input)
        await pilot.press("t", *"what is your name", "enter")
        await until(lambda: "My name is voicerelay" in text_of(app, "#transcript"))
        assert app.focused is not box and not box.has_class("visible")
        await pilot.press("m")  # a key of the screen, not a letter in the box
        await until(lambda: "microphone muted" in text_of(app, "#state"))
        assert box.value == ""
        await pilot.press("t", *"hello there", "enter")  # t opens the box again
        await until(lambda: text_of(app, "#transcript").count("     user  ") == 2)
        await pilot.press("q")
        await until(lambda: app.return_code is not None, timeout=5)
    assert app.return_code == 0
