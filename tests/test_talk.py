"""``voicerelay talk`` and ``voicerelay devices`` end to end, on a virtual sound card.

A private PulseAudio server (``tests/audio_rig.py``) gives a microphone ``vr_mic`` fed by
``paplay --device=vr_mic_feed`` and speakers ``vr_speaker`` recorded from their monitor with
``parecord``. ``voicerelay talk`` runs as a subprocess whose PortAudio reaches them through ALSA's
``pulse`` device (``PULSE_SOURCE``/``PULSE_SINK``), against the embedded backend of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicerelay.backend.server import BackendServer

from . import audio_rig
from .barge_in import assert_truncate_is_what_was_heard
from .conftest import RECORDINGS

pytestmark = pytest.mark.skipif(not audio_rig.available(),
                                reason="needs PulseAudio for the virtual sound card: "
                                       "apt-get install pulseaudio pulseaudio-utils")

#: A capture sample louder than this is sound; PulseAudio's resampling leaves +-1 on silence.
LOUD = 8


def _env(rig: audio_rig.AudioRig, **extra: str) -> dict[str, str]:
    env = {**rig.env(), "COLUMNS": "200", "NO_COLOR": "1", **extra}
    env.pop("OPENAI_API_KEY", None)
    return env


class Talker:
    """A running ``voicerelay talk`` whose output lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []  # stdout and stderr, interleaved as read
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [asyncio.create_task(self._pump(stream)) for stream in (proc.stdout, proc.stderr)]

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode().rstrip())

    async def expect(self, pattern: str, after: int = 0, timeout: float = 20) -> int:
        """Wait for a line matching ``pattern`` (from line ``after`` on); returns the index after it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(after, len(self.lines)):
                if regex.search(self.lines[i]):
                    return i + 1
            if self.proc.returncode is not None and all(p.done() for p in self._pumps):
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    async def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def quit(self) -> tuple[int, float]:
        """Ctrl-C; returns the exit code and how long it took to exit."""
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), 10)
        elapsed = time.monotonic() - started
        await self.close()
        return code, elapsed

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(*self._pumps)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.proc.stdin.wait_closed()


@contextlib.asynccontextmanager
async def talking(rig: audio_rig.AudioRig, backend: BackendServer, *args: str) -> AsyncIterator[Talker]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicerelay", "talk", "--backend", backend.url, *args, env=_env(rig),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    talker = Talker(proc)
    try:
        await talker.expect("Ctrl-C quits")
        yield talker
    finally:
        await talker.close()


@contextlib.asynccontextmanager
async def speaker_capture(rig: audio_rig.AudioRig, path: Path) -> AsyncIterator[None]:
    """Record what reaches the speakers (``vr_speaker.monitor``) into ``path``."""
    proc = await asyncio.create_subprocess_exec(
        "parecord", "--latency-msec=20", "--device=vr_speaker.monitor", "--rate=24000", "--channels=1",
        "--format=s16le", "--file-format=wav", str(path), env=rig.env(None, None))
    await asyncio.sleep(0.3)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 5)


async def say(rig: audio_rig.AudioRig, stem: str) -> None:
    """Play a recording into the virtual microphone (in real time)."""
    proc = await asyncio.create_subprocess_exec("paplay", "--device=vr_mic_feed", str(RECORDINGS / f"{stem}.wav"),
                                                env=rig.env(None, None))
    assert await asyncio.wait_for(proc.wait(), 20) == 0


def recorded_events(folder: Path) -> list[dict]:
    return [json.loads(line)["event"] for line in (folder / "session.jsonl").read_text().splitlines()[1:]]


def reply_audio(folder: Path, item_id: str) -> np.ndarray:
    """The reply audio received for ``item_id``, from the recording's output.wav."""
    refs = [e["delta"] for e in recorded_events(folder)
            if e["type"] == "response.output_audio.delta" and e.get("item_id") == item_id]
    pcm, _ = soundfile.read(folder / "output.wav", dtype="int16")
    start, size = refs[0]["offset"] // 2, sum(r["bytes"] for r in refs) // 2
    assert all(b["offset"] == a["offset"] + a["bytes"] for a, b in itertools.pairwise(refs))
    return pcm[start:start + size]


def heard_extent_ms(capture: np.ndarray, reply: np.ndarray) -> tuple[float, float]:
    """How much of ``reply`` reached the speakers, from the capture: (at least, at most) in ms.

    The capture is aligned on the reply's first sound. The played part ends where the capture
    goes quiet for 600 ms (the next reply comes seconds later); if that falls in a pause of the
    reply, the cut lies somewhere in the pause: up to the reply's next sound.
    """
    onset = int(np.flatnonzero(np.abs(capture) > LOUD)[0]) - int(np.flatnonzero(np.abs(reply) > LOUD)[0])
    loud = np.abs(capture[onset:].astype(np.int32)) > LOUD
    quiet_run = 24 * 600
    window = np.convolve(loud, np.ones(quiet_run, dtype=np.int32), mode="valid")  # loud samples per window
    quiet = np.flatnonzero(window == 0)
    end = int(quiet[0]) if quiet.size else loud.size
    later_sound = np.flatnonzero(np.abs(reply[end:]) > LOUD)
    return end / 24, (end + (int(later_sound[0]) if later_sound.size else reply.size - end)) / 24


async def test_a_spoken_turn_is_transcribed_and_the_reply_is_heard(rig: audio_rig.AudioRig, backend: BackendServer,
                                                                 tmp_path: Path) -> None:
    capture = tmp_path / "speaker.wav"
    async with speaker_capture(rig, capture), talking(rig, backend, "--record", str(tmp_path / "rec")) as talker:
        await say(rig, "hello_there")
        seen = await talker.expect(r"^\s+user  hello there$")
        seen = await talker.expect(r"^assistant  Hello! I am the voicerelay test assistant", seen)
        await talker.expect(r"\[listening\]", seen, timeout=15)  # the reply was played to its end
        code, elapsed = await talker.quit()
    assert code == 0 and elapsed < 2, talker.lines
    assert not [line for line in talker.lines if "Traceback" in line or "error" in line.lower()], talker.lines
    item = next(e["item"]["id"] for e in recorded_events(tmp_path / "rec") if e["type"] == "response.output_item.added")
    reply = reply_audio(tmp_path / "rec", item)
    heard, _ = soundfile.read(capture, dtype="int16")
    loud = np.flatnonzero(np.abs(heard) > LOUD)
    assert loud.size, "the speakers stayed silent"
    span = heard[loud[0]:loud[-1] + 1]
    assert abs(span.size - reply.size) < 24 * 100  # all of it, give or take the reply's own edges
    level = 20 * np.log10(np.sqrt(np.mean(span.astype(np.float64) ** 2)) / 32768)
    assert level > -35, level


async def test_barge_in_truncates_at_what_the_speakers_played(rig: audio_rig.AudioRig, backend: BackendServer,
                                                              tmp_path: Path) -> None:
    capture = tmp_path / "speaker.wav"
    folder = tmp_path / "rec"
    async with speaker_capture(rig, capture), talking(rig, backend, "--record", str(folder)) as talker:
        await say(rig, "what_can_you_do")
        seen = await talker.expect(r"^assistant  I can greet you")  # a 4 s reply, all received, now playing
        await asyncio.sleep(1.0)
        await say(rig, "hello_there")  # speech while the reply plays
        seen = await talker.expect(r"\[interrupted: \d+\.\d s of 4\.\d s heard\]", seen)
        await talker.expect(r"^\s+user  hello there$", seen)
        code, elapsed = await talker.quit()
    assert code == 0 and elapsed < 2, talker.lines
    events = recorded_events(folder)
    truncates = [e for e in events if e["type"] == "conversation.item.truncate"]
    assert len(truncates) == 1, truncates
    truncate = truncates[0]
    reply = reply_audio(folder, truncate["item_id"])
    heard, _ = soundfile.read(capture, dtype="int16")
    at_least, at_most = heard_extent_ms(heard, reply)
    print(f"truncate audio_end_ms={truncate['audio_end_ms']}, the speakers played {at_least:.0f}-{at_most:.0f} ms "
          f"of {reply.size / 24:.0f} ms")
    assert 500 < at_least < reply.size / 24 - 1000  # really cut, in the middle
    assert_truncate_is_what_was_heard(truncate["audio_end_ms"], reply.size // 24, at_least, at_most)
    assert any(e["type"] == "conversation.item.truncated" for e in events)
    assert not [e for e in events if e["type"] == "error" and e["error"]["code"] != "response_cancel_not_active"]


async def test_push_to_talk_and_typed_messages(rig: audio_rig.AudioRig, backend: BackendServer) -> None:
    async with talking(rig, backend, "--push-to-talk", "--text") as talker:
        await talker.type("how are you")
        seen = await talker.expect(r"^assistant  I am fine, thank you for asking\.$")
        await say(rig, "what_is_your_name")  # not recording yet: nobody hears it
        await talker.type("")  # Enter: talk
        seen = await talker.expect(r"\[recording", seen)
        await say(rig, "hello_there")
        await talker.type("")  # Enter: send
        seen = await talker.expect(r"^\s+user  hello there$", seen)
        await talker.expect(r"^assistant  Hello!", seen)
        code, _ = await talker.quit()
    assert code == 0
    assert not [line for line in talker.lines if "your name" in line.lower()]


async def test_half_duplex_does_not_let_the_reply_interrupt_itself(rig: audio_rig.AudioRig,
                                                                   backend: BackendServer) -> None:
    """Speech reaching the microphone while the reply plays (an echo) is muted, not a barge-in."""
    async with talking(rig, backend, "--duplex", "half") as talker:
        await say(rig, "what_can_you_do")
        seen = await talker.expect(r"^assistant  I can greet you")
        await asyncio.sleep(0.5)
        await say(rig, "hello_there")
        await talker.expect(r"\[listening\]", seen, timeout=15)
        code, _ = await talker.quit()
    assert code == 0
    assert not [line for line in talker.lines if "interrupted" in line or "hello there" in line], talker.lines


def cli(*args: str, env: dict[str, str]) -> tuple[int, list[str], str]:
    import subprocess

    result = subprocess.run([sys.executable, "-m", "voicerelay", *args], capture_output=True, text=True, timeout=60,
                            env=env, stdin=subprocess.DEVNULL, check=False)
    return result.returncode, result.stderr.strip().splitlines(), result.stdout


def test_devices_lists_the_rig(rig: audio_rig.AudioRig) -> None:
    code, err, out = cli("devices", env=_env(rig))
    assert code == 0, err
    rows = {line.split()[1]: line for line in out.splitlines() if re.match(r"\s*\d+\s", line)}
    assert set(rows) == {"pulse", "default"}, out
    assert "* input and output" in rows["default"] and "44100" in rows["default"]
    assert "vr_mic" in out and "vr_speaker" in out  # the PulseAudio devices behind them


@pytest.mark.parametrize(("args", "message"), [
    (["--input-device", "no such mic"], "no input device matches 'no such mic'; input devices: 0 'pulse', 1 'default'"),
    (["--output-device", "UL"], "'UL' matches several output devices: 0 'pulse', 1 'default'; give its index"),
    (["--input-device", "7"], "no input device has index 7"),
    (["--duplex", "quarter"], "--duplex must be auto, full or half"),
], ids=["unknown name", "ambiguous name", "unknown index", "bad duplex"])
def test_bad_device_options_are_one_line(rig: audio_rig.AudioRig, args: list[str], message: str) -> None:
    code, err, _ = cli("talk", *args, env=_env(rig))
    assert code == 2 and len(err) == 1 and err[0].startswith("voicerelay: error: ") and message in err[0], err


def test_no_portaudio_library_names_the_package(rig: audio_rig.AudioRig, tmp_path: Path) -> None:
    # ctypes.util.find_library is how sounddevice finds libportaudio: make it find nothing
    (tmp_path / "sitecustomize.py").write_text(
        "import ctypes.util\n_find = ctypes.util.find_library\n"
        "ctypes.util.find_library = lambda name: None if 'portaudio' in name else _find(name)\n")
    env = _env(rig, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    for command in ("talk", "devices"):
        code, err, _ = cli(command, env=env)
        assert code == 2 and len(err) == 1 and "install the Debian package libportaudio2" in err[0], err


def test_no_input_device(tmp_path: Path) -> None:
    # no sound card and no sound server: ALSA (and so PortAudio) has no device at all
    env = {**os.environ, "PULSE_SERVER": f"unix:{tmp_path}/nothing", "XDG_RUNTIME_DIR": str(tmp_path),
           "COLUMNS": "200"}
    code, err, _ = cli("talk", env=env)
    assert code == 2 and len(err) == 1 and "no input device: PortAudio sees no microphone" in err[0], err


@pytest.mark.parametrize(("kind", "source", "sink"), [("output", "vr_mic", "vr_unplugged"),
                                                   ("input", "vr_unplugged", "vr_speaker")])
def test_a_device_that_cannot_open_at_any_rate_is_one_line(rig: audio_rig.AudioRig, kind: str, source: str,
                                                           sink: str) -> None:
    """PortAudio lists ALSA's ``default`` (Pulse) device, but no stream of it can start at any rate.

    The Pulse sink (or source) it is told to use is gone, as an unplugged headset's would be:
    ALSA opens the device and accepts every rate, then fails when the stream is created.
    PortAudio and ALSA print five lines per rate tried on fd 2 (twenty here); the user must see one.
    """
    assert "vr_unplugged" not in rig.pactl("list", "short", "sinks") + rig.pactl("list", "short", "sources")
    env = _env(rig, PULSE_SOURCE=source, PULSE_SINK=sink)
    code, err, _ = cli("talk", env=env)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"voicerelay: error: cannot open {kind} device 1 'default' at any usable rate "
                             "(tried 44100, 48000, 24000, 16000 Hz): "), err
    assert err[0].endswith("ALSA: PulseAudio: Unable to create stream: No such entity"), err
    code, err, out = cli("devices", env=env)  # probing the rates is quiet too
    assert code == 0 and err == [] and "vr_unplugged" not in out, err


def test_an_unreachable_upstream_is_one_line_and_exit_1(rig: audio_rig.AudioRig) -> None:
    with socket.socket() as sock:  # a port that surely has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, err, _ = cli("talk", "--backend", f"ws://127.0.0.1:{port}/v1/realtime", env=_env(rig))
    assert code == 1 and f"cannot reach ws://127.0.0.1:{port}/v1/realtime" in "\n".join(err), err
    assert not [line for line in err if "Traceback" in line]


def test_recording_into_a_used_folder_is_refused(rig: audio_rig.AudioRig, tmp_path: Path) -> None:
    (tmp_path / "session.jsonl").write_text("")
    code, err, _ = cli("talk", "--record", str(tmp_path), env=_env(rig))
    assert code == 2 and len(err) == 1 and "already holds a recorded session" in err[0], err


# ---------------------------------------------------------------------- echo: laptop speakers on the rig
#
# ``rig.echo()`` feeds what the speakers play back into the microphone at -6 dB after 30 ms, as
# laptop speakers do. The assistant's own voice then reaches server VAD: without cancellation it
# interrupts itself; with it (``--duplex auto``, the default), it must not, and a real voice must
# still cut it off at what the speakers played.

ECHO_REPLIES = 3


async def self_interruptions(rig: audio_rig.AudioRig, backend: BackendServer, replies: int, *args: str
                             ) -> tuple[int, list[str]]:
    """Ask for ``replies`` long replies by typing (nobody speaks) with the echo on; how many times
    the assistant cut itself off or answered a turn nobody said, and the lines.

    Each reply gets until it is played out (``[listening]``) or 8 s: without cancellation the
    echo sets off a loop of turns that never goes back to listening."""
    with rig.echo():
        async with talking(rig, backend, "--text", *args) as talker:
            seen = 0
            for _ in range(replies):
                await talker.type("what can you do")
                seen = await talker.expect(r"^\s+user  what can you do$", seen)
                seen = await talker.expect(r"\[speaking\]", seen)
                try:
                    seen = await talker.expect(r"\[listening\]", seen, timeout=8)
                except AssertionError:
                    seen = len(talker.lines)
                await asyncio.sleep(0.5)  # the echo's tail, and anything it sets off
            code, _ = await talker.quit()
    assert code == 0, talker.lines
    cut = [line for line in talker.lines
           if "[interrupted" in line or (re.match(r"^\s+user  ", line) and "what can you do" not in line)]
    return len(cut), talker.lines


async def test_echo_cancellation_stops_the_assistant_interrupting_itself(rig: audio_rig.AudioRig,
                                                                          backend: BackendServer) -> None:
    without, lines = await self_interruptions(rig, backend, 1, "--duplex", "full")
    print(f"self-interruptions: without cancellation {without} over 1 reply")
    assert without >= 1, "\n".join(lines)  # the rig does reproduce the problem
    with_aec, lines = await self_interruptions(rig, backend, ECHO_REPLIES)  # --duplex auto, the default
    print(f"... with cancellation {with_aec} over {ECHO_REPLIES} replies")
    assert any("echo cancellation (webrtc)" in line for line in lines), lines
    assert with_aec == 0, "\n".join(lines)


async def test_barge_in_through_the_echo_truncates_at_what_the_speakers_played(
        rig: audio_rig.AudioRig, backend: BackendServer, tmp_path: Path) -> None:
    capture = tmp_path / "speaker.wav"
    folder = tmp_path / "rec"
    with rig.echo():
        async with speaker_capture(rig, capture), talking(rig, backend, "--text", "--record", str(folder)) as talker:
            await talker.type("what can you do")
            seen = await talker.expect(r"^assistant  I can greet you")  # a 4 s reply, now playing
            await asyncio.sleep(1.0)
            await say(rig, "hello_there")  # speech over the reply and its echo (6 dB louder than the voice)
            seen = await talker.expect(r"\[interrupted: \d+\.\d s of 4\.\d s heard\]", seen)
            await talker.expect(r"^\s+user  \w", seen)  # a turn (what is recognised of the voice varies)
            code, _ = await talker.quit()
    assert code == 0, talker.lines
    events = recorded_events(folder)
    truncates = [e for e in events if e["type"] == "conversation.item.truncate"]
    assert len(truncates) == 1, truncates
    reply = reply_audio(folder, truncates[0]["item_id"])
    heard, _ = soundfile.read(capture, dtype="int16")
    at_least, at_most = heard_extent_ms(heard, reply)
    end = truncates[0]["audio_end_ms"]
    print(f"truncate audio_end_ms={end}, the speakers played {at_least:.0f}-{at_most:.0f} ms of {reply.size / 24:.0f} ms")
    assert 500 < at_least < reply.size / 24 - 1000
    assert at_least - 60 <= end <= at_most + 60


async def test_without_the_canceller_auto_is_half_duplex_and_says_why(rig: audio_rig.AudioRig, backend: BackendServer,
                                                                     tmp_path: Path) -> None:
    # livekit (the voicerelay[aec] extra) cannot be imported in the child process
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoLivekit:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'livekit' or name.startswith('livekit.'):\n"
        "            raise ImportError('no livekit here')\n"
        "sys.meta_path.insert(0, _NoLivekit())\n")
    env = {**_env(rig), "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicerelay", "talk", "--backend", backend.url, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    talker = Talker(proc)
    try:
        await talker.expect("Ctrl-C quits")
        code, _ = await talker.quit()
    finally:
        await talker.close()
    assert code == 0, talker.lines
    why = [line for line in talker.lines if "echo cancellation off" in line]
    assert why == ["  echo cancellation off: the echo canceller needs livekit: pip install 'voicerelay[aec]'; "
                   "half duplex"], talker.lines
    assert any("half duplex (Enter interrupts)" in line for line in talker.lines), talker.lines


async def test_alsa_underrun_notices_do_not_reach_the_terminal(rig: audio_rig.AudioRig, backend: BackendServer) -> None:
    """A process frozen mid-reply (as a busy machine does to it, only longer) makes ALSA recover
    its output stream from an underrun, and say so: ``ALSA lib pcm.c:8570:(snd_pcm_recover)
    underrun occurred`` on fd 2 by default. The notices go to the log (counted in its last line)."""
    async with talking(rig, backend, "--text", "--log-level", "info") as talker:
        await talker.type("what can you do")
        seen = await talker.expect(r"^assistant  I can greet you")
        for _ in range(3):
            talker.proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.5)
            talker.proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.5)
        await talker.expect(r"\[listening\]", seen, timeout=15)
        code, _ = await talker.quit()
    assert code == 0, talker.lines
    assert not [line for line in talker.lines if "ALSA" in line and "notices" not in line], talker.lines
    counts = [int(m.group(1)) for line in talker.lines if (m := re.search(r"ALSA notices (\d+)", line))]
    assert counts and counts[0] >= 1, talker.lines  # the underruns did happen


# ---------------------------------------------------------------------- devices that go away

@contextlib.contextmanager
def microphone_unplugged_later(rig: audio_rig.AudioRig) -> Iterator[Callable[[], None]]:
    """``unplug()`` removes the rig's microphone ``vr_mic`` (its module); it is back afterwards."""
    def unplug() -> None:
        module = next(line.split("\t")[0] for line in rig.pactl("list", "short", "modules").splitlines()
                      if "module-virtual-source" in line and "source_name=vr_mic " in line + " ")
        rig.pactl("unload-module", module)

    try:
        yield unplug
    finally:
        if "vr_mic\t" not in rig.pactl("list", "short", "sources"):
            rig.pactl("load-module", "module-virtual-source", "source_name=vr_mic", "master=vr_mic_feed.monitor",
                      "source_properties=device.description=vr_mic")
        rig.pactl("set-default-source", "vr_mic")
        time.sleep(2.0)  # a fresh vr_mic yields nothing for a moment (see tests/audio_rig.py)


async def test_a_microphone_that_goes_away_stops_with_one_line(rig: audio_rig.AudioRig, backend: BackendServer,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    with microphone_unplugged_later(rig) as unplug:
        async with talking(rig, backend, "--record", str(folder)) as talker:
            await say(rig, "hello_there")
            await talker.expect(r"^assistant  Hello!")
            unplug()
            started = time.monotonic()
            code = await asyncio.wait_for(talker.proc.wait(), 10)
            elapsed = time.monotonic() - started
            await talker.close()
    errors = [line for line in talker.lines if line.startswith("voicerelay: error:")]
    assert code == 2 and errors == ["voicerelay: error: the microphone (vr_mic) went away during the session; "
                                    "start again, or use --follow-default to go on with the default device"], \
        talker.lines
    assert elapsed < 3, elapsed
    assert not [line for line in talker.lines if "Traceback" in line]
    events = recorded_events(folder)  # the recording is complete up to that moment
    assert any(e["type"] == "response.done" for e in events)
    assert soundfile.info(folder / "input.wav").duration > 1


async def test_with_follow_default_the_session_goes_on(rig: audio_rig.AudioRig, backend: BackendServer) -> None:
    with microphone_unplugged_later(rig) as unplug:
        async with talking(rig, backend, "--follow-default", "--text") as talker:
            unplug()
            seen = await talker.expect(r"the microphone \(vr_mic\) went away: going on with the default device")
            await talker.type("how are you")
            await talker.expect(r"^assistant  I am fine", seen)
            code, _ = await talker.quit()
    assert code == 0, talker.lines


@contextlib.contextmanager
def speakers_unplugged_later(rig: audio_rig.AudioRig) -> Iterator[Callable[[], None]]:
    """``unplug()`` removes the rig's speakers ``vr_speaker`` (the server moves their streams to
    its default sink); they are back, and the default again, afterwards."""
    try:
        yield lambda: rig.unplug_sink("vr_speaker")
    finally:
        if "vr_speaker\t" not in rig.pactl("list", "short", "sinks"):
            rig.plug_sink("vr_speaker")
        rig.pactl("set-default-sink", "vr_speaker")


async def test_speakers_that_go_away_mid_reply_stop_with_one_line(rig: audio_rig.AudioRig, backend: BackendServer,
                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    with speakers_unplugged_later(rig) as unplug:
        async with talking(rig, backend, "--text", "--record", str(folder)) as talker:
            await talker.type("what can you do")
            await talker.expect(r"^assistant  I can greet you")  # a 4 s reply, playing
            await asyncio.sleep(0.5)
            unplug()
            code = await asyncio.wait_for(talker.proc.wait(), 10)  # nothing hangs
            await talker.close()
    errors = [line for line in talker.lines if line.startswith("voicerelay: error:")]
    assert code == 2 and errors == ["voicerelay: error: the speakers (vr_speaker) went away during the session; "
                                    "start again, or use --follow-default to go on with the default device"], \
        talker.lines
    assert not [line for line in talker.lines if "Traceback" in line or "ALSA" in line], "\n".join(talker.lines)
    events = recorded_events(folder)  # the recording is complete up to that moment: readable, the reply's audio in it
    assert any(e["type"] == "response.output_audio.delta" for e in events)
    assert soundfile.info(folder / "output.wav").duration > 0.5


async def test_with_follow_default_the_reply_goes_on_through_the_default_speakers(
        rig: audio_rig.AudioRig, backend: BackendServer, tmp_path: Path) -> None:
    """The session goes on, and the next reply is heard on the default sink (``vr_laptop``, as
    a laptop's own speakers are when a headset is unplugged)."""
    capture = tmp_path / "laptop.wav"
    rig.plug_sink("vr_laptop")
    try:
        rig.pactl("set-default-sink", "vr_laptop")
        with speakers_unplugged_later(rig) as unplug:
            async with talking(rig, backend, "--follow-default", "--text") as talker:
                unplug()
                seen = await talker.expect(r"the speakers \(vr_speaker\) went away: going on with the default device")
                proc = await asyncio.create_subprocess_exec(
                    "parecord", "--latency-msec=20", "--device=vr_laptop.monitor", "--rate=24000", "--channels=1",
                    "--format=s16le", "--file-format=wav", str(capture), env=rig.env(None, None))
                await asyncio.sleep(0.3)
                try:
                    await talker.type("how are you")
                    seen = await talker.expect(r"^assistant  I am fine", seen)
                    await talker.expect(r"\[listening\]", seen, timeout=15)
                finally:
                    proc.send_signal(signal.SIGINT)
                    await asyncio.wait_for(proc.wait(), 5)
                code, _ = await talker.quit()
    finally:
        rig.unplug_sink("vr_laptop")
    assert code == 0, talker.lines
    heard, _ = soundfile.read(capture, dtype="int16")
    assert np.abs(heard).max() > 1000, "the reply did not reach the default speakers"


@pytest.mark.parametrize("follow", [False, True], ids=["stop", "--follow-default"])
async def test_a_stream_that_stops_without_a_word_is_one_line_and_exit_2(backend: BackendServer, tmp_path: Path,
                                                                        follow: bool) -> None:
    """Where no sound server moves a removed device's stream (plain ALSA, CoreAudio, WASAPI), the
    stream just stops calling back, and nothing says which device went away. Reproduced by
    stopping a PulseAudio server of this test's own under a running talk: the microphone goes
    quiet, talk stops with one line; ``--follow-default`` cannot follow there, and says so."""
    with audio_rig.AudioRig(tmp_path / "pa") as own:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicerelay", "talk", "--backend", backend.url, "--text",
            *(["--follow-default"] if follow else []), env=_env(own),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        talker = Talker(proc)
        try:
            await talker.expect("Ctrl-C quits")
            own.stop()
            code = await asyncio.wait_for(proc.wait(), 20)  # nothing hangs
        finally:
            await talker.close()
    errors = [line for line in talker.lines if line.startswith("voicerelay: error:")]
    expected = "voicerelay: error: the microphone stopped (no audio for 3 s: the device went away?); start again"
    if follow:
        expected += ("; --follow-default follows a device that goes away only with PulseAudio or PipeWire "
                     "(elsewhere the devices are listed once, when talk starts)")
    assert code == 2 and errors == [expected], talker.lines
    assert not [line for line in talker.lines if "Traceback" in line], talker.lines


def test_the_device_watch_stops_cleanly_while_its_thread_reads(rig: audio_rig.AudioRig,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``talk`` stops its PulseAudio watch at the end of every session: closing it while its thread
    reads ``pactl subscribe`` once failed that thread (its pipe closed under it)."""
    import threading

    from voicerelay.audio.hotplug import PulseWatch

    for key, value in rig.client_env.items():
        monkeypatch.setenv(key, value)
    streams = [line.split("\t")[0] for line in rig.pactl("list", "short", "sink-inputs").splitlines()]
    assert streams  # (the rig keeps its sinks busy)
    for volume in range(80, 100):
        watch = PulseWatch(lambda kind, name: None)
        assert watch.start()  # a server to watch: the thread is reading
        # a stream's change makes the thread look again (pactl list): close while it does
        rig.pactl("set-sink-input-volume", streams[0], f"{volume}%")
        time.sleep(0.002 * (volume % 5))
        watch.close()
    assert not [t for t in threading.enumerate() if t.name == "pulse-watch"]
