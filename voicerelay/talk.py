"""``voicerelay talk``: the microphone and the speakers through the pipeline, with barge-in done right.

Threads: PortAudio runs the two device callbacks on its own threads. The microphone's resamples
to 24 kHz frames and hands them to the event loop (``call_soon_threadsafe``), where they go to
:meth:`Relay.send_audio_nowait <voicerelay.relay.Relay.send_audio_nowait>` (a late upstream
drops frames, it never blocks the device). The speaker's reads a
:class:`~voicerelay.audio.playback.PlaybackBuffer`, which the event loop fills with the
``PlayAudio`` effects. Everything else happens on the event loop.

Barge-in: the session decides it (server VAD's ``speech_started``, a key, a typed message) and
the :class:`~voicerelay.conversation.Conversation` carries it out through :class:`SpeakerPlayback`:
the buffer's queue and what the device holds are dropped (the output stream is aborted: silence
within one output block), and the truncate carries what the buffer's cursor says was really
heard. The output stream starts again with the next reply audio; it also rests after a second
without any (an idle stream costs CPU).

Modes: server VAD by default; ``push_to_talk`` (turn detection disabled: Enter starts and ends
a turn, which is then committed); ``text`` (typed lines become user messages); ``duplex``:

- ``"auto"`` (the default): echo cancellation (:mod:`voicerelay.audio.echo`). The speakers'
  output callback hands each block it gave the device to an :class:`~voicerelay.audio.echo.EchoPath`
  with PortAudio's time for it; the microphone's callback runs its frames through the path,
  matched by time, before they go to the event loop. The output stream then never stops (each
  start changes its latency, which the canceller would have to learn again), and on barge-in
  what the device holds plays out and counts as heard. Until the canceller has learnt the room
  (its first second of reply audio, and again after a gap in a stream) the microphone is muted
  while a reply plays, as in half duplex. When the canceller is missing or the devices cannot
  be aligned (:func:`alignment_problem`), half duplex, and the banner says why in one line.
- ``"half"``: the microphone sends silence while reply audio plays and for a short echo tail
  after it (speakers whose sound would otherwise reach the microphone and interrupt the
  assistant).
- ``"full"``: the microphone as it is (headphones, or a system echo canceller).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from .audio.devices import AlsaNotices, Device, Microphone, Speaker, list_devices, load_sounddevice, select_device
from .audio.echo import EchoUnavailable
from .audio.playback import PlaybackBuffer
from .console import transcript_line
from .conversation import Conversation, Interrupted
from .errors import DeviceError, UsageError
from .protocol.audio import SAMPLE_RATE, ms_to_bytes, rms_dbfs
from .protocol.config import RealtimeConfig
from .protocol.events import Dialect, Event
from .protocol.lint import StreamLinter
from .protocol.session import Error, PlayAudio, StateChanged, Transcript
from .relay import Notice, Observation, Relay
from .upstream import upstream_for

if TYPE_CHECKING:
    from .audio.echo import EchoPath
    from .recording import Recorder

log = logging.getLogger(__name__)

FRAME_MS = 20
#: Reply audio queued before an item starts playing (absorbs the deltas' arrival jitter).
PREROLL_MS = 80
#: Half duplex: the microphone stays muted this long after the last reply sample (room echo).
ECHO_TAIL_S = 0.3
#: The output stream is paused after this long without reply audio (an idle stream still costs CPU).
SPEAKER_REST_S = 1.0
TICK_S = 0.1
#: The plain view's live state line is redrawn every this many ticks: a redraw costs ~0.6 ms,
#: 10 a second were a fifth of talk's CPU while a reply plays.
REDRAW_TICKS = 3
#: A started stream that has not called back for this long has lost its device (where no sound
#: server moves a stream to another device, a removed device's stream just stops).
STALL_S = 3.0
#: Ctrl-C: how long the upstream may take to close before it is abandoned.
CLOSE_TIMEOUT_S = 1.5


#: Unusable options or input for ``talk`` (exit code 2): the tree's usage error, under its old name.
TalkError = UsageError


@dataclasses.dataclass(slots=True)
class TalkOptions:
    config: RealtimeConfig = dataclasses.field(default_factory=RealtimeConfig)
    backend: str | None = None
    dialect: Dialect = Dialect.GA
    input_device: str | None = None
    output_device: str | None = None
    push_to_talk: bool = False
    text: bool = False
    duplex: str = "auto"  # "auto" (echo cancellation, else half) | "full" | "half"
    echo_canceller: str = "webrtc"  # "webrtc" | "speex"
    noise_suppression: bool = False
    high_pass: bool = True
    record: Path | None = None
    follow_default: bool = False  # a device that goes away: go on with the default one (else: stop)
    lint: bool = True  # the protocol linter over the wire events (voicerelay.protocol.lint): findings are lines


@dataclasses.dataclass(frozen=True, slots=True)
class TalkStatus:
    """What a window onto ``talk`` shows besides the transcripts, read every tick (plain data)."""

    state: str
    push_to_talk: bool
    talking: bool  # push-to-talk: between the two presses
    muted: str | None  # "muted" (the user's), "half duplex" (reply playing), or None
    level_dbfs: float
    upstream_frames: int  # microphone frames waiting to be sent upstream
    upstream_ms: int
    dropped_ms: int
    playback_ms: int  # reply audio queued for the speakers
    latencies_ms: tuple[float, ...]  # per answered turn: user done -> first reply audio
    turns: int
    usage: dict[str, int]  # input/output/total tokens so far (as the server reported them)
    remaining_s: float | None  # before the upstream's session cap (the relay recycles before it)
    recording: str | None  # the folder being recorded into
    recycles: int
    echo_dbfs: float | None = None  # echo cancellation: the echo taken out of the microphone (level_dbfs is after it)
    duplex: str = "full"  # what is in effect: "auto" (cancelling echo), "full" or "half"
    lint: tuple[int, str | None] | None = None  # protocol findings so far and the newest's code (None: not linted)

    def latency(self, percentile: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(self.latencies_ms, percentile))


class View(Protocol):
    """A window onto a :class:`Talk`: plain lines (:class:`PlainView`) or the TUI."""

    keyboard: bool  # Talk reads lines from stdin for this view
    wants_level: bool  # Talk measures the microphone's level for this view

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...
    def banner(self, markup: str) -> None: ...
    def line(self, text: str, style: str = "", err: bool = False) -> None: ...
    def transcript(self, role: str, text: str, final: bool, note: str = "") -> None: ...
    def state(self, state: str) -> None: ...
    def event(self, direction: str, event: Event) -> None: ...
    def tick(self, talk: Talk) -> None: ...


class PlainView:
    """What a person at a terminal sees: transcript lines and a one-line state.

    In a terminal (and without ``--text``, whose typing it would overwrite) the state line and
    the partial transcripts are a live region under the transcript; otherwise final lines only,
    and the state as a dim line when it changes.
    """

    def __init__(self, console: Console, err: Console, live: bool) -> None:
        self.console = console
        self.err = err
        self._partial = {"user": "", "assistant": ""}
        self._status = Text("connecting…")
        self._live = Live(console=console, auto_refresh=False, transient=True, redirect_stdout=False,
                          redirect_stderr=False) if live and console.is_terminal else None
        self.keyboard = True
        self.wants_level = self._live is not None  # the state line shows it
        self._ticks = 0

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def banner(self, markup: str) -> None:
        self.err.print(markup, highlight=False)

    def event(self, direction: str, event: Event) -> None:
        pass  # the raw events are the TUI's and the recording's

    def tick(self, talk: Talk) -> None:
        self._ticks += 1
        if self._live is not None and self._ticks % REDRAW_TICKS == 0:
            self.status(status_line(talk.status()))

    def line(self, text: str, style: str = "", err: bool = False) -> None:
        console = self.console if self._live is not None or not err else self.err
        console.print(Text(text, style=style), highlight=False)

    def transcript(self, role: str, text: str, final: bool, note: str = "") -> None:
        if not final:
            self._partial[role] += text
            return
        self._partial[role] = ""
        if text:
            self.console.print(transcript_line(role, text, note), highlight=False)

    def state(self, state: str) -> None:
        if self._live is None:
            self.line(f"{'':>9}  [{state}]", "dim")

    def status(self, text: Text) -> None:
        self._status = text
        if self._live is None:
            return
        body = Text()
        for role in ("user", "assistant"):
            if self._partial[role]:
                body += Text(f"{role:>9}  ", style="dim") + Text(self._partial[role] + "…\n", style="dim")
        self._live.update(body + self._status, refresh=True)


class SpeakerPlayback:
    """The :class:`~voicerelay.conversation.Playback` of ``talk``: the jitter buffer that the
    speakers' output callback reads, and the output stream, which starts with reply audio and is
    aborted on barge-in (silence within one output block), except with echo cancellation
    (``keep_running``: silence once the device has played what it holds, which is counted)."""

    def __init__(self, buffer: PlaybackBuffer, speaker: Speaker, keep_running: bool = False,
                 on_failure: Callable[[DeviceError], None] | None = None) -> None:
        self.buffer = buffer
        self.speaker = speaker
        #: the output stream cannot start (its device went away): told here, the session ends
        self.on_failure = on_failure
        #: echo cancellation: the output stream never stops once started (each start changes the
        #: output's latency by a few ms, which the canceller must learn again while the assistant's
        #: voice leaks into the microphone); on barge-in what the device holds plays out and counts
        self.keep_running = keep_running

    def feed(self, audio: PlayAudio) -> None:
        self.buffer.feed(audio.pcm, audio.item_id)
        if not self.speaker.active:
            try:
                self.speaker.start()
            except DeviceError as exc:
                if self.on_failure is None:
                    raise
                self.on_failure(exc)

    def finish(self) -> None:
        self.buffer.finish()  # what is queued may play out without a pre-roll

    def stop(self) -> None:
        if self.keep_running:
            self.buffer.stop(drop_in_flight=False)
            return
        self.buffer.stop()
        self.speaker.pause()

    def received_ms(self, item_id: str) -> int:
        return self.buffer.received_ms(item_id)

    def played_ms(self, item_id: str) -> int:
        if self.keep_running:  # stop() lets the device play out what it holds: that is heard too
            return self.buffer.handed_ms(item_id)
        return self.buffer.played_ms(item_id)  # the output stream's position, less what is in the device

    def pending_ms(self) -> float:
        return 0.0 if self.buffer.idle else max(self.buffer.queued_ms, float(FRAME_MS))


class Talk:
    """The front door: devices, keyboard and screen around one :class:`Conversation`."""

    def __init__(self, relay: Relay, options: TalkOptions, view: View, loop: asyncio.AbstractEventLoop,
                 buffer: PlaybackBuffer, mic: Microphone, speaker: Speaker, stop: asyncio.Event,
                 recorder: Recorder | None = None, echo: EchoPath | None = None, duplex: str | None = None,
                 echo_off: str | None = None) -> None:
        self.relay = relay
        self.echo = echo  # cancels the speakers' echo in the microphone (--duplex auto)
        self.duplex = duplex or ("half" if options.duplex == "half" else "full")  # in effect
        self.echo_off = echo_off  # why --duplex auto fell back to half duplex
        self.options = options
        self.view = view
        self.loop = loop
        self.buffer = buffer
        self.mic = mic
        self.speaker = speaker
        self.recorder = recorder
        self.conversation = Conversation(relay, SpeakerPlayback(buffer, speaker, keep_running=echo is not None,
                                                                on_failure=self.device_failed),
                                         close_timeout=CLOSE_TIMEOUT_S)
        self.recording_used = recorder is not None  # --record DIR names the first recording only
        self.talking = not options.push_to_talk  # push-to-talk: only between two presses
        self.user_muted = False
        self.live_audio = False  # frames go upstream once the session is ready
        self.level_dbfs = float("-inf")
        self._unmute_at = 0.0
        self._sounding_at = 0.0  # the last tick that found reply audio in the buffer
        self._silence = bytes(ms_to_bytes(FRAME_MS))
        self._state = relay.session.state.value
        self._stop = stop
        self._device_gone: DeviceError | None = None
        self.lint = StreamLinter() if options.lint else None
        self._ticked_at = 0.0
        relay.recorder = self  # every wire event passes through record(): the recording, the linter and the view

    def quit(self) -> None:
        """End the session, as Ctrl-C does."""
        self._stop.set()

    async def run(self, on_start: Callable[[Talk], None] | None = None) -> None:
        """Connect, then stream until Ctrl-C or :meth:`quit`; raises the upstream's failure."""
        self.conversation.subscribe(self.observe)
        self.mic.on_frames = self.on_mic_frames
        run = self.conversation.start()
        keyboard = watch = None
        try:
            if not await self.conversation.wait_ready(self._stop):
                return
            if on_start is not None:
                on_start(self)
            self.mic.start()  # the speakers start with the first reply audio
            self.live_audio = True
            watch = self._watch_devices()
            if self.view.keyboard:
                keyboard = _Keyboard(self.loop, self.on_line, cbreak=not self.options.text)
            self.view.banner(_banner(self.relay.spec.describe(), self.mic, self.speaker, self.options, self))
            with self.view:
                ticker = _Every(self.loop, TICK_S, self.tick)
                stopping = asyncio.create_task(self._stop.wait())
                try:
                    await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ticker.cancel()
                    stopping.cancel()
                    await asyncio.gather(stopping, return_exceptions=True)
            if run.done():
                await run  # raises the upstream's failure
            if self._device_gone is not None:
                raise self._device_gone
        finally:
            if watch is not None:
                watch.close()
            if keyboard is not None:
                keyboard.close()
            self.live_audio = False
            self.mic.close()  # silence first, then the upstream
            self.speaker.close()
            try:
                await self.conversation.close()
            finally:
                self._close_recorder()

    # ------------------------------------------------------------------ devices that go away

    def _watch_devices(self) -> Any:
        """Watch the PulseAudio devices in use, if there is such a server (see audio/hotplug.py)."""
        from .audio.hotplug import PulseWatch

        watch = PulseWatch(lambda kind, name: self.loop.call_soon_threadsafe(self.device_gone, kind, name))
        return watch if watch.start() else None

    def device_gone(self, kind: str, name: str) -> None:
        """The microphone or the speakers were removed: go on with the default device (which the
        sound server has already moved the stream to) with ``--follow-default``; else stop, and
        the command ends with a one-line error (exit code 2)."""
        if self.options.follow_default:
            self.view.line(f"the {kind} ({name}) went away: going on with the default device", "yellow", err=True)
            # the server moved the running streams to its default devices; a stream opened or restarted
            # from now on must not look for the device that is gone (libpulse reads these when it opens)
            variable = "PULSE_SOURCE" if kind == "microphone" else "PULSE_SINK"
            if os.environ.get(variable) == name:
                del os.environ[variable]
            if kind == "speakers":  # it restarts with each reply (and starts with the first): open it anew
                try:
                    self.speaker.reopen()
                except DeviceError as exc:
                    self.device_failed(exc)
                    return
            if self.echo is not None:
                self.echo.relearn(f"the {kind} changed")  # another room, another delay
            return
        self._device_gone = DeviceError(f"the {kind} ({name}) went away during the session; start again, "
                                        "or use --follow-default to go on with the default device")
        self._stop.set()

    def _check_streams(self, now: float) -> None:
        """A stream that should be running and has not called back for ``STALL_S`` lost its device.

        Not on a tick that comes late: the event loop was held up (the callbacks need the GIL too,
        and they get it back first), and the next tick looks again."""
        late, self._ticked_at = now - self._ticked_at > 1.0, now
        if late:
            return
        stalled = [kind for kind, stream, running in (("microphone", self.mic, self.live_audio),
                                                      ("speakers", self.speaker, self.speaker.active or not self.buffer.idle))
                   if running and stream.last_block_at and now - stream.last_block_at > STALL_S]
        if stalled and self._device_gone is None:
            follow = ("; --follow-default follows a device that goes away only with PulseAudio or PipeWire "
                      "(elsewhere the devices are listed once, when talk starts)" if self.options.follow_default else "")
            self.device_failed(DeviceError(f"the {stalled[0]} stopped (no audio for {STALL_S:.0f} s: the device went "
                                           f"away?); start again{follow}"))

    def device_failed(self, error: DeviceError) -> None:
        """A device cannot go on (it cannot start, or it stopped): end the session with this one line (exit code 2)."""
        if self._device_gone is None:
            self._device_gone = error
        self._stop.set()

    # ------------------------------------------------------------------ audio thread -> loop

    def on_mic_frames(self, frames: list[bytes]) -> None:
        """PortAudio's input thread: hand the frames to the event loop."""
        self.loop.call_soon_threadsafe(self._mic_frames, frames)

    def _mic_frames(self, frames: list[bytes]) -> None:
        if not self.live_audio or not self.talking:
            return
        muted = self._muted()
        for frame in frames:
            if muted:
                frame = self._silence  # silence, not nothing: server VAD hears the turn end
            self.relay.send_audio_nowait(frame)
        if self.view.wants_level:
            self.level_dbfs = float("-inf") if muted else rms_dbfs(np.frombuffer(frames[-1], dtype="<i2"))

    def _muted(self) -> str | None:
        """Why the microphone sends silence: the user muted it, or (half duplex, or echo
        cancellation still learning the room) reply audio is playing or its echo may still be in
        the room."""
        if self.user_muted:
            return "muted"
        if self.duplex == "half" and (not self.buffer.idle or time.monotonic() < self._unmute_at):
            return "half duplex"
        if self.echo is not None and not self.echo.converged and (not self.buffer.idle
                                                                  or time.monotonic() < self._unmute_at):
            return "learning the echo"  # the canceller's first second: the assistant's voice leaks through
        return None

    # ------------------------------------------------------------------ wire events

    def record(self, direction: str, event: Event) -> None:
        """The relay's recorder hook: every wire event, to the recording (if any), the linter and the view."""
        if self.recorder is not None:
            self.recorder.record(direction, event)
        if self.lint is not None:
            for finding in self.lint.feed(direction, time.monotonic(), event):
                self.view.line(f"lint {finding.line()}", "yellow", err=True)  # (serve and proxy log the same line)
        self.view.event(direction, event)

    # ------------------------------------------------------------------ effects

    def observe(self, obs: Observation | Interrupted) -> None:
        if isinstance(obs, Interrupted):
            if obs.item_id:
                self.view.line(f"{'':>9}  [interrupted: {obs.played_ms / 1000:.1f} s of "
                               f"{obs.received_ms / 1000:.1f} s heard]", "dim")
        elif isinstance(obs, Transcript):
            note = ""
            cut = self.conversation.interrupted.get(obs.item_id)
            if obs.final and obs.role == "assistant" and cut is not None:
                note = f"  (interrupted after {cut.played_ms / 1000:.1f} s)"
            self.view.transcript(obs.role, obs.text, obs.final, note)
        elif isinstance(obs, StateChanged):
            self._state = obs.new.value
            self.view.state(obs.new.value)
        elif isinstance(obs, Error):
            self.view.line(f"error {obs.code}: {obs.message}", "red", err=True)
        elif isinstance(obs, Notice) and obs.kind in ("recycled", "reconnecting"):
            self.view.line(obs.message, "yellow", err=True)

    # ------------------------------------------------------------------ keyboard and keys

    def on_line(self, line: str) -> None:
        """One line typed (or Enter in a terminal)."""
        line = line.strip()
        if line and self.options.text:
            self.send_text(line)
        elif line:
            self.view.line("typed text is ignored without --text", "yellow", err=True)
        elif self.options.push_to_talk:
            self.push_to_talk()
        else:
            self.interrupt()

    def send_text(self, text: str) -> None:
        """A typed message, sent as the user's (it interrupts a reply, as speaking would)."""
        self.relay.user_text(text)

    def interrupt(self) -> bool:
        """Cut the assistant off, if it is audible or answering; True if it was."""
        if not self._assistant_audible():
            return False
        self.relay.interrupt()
        return True

    def _assistant_audible(self) -> bool:
        session = self.relay.session
        return session.playing_item is not None or session.response_active or not self.buffer.idle

    def push_to_talk(self) -> None:
        """Push-to-talk: the first press starts a turn (cutting off a reply), the second sends it."""
        if not self.options.push_to_talk:
            self.view.line("push-to-talk is off: server VAD detects the turns (start with --push-to-talk)",
                           "yellow", err=True)
        elif not self.talking:
            self.interrupt()
            self.talking = True
            self.view.line(f"{'':>9}  [recording: press again to send]", "dim", err=True)
        else:
            self.talking = False
            self.relay.commit()

    def toggle_mute(self) -> bool:
        """Mute or unmute the microphone (muted, it sends silence); returns whether it is muted."""
        self.user_muted = not self.user_muted
        return self.user_muted

    def toggle_recording(self) -> str | None:
        """Start recording the session into a new folder, or stop; returns the folder, if recording.

        The first recording goes to ``--record DIR`` when given; later ones (and all, without it)
        into new ``talk-<time>`` folders beside it (or under ``voicerelay-recordings``).
        """
        if self.recorder is not None:
            folder = self.recorder.folder
            self._close_recorder()
            self.view.line(f"{'':>9}  [recording saved in {folder}]", "dim", err=True)
            return None
        from .recording import Recorder, RecordingError

        folder = self._next_recording_folder()
        try:
            self.recorder = Recorder(folder, {"command": "talk", "input_device": self.mic.device.name,
                                              "output_device": self.speaker.device.name})
        except RecordingError as exc:
            self.view.line(str(exc), "red", err=True)
            return None
        self.recording_used = True
        self.view.line(f"{'':>9}  [recording into {folder}]", "dim", err=True)
        return str(folder)

    def _next_recording_folder(self) -> Path:
        if self.options.record is not None and not self.recording_used:
            return self.options.record
        parent = self.options.record.parent if self.options.record is not None else Path("voicerelay-recordings")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder, n = parent / f"talk-{stamp}", 1
        while folder.exists():
            n += 1
            folder = parent / f"talk-{stamp}-{n}"
        return folder

    def _close_recorder(self) -> None:
        from .recording import RecordingError

        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            try:
                recorder.close()
            except RecordingError as exc:  # (a full disk): say so, the session goes on
                self.view.line(str(exc), "red", err=True)

    # ------------------------------------------------------------------ housekeeping

    def tick(self) -> None:
        """Every TICK_S: rest the speakers, keep half duplex's echo tail, notice a stream that
        stopped, refresh the view."""
        idle = self.buffer.idle
        now = time.monotonic()
        self._check_streams(now)
        if not idle:
            self._sounding_at = now
            self._unmute_at = now + ECHO_TAIL_S
        elif self.speaker.active and now - self._sounding_at >= SPEAKER_REST_S and self.echo is None:
            self.speaker.pause()
        self.view.tick(self)

    def status(self) -> TalkStatus:
        snap = self.relay.snapshot()
        turns = self.relay.session.turns
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for turn in turns:
            for key in usage:
                value = (turn.usage or {}).get(key)
                usage[key] += value if isinstance(value, int) else 0
        return TalkStatus(
            state=self._state, push_to_talk=self.options.push_to_talk, talking=self.talking, muted=self._muted(),
            level_dbfs=self.level_dbfs, upstream_frames=round(self.relay.queued_audio_ms / FRAME_MS),
            upstream_ms=snap["queued_audio_ms"], dropped_ms=snap["dropped_audio_ms"],
            playback_ms=round(self.buffer.queued_ms),
            latencies_ms=tuple(t.first_audio_ms for t in turns if t.first_audio_ms is not None),
            turns=len(turns), usage=usage, remaining_s=snap["session_remaining_s"],
            recording=None if self.recorder is None else str(self.recorder.folder), recycles=snap["recycles"],
            echo_dbfs=None if self.echo is None else self.echo.stats.echo_dbfs, duplex=self.duplex,
            lint=None if self.lint is None else (
                self.lint.count, self.lint.findings[-1].code if self.lint.findings else None))


STATE_COLOURS = {"connecting": "yellow", "listening": "green", "user_speaking": "cyan", "thinking": "yellow",
                 "speaking": "magenta", "ended": "red"}


def status_line(status: TalkStatus) -> Text:
    """The plain view's one-line state."""
    state = status.state
    line = Text.assemble(("● ", STATE_COLOURS.get(state, "red")), (state.replace("_", " "), "bold"))
    if status.push_to_talk:
        line += Text("  recording, Enter sends" if status.talking else "  Enter to talk", style="cyan")
    mic = status.muted or ("-∞" if status.level_dbfs == float("-inf") else f"{status.level_dbfs:.0f} dBFS")
    if status.echo_dbfs is not None and not status.muted:
        echo = "-∞" if status.echo_dbfs == float("-inf") else f"{status.echo_dbfs:.0f} dBFS"
        mic += f", echo removed {echo}"
    line += Text(f"  │ mic {mic} │ reply queued {status.playback_ms / 1000:.1f} s"
                 f" │ upstream queue {status.upstream_ms} ms │ dropped {status.dropped_ms} ms"
                 f" │ turns {status.turns} │ Ctrl-C quits", style="dim")
    return line


async def talk(options: TalkOptions, console: Console, err: Console,
               on_start: Callable[[Talk], None] | None = None) -> int:
    """Run ``voicerelay talk`` in plain mode until Ctrl-C (or :meth:`Talk.quit`); returns the exit code.

    Unusable devices raise :class:`~voicerelay.errors.DeviceError`, other bad options
    :class:`~voicerelay.errors.UsageError`, a failed upstream :class:`~voicerelay.errors.UpstreamError`
    (the command line turns each into one line and its exit code). ``on_start`` is
    called with the :class:`Talk` once it is wired, before its devices start (a benchmark's hook).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop() -> None:
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C is not swallowed
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    try:
        await run_talk(options, PlainView(console, err, live=not options.text), stop, on_start)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def select_devices(options: TalkOptions) -> tuple[Any, Device, Device]:
    """sounddevice, the microphone and the speakers; :class:`~voicerelay.audio.devices.DeviceError`
    says why not (a front door may check this before it takes the screen)."""
    sd = load_sounddevice()
    devices = list_devices(sd)
    return (sd, select_device(options.input_device, "input", devices),
            select_device(options.output_device, "output", devices))


async def run_talk(options: TalkOptions, view: View, stop: asyncio.Event,
                   on_start: Callable[[Talk], None] | None = None) -> None:
    """Open the devices and the upstream and talk through ``view`` until ``stop`` is set.

    Raises :class:`~voicerelay.audio.devices.DeviceError` or :class:`TalkError` before anything
    starts, :class:`~voicerelay.upstream.UpstreamError` when the upstream fails.
    """
    sd, mic_device, speaker_device = select_devices(options)
    config = options.config
    if options.push_to_talk and config.turn_detection_mode != "disabled":
        config = dataclasses.replace(config, turn_detection_mode="disabled")
    buffer = PlaybackBuffer(preroll_ms=PREROLL_MS)
    notices = AlsaNotices()  # once the streams are open, ALSA's underrun notices go to the log
    with contextlib.ExitStack() as opened:  # closed last to first
        opened.callback(notices.stop)  # (after the streams are closed)
        speaker = Speaker(speaker_device, buffer.read, block_ms=FRAME_MS, sd=sd)
        opened.callback(speaker.close)
        buffer.latency = speaker.latency
        mic = Microphone(mic_device, lambda frames: None, frame_ms=FRAME_MS, sd=sd)  # wired by Talk
        opened.callback(mic.close)
        echo, duplex, echo_off = None, "half" if options.duplex == "half" else "full", None
        if options.duplex == "auto":
            try:
                echo = echo_path(options, mic, speaker)
                duplex = "auto"
            except EchoUnavailable as exc:
                duplex, echo_off = "half", str(exc)
        notices.start()
        recorder = None
        if options.record is not None:
            from .recording import Recorder, RecordingError

            try:
                recorder = Recorder(options.record, {"command": "talk", "input_device": mic_device.name,
                                                     "output_device": speaker_device.name})
            except RecordingError as exc:
                raise TalkError(str(exc)) from None
            opened.callback(recorder.close)  # (Talk closes it first; closing twice is harmless)
        try:
            async with upstream_for(options.backend, config.model, options.dialect) as spec:
                relay = Relay(config, spec)
                talk = Talk(relay, options, view, asyncio.get_running_loop(), buffer, mic, speaker, stop, recorder,
                            echo=echo, duplex=duplex, echo_off=echo_off)
                await talk.run(on_start)
        finally:
            log.info("playback underruns %d, microphone overflows %d, speaker underflows %d, ALSA notices %d",
                     buffer.underruns, mic.overflows, speaker.underflows, notices.count)


#: The devices' latencies beyond which the far end cannot be matched with the microphone in time.
MAX_ALIGNABLE_LATENCY_S = 0.5


def echo_path(options: TalkOptions, mic: Microphone, speaker: Speaker) -> EchoPath:
    """Echo cancellation between these two streams, wired into their callbacks; or
    :class:`~voicerelay.audio.echo.EchoUnavailable` saying why not (in a line)."""
    from .audio.echo import EchoPath, load_engine

    problem = alignment_problem(mic, speaker)
    if problem is not None:
        raise EchoUnavailable(problem)
    engine = load_engine(options.echo_canceller, noise_suppression=options.noise_suppression,
                         high_pass=options.high_pass)
    path = EchoPath(engine, speaker.rate)
    speaker.tap = path.far
    mic.process = path.near
    return path


def alignment_problem(mic: Microphone, speaker: Speaker) -> str | None:
    """Why the speakers' blocks cannot be matched in time with the microphone's, or None.

    Both streams' times come from PortAudio's clock of their host API: two host APIs, two
    clocks. A latency sounddevice does not report, or beyond what a reference can be kept for,
    leaves nothing to align with.
    """
    if mic.device.hostapi != speaker.device.hostapi:
        return (f"the microphone ({mic.device.hostapi}) and the speakers ({speaker.device.hostapi}) "
                "are on different host APIs, whose clocks cannot be aligned")
    for what, stream in (("microphone", mic), ("speakers", speaker)):
        if not 0 < stream.latency <= MAX_ALIGNABLE_LATENCY_S:
            return (f"the {what}' latency ({stream.latency * 1000:.0f} ms) is not reported or beyond "
                    f"{MAX_ALIGNABLE_LATENCY_S * 1000:.0f} ms").replace("microphone'", "microphone's")
    return None


class _Every:
    """Call ``function`` every ``seconds`` on the event loop until :meth:`cancel`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float, function: Callable[[], None]) -> None:
        self.loop, self.seconds, self.function = loop, seconds, function
        self._handle = loop.call_later(seconds, self._run)

    def _run(self) -> None:
        self._handle = self.loop.call_later(self.seconds, self._run)
        self.function()

    def cancel(self) -> None:
        self._handle.cancel()


def _banner(upstream: str, mic: Microphone, speaker: Speaker, options: TalkOptions, talk: Talk) -> str:
    rate = f" → {SAMPLE_RATE // 1000} kHz" if mic.rate != SAMPLE_RATE else ""
    mode = "push-to-talk (Enter starts and sends a turn)" if options.push_to_talk else "server VAD"
    extras = [mode]
    if options.text:
        extras.append("type a line to send it")
    if talk.echo is not None:
        extras.append(f"echo cancellation ({talk.echo.engine.name})")
    elif talk.duplex == "half":
        extras.append("half duplex (Enter interrupts)")
    if options.record is not None:
        extras.append(f"recording to {options.record}")
    fallback = f"\n  [yellow]echo cancellation off: {escape(talk.echo_off)}; half duplex[/]" if talk.echo_off else ""
    return (f"[bold green]talking[/] to {upstream}{fallback}\n"
            f"  microphone {mic.device.label()} at {mic.rate} Hz{rate}, speaker {speaker.device.label()} at "
            f"{speaker.rate} Hz\n  {', '.join(extras)}. Ctrl-C quits.")


class _Keyboard:
    """Lines (or, in a terminal without ``--text``, single Enter presses) from stdin, on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_line: Any, cbreak: bool) -> None:
        self.loop = loop
        self.on_line = on_line
        self._fd: int | None = None
        self._saved: Any = None
        self._pending = b""
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return
        if cbreak and os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():  # (a background job may not)
            import termios
            import tty

            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # keys arrive one by one, without echo; Ctrl-C still signals
        try:
            loop.add_reader(fd, self._readable)
        except (OSError, ValueError):  # a regular file cannot be watched: no keyboard then
            self._restore(fd)
            return
        self._fd = fd

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except OSError:
            data = b""
        if not data:  # end of input
            self.loop.remove_reader(self._fd)
            return
        self._pending += data.replace(b"\r", b"\n")
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self.on_line(line.decode("utf-8", "replace"))

    def _restore(self, fd: int) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def close(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            self._restore(self._fd)
            self._fd = None


__all__ = ["PlainView", "Talk", "TalkError", "TalkOptions", "TalkStatus", "View", "alignment_problem", "echo_path", "run_talk", "status_line", "talk"]
