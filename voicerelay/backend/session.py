"""One embedded-backend Realtime session as a state machine, without I/O.

Theory of operation
-------------------
The server (``server.py``) parses and checks each client frame (``validate.py``) and feeds the
event to :meth:`ServerSession.handle`. Every input returns a list of *effects* for the caller to
carry out, in order. The session never awaits, never touches a socket, a thread or a clock:
the expiry time of the session is given to it, and slow work (speech detection, recognition,
synthesis, pacing) goes out as an effect whose result comes back as another input.

Inputs                                       Effects
  start()                                     SendEvent      a GA server event (event_id set)
  handle(event)         a checked client      StartVad       a fresh speech detector (config)
                        event                 StopVad        no speech detection
  speech_judged(edges)  what the detector     DetectSpeech   judge this appended audio, then
                        made of DetectSpeech                 call speech_judged()
  transcribed(item_id, text, early_end_ms)    Transcribe     recognise a user item's audio,
  transcription_failed(item_id, message,                     then call transcribed() or
                       early_end_ms)                         transcription_failed() with its
                                                             early_end_ms
  synthesized(response_id, pcm)               Synthesize     speak a reply's text, then call
  synthesis_failed(response_id, message)                     synthesized() or synthesis_failed()
  stream(response_id)   the next chunk is     Pause          wait ``audio_ms`` of audio (at the
                        due                                  server's pace), then call stream()

Turn flow (section 8 of the protocol reference): appended audio fills the input buffer and,
with server VAD, is judged by the detector; the end of speech commits the buffer into a user
item (``Transcribe``) and, with ``create_response``, creates a response. Recognition starts early:
once the detector has heard ``STT_TAIL_MS`` of silence after speech (``speech_paused``), all the
audio the recogniser would hear of the turn is there, so it is sent then (``Transcribe`` with
``early_end_ms``), while the detector waits ``silence_duration_ms`` to know whether the turn ended;
if it did, at that same point, the commit sends no second ``Transcribe`` and uses that result (the
same audio, so the same words), else the result is dropped and the turn is recognised when it
does end. The turn's reply then waits for recognition only as long as it outlasts that silence. A response reads its
context (its own ``input`` when it has one, else the whole conversation) and answers the newest
item, whatever its role; it decides what to say once the transcript it depends on is known (it
waits for ``transcribed()``), then streams: a function call or a text reply at once, a spoken
reply after ``Synthesize`` one ``CHUNK_MS`` audio delta per ``stream()`` call, with a ``Pause``
after each, so cancel and barge-in have something to interrupt. When nothing was heard (no
words recognised) it ends at once with no output: nothing is said. Its ``usage`` is counted as
OpenAI bills (``usage.py``): what it read, what earlier responses had already processed
(cached), what it generated.

Idle timeout (server VAD's ``idle_timeout_ms``): when that much input audio has gone by with no
speech since the last in-band response's audio finished playing (the ``response.done`` point, or the
first audio delta plus the audio sent when the client got it faster than real time), or since turn
detection started or the last turn ended when there was none, the session sends
``input_audio_buffer.timeout_triggered`` (``audio_start_ms`` to ``audio_end_ms``: the idle stretch),
commits the input buffer as a user audio item, and creates a response, as OpenAI documents. The
silence is recognised like any turn; when no words are heard in it the reply is
:data:`responder.STILL_THERE`, the embedded stand-in for "a prompt to continue speaking". Time is
counted in audio received, not on a clock (the session has none): a client that stops sending audio
times nothing out. It does not count while a response is in progress or the user speaks; ``0`` and
``null`` mean no timeout.

Bad client input never raises out of :meth:`ServerSession.handle`: it becomes an ``error``
event with OpenAI's code, and the session goes on. What ``session.update`` may say lives in
``session_config.py``; the envelope of each event was checked by ``validate.py`` before.

Memory: nothing grows with the length of a session
--------------------------------------------------
A session may last OpenAI's 60 minutes of continuous talk, so what it holds is bounded, not
proportional to the turns so far (it used to keep every committed turn's audio: 0.44 MB/s of
backend growth at 20 talking sessions):

- **User audio** is kept for ``conversation.item.retrieve`` only for the newest
  ``KEEP_AUDIO_ITEMS`` user audio items, and while their sum stays under ``KEEP_AUDIO_BYTES`` (the
  newest item's audio is always kept). An older item keeps its transcript, and retrieving it
  returns the item with ``transcript`` and no ``audio`` field, the shape of the ``conversation.item.*``
  events (the protocol reference says only that ``retrieved`` "includes audio"; OpenAI does not
  document what it returns for audio it no longer holds, so this is our choice). Its duration is
  still counted in usage.
- **Items**: at most ``MAX_ITEMS`` in the conversation. Beyond that the oldest leave it, as
  OpenAI's ``truncation: "auto"`` drops the oldest items from a full context; retrieving,
  deleting or inserting after one is then ``invalid_value`` "not found", as for any unknown item.
  Their per-item books (transcript, assistant audio length, input duration) go with them.
- The input buffer is trimmed outside speech (``_trim_buffer``), and a response's synthesized
  audio is dropped when the response ends.

:attr:`ServerSession.held_bytes` reports the audio held; ``tests/backend/test_session.py`` feeds
hundreds of turns and checks it stays under the bound.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..protocol.audio import BYTES_PER_MS, AudioFormatError, decode_b64
from ..protocol.events import Dialect, Event, new_id, parse_say_instructions
from . import responder, usage
from .session_config import PCM, default_session, merge_session, session_update, vad_settings
from .validate import EventError

log = logging.getLogger(__name__)

CHUNK_MS = 100  # audio per output delta
STT_TAIL_MS = 150  # audio after the end of speech that the recogniser still hears
MIN_COMMIT_MS = 100
KEEP_AUDIO_ITEMS = 8  # user audio items whose audio conversation.item.retrieve still returns
KEEP_AUDIO_BYTES = 4 * 1024 * 1024  # ... while their audio stays under this (about 87 s)
MAX_ITEMS = 500  # items in the conversation; the oldest leave it beyond this


# ------------------------------------------------------------------------------------ effects


@dataclasses.dataclass(frozen=True, slots=True)
class SendEvent:
    """A server event (GA names) for the client; the server translates it for beta peers."""

    event: Event


@dataclasses.dataclass(frozen=True, slots=True)
class StartVad:
    """Replace the speech detector with a fresh one (its clock starts at 0 now)."""

    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class StopVad:
    """Turn detection is off: drop the detector."""


@dataclasses.dataclass(frozen=True, slots=True)
class DetectSpeech:
    """Feed this appended PCM16 to the detector and report its edges through ``speech_judged()``."""

    pcm: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Transcribe:
    """Recognise ``audio`` (PCM16 24 kHz) of a user item; ``phrases`` help the recogniser. With
    ``early_end_ms``: the turn of the item to come, recognised while the detector still waits to
    know whether it has ended (speech ended at ``early_end_ms``); its result goes back with it."""

    item_id: str
    audio: bytes
    phrases: tuple[str, ...]
    early_end_ms: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Synthesize:
    """Speak ``text`` for a response, then report the PCM16 through ``synthesized()``."""

    response_id: str
    text: str
    voice: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Pause:
    """Let ``audio_ms`` of reply audio play out (scaled by the server's pace), then ``stream()``."""

    response_id: str
    audio_ms: int


Effect = SendEvent | StartVad | StopVad | DetectSpeech | Transcribe | Synthesize | Pause


# ------------------------------------------------------------------------------------ responses


@dataclasses.dataclass(slots=True)
class _Stream:
    """Where a spoken or written reply stands while it streams."""

    item: dict[str, Any]
    common: dict[str, Any]
    previous: str | None
    words: list[str]
    truncated: bool
    audio: bytes = b""
    chunks: int = 0
    next_chunk: int = 0
    sent_words: list[str] = dataclasses.field(default_factory=list)
    sent_ms: int = 0
    first_audio_at_ms: float | None = None  # session input audio ms when its first audio delta was sent


@dataclasses.dataclass(slots=True)
class _Early:
    """A turn being recognised before it is known to have ended (see ``_speech_paused``)."""

    item_id: str
    end_ms: int  # where its speech ended
    start_ms: int  # the session audio ms at the input buffer's start when it was heard
    phrases: tuple[str, ...]
    outcome: tuple[str, str] | None = None  # ("text", words) or ("failed", message), once known


@dataclasses.dataclass(slots=True)
class _Response:
    id: str
    in_band: bool
    params: dict[str, Any]
    settings: dict[str, Any]
    context: list[dict[str, Any]] | None = None  # its own ``input`` (references resolved); None: the conversation
    inputs: tuple[usage.Segment, ...] = ()  # what it reads, for its usage
    cancel_reason: str | None = None
    waits_for: dict[str, Any] | None = None  # the user item whose transcript decides the reply
    stream: _Stream | None = None


class ServerSession:
    """The state of one server session: config, conversation, input buffer and responses."""

    def __init__(self, *, model: str, expires_at: int, dialect: Dialect = Dialect.GA) -> None:
        self.dialect = dialect
        self.session = default_session(model, expires_at)
        self.conversation_id = new_id("conv")
        self.items: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self._user_audio: dict[str, bytes] = {}  # the newest user audio items' audio (bounded: see the module doc)
        self._input_ms: dict[str, float] = {}  # user audio item -> its duration (usage), while it is in the conversation
        self._assistant_ms: dict[str, int] = {}
        self._transcripts: dict[str, str | None] = {}  # committed item -> its transcript (None: pending)
        self._heard_bytes: dict[str, int] = {}  # committed item -> bytes sent to the recogniser (pending)
        self._buffer = bytearray()
        self._buffer_start_ms = 0  # session audio ms at self._buffer[0]
        self._audio_ms = 0.0  # session audio received so far
        self._vad_offset_ms = 0.0  # session audio ms at which the current detector's clock started
        self._speaking = False  # the detector is inside speech
        self._pending_item: str | None = None
        self._early: _Early | None = None  # the turn in progress, recognised early (see _speech_paused)
        self._early_committed: dict[str, _Early] = {}  # committed item -> its early recognition, still running
        self._active: _Response | None = None
        self._responses: dict[str, _Response] = {}
        self._idle_since_ms: float | None = None  # session audio ms the idle timeout counts from (None: not counting)
        self._idle_items: set[str] = set()  # items an idle timeout committed, while in the conversation
        self._cache = usage.CacheMemory()  # what earlier responses processed: their cached input

    @property
    def tools(self) -> list[dict[str, Any]]:
        return self.session.get("tools") or []

    @property
    def buffered_ms(self) -> float:
        """Audio in the input buffer, in ms."""
        return len(self._buffer) / BYTES_PER_MS

    @property
    def held_bytes(self) -> int:
        """Audio this session holds: the input buffer, the kept user audio and replies being streamed."""
        streams = sum(len(r.stream.audio) for r in self._responses.values() if r.stream is not None)
        return len(self._buffer) + sum(len(a) for a in self._user_audio.values()) + streams

    @property
    def active_response(self) -> str | None:
        """The in-band response in progress, if any."""
        return self._active.id if self._active is not None else None

    # ----------------------------------------------------------------------------- inputs

    def start(self) -> list[Effect]:
        """The connection is open: announce the session."""
        out: list[Effect] = [self._vad_config()]
        self._emit(out, {"type": "session.created", "session": copy.deepcopy(self.session)})
        return out

    def handle(self, event: Event) -> list[Effect]:
        """Act on one checked client event; a refusal is an ``error`` event."""
        out: list[Effect] = []
        handler = _HANDLERS.get(event["type"])
        try:
            if handler is None:
                raise EventError("invalid_value", f"The embedded backend does not support '{event['type']}'.", "type")
            handler(self, event, out)
        except EventError as exc:
            exc.event_id = exc.event_id or event.get("event_id")
            self._emit(out, exc.to_event())
        return out

    def speech_judged(self, edges: Sequence[tuple[str, int]]) -> list[Effect]:
        """The detector's verdict on the last ``DetectSpeech``: ``(kind, ms)`` pairs, ``kind`` being
        ``speech_started``, ``speech_paused`` (speech ended at ``ms``, the turn may go on) or
        ``speech_stopped``, and ``ms`` on the detector's own clock."""
        out: list[Effect] = []
        for kind, detector_ms in edges:
            ms = int(detector_ms + self._vad_offset_ms)
            if kind == "speech_started":
                self._speech_started(ms, out)
            elif kind == "speech_paused":
                self._speech_paused(ms, out)
            elif kind == "speech_stopped":
                self._speech_stopped(ms, out)
            else:
                raise ValueError(f"unknown speech edge {kind!r}")
        if not self._speaking:
            self._check_idle(out)
            self._trim_buffer()
        return out

    def transcribed(self, item_id: str, text: str, early_end_ms: int | None = None) -> list[Effect]:
        """The recogniser heard ``text`` in a committed item's audio (``early_end_ms``: the result of
        an early ``Transcribe``, given back as it came)."""
        if early_end_ms is not None and not self._early_done(item_id, early_end_ms, ("text", text)):
            return []
        out: list[Effect] = []
        heard_len = self._heard_bytes.pop(item_id, 0)
        item = self.items.get(item_id)
        if item is not None:
            _audio_part(item)["transcript"] = text
        self._transcripts[item_id] = text
        if self.session["audio"]["input"]["transcription"] is not None:
            for delta in responder.stream_words(text):
                self._emit(out, {"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                                 "content_index": 0, "delta": delta})
            audio_ms = self._input_ms.get(item_id, heard_len / BYTES_PER_MS)
            self._emit(out, {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                             "content_index": 0, "transcript": text,  # usage counts the whole committed item
                             "usage": {"type": "duration", "seconds": round(audio_ms / 1000, 3)}})
        self._resume_waiting(item_id, out)
        if item_id not in self.items:  # deleted or truncated away while it was recognised
            self._transcripts.pop(item_id, None)
        return out

    def transcription_failed(self, item_id: str, message: str, early_end_ms: int | None = None) -> list[Effect]:
        """The recogniser failed on a committed item: this turn's problem, reported like OpenAI does."""
        if early_end_ms is not None and not self._early_done(item_id, early_end_ms, ("failed", message)):
            return []
        out: list[Effect] = []
        self._heard_bytes.pop(item_id, None)
        self._transcripts[item_id] = ""
        if self.session["audio"]["input"]["transcription"] is not None:
            self._emit(out, {"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id,
                             "content_index": 0, "error": {"type": "server_error", "code": "transcription_failed",
                                                           "message": message, "param": None}})
        self._resume_waiting(item_id, out)
        if item_id not in self.items:
            self._transcripts.pop(item_id, None)
        return out

    def synthesized(self, response_id: str, pcm: bytes) -> list[Effect]:
        """The speech (PCM16 24 kHz) asked for by ``Synthesize``: streaming starts."""
        run = self._responses.get(response_id)
        if run is None or run.stream is None:
            return []
        step = CHUNK_MS * BYTES_PER_MS
        run.stream.audio = pcm
        run.stream.chunks = max(1, -(-len(pcm) // step))
        return self.stream(response_id)

    def synthesis_failed(self, response_id: str, message: str) -> list[Effect]:
        """``Synthesize`` failed: the response ends as ``failed``."""
        out: list[Effect] = []
        run = self._responses.get(response_id)
        if run is not None:
            self._fail(run, message, out)
        return out

    def stream(self, response_id: str) -> list[Effect]:
        """The next audio chunk of a spoken reply is due; after the last (or a cancel) it finishes."""
        out: list[Effect] = []
        run = self._responses.get(response_id)
        if run is None or run.stream is None:
            return out
        s = run.stream
        if s.next_chunk >= s.chunks or run.cancel_reason:
            self._finish_audio(run, out)
            return out
        step = CHUNK_MS * BYTES_PER_MS
        n = s.next_chunk
        s.next_chunk += 1
        chunk = s.audio[n * step:(n + 1) * step]
        self._emit(out, {"type": "response.output_audio.delta", **s.common,
                         "delta": base64.b64encode(chunk).decode()})
        if s.first_audio_at_ms is None:
            s.first_audio_at_ms = self._audio_ms
        s.sent_ms += len(chunk) // BYTES_PER_MS
        if run.in_band and s.item["id"] in self.items:
            self._assistant_ms[s.item["id"]] = s.sent_ms
        upto = round((n + 1) * len(s.words) / s.chunks)
        for word in s.words[len(s.sent_words):upto]:
            s.sent_words.append(word)
            self._emit(out, {"type": "response.output_audio_transcript.delta", **s.common, "delta": word})
        out.append(Pause(run.id, CHUNK_MS))
        return out

    # ----------------------------------------------------------------------------- plumbing

    @staticmethod
    def _emit(out: list[Effect], event: Event) -> None:
        event.setdefault("event_id", new_id("event"))
        out.append(SendEvent(event))

    # ----------------------------------------------------------------------------- session

    def _on_session_update(self, event: Event, out: list[Effect]) -> None:
        merged = merge_session(self.session, session_update(event["session"], self.dialect))
        old_td = self.session["audio"]["input"]["turn_detection"]
        self.session = merged
        if merged["audio"]["input"]["turn_detection"] != old_td:
            out.append(self._vad_config())
        self._emit(out, {"type": "session.updated", "session": copy.deepcopy(self.session)})

    def _vad_config(self) -> StartVad | StopVad:
        """A fresh detector for the current turn detection (its clock starts at the audio so far)."""
        self._speaking = False
        self._early = None
        td = self.session["audio"]["input"]["turn_detection"]
        if td is None:
            self._idle_since_ms = None
            return StopVad()
        self._vad_offset_ms = self._audio_ms
        self._idle_since_ms = self._audio_ms
        return StartVad(*vad_settings(td))

    @property
    def _turn_detection(self) -> dict[str, Any]:
        return self.session["audio"]["input"]["turn_detection"] or {}

    # ----------------------------------------------------------------------------- input audio

    def _on_input_audio_buffer_append(self, event: Event, out: list[Effect]) -> None:
        try:
            raw = decode_b64(event["audio"])
        except AudioFormatError as exc:
            raise EventError(exc.code, str(exc), "audio") from None
        self._buffer += raw
        self._audio_ms += len(raw) / BYTES_PER_MS
        if self.session["audio"]["input"]["turn_detection"] is not None:
            out.append(DetectSpeech(raw))

    def _trim_buffer(self) -> None:
        """Outside speech, keep only what prefix padding could reach back to (bounded memory)."""
        td = self._turn_detection
        keep = ((vad_settings(td)[1] if td else 300) + 500) * BYTES_PER_MS
        excess = len(self._buffer) - keep
        if excess > 48_000:  # trim in 1 s steps, not on every append
            del self._buffer[:excess]
            self._buffer_start_ms += excess // BYTES_PER_MS

    def _check_idle(self, out: list[Effect]) -> None:
        """Server VAD's idle timeout (see the module doc): after ``idle_timeout_ms`` of input audio with
        no speech and no response, the silence is committed and answered."""
        td = self._turn_detection
        timeout = td.get("idle_timeout_ms") if td.get("type") == "server_vad" else None
        if (not timeout or self._idle_since_ms is None or self._active is not None
                or self._audio_ms - self._idle_since_ms < timeout or self.buffered_ms < MIN_COMMIT_MS):
            return
        item_id = new_id("item")
        self._emit(out, {"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": int(self._idle_since_ms),
                         "audio_end_ms": int(self._audio_ms), "item_id": item_id})
        self._idle_since_ms = None  # until the response to it has played
        self._pending_item = None
        self._commit(item_id, out)
        self._idle_items.add(item_id)
        self._start_response({}, True, out)

    def _speech_started(self, audio_start_ms: int, out: list[Effect]) -> None:
        self._speaking = True
        self._early = None
        self._idle_since_ms = None
        self._pending_item = new_id("item")
        self._emit(out, {"type": "input_audio_buffer.speech_started", "audio_start_ms": audio_start_ms,
                         "item_id": self._pending_item})
        if self._turn_detection.get("interrupt_response", True) and self._active is not None:
            self._active.cancel_reason = "turn_detected"
        # drop what lies before the prefix padding: it is not part of this turn
        start = max(0, (audio_start_ms - self._buffer_start_ms) * BYTES_PER_MS)
        del self._buffer[:start]
        self._buffer_start_ms += start // BYTES_PER_MS

    def _speech_paused(self, speech_end_ms: int, out: list[Effect]) -> None:
        """Speech ended at ``speech_end_ms`` and ``STT_TAIL_MS`` of silence followed: all the audio
        the recogniser will hear of this turn, should it end here, is in the buffer. Recognising it
        now rather than once ``silence_duration_ms`` has passed takes most of recognition out of the
        turn's latency; the result is used only if the turn does end here (``_speech_stopped``),
        with the very audio ``_commit`` would send. Speech that goes on makes it a wasted decode."""
        item_id = self._pending_item
        if not self._speaking or item_id is None:
            return
        size = max(0, speech_end_ms + STT_TAIL_MS - self._buffer_start_ms) * BYTES_PER_MS
        if not 0 < size <= len(self._buffer):
            return
        phrases = self._phrases()
        self._early = _Early(item_id, speech_end_ms, self._buffer_start_ms, phrases)
        out.append(Transcribe(item_id, bytes(self._buffer[:size]), phrases, early_end_ms=speech_end_ms))

    def _take_early(self, item_id: str, speech_end_ms: int) -> _Early | None:
        """The early recognition of the turn that ends now, if it heard what ``_commit`` will send."""
        early, self._early = self._early, None
        if early is None or (early.item_id, early.end_ms, early.start_ms) != (item_id, speech_end_ms,
                                                                               self._buffer_start_ms):
            return None
        return early if early.phrases == self._phrases() else None

    def _early_done(self, item_id: str, end_ms: int, outcome: tuple[str, str]) -> bool:
        """An early recognition finished: True when its item is committed and waits for it (the
        caller then goes on as for any result); kept for the turn in progress; else dropped."""
        committed = self._early_committed.get(item_id)
        if committed is not None and committed.end_ms == end_ms:
            del self._early_committed[item_id]
            return True
        early = self._early
        if early is not None and (early.item_id, early.end_ms) == (item_id, end_ms):
            early.outcome = outcome
        return False

    def _speech_stopped(self, audio_end_ms: int, out: list[Effect]) -> None:
        self._speaking = False
        self._idle_since_ms = audio_end_ms  # (while the response it creates is in progress, nothing times out)
        item_id = self._pending_item or new_id("item")
        self._pending_item = None
        self._emit(out, {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms,
                         "item_id": item_id})
        early = self._take_early(item_id, audio_end_ms)
        self._commit(item_id, out, speech_end_ms=audio_end_ms, early=early)
        if self._active is not None and self._active.cancel_reason is not None:
            self._active = None  # a cancelled response still winding down does not block the new turn
        if self._turn_detection.get("create_response", True) and self._active is None:
            self._start_response({}, True, out)
        if early is not None and early.outcome is not None:  # recognised already: as if the result came now
            kind, value = early.outcome
            heard = self.transcribed if kind == "text" else self.transcription_failed
            out.extend(heard(item_id, value))

    def _on_input_audio_buffer_commit(self, event: Event, out: list[Effect]) -> None:
        buffered_ms = self.buffered_ms
        if buffered_ms < MIN_COMMIT_MS:
            raise EventError("input_audio_buffer_commit_empty",
                             f"Error committing input audio buffer: buffer too small. Expected at least "
                             f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.")
        item_id = self._pending_item or new_id("item")
        self._pending_item = None
        self._early = None
        if self._speaking:  # a manual commit ends the turn in progress: a fresh detector for the next
            out.append(self._vad_config())
        if self._idle_since_ms is not None:
            self._idle_since_ms = self._audio_ms
        self._commit(item_id, out)

    def _on_input_audio_buffer_clear(self, event: Event, out: list[Effect]) -> None:
        self._buffer_start_ms += len(self._buffer) // BYTES_PER_MS
        self._buffer.clear()
        self._pending_item = None
        self._early = None
        self._emit(out, {"type": "input_audio_buffer.cleared"})

    def _commit(self, item_id: str, out: list[Effect], speech_end_ms: int | None = None,
                early: _Early | None = None) -> None:
        audio = bytes(self._buffer)
        # the recogniser hears the speech, not the silence that ended the turn (it is most of the cost)
        heard = audio
        if speech_end_ms is not None:
            heard = audio[: max(0, speech_end_ms + STT_TAIL_MS - self._buffer_start_ms) * BYTES_PER_MS] or audio
        self._buffer_start_ms += len(self._buffer) // BYTES_PER_MS
        self._buffer.clear()
        previous = self.order[-1] if self.order else None
        item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self._add_item(item)
        self._user_audio[item_id] = audio
        self._input_ms[item_id] = len(audio) / BYTES_PER_MS
        self._forget_old_audio()
        self._transcripts[item_id] = None
        self._heard_bytes[item_id] = len(heard)
        self._emit(out, {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        self._announce_item(item, previous, out)
        if early is None:
            out.append(Transcribe(item_id, heard, self._phrases()))
        elif early.outcome is None:  # being recognised: its result goes on as this item's
            self._early_committed[item_id] = early

    def _forget_old_audio(self) -> None:
        """Keep the audio of the newest user items only (see the module doc); dicts keep insertion order."""
        held = sum(len(a) for a in self._user_audio.values())
        while len(self._user_audio) > KEEP_AUDIO_ITEMS or (held > KEEP_AUDIO_BYTES and len(self._user_audio) > 1):
            oldest = next(iter(self._user_audio))
            held -= len(self._user_audio.pop(oldest))

    # ----------------------------------------------------------------------------- items

    def _add_item(self, item: dict[str, Any], previous_item_id: str | None = None) -> None:
        self.items[item["id"]] = item
        if previous_item_id is None:
            self.order.append(item["id"])
        elif previous_item_id == "root":
            self.order.insert(0, item["id"])
        else:
            self.order.insert(self.order.index(previous_item_id) + 1, item["id"])
        while len(self.order) > MAX_ITEMS:  # the oldest leave a full conversation (truncation "auto")
            self._forget_item(self.order[0] if self.order[0] != item["id"] else self.order[1])

    def _forget_item(self, item_id: str) -> None:
        """An item leaves the conversation, with everything kept about it."""
        self.items.pop(item_id, None)
        self.order.remove(item_id)
        self._user_audio.pop(item_id, None)
        self._input_ms.pop(item_id, None)
        self._assistant_ms.pop(item_id, None)
        self._idle_items.discard(item_id)
        if self._transcripts.get(item_id, "") is not None:  # a pending transcript is still awaited
            self._transcripts.pop(item_id, None)

    def _announce_item(self, item: dict[str, Any], previous: str | None, out: list[Effect]) -> None:
        self._emit(out, {"type": "conversation.item.added", "previous_item_id": previous,
                         "item": copy.deepcopy(item)})
        self._emit(out, {"type": "conversation.item.done", "previous_item_id": previous, "item": copy.deepcopy(item)})

    def _on_conversation_item_create(self, event: Event, out: list[Effect]) -> None:
        item = dict(event["item"])
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self.items:
            raise EventError("invalid_value", f"Item with id '{previous}' not found.", "previous_item_id")
        _check_item(item)
        item.setdefault("id", new_id("item"))
        if item["id"] in self.items:
            raise EventError("invalid_value", f"Item with id '{item['id']}' already exists.", "item.id")
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        if item["type"] == "message" and item["role"] == "assistant":
            item["content"] = [{**p, "type": {"text": "output_text", "audio": "output_audio"}.get(p["type"], p["type"])}
                               for p in item["content"]]
        audio = _take_audio(item) if item["type"] == "message" and item["role"] == "user" else b""
        prev = previous if previous is not None else (self.order[-1] if self.order else None)
        self._add_item(item, previous)
        self._announce_item(item, prev, out)
        if audio:
            self._hear(item, audio, out)

    def _hear(self, item: dict[str, Any], audio: bytes, out: list[Effect]) -> None:
        """A user item created with audio: kept like a committed turn's, and recognised unless the
        client gave its transcript (a response to it waits for the transcript, as for a turn)."""
        item_id = item["id"]
        self._user_audio[item_id] = audio
        self._input_ms[item_id] = len(audio) / BYTES_PER_MS
        self._forget_old_audio()
        if _audio_part(item).get("transcript"):
            return
        self._transcripts[item_id] = None
        self._heard_bytes[item_id] = len(audio)
        out.append(Transcribe(item_id, audio, self._phrases()))

    def _phrases(self) -> tuple[str, ...]:
        """What helps the recogniser: the session's tools' names and descriptions."""
        return tuple(f"{t.get('name', '')} {t.get('description', '')}" for t in self.tools)

    def _on_conversation_item_delete(self, event: Event, out: list[Effect]) -> None:
        item_id = event["item_id"]
        if item_id not in self.items:
            raise EventError("invalid_value", f"Item with id '{item_id}' not found.", "item_id")
        self._forget_item(item_id)
        self._emit(out, {"type": "conversation.item.deleted", "item_id": item_id})

    def _on_conversation_item_retrieve(self, event: Event, out: list[Effect]) -> None:
        item_id = event["item_id"]
        if item_id not in self.items:
            raise EventError("invalid_value", f"Item with id '{item_id}' not found.", "item_id")
        item = copy.deepcopy(self.items[item_id])
        if item_id in self._user_audio:
            _audio_part(item)["audio"] = base64.b64encode(self._user_audio[item_id]).decode()
        self._emit(out, {"type": "conversation.item.retrieved", "item": item})

    def _on_conversation_item_truncate(self, event: Event, out: list[Effect]) -> None:
        item_id, end_ms = event["item_id"], event["audio_end_ms"]
        item = self.items.get(item_id)
        if item is None or item_id not in self._assistant_ms:
            raise EventError("invalid_value", f"Invalid 'item_id': no assistant audio item with id '{item_id}'.",
                             "item_id")
        if event["content_index"] != 0:
            raise EventError("invalid_value", "Invalid 'content_index': the item has one content part (0).",
                             "content_index")
        have_ms = self._assistant_ms[item_id]
        if end_ms > have_ms:
            raise EventError("invalid_value",
                             f"Audio content of {have_ms}ms is already shorter than {end_ms}ms", "audio_end_ms")
        self._assistant_ms[item_id] = end_ms
        for part in item["content"]:
            if part.get("type") == "output_audio":
                part["transcript"] = ""  # like OpenAI: the unheard transcript is gone
        self._emit(out, {"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                         "audio_end_ms": end_ms})

    def _on_output_audio_buffer_clear(self, event: Event, out: list[Effect]) -> None:
        raise EventError("invalid_value", "output_audio_buffer.clear is for WebRTC/SIP sessions only.", "type")

    def _on_transcription_session_update(self, event: Event, out: list[Effect]) -> None:
        raise EventError("invalid_value", "The embedded backend does not support transcription sessions.", "type")

    # ----------------------------------------------------------------------------- responses

    def _on_response_create(self, event: Event, out: list[Effect]) -> None:
        params = event.get("response") or {}
        in_band = params.get("conversation", "auto") != "none"
        if in_band and self._active is not None:
            raise EventError("conversation_already_has_active_response",
                             f"Conversation already has an active response in progress: {self._active.id}. Wait "
                             "until the response is finished before creating a new one.")
        context = self._resolve_input(params["input"]) if params.get("input") is not None else None
        self._start_response(params, in_band, out, context)

    def _resolve_input(self, raw: Any) -> list[dict[str, Any]]:
        """A response's own ``input``: its items checked, ``item_reference``s replaced by the items named.

        Like OpenAI, such a response reads only these items (``[]``: nothing), not the conversation."""
        if not isinstance(raw, list):
            raise EventError("invalid_value", "Invalid type for 'response.input': expected an array of items.",
                             "response.input")
        items = []
        for n, entry in enumerate(raw):
            param = f"response.input[{n}]"
            if not isinstance(entry, dict):
                raise EventError("invalid_value", f"Invalid type for '{param}': expected an item.", param)
            if entry.get("type") == "item_reference":
                referenced = self.items.get(entry.get("id"))  # type: ignore[arg-type]
                if referenced is None:
                    raise EventError("invalid_value", f"Item with id '{entry.get('id')}' not found.", param + ".id")
                items.append(referenced)
                continue
            _check_item(entry, param)
            items.append(entry)
        return items

    def _on_response_cancel(self, event: Event, out: list[Effect]) -> None:
        wanted = event.get("response_id")
        run = self._responses.get(wanted) if wanted else self._active
        if run is None or run.cancel_reason is not None:
            raise EventError("response_cancel_not_active", "Cancellation failed: no active response found")
        run.cancel_reason = "client_cancelled"

    def _start_response(self, params: dict[str, Any], in_band: bool, out: list[Effect],
                        context: list[dict[str, Any]] | None = None) -> None:
        run = _Response(new_id("resp"), in_band, params, self._response_settings(params), context)
        run.inputs = self._input_segments(run)
        self._responses[run.id] = run
        if in_band:
            self._active = run
        self._emit(out, {"type": "response.created", "response": self._response_object(run, "in_progress")})
        self._guarded(run, lambda: self._decide(run, out), out)

    def _guarded(self, run: _Response, step: Callable[[], None], out: list[Effect]) -> None:
        """Run one step of a response; a failure of ours ends it as ``failed``, not the session."""
        try:
            step()
        except Exception as exc:  # any bug of ours in a step: that response fails, the session goes on
            log.exception("response %s failed", run.id)
            self._fail(run, str(exc), out)

    def _response_settings(self, params: dict[str, Any]) -> dict[str, Any]:
        if "modalities" in params and "output_modalities" not in params:  # beta shape
            params = {**params, "output_modalities": ["audio"] if "audio" in params["modalities"] else ["text"]}
        out = self.session["audio"]["output"]
        voice = ((params.get("audio") or {}).get("output") or {}).get("voice") or params.get("voice") or out["voice"]
        return {
            "output_modalities": params.get("output_modalities") or self.session["output_modalities"],
            "voice": voice,
            "max_output_tokens": params.get("max_output_tokens", self.session["max_output_tokens"]),
            "metadata": params.get("metadata"),
            "instructions": params.get("instructions", self.session["instructions"]),
            "tools": params.get("tools", self.tools),
        }

    def _response_object(self, run: _Response, status: str, output: list[dict[str, Any]] | None = None,
                         details: dict[str, Any] | None = None, usage: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
        settings = run.settings
        return {
            "id": run.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": output or [], "conversation_id": self.conversation_id if run.in_band else None,
            "output_modalities": settings["output_modalities"], "max_output_tokens": settings["max_output_tokens"],
            "audio": {"output": {"format": dict(PCM), "voice": settings["voice"]}},
            "usage": usage, "metadata": settings["metadata"],
        }

    def _context(self, run: _Response) -> list[dict[str, Any]]:
        """The items a response reads: its own ``input``, else the whole conversation, in order."""
        return run.context if run.context is not None else [self.items[i] for i in self.order]

    def _decide(self, run: _Response, out: list[Effect]) -> None:
        """Choose the reply to the newest item of the context, whatever its role, or wait for the
        transcript of the user item it answers."""
        say = parse_say_instructions(run.settings["instructions"])
        if say is not None:
            self._reply(run, responder.Reply(text=say), out)
            return
        context = self._context(run)
        newest = context[-1] if context else {}
        kind, role = newest.get("type"), newest.get("role")
        if kind == "function_call_output":
            calls = [*context, *self.items.values()]  # the call may lie outside a response's own input
            name = next((i.get("name", "") for i in calls
                         if i.get("type") == "function_call" and i.get("call_id") == newest.get("call_id")), "")
            self._reply(run, responder.Reply(text=responder.answer_tool_output(name, str(newest.get("output", "")))),
                        out)
        elif kind == "message" and role == "user":
            if self._transcript_pending(newest):
                run.waits_for = newest
                return
            self._answer(run, newest, out)
        elif kind == "message" and role == "system":
            self._reply(run, responder.follow(self._item_text(newest), run.settings["tools"]), out)
        else:  # nothing yet, or the assistant spoke last: offer help
            self._reply(run, responder.Reply(text=responder.OFFER), out)

    def _transcript_pending(self, item: dict[str, Any]) -> bool:
        return (any(p.get("type") == "input_audio" for p in item.get("content") or [])
                and item.get("id", "") in self._transcripts and self._transcripts[item.get("id", "")] is None)

    def _item_text(self, item: dict[str, Any]) -> str:
        """The text of a message's text parts."""
        return " ".join(str(p.get("text") or "") for p in item.get("content") or [] if isinstance(p, dict)
                        and p.get("type") in ("input_text", "output_text", "text")).strip()

    def _user_text(self, item: dict[str, Any]) -> str:
        texts = []
        for part in item.get("content") or []:
            if part.get("type") == "input_text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "input_audio":
                heard = self._transcripts.get(item.get("id", ""))
                if heard is not None:
                    texts.append(heard)
                elif part.get("transcript"):
                    texts.append(part["transcript"])
        return " ".join(t for t in texts if t)

    def _resume_waiting(self, item_id: str, out: list[Effect]) -> None:
        """Responses waiting for this item's transcript decide now, in the order they were created."""
        for run in list(self._responses.values()):
            item = run.waits_for
            if item is not None and item.get("id") == item_id:
                run.waits_for = None
                self._guarded(run, lambda: self._answer(run, item, out), out)  # noqa: B023 - called at once

    def _answer(self, run: _Response, user_item: dict[str, Any], out: list[Effect]) -> None:
        reply = responder.respond(self._user_text(user_item), run.settings["tools"])
        if not reply.text and reply.call is None and user_item.get("id") in self._idle_items:
            reply = responder.Reply(text=responder.STILL_THERE)  # an idle timeout's silence: prompt the user
        self._reply(run, reply, out)

    def _reply(self, run: _Response, reply: responder.Reply, out: list[Effect]) -> None:
        if reply.call is not None:
            self._stream_call(run, reply.call, out)
        elif reply.text:
            self._start_message(run, reply.text, out)
        else:  # nothing was heard: the response ends with nothing said (no output item)
            status, details = self._done_status(run, False)
            self._done(run, [], status, details, "", 0, out)

    def _stream_call(self, run: _Response, call: responder.FunctionCall, out: list[Effect]) -> None:
        item = {"id": new_id("item"), "type": "function_call", "object": "realtime.item", "status": "in_progress",
                "call_id": new_id("call"), "name": call.name, "arguments": ""}
        common = {"response_id": run.id, "item_id": item["id"], "output_index": 0}
        self._emit(out, {"type": "response.output_item.added", "response_id": run.id, "output_index": 0,
                         "item": dict(item)})
        previous = self.order[-1] if self.order else None
        if run.in_band:
            self._add_item(item)
            self._emit(out, {"type": "conversation.item.added", "previous_item_id": previous, "item": dict(item)})
        arguments = call.arguments_json
        for i in range(0, len(arguments), 16):
            self._emit(out, {"type": "response.function_call_arguments.delta", **common, "call_id": item["call_id"],
                             "delta": arguments[i:i + 16]})
        item.update(arguments=arguments, status="completed")
        self._emit(out, {"type": "response.function_call_arguments.done", **common, "call_id": item["call_id"],
                         "name": call.name, "arguments": arguments})
        if run.in_band:
            self._emit(out, {"type": "conversation.item.done", "previous_item_id": previous, "item": dict(item)})
        self._emit(out, {"type": "response.output_item.done", "response_id": run.id, "output_index": 0,
                         "item": dict(item)})
        status, details = self._done_status(run, False)
        self._done(run, [dict(item)], status, details, call.name + arguments, 0, out)

    def _start_message(self, run: _Response, text: str, out: list[Effect]) -> None:
        settings = run.settings
        limit = settings["max_output_tokens"]
        said = text.split()
        truncated = isinstance(limit, int) and len(said) > limit
        if truncated:
            text = " ".join(said[:limit])
        audio_mode = "audio" in settings["output_modalities"]
        item: dict[str, Any] = {"id": new_id("item"), "type": "message", "object": "realtime.item",
                                "status": "in_progress", "role": "assistant", "content": []}
        common = {"response_id": run.id, "item_id": item["id"], "output_index": 0, "content_index": 0}
        self._emit(out, {"type": "response.output_item.added", "response_id": run.id, "output_index": 0,
                         "item": copy.deepcopy(item)})
        previous = self.order[-1] if self.order else None
        if run.in_band:
            self._add_item(item)
            self._assistant_ms[item["id"]] = 0
            self._emit(out, {"type": "conversation.item.added", "previous_item_id": previous,
                             "item": copy.deepcopy(item)})
        self._emit(out, {"type": "response.content_part.added", **common,
                         "part": {"type": "audio", "transcript": ""} if audio_mode else {"type": "text", "text": ""}})
        run.stream = _Stream(item, common, previous, responder.stream_words(text), truncated)
        if audio_mode:
            out.append(Synthesize(run.id, text, settings["voice"]))
            return
        s = run.stream
        for word in s.words:
            if run.cancel_reason:
                break
            s.sent_words.append(word)
            self._emit(out, {"type": "response.output_text.delta", **common, "delta": word})
        transcript = "".join(s.sent_words)
        self._emit(out, {"type": "response.output_text.done", **common, "text": transcript})
        self._finish_message(run, {"type": "text", "text": transcript}, [{"type": "output_text", "text": transcript}],
                             out)

    def _finish_audio(self, run: _Response, out: list[Effect]) -> None:
        s = run.stream
        assert s is not None
        transcript = "".join(s.sent_words)
        self._emit(out, {"type": "response.output_audio.done", **s.common})
        self._emit(out, {"type": "response.output_audio_transcript.done", **s.common, "transcript": transcript})
        self._finish_message(run, {"type": "audio", "transcript": transcript},
                             [{"type": "output_audio", "transcript": transcript}], out)

    def _finish_message(self, run: _Response, part: dict[str, Any], content: list[dict[str, Any]],
                        out: list[Effect]) -> None:
        s = run.stream
        assert s is not None
        self._emit(out, {"type": "response.content_part.done", **s.common, "part": part})
        status, details = self._done_status(run, s.truncated)
        s.item.update(content=content, status="incomplete" if status != "completed" else "completed")
        if run.in_band:
            self._emit(out, {"type": "conversation.item.done", "previous_item_id": s.previous,
                             "item": copy.deepcopy(s.item)})
        self._emit(out, {"type": "response.output_item.done", "response_id": run.id, "output_index": 0,
                         "item": copy.deepcopy(s.item)})
        self._done(run, [copy.deepcopy(s.item)], status, details, "".join(s.sent_words), s.sent_ms, out)

    def _fail(self, run: _Response, message: str, out: list[Effect]) -> None:
        details = {"type": "failed", "error": {"type": "server_error", "code": "embedded_backend_error",
                                               "message": message}}
        self._done(run, [], "failed", details, "", 0, out)

    def _done(self, run: _Response, output: list[dict[str, Any]], status: str, details: dict[str, Any] | None,
              out_text: str, out_ms: int, out: list[Effect]) -> None:
        if self._active is run:
            self._active = None
            if self._turn_detection and not self._speaking:  # the idle timeout counts from the end of its playback
                first = run.stream.first_audio_at_ms if run.stream is not None else None
                self._idle_since_ms = self._audio_ms if first is None else max(self._audio_ms, first + out_ms)
        run.stream = None
        run.waits_for = None
        self._responses.pop(run.id, None)
        self._emit(out, {"type": "response.done", "response": self._response_object(
            run, status, output, details, self._usage(run, output, out_text, out_ms))})

    # ----------------------------------------------------------------------------- usage

    def _segment(self, item: dict[str, Any]) -> usage.Segment:
        """One item's input tokens, from what the session knows of its audio."""
        item_id = item.get("id", "")
        return usage.item_segment(item, user_audio_ms=self._input_ms.get(item_id, 0.0),
                                  assistant_audio_ms=self._assistant_ms.get(item_id, 0))

    def _input_segments(self, run: _Response) -> tuple[usage.Segment, ...]:
        """What a response reads, fixed when it is created: instructions and tools, then its context."""
        settings = run.settings
        instructions = usage.instructions_segment(str(settings["instructions"] or ""), settings["tools"] or [])
        return (instructions, *(self._segment(item) for item in self._context(run)))

    def _usage(self, run: _Response, output: list[dict[str, Any]], out_text: str, out_ms: int) -> dict[str, Any]:
        """The response's ``usage``, counted as OpenAI bills (see ``usage.py``: estimates, no model ran).
        What it processed (its input, then its output) is remembered for the next responses' cache."""
        cached = self._cache.cached(run.inputs)
        figures = usage.usage(run.inputs, cached, usage.output_tokens(out_text, out_ms))
        produced = [self._segment(i) for i in output] if run.in_band else []
        self._cache.processed([*run.inputs, *produced])
        return figures

    @staticmethod
    def _done_status(run: _Response, truncated: bool) -> tuple[str, dict[str, Any] | None]:
        if run.cancel_reason:
            return "cancelled", {"type": "cancelled", "reason": run.cancel_reason}
        if truncated:
            return "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        return "completed", None


#: client event type -> what the session does with it
_HANDLERS: dict[str, Callable[[ServerSession, Event, list[Effect]], None]] = {
    "session.update": ServerSession._on_session_update,
    "transcription_session.update": ServerSession._on_transcription_session_update,
    "input_audio_buffer.append": ServerSession._on_input_audio_buffer_append,
    "input_audio_buffer.commit": ServerSession._on_input_audio_buffer_commit,
    "input_audio_buffer.clear": ServerSession._on_input_audio_buffer_clear,
    "output_audio_buffer.clear": ServerSession._on_output_audio_buffer_clear,
    "conversation.item.create": ServerSession._on_conversation_item_create,
    "conversation.item.retrieve": ServerSession._on_conversation_item_retrieve,
    "conversation.item.delete": ServerSession._on_conversation_item_delete,
    "conversation.item.truncate": ServerSession._on_conversation_item_truncate,
    "response.create": ServerSession._on_response_create,
    "response.cancel": ServerSession._on_response_cancel,
}


def _check_item(item: dict[str, Any], param: str = "item") -> None:
    kind = item.get("type")
    if kind == "message":
        if item.get("role") not in ("user", "assistant", "system"):
            raise EventError("invalid_value", f"Invalid '{param}.role': expected 'user', 'assistant' or 'system'.",
                             f"{param}.role")
        content = item.get("content")
        if not isinstance(content, list) or not all(isinstance(p, dict) and isinstance(p.get("type"), str)
                                                    for p in content):
            raise EventError("invalid_value", f"Invalid '{param}.content': expected a list of content parts.",
                             f"{param}.content")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str):
            raise EventError("invalid_value", "A function_call_output item needs a string 'call_id' and 'output'.",
                             param)
    elif kind == "function_call":
        if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
            raise EventError("invalid_value", "A function_call item needs string 'call_id', 'name' and 'arguments'.",
                             param)
    else:
        raise EventError("invalid_value", f"Invalid '{param}.type': {kind!r}. Expected 'message', 'function_call' "
                         "or 'function_call_output'.", f"{param}.type")


def _audio_part(item: dict[str, Any]) -> dict[str, Any]:
    """A user item's (first) ``input_audio`` part, where its transcript goes (a detached dict if it
    has none: an item replaced under the same id while its audio was recognised)."""
    return next((p for p in item.get("content") or [] if p.get("type") == "input_audio"), {})


def _take_audio(item: dict[str, Any]) -> bytes:
    """The PCM16 of a created user item's ``input_audio`` parts, taken out of the item: like OpenAI,
    the conversation's events carry no audio (``conversation.item.retrieve`` returns it)."""
    pcm = bytearray()
    parts = []
    for n, part in enumerate(item["content"]):
        if part.get("type") == "input_audio" and "audio" in part:
            try:
                pcm += decode_b64(part["audio"])
            except AudioFormatError as exc:
                raise EventError(exc.code, str(exc), f"item.content[{n}].audio") from None
            part = {k: v for k, v in part.items() if k != "audio"}
            part.setdefault("transcript", None)
        parts.append(part)
    item["content"] = parts
    return bytes(pcm)
