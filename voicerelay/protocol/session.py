"""``RealtimeSession``: the client side of one Realtime conversation, without I/O.

Theory of operation
-------------------
Front doors (microphone, browser, WAV file) and the upstream connection feed this object
*inputs*; every input returns a list of *effects* for the caller to carry out. It never awaits,
never touches a socket, a device or a clock: time arrives as the ``now`` argument (seconds,
monotonic), so tests drive it with plain numbers.

Inputs                                   Effects
  connected()                             SendEvent        an event for the upstream
  audio(pcm)                              PlayAudio        reply audio for one item
  commit() / clear()                      StopPlayback     drop queued audio now (barge-in)
  user_text(text)                         Transcript       user or assistant, partial or final
  interrupt()                             StateChanged     the shared states below
  playback_stopped(item_id, played_ms)    ToolCall         a function the front door must run
  playback_idle()                         TurnFinished     one turn's metrics
  tool_result(call_id, output)            Error            code, message, fatal or not
  say(text)                               Ready            the upstream accepted our configuration
                                          ResponseDone     any response.done (say or not)
  server_event(event)
  closed(reason)

States: connecting -> listening -> user_speaking -> thinking -> speaking -> listening ... ended.

Barge-in (section 9 of the protocol reference): when the server reports speech while reply audio
is playing, or the user interrupts, the session emits ``StopPlayback`` and, if a response is
still running, ``response.cancel``; it ignores further deltas of the interrupted response. The
front door stops its output and reports how much of the item was really heard through
``playback_stopped``; the session then sends ``conversation.item.truncate`` with that figure,
clamped to the audio received for the item, or nothing when nothing was heard.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections.abc import Callable
from typing import Any, ClassVar

from .audio import BYTES_PER_MS, AudioFormatError, b64_pcm16_nbytes, pcm16_to_b64
from .config import RealtimeConfig
from .events import (
    Dialect,
    Event,
    function_call_output,
    history_item,
    input_audio_append,
    input_audio_clear,
    input_audio_commit,
    item_truncate,
    normalize,
    response_cancel,
    response_create,
    say_exactly,
    user_text_item,
)


class State(str, enum.Enum):
    CONNECTING = "connecting"
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    SPEAKING = "speaking"
    ENDED = "ended"


# ------------------------------------------------------------------------------------ effects


_UNKNOWN: Any = object()
_HANDLERS_KEPT = 256


@dataclasses.dataclass(frozen=True, slots=True)
class SendEvent:
    event: Event


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class PlayAudio:
    """Reply audio for one item, as the server sent it: base64 (``audio_b64``, checked, ``nbytes``
    of PCM16) that a relay can forward as it is. ``pcm`` decodes it on first use.

    ``PlayAudio(pcm, response_id, item_id)`` (from PCM bytes) works too.
    """

    audio_b64: str
    response_id: str
    item_id: str
    nbytes: int
    _pcm: bytes | None = dataclasses.field(init=False, compare=False, repr=False)

    def __init__(self, pcm: bytes | None = None, response_id: str = "", item_id: str = "", *,
                 audio_b64: str | None = None, nbytes: int | None = None) -> None:
        if audio_b64 is None:
            if pcm is None:
                raise TypeError("PlayAudio needs pcm or audio_b64")
            pcm = bytes(pcm)
            audio_b64 = pcm16_to_b64(pcm)
            nbytes = len(pcm)
        elif nbytes is None:
            nbytes = b64_pcm16_nbytes(audio_b64)
        set_ = object.__setattr__  # frozen
        set_(self, "audio_b64", audio_b64)
        set_(self, "response_id", response_id)
        set_(self, "item_id", item_id)
        set_(self, "nbytes", nbytes)
        set_(self, "_pcm", pcm)

    @property
    def pcm(self) -> bytes:
        """The PCM16 bytes (decoded once, when first asked for)."""
        if self._pcm is None:
            object.__setattr__(self, "_pcm", base64.b64decode(self.audio_b64))
        return self._pcm  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, slots=True)
class StopPlayback:
    item_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Transcript:
    role: str  # "user" | "assistant"
    text: str  # the delta when partial, the whole text when final
    final: bool
    item_id: str
    out_of_band: bool = False  # said by say(): not an answer to the user


@dataclasses.dataclass(frozen=True, slots=True)
class StateChanged:
    old: State
    new: State


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclasses.dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    fatal: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseDone:
    """Any ``response.done``; ``say`` marks an out-of-band :meth:`RealtimeSession.say`."""

    response_id: str
    status: str
    say: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    session: dict[str, Any]


@dataclasses.dataclass(slots=True)
class Turn:
    """One user turn and the response to it. Times are the ``now`` values given to the session."""

    index: int
    user_item_id: str | None = None
    user_transcript: str = ""
    user_transcribed: bool = False  # the server's transcription of the user's audio arrived (maybe empty)
    assistant_transcript: str = ""
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    audio_in_ms: int = 0
    audio_out_ms: int = 0
    ended_at: float | None = None  # speech_stopped, commit or text sent: when the user was done
    first_delta_at: float | None = None
    done_at: float | None = None
    status: str = "open"
    usage: dict[str, Any] | None = None  # the sum of its responses' usage (a tool call makes two)
    errors: list[str] = dataclasses.field(default_factory=list)
    idle_timeout: bool = False  # the server's idle timeout committed the user's silence (server VAD idle_timeout_ms)

    @property
    def first_audio_ms(self) -> float | None:
        """User done -> first reply audio, in ms."""
        if self.ended_at is None or self.first_delta_at is None:
            return None
        return (self.first_delta_at - self.ended_at) * 1000

    @property
    def streaming_ms(self) -> float | None:
        """First reply audio -> response.done, in ms."""
        if self.first_delta_at is None or self.done_at is None:
            return None
        return (self.done_at - self.first_delta_at) * 1000

    def report(self) -> dict[str, Any]:
        return {
            "index": self.index, "status": self.status, "user": self.user_transcript,
            "assistant": self.assistant_transcript, "tool_calls": self.tool_calls,
            "latency_ms": {"first_audio": _round(self.first_audio_ms), "streaming": _round(self.streaming_ms)},
            "audio_seconds": {"in": self.audio_in_ms / 1000, "out": self.audio_out_ms / 1000},
            "usage": self.usage, "errors": self.errors, **({"idle_timeout": True} if self.idle_timeout else {}),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class TurnFinished:
    turn: Turn


Effect = (SendEvent | PlayAudio | StopPlayback | Transcript | StateChanged | ToolCall | Error | Ready | TurnFinished
          | ResponseDone)

#: Server error codes that end the session (the server closes right after them).
FATAL_CODES = frozenset({"session_expired", "invalid_api_key", "invalid_model", "missing_model",
                         "beta_api_shape_disabled"})
#: Errors that are expected during barge-in and mean nothing to the user.
BENIGN_CODES = frozenset({"response_cancel_not_active"})


class RealtimeSession:
    #: event type -> its ``_on_...`` function, or None (filled as types are seen; see server_event)
    _handlers: ClassVar[dict[str, Callable[..., list[Effect]] | None]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {}  # a subclass's own methods

    def __init__(self, config: RealtimeConfig, dialect: Dialect = Dialect.GA) -> None:
        self.config = config
        self.dialect = dialect
        self.state = State.CONNECTING
        self.turns: list[Turn] = []
        self.history: list[tuple[str, str]] = []  # (role, final text) for recycling a session
        self.session: dict[str, Any] = {}
        self.audio_sent_ms = 0.0
        self.ready = False
        self._active_response: str | None = None
        self._response_items: dict[str, str] = {}  # item_id -> response_id of reply audio
        self._received_bytes: dict[str, int] = {}  # item_id -> reply audio bytes received
        self._playing_item: str | None = None
        self._ignored_responses: set[str] = set()
        self._pending_truncate: str | None = None
        self._pending_tool_calls: set[str] = set()
        self._call_names: dict[str, str] = {}  # call_id -> name (beta omits it from arguments.done)
        self._say_responses: set[str] = set()  # out-of-band responses of say()
        self._create_when_done = False  # a response.create waiting for a cancelled response to finish
        self._tool_outputs_sent = False
        self._turn_by_item: dict[str, Turn] = {}
        self._current: Turn | None = None
        self._response_done = True
        self._buffered_ms = 0.0
        #: usage of the ``say()`` responses, which belong to no turn (they are billed all the same)
        self.say_usage: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- helpers

    def _set_state(self, new: State, out: list[Effect]) -> None:
        if new is not self.state and self.state is not State.ENDED:
            out.append(StateChanged(self.state, new))
            self.state = new

    def _turn(self, now: float | None = None) -> Turn:
        if self._current is None or self._current.done_at is not None:
            self._current = Turn(index=len(self.turns) + 1)
            self.turns.append(self._current)
        return self._current

    def _user_turn(self, event: Event) -> Turn:
        """The turn whose user audio the server names in ``event`` (``item_id``), known by that item from now on."""
        turn = self._turn()
        turn.user_item_id = event.get("item_id")
        if turn.user_item_id:
            self._turn_by_item[turn.user_item_id] = turn
        return turn

    @property
    def turn_detection(self) -> bool:
        return self.config.turn_detection_mode != "disabled"

    @property
    def playing_item(self) -> str | None:
        return self._playing_item

    @property
    def buffered_ms(self) -> float:
        """Audio sent since the last commit or end of speech (what a manual commit would take)."""
        return self._buffered_ms

    @property
    def response_active(self) -> bool:
        return self._active_response is not None

    # ----------------------------------------------------------------------------- inputs

    def connected(self) -> list[Effect]:
        """The upstream socket is open: configure the session (and replay history when recycling)."""
        out: list[Effect] = [SendEvent(self.config.session_update(self.dialect))]
        for role, text in self.history:
            out.append(SendEvent(history_item(role, text, self.dialect)))
        return out

    def audio(self, pcm: bytes) -> list[Effect]:
        """One frame of microphone audio (PCM16 24 kHz mono)."""
        if self.state is State.ENDED or not pcm:
            return []
        ms = len(pcm) / BYTES_PER_MS
        self.audio_sent_ms += ms
        self._buffered_ms += ms
        return [SendEvent(input_audio_append(pcm16_to_b64(pcm)))]

    def audio_b64(self, audio_b64: str, nbytes: int | None = None) -> list[Effect]:
        """One frame of microphone audio already in base64 (a relay's input): sent on as it is.

        ``nbytes`` is its PCM16 byte count when the caller already checked it (with
        :func:`~voicerelay.protocol.audio.b64_pcm16_nbytes`); else it is checked here, and bad
        base64 or an odd byte count raises :class:`~voicerelay.protocol.audio.AudioFormatError`.
        """
        if nbytes is None:
            nbytes = b64_pcm16_nbytes(audio_b64)
        if self.state is State.ENDED or not nbytes:
            return []
        ms = nbytes / BYTES_PER_MS
        self.audio_sent_ms += ms
        self._buffered_ms += ms
        return [SendEvent(input_audio_append(audio_b64))]

    def commit(self, now: float) -> list[Effect]:
        """End the user's turn by hand (push-to-talk): commit, then ask for a response."""
        out: list[Effect] = []
        if self._buffered_ms < 100:
            out.append(Error("input_audio_buffer_commit_empty",
                             f"only {self._buffered_ms:.0f} ms of audio to commit (at least 100 ms needed)"))
            return out
        turn = self._turn()
        turn.ended_at = now
        turn.audio_in_ms += int(self._buffered_ms)
        self._buffered_ms = 0
        out.append(SendEvent(input_audio_commit()))
        if self.config.create_response and not self.turn_detection:
            out += self._request_response()
        self._set_state(State.THINKING, out)
        return out

    def clear(self) -> list[Effect]:
        self._buffered_ms = 0
        return [SendEvent(input_audio_clear())]

    def user_text(self, text: str, now: float, respond: bool = True) -> list[Effect]:
        """A typed user message; ``respond`` asks for an answer at once."""
        out: list[Effect] = self.interrupt() if self._playing_item or self._active_response else []
        turn = self._turn()
        turn.user_transcript = text
        turn.ended_at = now
        self.history.append(("user", text))
        out.append(SendEvent(user_text_item(text)))
        out.append(Transcript("user", text, True, ""))
        if respond:
            out += self._request_response()
            self._set_state(State.THINKING, out)
        return out

    def say(self, text: str) -> list[Effect]:
        """Speak ``text`` verbatim through the upstream (out of band: not added to the context)."""
        return [SendEvent(say_exactly(text, self.dialect))]

    def interrupt(self) -> list[Effect]:
        """A local barge-in (a key, a button): stop playback and cancel the running response."""
        out = self._barge_in()
        if self.state in (State.SPEAKING, State.THINKING):
            self._set_state(State.LISTENING, out)
        return out

    def playback_stopped(self, item_id: str | None, played_ms: int) -> list[Effect]:
        """The front door stopped playing ``item_id`` after ``played_ms`` were heard."""
        if item_id is None or item_id != self._pending_truncate:
            return []
        self._pending_truncate = None
        received_ms = self._received_bytes.get(item_id, 0) // BYTES_PER_MS
        audio_end_ms = max(0, min(int(played_ms), received_ms))
        if audio_end_ms <= 0:
            return []  # nothing was heard: nothing to truncate
        return [SendEvent(item_truncate(item_id, audio_end_ms))]

    def playback_idle(self) -> list[Effect]:
        """The front door has played everything it was given."""
        out: list[Effect] = []
        self._playing_item = None
        if self.state is State.SPEAKING and self._response_done:
            self._set_state(State.LISTENING, out)
        return out

    def tool_result(self, call_id: str, output: str) -> list[Effect]:
        """The output of a ``ToolCall``; the answer is requested once every pending call is back."""
        out: list[Effect] = [SendEvent(function_call_output(call_id, output))]
        self._pending_tool_calls.discard(call_id)
        if not self._pending_tool_calls:
            if self._response_done:
                out += self._request_response()
            else:
                self._tool_outputs_sent = True  # ask once the running response is done
        return out

    def closed(self, reason: str = "") -> list[Effect]:
        out: list[Effect] = []
        self._set_state(State.ENDED, out)
        return out

    def connection_lost(self, now: float) -> list[Effect]:
        """The connection dropped mid-session (a reconnect follows). A reply the user has begun to
        receive is cut: it ends as ``interrupted`` (what was heard stays heard; the new connection
        does not ask for it again). A reply that had not produced anything yet is asked for again
        with the turn's audio, so its turn stays open."""
        out: list[Effect] = []
        response = self._active_response
        turn = self._current
        if response is not None and turn is not None and turn.done_at is None and (
                turn.first_delta_at is not None or turn.assistant_transcript):
            self._ignored_responses.add(response)
            turn.status = "interrupted"
            turn.done_at = now
            turn.errors.append("the upstream connection was lost during the reply")
            out.append(ResponseDone(str(response), "interrupted"))
            out.append(TurnFinished(turn))
        self._active_response = None
        self._response_done = True
        return out

    def reset_for_new_connection(self) -> None:
        """Forget per-connection state before reconnecting (the history is kept)."""
        self.state = State.CONNECTING
        self.ready = False
        self._active_response = None
        self._response_done = True
        self._buffered_ms = 0
        self._playing_item = None
        self._pending_truncate = None
        self._pending_tool_calls.clear()

    # ----------------------------------------------------------------------------- server events

    def server_event(self, raw: Event, now: float) -> list[Effect]:
        """One event from the upstream, in either dialect. Never raises on odd input."""
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            return [Error("invalid_server_event", "the server sent an event without a type")]
        event = normalize(raw)
        handlers = type(self)._handlers
        handler = handlers.get(event["type"], _UNKNOWN)
        if handler is _UNKNOWN:  # each type's method looked up once (most events are reply audio)
            handler = getattr(type(self), "_on_" + event["type"].replace(".", "_"), None)
            if len(handlers) < _HANDLERS_KEPT:  # (a server's made-up types must not grow it)
                handlers[event["type"]] = handler
        if handler is None:
            return []
        try:
            return handler(self, event, now)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return [Error("invalid_server_event", f"could not read {event['type']}: {exc!r}")]

    def _on_session_created(self, event: Event, now: float) -> list[Effect]:
        self.session = event.get("session") or {}
        return []

    def _on_session_updated(self, event: Event, now: float) -> list[Effect]:
        self.session = event.get("session") or {}
        out: list[Effect] = []
        if not self.ready:
            self.ready = True
            out.append(Ready(self.session))
            self._set_state(State.LISTENING, out)
        return out

    def _on_input_audio_buffer_speech_started(self, event: Event, now: float) -> list[Effect]:
        out: list[Effect] = []
        if self._playing_item is not None or self._active_response is not None:
            out += self._barge_in()
        turn = self._user_turn(event)
        turn.audio_in_ms = -int(event.get("audio_start_ms", 0))  # completed by speech_stopped
        self._set_state(State.USER_SPEAKING, out)
        return out

    def _on_input_audio_buffer_speech_stopped(self, event: Event, now: float) -> list[Effect]:
        turn = self._turn()
        turn.ended_at = now
        turn.audio_in_ms += int(event.get("audio_end_ms", 0))
        self._buffered_ms = 0
        out: list[Effect] = []
        self._set_state(State.THINKING, out)
        return out

    def _on_input_audio_buffer_timeout_triggered(self, event: Event, now: float) -> list[Effect]:
        """Server VAD's ``idle_timeout_ms`` went by with no speech: the server commits the silence as
        the user's turn (its item is this event's) and answers it, usually prompting the user."""
        out: list[Effect] = []
        turn = self._user_turn(event)
        turn.audio_in_ms = int(event.get("audio_end_ms", 0)) - int(event.get("audio_start_ms", 0))
        turn.ended_at = now
        turn.idle_timeout = True
        self._buffered_ms = 0
        self._set_state(State.THINKING, out)
        return out

    def _on_input_audio_buffer_committed(self, event: Event, now: float) -> list[Effect]:
        item_id = event.get("item_id")
        if item_id and self._current is not None and self._current.done_at is None:
            self._current.user_item_id = self._current.user_item_id or item_id
            self._turn_by_item[item_id] = self._current
        return []

    def _on_conversation_item_input_audio_transcription_delta(self, event: Event, now: float) -> list[Effect]:
        return [Transcript("user", str(event.get("delta", "")), False, str(event.get("item_id", "")))]

    def _on_conversation_item_input_audio_transcription_completed(self, event: Event, now: float) -> list[Effect]:
        item_id = str(event.get("item_id", ""))
        text = str(event.get("transcript", "")).strip()
        turn = self._turn_by_item.get(item_id)
        if turn is not None:
            turn.user_transcript = text
            turn.user_transcribed = True
        if text:
            self.history.append(("user", text))
        return [Transcript("user", text, True, item_id)]

    def _on_conversation_item_input_audio_transcription_failed(self, event: Event, now: float) -> list[Effect]:
        turn = self._turn_by_item.get(str(event.get("item_id", "")))
        if turn is not None:
            turn.user_transcribed = True  # (nothing more will come for it)
        err = event.get("error") or {}
        return [Error(str(err.get("code") or "transcription_failed"), str(err.get("message", "")))]

    def _on_response_created(self, event: Event, now: float) -> list[Effect]:
        response = event.get("response") or {}
        if (response.get("metadata") or {}).get("voicerelay") == "say":
            self._say_responses.add(str(response.get("id")))
            return []  # out of band: nobody's turn, no state change until its audio plays
        if response.get("conversation_id") is not None or self._active_response is None:
            self._active_response = response.get("id")
        self._response_done = False
        out: list[Effect] = []
        if self.state in (State.LISTENING, State.USER_SPEAKING):
            turn = self._turn()
            turn.ended_at = turn.ended_at or now
            self._set_state(State.THINKING, out)
        return out

    def _on_response_output_audio_delta(self, event: Event, now: float) -> list[Effect]:
        response_id, item_id = event.get("response_id", ""), event.get("item_id", "")
        if response_id in self._ignored_responses:
            return []
        delta = event.get("delta", "")
        try:
            nbytes = b64_pcm16_nbytes(delta)  # checked, not decoded: a relay forwards the base64
        except AudioFormatError as exc:
            return [Error("invalid_audio", f"the server sent bad audio: {exc}")]
        out: list[Effect] = []
        self._received_bytes[item_id] = self._received_bytes.get(item_id, 0) + nbytes
        self._response_items[item_id] = response_id
        self._playing_item = item_id
        if response_id not in self._say_responses:
            turn = self._turn()
            if turn.first_delta_at is None:
                turn.first_delta_at = now
            turn.audio_out_ms += nbytes // BYTES_PER_MS
        out.append(PlayAudio(None, response_id, item_id, audio_b64=delta, nbytes=nbytes))
        self._set_state(State.SPEAKING, out)
        return out

    def _on_response_output_audio_transcript_delta(self, event: Event, now: float) -> list[Effect]:
        if event.get("response_id") in self._ignored_responses:
            return []
        return [Transcript("assistant", str(event.get("delta", "")), False, str(event.get("item_id", "")))]

    _on_response_output_text_delta = _on_response_output_audio_transcript_delta

    def _on_response_output_audio_transcript_done(self, event: Event, now: float) -> list[Effect]:
        response_id = event.get("response_id")
        if response_id in self._ignored_responses:
            return []  # interrupted: the user did not hear it, so it is not an answer
        text = str(event.get("transcript", event.get("text", "")))
        if response_id in self._say_responses:
            return [Transcript("assistant", text, True, str(event.get("item_id", "")), out_of_band=True)]
        turn = self._turn()
        turn.assistant_transcript = (turn.assistant_transcript + " " + text).strip()
        if text:
            self.history.append(("assistant", text))
        return [Transcript("assistant", text, True, str(event.get("item_id", "")))]

    _on_response_output_text_done = _on_response_output_audio_transcript_done

    def _on_response_function_call_arguments_done(self, event: Event, now: float) -> list[Effect]:
        call_id = str(event.get("call_id", ""))
        name = str(event.get("name") or self._call_names.get(call_id, ""))
        arguments = str(event.get("arguments", ""))
        self._pending_tool_calls.add(call_id)
        self._tool_outputs_sent = False
        turn = self._turn()
        try:
            parsed = json.loads(arguments) if arguments else {}
        except ValueError:
            parsed = arguments
        turn.tool_calls.append({"name": name, "call_id": call_id, "arguments": parsed})
        return [ToolCall(call_id, name, arguments)]

    def _on_response_output_item_added(self, event: Event, now: float) -> list[Effect]:
        item = event.get("item") or {}
        if item.get("type") == "function_call":
            self._remember_call(item)
        return []

    def _remember_call(self, item: dict[str, Any]) -> None:
        self._call_names[str(item.get("call_id"))] = str(item.get("name", ""))

    def _on_response_done(self, event: Event, now: float) -> list[Effect]:
        response = event.get("response") or {}
        response_id = response.get("id")
        out: list[Effect] = []
        is_say = (response.get("metadata") or {}).get("voicerelay") == "say"
        if response_id == self._active_response or self._active_response is None:
            self._active_response = None
        self._response_done = self._active_response is None
        status = str(response.get("status", "completed"))
        out.append(ResponseDone(str(response_id or ""), status, is_say))
        if self._create_when_done and self._active_response is None:
            self._create_when_done = False
            out.append(SendEvent(response_create()))
            self._response_done = False
        if is_say:
            self.say_usage = add_usage(self.say_usage, response.get("usage"))
            if self.state is State.THINKING and not self._playing_item:
                self._set_state(State.LISTENING, out)
            return out
        turn = self._turn()
        turn.usage = add_usage(turn.usage, response.get("usage"))
        details = response.get("status_details") or {}
        if status == "failed":
            err = details.get("error") or {}
            message = str(err.get("message") or "the response failed")
            turn.errors.append(message)
            out.append(Error(str(err.get("code") or "response_failed"), message))
        if self._pending_tool_calls and not self._tool_outputs_sent:
            return out  # the turn goes on once the tools have answered
        if self._tool_outputs_sent and not self._pending_tool_calls:
            self._tool_outputs_sent = False
            out += self._request_response()
            return out
        turn.status = status
        turn.done_at = now
        out.append(TurnFinished(turn))
        if self.state is State.THINKING or (self.state is State.SPEAKING and self._playing_item is None):
            self._set_state(State.LISTENING, out)
        return out

    def _on_error(self, event: Event, now: float) -> list[Effect]:
        err = event.get("error") or {}
        code = str(err.get("code") or err.get("type") or "error")
        if code in BENIGN_CODES:
            return []
        message = str(err.get("message", ""))
        fatal = code in FATAL_CODES
        if self._current is not None and self._current.done_at is None:
            self._current.errors.append(f"{code}: {message}")
        out: list[Effect] = [Error(code, message, fatal)]
        if fatal:
            self._set_state(State.ENDED, out)
        return out

    # ----------------------------------------------------------------------------- internals

    def _request_response(self) -> list[Effect]:
        self._response_done = False
        if self._active_response is not None:
            # one response at a time: ask once the running (usually just cancelled) one is done
            self._create_when_done = True
            return []
        return [SendEvent(response_create())]

    def _barge_in(self) -> list[Effect]:
        out: list[Effect] = []
        if self._active_response is not None:  # cancel first: a front door may report playback at once
            self._ignored_responses.add(self._active_response)
            out.append(SendEvent(response_cancel()))
        item_id = self._playing_item
        if item_id is not None:
            response_id = self._response_items.get(item_id)
            if response_id:
                self._ignored_responses.add(response_id)
            # out-of-band items are not in the conversation: nothing to truncate
            self._pending_truncate = None if response_id in self._say_responses else item_id
            self._playing_item = None
            out.append(StopPlayback(item_id))
        return out


def add_usage(total: dict[str, Any] | None, usage: Any) -> dict[str, Any] | None:
    """``total`` plus one response's ``usage``: counts added key by key, nested details too
    (``None`` while there is none). What is not a count (``type``, ...) is kept as it came."""
    if not isinstance(usage, dict):
        return total
    out = dict(total or {})
    for key, value in usage.items():
        before = out.get(key)
        if isinstance(value, dict):
            out[key] = add_usage(before if isinstance(before, dict) else None, value)
        elif isinstance(value, int) and not isinstance(value, bool) and isinstance(before, int):
            out[key] = before + value
        elif key not in out or before is None:
            out[key] = value
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
