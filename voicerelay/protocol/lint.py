"""Protocol lint: mistakes a Realtime client made, found in the events of its session. No I/O.

Theory of operation
-------------------
A :class:`Linter` watches one session from the client's side, the way a recording holds it:
each event with its direction (``"up"`` sent to the Realtime server, ``"down"`` received from
it), its time in the session (seconds) and the event itself, audio as a byte count (a
recording's ``{"wav", "offset", "bytes"}`` reference) or as base64 (a live stream). It keeps
the little state the rules need (the session's dialect, turn detection and voice; the responses
in progress; the audio received per item; the input buffer) and hands back a :class:`Finding`
as soon as a mistake is known, so the same rules run over a recording (``voicerelay lint``) and
live, one event at a time, in anything that sees a session's events::

    linter = Linter()
    for direction, t, event in events:
        for finding in linter.feed(direction, t, event):
            ...
    for finding in linter.finish():      # what only the end of the session settles
        ...

Inputs                                         Findings it may produce
  feed("up", t, event, pcm=None)                VR101 VR102 VR104 VR105 VR106 VR107 VR108 VR109
                                                VR112 VR113, and VR103 once its grace has passed
  feed("down", t, event)                        VR104 (the server refused a second response)
                                                VR110 VR111, VR107 (events queued before
                                                session.created)
  played(item_id, ms)                           none: what the client's player reports as played
                                                (live use), shown in the truncate audit
  finish(t=None)                                VR103 still pending at the end

``pcm`` is the PCM16 audio of an ``input_audio_buffer.append`` when the caller has it (a
recording's ``input.wav``, a live base64 payload decoded): only VR108 looks at it, with numpy,
and not at every append (:attr:`Linter.wants_pcm` says whether it will look at the next one: a
live caller decodes base64 only then).
Every ``conversation.item.truncate`` is also audited (:attr:`Linter.truncates`): the audio
received for that item, what was played (when the caller said so with :meth:`Linter.played`,
else ``None``), what was sent, and what the server answered.

The rules are data (:data:`RULES`: code, title, what to do instead), so the README's table and
``--ignore`` use the same codes. Bad input never raises: an event without the fields a rule
needs is skipped by that rule.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .audio import BYTES_PER_MS, SAMPLE_RATE
from .events import UNSAID, normalize, session_turn_detection

__all__ = ["RULES", "Finding", "Linter", "Rule", "StreamLinter", "TruncateAudit", "band_limit_hz"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One lint rule: its code, what it finds, and what to do instead."""

    code: str
    title: str
    instead: str
    severity: str = "warning"


_RULES = (
    Rule("VR101", "truncate past the audio the client received",
         "clamp audio_end_ms to the audio received for that item (bytes // 48); OpenAI rejects a longer truncate",
         "error"),
    Rule("VR102", "truncate computed from wall-clock time, not from what was played",
         "send what the player really played of the item (its played bytes // 48), not the time since the first "
         "delta: audio arrives faster than real time and waits in buffers"),
    Rule("VR103", "function_call_output without a following response.create",
         "send response.create after the function_call_output item(s), or the model stays silent", "error"),
    Rule("VR104", "response.create while a response is active",
         "wait for response.done (or use conversation: \"none\" for an out-of-band response)", "error"),
    Rule("VR105", "manual input_audio_buffer.commit while server VAD is on",
         "let server VAD commit the turn, or turn it off (turn_detection: null) to commit yourself"),
    Rule("VR106", "response.cancel with no response in progress",
         "cancel only between response.created and response.done; with server VAD the server cancels on "
         "barge-in by itself", "info"),
    Rule("VR107", "beta event names or session shape sent to a GA session",
         "use the GA shape: session.type \"realtime\", audio.input/audio.output, output_modalities "
         "(or connect with OpenAI-Beta: realtime=v1 where beta still exists)", "error"),
    Rule("VR108", "input audio at the wrong sample rate (no content above a low cutoff)",
         "capture or resample to 24 kHz PCM16 before appending; for 8 kHz telephony audio use audio/pcmu or "
         "audio/pcma"),
    Rule("VR109", "session.update changes the voice after audio was produced",
         "set the voice in the first session.update, before any response speaks; the voice is fixed after "
         "the first audio output"),
    Rule("VR110", "the session ran into the 60-minute cap",
         "open a new session before session.expires_at and carry the conversation over (its text history)",
         "error"),
    Rule("VR111", "conversation items only grow: every turn pays for the whole history",
         "delete items you no longer need (conversation.item.delete) or set session.truncation with a "
         "retention_ratio", "info"),
    Rule("VR112", "output_audio_buffer.clear sent over a WebSocket",
         "stop your own playback and send conversation.item.truncate; output_audio_buffer.clear is for "
         "WebRTC/SIP only", "error"),
    Rule("VR113", "input_audio_buffer.commit with less than 100 ms of audio",
         "commit only after at least 100 ms (4800 bytes) of audio, or skip the turn",
         "error"),
)

#: Every rule by code, in order.
RULES: dict[str, Rule] = {rule.code: rule for rule in _RULES}


@dataclass(frozen=True, slots=True)
class Finding:
    """One mistake: its code, when (seconds into the session), what happened, what to do instead."""

    code: str
    t: float
    message: str
    instead: str
    severity: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "t": round(self.t, 3), "severity": self.severity, "message": self.message,
                "instead": self.instead}

    def line(self) -> str:
        """``1.23s VR106 what happened (do instead: ...)``: a live finding's log line."""
        return f"{self.t:.2f}s {self.code} {self.message} (do instead: {self.instead})"

    def short(self) -> str:
        """``1.2s VR106 what happened``: a finding among a session's transcripts (``inspect``)."""
        return f"{self.t:.1f}s {self.code} {self.message}"


@dataclass(slots=True)
class TruncateAudit:
    """One ``conversation.item.truncate``: received, played (``None``: unknown) and sent, side by side."""

    t: float
    item_id: str
    received_ms: int
    played_ms: int | None
    sent_ms: int
    verdict: str = "ok"
    server: str = "no answer"
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "item_id": self.item_id, "received_ms": self.received_ms,
                "played_ms": self.played_ms, "sent_ms": self.sent_ms, "verdict": self.verdict,
                "server": self.server}


# ----------------------------------------------------------------------------------- helpers

#: A function_call_output must be followed by response.create within this many seconds.
RESPONSE_GRACE_S = 5.0
#: A truncate this close to the time since the item's first delta was computed from a clock.
WALL_CLOCK_TOLERANCE_MS = 30
#: ... when the audio had arrived at least this far ahead of real time.
AHEAD_OF_REAL_TIME_MS = 300
MIN_COMMIT_MS = 100
#: VR111 looks at this many in-band turns.
GROWTH_TURNS = 5
#: VR108 judges input audio once per block of this much audio, from a sample at the block's start
#: (SPECTRUM_SAMPLE_S, its frames louder than SPEECH_DBFS; the rest of the block is not looked at,
#: unless the sample was too quiet to judge);
#: after one, two, three full-band blocks in a row it skips 1, 3, 7 blocks before the next (at most
#: SPECTRUM_MAX_SKIP); a sample still being collected when the session ends is judged then.
SPECTRUM_BLOCK_S = 1.0
SPECTRUM_MAX_SKIP = 7
SPEECH_DBFS = -50.0
#: Audio with nothing above this frequency was sampled below 24 kHz (or sent at the wrong rate).
NARROW_BELOW_HZ = 9000
_BAND_HZ = 500
_EMPTY_DB = 60.0
_BLOCK_BYTES = int(SPECTRUM_BLOCK_S * SAMPLE_RATE * 2)

_BETA_SESSION_KEYS = frozenset({"modalities", "voice", "input_audio_format", "output_audio_format",
                                "turn_detection", "input_audio_transcription", "input_audio_noise_reduction",
                                "temperature", "max_response_output_tokens", "speed"})
_BETA_RESPONSE_KEYS = frozenset({"modalities", "voice", "output_audio_format", "temperature",
                                 "max_response_output_tokens"})
_BETA_ONLY_DOWN = frozenset({"response.audio.delta", "response.audio.done", "response.audio_transcript.delta",
                             "response.audio_transcript.done", "response.text.delta", "response.text.done",
                             "transcription_session.updated"})
_GA_ONLY_DOWN = frozenset({"response.output_audio.delta", "response.output_audio.done",
                           "response.output_audio_transcript.delta", "response.output_audio_transcript.done",
                           "response.output_text.delta", "response.output_text.done", "conversation.item.added",
                           "conversation.item.done"})


def _b64_len(text: str) -> int:
    """Bytes that base64 ``text`` decodes to (counted, not checked: the server answers bad audio)."""
    return len(text.rstrip("=")) * 3 // 4


def _audio_nbytes(value: Any) -> int | None:
    """Bytes of PCM an event carries: base64 as sent, or a recording's reference. ``None``: unusable."""
    if isinstance(value, str):  # (live: every chunk)
        return _b64_len(value)
    if isinstance(value, Mapping):
        n = value.get("bytes")
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def band_limit_hz(pcm: bytes) -> float | None:
    """The frequency above which ``pcm`` (PCM16 mono 24 kHz) holds nothing, or ``None`` if it is full band.

    The long-term spectrum of its louder stretches (1024-sample frames above ``SPEECH_DBFS``, at
    most eight of them, spread over it) in 500 Hz bands: a band is empty when it is 60 dB below
    the loudest. Audio recorded at 24 kHz
    has content (speech or the room's noise) up to about 11 kHz; audio that went through 8 kHz
    or 16 kHz has nothing above 4 or 8 kHz. ``None`` too when there is too little loud audio.
    """
    judged = _band_limit(pcm)
    return None if judged is _UNJUDGED else judged  # type: ignore[return-value]


_UNJUDGED = object()


def _band_limit(pcm: bytes) -> float | None | object:
    """:func:`band_limit_hz`, or ``_UNJUDGED`` when ``pcm`` holds too little loud audio to say."""
    import numpy as np

    window, edges = _analysis()
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)
    frames = samples[: len(samples) // _FRAME * _FRAME].reshape(-1, _FRAME).astype(np.float32)
    if len(frames):
        energy = np.einsum("ij,ij->i", frames, frames) / _FRAME  # mean square per frame
        frames = frames[energy >= _SPEECH_POWER]
    if len(frames) < 4:
        return _UNJUDGED
    if len(frames) > _MAX_FRAMES:  # evenly spread over the block: what is empty is empty in every frame
        frames = frames[:: -(-len(frames) // _MAX_FRAMES)]
    power = (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).mean(0)
    levels = 10 * np.log10(np.add.reduceat(power, edges) / np.diff(np.append(edges, len(power))) + 1e-12)
    loudest = float(levels.max())
    if loudest < 40:  # (near) digital silence: nothing to judge
        return _UNJUDGED
    top = int(np.flatnonzero(levels >= loudest - _EMPTY_DB)[-1])
    cutoff = (top + 1) * _BAND_HZ
    return float(cutoff) if cutoff <= NARROW_BELOW_HZ else None


_FRAME = 1024
#: At most this many of a block's loud frames are analysed (their FFT is most of a live linter's
#: cost): a band empty in the audio is empty in each of its frames, and eight frames of speech or
#: room noise fill the bands a 24 kHz stream has.
_MAX_FRAMES = 8
#: The stretch of each block VR108 decodes and judges: eight frames (about 0.34 s). Decoding a
#: live stream's base64 costs more than the spectrum; a band empty in the audio is empty in any
#: stretch of it. A sample with too little loud audio in it is followed by the next at once.
_SAMPLE_BYTES = _MAX_FRAMES * _FRAME * 2
SPECTRUM_SAMPLE_S = _SAMPLE_BYTES / (SAMPLE_RATE * 2)
#: Mean square of a PCM16 frame at SPEECH_DBFS.
_SPEECH_POWER = (32768 * 10 ** (SPEECH_DBFS / 20)) ** 2
_ANALYSIS: Any = None


def _analysis() -> Any:
    """The window and the first FFT bin of each 500 Hz band, computed once."""
    global _ANALYSIS
    if _ANALYSIS is None:
        import numpy as np

        freqs = np.fft.rfftfreq(_FRAME, 1 / SAMPLE_RATE)
        edges = np.searchsorted(freqs, np.arange(0, SAMPLE_RATE // 2, _BAND_HZ))
        _ANALYSIS = (np.hanning(_FRAME).astype(np.float32), edges)
    return _ANALYSIS


@dataclass(slots=True)
class _Item:
    first_t: float
    received: int = 0


@dataclass(slots=True)
class _State:
    dialect: str | None = None  # "ga" | "beta"
    turn_detection: Any = "unknown"
    voice: Any = None
    retention: bool = False
    audio_out: bool = False
    active: set[str] = field(default_factory=set)  # responses in progress, in-band and out-of-band
    in_band: set[str] = field(default_factory=set)
    items: dict[str, _Item] = field(default_factory=dict)
    buffered: int = 0
    pending_outputs: list[tuple[float, str]] = field(default_factory=list)
    last_create: tuple[float, bool] | None = None  # (t, already flagged) of the last in-band response.create
    queued_up: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # before the dialect is known
    deletes: int = 0
    turn_inputs: list[int] = field(default_factory=list)
    grew: bool = False
    narrow_block: bytearray = field(default_factory=bytearray)
    narrow_reported: bool = False
    narrow_clean: int = 0  # blocks judged full band in a row
    narrow_wait: int = 0  # bytes of input audio to let pass before the next sample is collected


class Linter:
    """The rules over one session's events, fed one at a time; findings as soon as they are known."""

    def __init__(self, ignore: Iterable[str] = (), spectrum_phase: float = 0.0) -> None:
        """``spectrum_phase`` (0 to 1): the first VR108 sample starts that fraction of a block late.
        Live linters of many sessions that started together take different phases, so that their
        spectra are not all computed in the same few milliseconds."""
        self.ignore = frozenset(code.upper() for code in ignore)
        unknown = self.ignore - RULES.keys()
        if unknown:
            raise ValueError(f"unknown lint code {', '.join(sorted(unknown))} (known: {', '.join(RULES)})")
        self.findings: list[Finding] = []
        self.truncates: list[TruncateAudit] = []
        self._s = _State()
        self.spectrum_phase = spectrum_phase % 1.0
        self._s.narrow_wait = int(self.spectrum_phase * _BLOCK_BYTES) & ~1
        self._played: dict[str, int] = {}
        self._t = 0.0
        self._out: list[Finding] = []

    # ------------------------------------------------------------------------------ inputs

    def feed(self, direction: str, t: float, event: Mapping[str, Any], pcm: bytes | None = None) -> list[Finding]:
        """One event of the session; the findings it settles (possibly about earlier events)."""
        self._out = []
        self._t = max(self._t, t)
        if type(event) is dict and self._s.dialect is not None:  # the two events of every chunk, first
            kind = event.get("type")
            if kind == "input_audio_buffer.append" and direction == "up":  # (no dialect rule looks at it)
                self._due(t)
                self._on_append(t, event, pcm)
                return self._drain()
            if kind == "response.output_audio.delta" and direction == "down":  # (GA: normalize keeps it)
                self._due(t)
                self._on_audio_delta(t, event)
                return self._drain()
        if (type(event) is dict or isinstance(event, Mapping)) and isinstance(event.get("type"), str):
            self._due(t)
            if direction == "up":
                self._up(t, event, pcm)
            elif direction == "down":  # (normalize copies only what it renames; _down only reads)
                self._down(t, normalize(event if isinstance(event, dict) else dict(event)), event.get("type"))
        return self._drain()

    def audio_chunk(self, direction: str, t: float, event: dict[str, Any]) -> bool:
        """The two events of every chunk of a live session (an append's base64 audio going up, a
        GA audio delta of an item already seen coming down) counted in one step, when nothing else
        is due and VR108 does not want this append's PCM: what :meth:`feed` would do with them,
        which finds nothing. ``False``: the event is not such a one, and :meth:`feed` takes it."""
        s = self._s
        if s.dialect is None or s.pending_outputs:
            return False
        kind = event.get("type")
        if kind == "input_audio_buffer.append" and direction == "up":
            audio = event.get("audio")
            if type(audio) is not str:
                return False
            nbytes = _b64_len(audio)
            if s.narrow_wait > 0:
                s.narrow_wait -= nbytes
            elif "VR108" not in self.ignore:  # a sample of the band is being collected: it needs the PCM
                return False
            s.buffered += nbytes
        elif kind == "response.output_audio.delta" and direction == "down":
            item_id, delta = event.get("item_id"), event.get("delta")
            if type(item_id) is not str or type(delta) is not str:
                return False
            item = s.items.get(item_id)
            if item is None:  # (an item's first delta: feed notes the item)
                return False
            s.audio_out = True
            item.received += _b64_len(delta)
        else:
            return False
        if t > self._t:
            self._t = t
        return True

    @property
    def wants_pcm(self) -> bool:
        """Whether the next append's PCM would be looked at (VR108 is on and collecting a block's
        sample): when not, the append's byte count, which its event carries, is all the linter
        needs, and a caller with only base64 audio need not decode it."""
        return self._s.narrow_wait <= 0 and "VR108" not in self.ignore

    def played(self, item_id: str, ms: int) -> None:
        """What the client's player has played of ``item_id`` (live use): shown in the truncate audit."""
        self._played[item_id] = int(ms)

    def finish(self, t: float | None = None) -> list[Finding]:
        """The session ended (at ``t``, else at its last event): what is still pending is a finding."""
        self._out = []
        for at, call_id in self._s.pending_outputs:
            self._flag("VR103", at, f"function_call_output for {call_id} was never followed by response.create "
                                    "before the session ended")
        self._s.pending_outputs.clear()
        if self._s.narrow_block:
            self._judge_band(self._t if t is None else t)
        return self._drain()

    # ------------------------------------------------------------------------------ plumbing

    def _flag(self, code: str, t: float, message: str) -> None:
        if code in self.ignore:
            return
        rule = RULES[code]
        self._out.append(Finding(code, t, message, rule.instead, rule.severity))

    def _drain(self) -> list[Finding]:
        out = self._out  # (a new list at the next feed or finish: the caller may keep this one)
        if out:
            self.findings.extend(out)
            self._out = []
        return out

    def _due(self, t: float) -> None:
        if not self._s.pending_outputs:
            return
        keep = []
        for at, call_id in self._s.pending_outputs:
            if t - at > RESPONSE_GRACE_S:
                self._flag("VR103", at, f"function_call_output for {call_id} was not followed by response.create "
                                        f"within {RESPONSE_GRACE_S:g} s: the model stays silent")
            else:
                keep.append((at, call_id))
        self._s.pending_outputs = keep

    # ------------------------------------------------------------------------------ client events

    def _up(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        s = self._s
        kind = event["type"]
        if s.dialect is None:
            s.queued_up.append((t, dict(event)))
        elif s.dialect == "ga":
            self._beta_in_ga(t, event)
        handler = _UP.get(kind)
        if handler is not None:
            handler(self, t, event, pcm)

    def _beta_in_ga(self, t: float, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "transcription_session.update":
            self._flag("VR107", t, "transcription_session.update is a beta event; a GA session rejects it")
        elif kind == "session.update" and isinstance(event.get("session"), Mapping):
            session = event["session"]
            beta = sorted(_BETA_SESSION_KEYS.intersection(session))
            if beta or "type" not in session:
                what = f"beta fields {', '.join(beta)}" if beta else "no session.type"
                self._flag("VR107", t, f"session.update in the beta shape ({what}) sent to a GA session")
        elif kind == "response.create" and isinstance(event.get("response"), Mapping):
            beta = sorted(_BETA_RESPONSE_KEYS.intersection(event["response"]))
            if beta:
                self._flag("VR107", t, f"response.create with beta fields {', '.join(beta)} sent to a GA session")

    def _on_append(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        s = self._s
        nbytes = _audio_nbytes(event.get("audio"))
        s.buffered += nbytes or 0
        if s.narrow_wait > 0:  # between two samples its size is enough (see wants_pcm)
            s.narrow_wait -= len(pcm) if pcm else nbytes or 0
        elif pcm:
            self._spectrum(t, pcm)

    def _spectrum(self, t: float, pcm: bytes) -> None:
        """Collect a sample of the input audio (``SPECTRUM_SAMPLE_S`` at the start of each
        ``SPECTRUM_BLOCK_S``) and judge its band. A stream judged full band is judged less and
        less often (every 2nd, 4th, 8th block): the rate of a stream seldom changes, and a live
        linter must stay cheap (the audio between two samples costs nothing when the caller,
        asking :attr:`wants_pcm`, decodes nothing for it)."""
        s = self._s
        s.narrow_block += pcm
        if len(s.narrow_block) >= _SAMPLE_BYTES:
            self._judge_band(t)

    def _judge_band(self, t: float) -> None:
        s = self._s
        cutoff = _band_limit(bytes(s.narrow_block))
        rest_of_block = _BLOCK_BYTES - len(s.narrow_block)
        s.narrow_block.clear()
        if cutoff is _UNJUDGED:  # too quiet to say: the next stretch is the next sample
            return
        s.narrow_wait = rest_of_block
        if cutoff is None:
            s.narrow_reported = False
            s.narrow_clean += 1
            s.narrow_wait += min(SPECTRUM_MAX_SKIP, 2 ** s.narrow_clean - 1) * _BLOCK_BYTES
        elif not s.narrow_reported:
            s.narrow_reported = True
            s.narrow_clean = 0
            assert isinstance(cutoff, float)
            self._flag("VR108", t, f"the input audio has nothing above {cutoff / 1000:g} kHz in a 24 kHz stream: "
                                   f"it was sampled at about {2 * cutoff / 1000:g} kHz (or sent at the wrong rate)")

    def _on_commit(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        s = self._s
        td = s.turn_detection
        if isinstance(td, Mapping) and td.get("type") in ("server_vad", "semantic_vad"):
            self._flag("VR105", t, f"input_audio_buffer.commit sent while {td.get('type')} is on: the server "
                                   "commits turns itself (double turns, commit_empty errors)")
        elif td is None and s.buffered < MIN_COMMIT_MS * BYTES_PER_MS:
            self._flag("VR113", t, f"input_audio_buffer.commit with {s.buffered // BYTES_PER_MS} ms of audio "
                                   f"buffered (at least {MIN_COMMIT_MS} ms needed): the server rejects it")
        s.buffered = 0

    def _on_clear(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        self._s.buffered = 0

    def _on_item_create(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        item = event.get("item")
        if isinstance(item, Mapping) and item.get("type") == "function_call_output":
            self._s.pending_outputs.append((t, str(item.get("call_id", "?"))))

    def _on_item_delete(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        self._s.deletes += 1

    def _on_response_create(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        s = self._s
        params = event.get("response")
        in_band = not (isinstance(params, Mapping) and params.get("conversation") == "none")
        if not in_band:
            return
        s.pending_outputs.clear()
        flagged = bool(s.in_band)
        if flagged:
            self._flag("VR104", t, f"response.create while {min(s.in_band)} is still in progress: the server "
                                   "refuses it (conversation_already_has_active_response)")
        s.last_create = (t, flagged)

    def _on_response_cancel(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        s = self._s
        wanted = event.get("response_id")
        if wanted:
            if wanted not in s.active:
                self._flag("VR106", t, f"response.cancel for {wanted}, which is not in progress")
        elif not s.active:
            self._flag("VR106", t, "response.cancel with no response in progress (response_cancel_not_active)")

    def _on_truncate(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        s = self._s
        item_id = event.get("item_id")
        sent = _number(event.get("audio_end_ms"))
        if not isinstance(item_id, str) or sent is None:
            return
        item = s.items.get(item_id)
        received = item.received // BYTES_PER_MS if item else 0
        audit = TruncateAudit(t, item_id, received, self._played.get(item_id), int(sent),
                              event_id=event.get("event_id") if isinstance(event.get("event_id"), str) else None)
        self.truncates.append(audit)
        if sent > received:
            audit.verdict = "past received"
            what = f"only {received} ms of it was received" if item else "no audio of it was received"
            self._flag("VR101", t, f"truncate of {item_id} at {int(sent)} ms, but {what}: the server rejects it")
            return
        elapsed_ms = (t - item.first_t) * 1000 if item else 0.0
        if (item and abs(sent - elapsed_ms) <= WALL_CLOCK_TOLERANCE_MS
                and received >= elapsed_ms + AHEAD_OF_REAL_TIME_MS):
            audit.verdict = "wall clock"
            self._flag("VR102", t, f"truncate of {item_id} at {int(sent)} ms = the time since its first delta "
                                   f"({elapsed_ms:.0f} ms), while {received} ms had arrived: a clock, not playback")

    def _on_output_clear(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        self._flag("VR112", t, "output_audio_buffer.clear sent over a WebSocket: only WebRTC/SIP sessions have "
                               "a server-side output buffer")

    def _on_session_update(self, t: float, event: Mapping[str, Any], pcm: bytes | None) -> None:
        s = self._s
        session = event.get("session")
        if not isinstance(session, Mapping) or not s.audio_out:
            return
        voice = session.get("voice")
        audio = session.get("audio")
        if isinstance(audio, Mapping) and isinstance(audio.get("output"), Mapping) and "voice" in audio["output"]:
            voice = audio["output"]["voice"]
        if voice is not None and s.voice is not None and voice != s.voice:
            self._flag("VR109", t, f"session.update changes the voice from {s.voice!r} to {voice!r} after audio "
                                   "was produced: the voice is fixed by then")

    # ------------------------------------------------------------------------------ server events

    def _down(self, t: float, event: dict[str, Any], raw_type: Any) -> None:
        s = self._s
        kind = event["type"]
        if s.dialect is None:
            if raw_type in _BETA_ONLY_DOWN:
                self._set_dialect("beta")
            elif raw_type in _GA_ONLY_DOWN:
                self._set_dialect("ga")
        if kind == "response.output_audio.delta":  # first: most of what a server sends
            self._on_audio_delta(t, event)
        elif kind in ("session.created", "session.updated"):
            self._session(event.get("session"))
        elif kind == "response.created":
            response = event.get("response")
            if isinstance(response, Mapping) and isinstance(response.get("id"), str):
                s.active.add(response["id"])
                if not ("conversation_id" in response and response["conversation_id"] is None):
                    s.in_band.add(response["id"])
        elif kind == "response.done":
            response = event.get("response")
            if isinstance(response, Mapping):
                rid = response.get("id")
                in_band = rid in s.in_band or (rid not in s.active and response.get("conversation_id") is not None)
                s.active.discard(rid)
                s.in_band.discard(rid)
                if in_band:
                    self._turn_done(t, response.get("usage"))
        elif kind in ("input_audio_buffer.committed", "input_audio_buffer.cleared"):
            s.buffered = 0
        elif kind == "conversation.item.truncated":
            for audit in reversed(self.truncates):
                if audit.item_id == event.get("item_id") and audit.server == "no answer":
                    audit.server = "accepted"
                    break
        elif kind == "error":
            self._error(t, event.get("error"))

    def _on_audio_delta(self, t: float, event: Mapping[str, Any]) -> None:
        s = self._s
        s.audio_out = True
        item_id = event.get("item_id")
        if isinstance(item_id, str):
            item = s.items.get(item_id)
            if item is None:
                item = s.items[item_id] = _Item(t)
            item.received += _audio_nbytes(event.get("delta")) or 0

    def _set_dialect(self, dialect: str) -> None:
        s = self._s
        s.dialect = dialect
        queued, s.queued_up = s.queued_up, []
        if dialect == "ga":
            for at, event in queued:
                self._beta_in_ga(at, event)

    def _session(self, session: Any) -> None:
        s = self._s
        if not isinstance(session, Mapping):
            return
        if s.dialect is None:
            self._set_dialect("ga" if "type" in session or "audio" in session else "beta")
        td = session_turn_detection(session)
        if td is not UNSAID:
            s.turn_detection = td
        audio = session.get("audio")
        if isinstance(audio, Mapping):  # GA
            out = audio.get("output")
            if isinstance(out, Mapping) and "voice" in out:
                s.voice = out["voice"]
        elif "voice" in session:  # beta
            s.voice = session["voice"]
        truncation = session.get("truncation")
        s.retention = isinstance(truncation, Mapping) and truncation.get("type") == "retention_ratio"

    def _turn_done(self, t: float, usage: Any) -> None:
        s = self._s
        tokens = _number(usage.get("input_tokens")) if isinstance(usage, Mapping) else None
        if tokens is None:
            return
        s.turn_inputs.append(int(tokens))
        last = s.turn_inputs[-GROWTH_TURNS:]
        if (not s.grew and len(last) == GROWTH_TURNS and s.deletes == 0 and not s.retention
                and all(a <= b for a, b in itertools.pairwise(last)) and last[-1] >= 2 * max(last[0], 1)):
            s.grew = True
            self._flag("VR111", t, f"input tokens grew every turn for {GROWTH_TURNS} turns ({last[0]} to "
                                   f"{last[-1]}) and no item was ever deleted: each turn re-bills the whole history")

    def _error(self, t: float, error: Any) -> None:
        s = self._s
        if not isinstance(error, Mapping):
            return
        code = error.get("code")
        if code == "conversation_already_has_active_response" and s.last_create and not s.last_create[1]:
            at = s.last_create[0]
            s.last_create = (at, True)
            self._flag("VR104", at, "response.create while a response was already in progress (the server "
                                    "refused it: conversation_already_has_active_response)")
        elif code == "session_expired":
            self._flag("VR110", t, "the session hit the server's maximum duration (session_expired) and was "
                                   "closed mid-conversation")
        pending = [a for a in self.truncates if a.server == "no answer"]
        if pending:
            echoed = error.get("event_id")
            for audit in pending:
                if (echoed and audit.event_id == echoed) or (
                        not echoed and error.get("param") in ("audio_end_ms", "item_id", "content_index")):
                    audit.server = f"rejected: {error.get('message') or code}"
                    break


_UP = {
    "input_audio_buffer.append": Linter._on_append,
    "input_audio_buffer.commit": Linter._on_commit,
    "input_audio_buffer.clear": Linter._on_clear,
    "conversation.item.create": Linter._on_item_create,
    "conversation.item.delete": Linter._on_item_delete,
    "conversation.item.truncate": Linter._on_truncate,
    "response.create": Linter._on_response_create,
    "response.cancel": Linter._on_response_cancel,
    "output_audio_buffer.clear": Linter._on_output_clear,
    "session.update": Linter._on_session_update,
}


class StreamLinter:
    """The rules over a live session, as the proxy, ``serve`` and ``talk`` run them: times are
    seconds since the first event fed, appended base64 audio is decoded for VR108 when it looks
    at it (:attr:`Linter.wants_pcm`; ``decoded`` counts those appends), and the findings are
    kept (all of them counted; the newest ``keep`` listed).

    ``feed(direction, now, event)`` takes the caller's monotonic clock; it returns the findings
    the event settled (usually none). ``summary()`` is what a monitor shows: ``{"count",
    "findings": [newest, as dicts]}``.
    """

    #: Each live linter's VR108 phase: the golden ratio's multiples spread any number of
    #: sessions evenly over a block (fifty sessions started at once judged their spectra in one
    #: burst of ~15 ms every second, the proxy's p99 latency).
    _phases = itertools.count()

    def __init__(self, ignore: Iterable[str] = (), keep: int = 50) -> None:
        self.linter = Linter(ignore, spectrum_phase=next(self._phases) * 0.6180339887)
        self.count = 0
        self.keep = keep
        self.findings: list[Finding] = []
        self.decoded = 0  # appends whose audio was decoded for the linter
        self._t0: float | None = None

    def feed(self, direction: str, now: float, event: Mapping[str, Any]) -> list[Finding]:
        t0 = self._t0
        if t0 is None:
            t0 = self._t0 = now
        if type(event) is dict and self.linter.audio_chunk(direction, now - t0, event):
            return []  # (every chunk's two events: counted, nothing found)
        pcm = None
        if direction == "up" and self.linter.wants_pcm and event.get("type") == "input_audio_buffer.append":
            audio = event.get("audio")
            if isinstance(audio, str):
                self.decoded += 1
                try:
                    pcm = base64.b64decode(audio, validate=True)
                except (binascii.Error, ValueError):
                    pcm = None  # (the server answers bad audio; the linter counts what it can)
        return self._kept(self.linter.feed(direction, now - self._t0, event, pcm))

    def finish(self, now: float | None = None) -> list[Finding]:
        """The session ended: what only its end settles."""
        return self._kept(self.linter.finish(None if now is None or self._t0 is None else now - self._t0))

    def summary(self, newest: int = 5) -> dict[str, Any]:
        return {"count": self.count, "findings": [f.to_dict() for f in self.findings[-newest:]]}

    def _kept(self, found: list[Finding]) -> list[Finding]:
        if found:
            self.count += len(found)
            self.findings.extend(found)
            del self.findings[:-self.keep]
            self.linter.findings.clear()  # (the Linter keeps every finding and truncate for a recording's report)
        if len(self.linter.truncates) > self.keep:
            del self.linter.truncates[:-self.keep]
        return found
