"""``SessionWatch``: what an onlooker can tell of a Realtime session from its events alone. No I/O.

Theory of operation
-------------------
The relay's :class:`~voicerelay.protocol.session.RealtimeSession` *drives* a session; a proxy
only *watches* one that someone else drives (an app on the openai SDK, openai-agents, Pipecat).
A ``SessionWatch`` is fed every event both ways, in the order they were forwarded, with its
direction (``"up"`` client → server, ``"down"`` server → client) and the watcher's clock in
seconds, and keeps the figures a monitor shows: the assistant's state, the turns, the first-audio
latency of each, the transcripts, the errors, the usage summed over the responses (for the cost)
and when the server's session cap falls. It never raises on what it is fed: a field that is not
there or not of the expected type is skipped.

State, as ``inspect`` shows for every session (``listening`` is the idle state)::

    connecting -> listening -> user_speaking -> thinking -> speaking -> listening ... ended

``speaking`` lasts from a response's first audio (or text) to its ``response.done``: the app
plays the audio itself, so an onlooker cannot know when its speakers stop.

A *turn* is one in-band response that finished (``response.done`` of a response that belongs to
the conversation; out-of-band ones, ``conversation_id`` null, are counted in the usage only). Its
latency is from the end of the user's speech (``input_audio_buffer.speech_stopped``, else the
commit, else the ``response.create``) to the response's first audio or text delta.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .events import normalize
from .session import add_usage

__all__ = ["SessionWatch", "WatchedTranscript"]

_FIRST_OUTPUT = frozenset({"response.output_audio.delta", "response.output_text.delta",
                           "response.output_audio_transcript.delta"})


@dataclasses.dataclass(frozen=True, slots=True)
class WatchedTranscript:
    """A final transcript: ``user`` (its speech, as the server transcribed it) or ``assistant``."""

    role: str
    text: str
    t: float


class SessionWatch:
    """One session's figures, from the events forwarded both ways; see the module docstring."""

    def __init__(self) -> None:
        self.state = "connecting"
        self.model: str | None = None
        self.dialect: str | None = None
        self.turns = 0
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.usage: dict[str, Any] | None = None
        self.transcripts: list[WatchedTranscript] = []
        self.expires_at: float | None = None  # Unix seconds, as session.created says
        self.started_t: float | None = None
        self.last_t = 0.0
        self.ended: str | None = None
        self._speech_end: float | None = None  # when the user's current turn ended (watcher's clock)
        self._in_band: set[str] = set()
        self._first_output: set[str] = set()

    @property
    def last_latency_ms(self) -> float | None:
        return self.latencies_ms[-1] if self.latencies_ms else None

    def in_conversation(self, response_id: Any) -> bool:
        """Is ``response_id`` a response in progress that belongs to the conversation (in-band)?"""
        return isinstance(response_id, str) and response_id in self._in_band

    def remaining_s(self, wall_now: float) -> float | None:
        """Seconds before the server's session cap (``wall_now``: Unix time), ``None`` when unknown."""
        return None if self.expires_at is None else self.expires_at - wall_now

    def feed(self, direction: str, t: float, event: Mapping[str, Any]) -> list[WatchedTranscript]:
        """One event forwarded; the final transcripts it completed (usually none)."""
        kind = event.get("type") if isinstance(event, Mapping) else None
        if not isinstance(kind, str):
            return []
        if self.started_t is None:
            self.started_t = t
        self.last_t = max(self.last_t, t)
        if direction == "up":
            if kind in ("input_audio_buffer.commit", "response.create") and self._speech_end is None:
                self._speech_end = t
            return []
        raw_kind = kind
        event = normalize(dict(event))
        kind = event["type"]
        if self.dialect is None and raw_kind != kind:
            self.dialect = "beta"
        handler = _DOWN.get(kind)
        return handler(self, t, event) if handler is not None else []

    def close(self, how: str) -> None:
        """The session ended (``how``: who closed it, or the close code)."""
        self.ended = how
        self.state = "ended"

    # ----------------------------------------------------------------------------- server events

    def _session(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        session = event.get("session")
        if isinstance(session, Mapping):
            if isinstance(session.get("model"), str):
                self.model = session["model"]
            expires = session.get("expires_at")
            if isinstance(expires, (int, float)) and not isinstance(expires, bool) and expires > 0:
                self.expires_at = float(expires)
            if self.dialect is None and ("type" in session or "audio" in session):
                self.dialect = "ga"
        if self.state == "connecting":
            self.state = "listening"
        return []

    def _speech_started(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        self.state = "user_speaking"
        self._speech_end = None
        return []

    def _speech_stopped(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        self._speech_end = t
        if self.state == "user_speaking":
            self.state = "thinking"
        return []

    def _committed(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        if self._speech_end is None:
            self._speech_end = t
        if self.state in ("listening", "user_speaking"):
            self.state = "thinking"
        return []

    def _response_created(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        response = event.get("response")
        if isinstance(response, Mapping) and isinstance(response.get("id"), str):
            if not ("conversation_id" in response and response["conversation_id"] is None):
                self._in_band.add(response["id"])
                if self.state != "speaking":
                    self.state = "thinking"
        return []

    def _output(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        rid = event.get("response_id")
        if isinstance(rid, str) and rid in self._in_band and rid not in self._first_output:
            self._first_output.add(rid)
            self.state = "speaking"
            if self._speech_end is not None:
                self.latencies_ms.append(round((t - self._speech_end) * 1000, 1))
                self._speech_end = None
        return []

    def _response_done(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        response = event.get("response")
        if not isinstance(response, Mapping):
            return []
        self.usage = add_usage(self.usage, response.get("usage"))
        rid = response.get("id")
        if isinstance(rid, str) and rid in self._in_band:
            self._in_band.discard(rid)
            self._first_output.discard(rid)
            self.turns += 1
            self._speech_end = None
            if not self._in_band and self.state in ("thinking", "speaking"):
                self.state = "listening"
        return []

    def _user_transcript(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        return self._transcript("user", t, event.get("transcript"))

    def _assistant_transcript(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        rid = event.get("response_id")
        if isinstance(rid, str) and rid not in self._in_band:
            return []  # an out-of-band response: not part of the conversation
        return self._transcript("assistant", t, event.get("transcript", event.get("text")))

    def _transcript(self, role: str, t: float, text: Any) -> list[WatchedTranscript]:
        if not isinstance(text, str) or not text.strip():
            return []
        line = WatchedTranscript(role, text.strip(), t)
        self.transcripts.append(line)
        return [line]

    def _error(self, t: float, event: dict[str, Any]) -> list[WatchedTranscript]:
        self.errors += 1
        return []


_DOWN = {
    "session.created": SessionWatch._session,
    "session.updated": SessionWatch._session,
    "input_audio_buffer.speech_started": SessionWatch._speech_started,
    "input_audio_buffer.speech_stopped": SessionWatch._speech_stopped,
    "input_audio_buffer.committed": SessionWatch._committed,
    "response.created": SessionWatch._response_created,
    **{kind: SessionWatch._output for kind in _FIRST_OUTPUT},
    "response.done": SessionWatch._response_done,
    "conversation.item.input_audio_transcription.completed": SessionWatch._user_transcript,
    "response.output_audio_transcript.done": SessionWatch._assistant_transcript,
    "response.output_text.done": SessionWatch._assistant_transcript,
    "error": SessionWatch._error,
}
