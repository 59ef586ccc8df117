"""``StateMirror``: what a gateway client knows about its sessions, without I/O.

Theory of operation
-------------------
The connection (:mod:`voicerelay.client.connection`) feeds this object every event the gateway
sends, in order, and tells it the few things it does itself (a ``start_session`` on its way, an
attached session, a session it ends on ``stop()``). ``receive`` and ``mark_ended`` return a list
of *effects* for the connection to carry out; the other inputs only change the state. The mirror
never awaits, never touches a socket or a clock, and never raises on what the gateway sends:
tests drive it with plain dicts.

Inputs                                       Effects
  receive(name, data)                          Emit(name, payload)   a semantic event for the handlers
  mark_ended(session, status)                  StateAnswered(gone)   a session_state for this connection arrived
  begin_start(chat_payload, resumed_from)      StartSucceeded(id)    the pending start has its session_started
  abandon_start() / end_start()                StartFailed(message)  the pending start was refused, or ended
  follow(session_id) / forget(session_id)      EndAbandoned()        a late session_created of an abandoned
                                                                     start: end that session

Dispatch is by table: the events about the connection's own session as a whole
(``session_state``, ``session_created``, ``session_started``, ``session_ended``, ``error``), the
events about one session's conversation (shared by the connection's own session and the
sessions it follows), and the events of a followed session. Anything else is a ``custom_event``.

**Sessions.** ``sessions`` maps session ids to :class:`SessionState` (``session_id``,
``chat_active``, ``ai_state``, ``last_user_text``, ``last_assistant_text``, ...); ``session``
is the active one or ``None``. ``ai_state`` takes the gateway's values: ``connecting``,
``listening`` (the idle state), ``user_speaking``, ``thinking``, ``speaking``, ``ended``. An
``interrupted`` event from the gateway moves a ``speaking`` session to ``listening`` at once
(the gateway's own state follows later). Ended sessions stay in ``sessions`` with
``chat_active=False`` and their ``status`` (the newest :data:`KEEP_ENDED` are kept). A session
ends in one place, :meth:`StateMirror.mark_ended`, so ``session_ended`` goes out once.

**Resync.** A ``session_state`` answers ``get_state``: the mirror adopts the gateway's active
session and its ``ai_state`` (reason ``resync``), and marks a session the gateway no longer has
as ended (``chat_active=False``, ``status="disconnected"``): the gateway ends a session when its
Socket.IO connection drops. :class:`StateAnswered` names that session, so that the connection
can resume it.

**Followed sessions** (another connection's, on any node, attached with ``follow``): events
whose ``session_id`` names one update that session (``followed=True``) and reach the handlers
with that ``session_id``: ``session_state``, ``session_ended``, ``error``, ``ai_state``,
``user_transcript``, ``ai_response``, ``response_complete``. Their audio, transcript deltas and
the rest are not mirrored.

**Semantic events** (every payload is a ``dict`` that always has ``session_id``):
``session_started`` {message, resumed, previous_session_id}, ``user_transcript`` {text, final,
item_id} (partial deltas, then the final text), ``ai_response`` {transcript, response},
``ai_state_changed`` {old, new, reason: ``gateway``, ``interrupted`` or ``resync``},
``response_complete`` {response_id, status}, ``error`` {code, message}, ``session_ended``
{status}; and also ``ai_transcript`` {text, final, item_id}, ``audio`` {pcm: bytes, index,
item_id} (``item_id`` is ``None`` from a gateway that does not send it), ``interrupted``
{item_id}, ``session_recycled`` {message}, ``custom_event`` {name, data} (any other gateway
event, e.g. an agent's ``event_emitter``). The connection adds ``connected`` {reconnect},
``disconnected`` {reason} and its own ``error`` events.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import one_line
from ..gateway import contract as c

__all__ = [
    "KEEP_ENDED", "Effect", "Emit", "EndAbandoned", "SessionState", "StartAttempt", "StartFailed", "StartSucceeded",
    "StateAnswered", "StateMirror",
]

#: How many ended sessions ``sessions`` keeps (the newest).
KEEP_ENDED = 32
#: Errors that refuse a ``start_session`` outright (others only explain a later failure).
START_REFUSALS = frozenset({"session_exists", "invalid_payload"})


@dataclasses.dataclass
class SessionState:
    """The mirror of one gateway session."""

    session_id: str
    chat_active: bool = True
    ai_state: str = "connecting"
    started: bool = False  # session_started arrived: the upstream is connected and configured
    last_user_text: str = ""
    last_assistant_text: str = ""
    responses: int = 0  # response_complete events seen
    status: str | None = None  # why it ended: ended, error, expired, rate_limited, shutdown, disconnected, stopped
    chat_payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    resumed_from: str | None = None
    server: dict[str, Any] = dataclasses.field(default_factory=dict)  # the last session_state, as sent
    followed: bool = False  # another connection's session (any node), attached with attach()


@dataclasses.dataclass(slots=True)
class StartAttempt:
    """A ``start_session`` on its way: what the session it brings starts from, and what came back."""

    chat_payload: dict[str, Any]
    resumed_from: str | None = None
    session_id: str | None = None  # from session_created
    last_error: str = ""  # "code: message" of the gateway's last error meanwhile


# ------------------------------------------------------------------------------------ effects


@dataclasses.dataclass(frozen=True, slots=True)
class Emit:
    """A semantic event for the client's handlers."""

    name: str
    payload: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class StateAnswered:
    """A ``session_state`` for this connection was applied; ``gone`` is the session it found ended."""

    gone: SessionState | None


@dataclasses.dataclass(frozen=True, slots=True)
class StartSucceeded:
    """The pending ``start_session`` has its ``session_started``."""

    session_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class StartFailed:
    """The pending ``start_session`` failed: the gateway refused it, or ended the session."""

    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class EndAbandoned:
    """A ``session_created`` for a ``start_session`` that timed out: end that session."""


Effect = Emit | StateAnswered | StartSucceeded | StartFailed | EndAbandoned
_Handler = Callable[["StateMirror", dict[str, Any]], list[Effect]]
_SessionHandler = Callable[["StateMirror", dict[str, Any], SessionState], list[Effect]]


# ------------------------------------------------------------------------------------ the mirror


class StateMirror:
    """Gateway events in, :class:`SessionState` changes and effects out (see the module docstring)."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionState] = {}
        self.current: SessionState | None = None  # the connection's own session, active or the last one
        self.starting: StartAttempt | None = None
        #: Build ``audio`` events (decoding base64 costs): the connection sets it when someone listens.
        self.audio_wanted = True
        self._abandoned_start = False

    @property
    def session(self) -> SessionState | None:
        """The connection's active session, if any."""
        cur = self.current
        return cur if cur is not None and cur.chat_active else None

    @property
    def session_id(self) -> str | None:
        session = self.session
        return session.session_id if session is not None else None

    # ----------------------------------------------------------------------------- inputs

    def receive(self, name: str, data: Any) -> list[Effect]:
        """One gateway event, in the order they came. Never raises on what the gateway sends."""
        if not isinstance(data, dict):
            data = {"data": data}
        target = data.get("session_id")
        followed = self.sessions.get(target) if isinstance(target, str) else None
        if followed is not None and followed.followed:
            on_followed = _FOLLOWED.get(name)
            return on_followed(self, data, followed) if on_followed is not None else []
        on_own = _OWN.get(name)
        if on_own is not None:
            return on_own(self, data)
        in_session = _IN_SESSION.get(name)
        cur = self.current
        if cur is None or not cur.chat_active:
            if in_session is not None:  # late events of an ended session
                return []
            # agent events before any session, or after it
            return [self._emit("custom_event", cur, name=name, data=data)]
        if in_session is not None:
            return in_session(self, data, cur)
        return [self._emit("custom_event", cur, name=name, data=data)]

    def begin_start(self, chat_payload: dict[str, Any], resumed_from: str | None = None) -> StartAttempt:
        """A ``start_session`` is about to go out: the next ``session_created`` is its session."""
        self.starting = StartAttempt(dict(chat_payload), resumed_from)
        return self.starting

    def abandon_start(self) -> None:
        """The pending start timed out before ``session_created``: end the session if it comes later."""
        self._abandoned_start = True

    def end_start(self) -> None:
        """The pending start is over (succeeded, failed or abandoned)."""
        self.starting = None

    def follow(self, session_id: str) -> SessionState:
        """Follow another connection's session; its ``server`` fills once its ``session_state`` arrives."""
        session = self.sessions.get(session_id)
        if session is None or not session.followed:
            session = SessionState(session_id, started=True, followed=True)
            self.sessions[session_id] = session
        session.server = {}
        return session

    def forget(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def followed(self, session_id: str) -> SessionState | None:
        """The attached session ``session_id``, if it is one."""
        session = self.sessions.get(session_id)
        return session if session is not None and session.followed else None

    def mark_ended(self, session: SessionState, status: str) -> list[Effect]:
        """The one place a mirrored session ends: ``session_ended`` goes out once."""
        if not session.chat_active:
            return []
        session.chat_active = False
        session.status = status
        session.ai_state = "ended"
        ended = [s for s in self.sessions.values() if not s.chat_active]
        for old in ended[:-KEEP_ENDED]:
            self.sessions.pop(old.session_id, None)
        return [self._emit("session_ended", session, status=status)]

    # ----------------------------------------------------------------------------- the own session

    def _on_session_state(self, data: dict[str, Any]) -> list[Effect]:
        """Apply a ``session_state``: adopt the gateway's active session, end the ones it lacks."""
        sid = data.get("session_id")
        active = bool(data.get("chat_active")) and isinstance(sid, str)
        effects: list[Effect] = []
        gone: SessionState | None = None
        for session in list(self.sessions.values()):
            if session.followed:
                continue  # other connections' sessions: their own session_state keeps them current
            if session.chat_active and (not active or session.session_id != sid):
                effects += self.mark_ended(session, "disconnected")
                gone = session
        if active:
            assert isinstance(sid, str)
            session = self.sessions.get(sid)
            if session is None:  # a session this client had not heard of: adopt it
                session = SessionState(sid, started=True)
                self.sessions[sid] = session
            session.server = dict(data)
            session.chat_active = True
            self.current = session
            new = data.get("ai_state")
            if isinstance(new, str):
                effects += self._set_ai_state(session, new, "resync")
        return [*effects, StateAnswered(gone)]

    def _on_session_created(self, data: dict[str, Any]) -> list[Effect]:
        sid = data.get("session_id")
        if not isinstance(sid, str):
            return []
        pending = self.starting
        session = SessionState(sid, chat_payload=dict(pending.chat_payload) if pending else {},
                               resumed_from=pending.resumed_from if pending else None)
        self.sessions[sid] = session
        self.current = session
        if pending is not None:
            pending.session_id = sid
        elif self._abandoned_start:  # a start_session that timed out: do not leave it running
            self._abandoned_start = False
            return [EndAbandoned()]
        return []

    def _on_session_started(self, data: dict[str, Any]) -> list[Effect]:
        sid = data.get("session_id")
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            return []
        session.started = True
        effects: list[Effect] = []
        pending = self.starting
        if pending is not None and pending.session_id == session.session_id:
            effects.append(StartSucceeded(session.session_id))
        effects.append(self._emit("session_started", session, message=data.get("message", ""),
                                  resumed=session.resumed_from is not None,
                                  previous_session_id=session.resumed_from))
        return effects

    def _on_session_ended(self, data: dict[str, Any]) -> list[Effect]:
        status = str(data.get("status") or "ended")
        effects: list[Effect] = []
        pending = self.starting
        if pending is not None:
            detail = f": {pending.last_error}" if pending.last_error else ""
            effects.append(StartFailed(f"the gateway ended the session while starting it ({status}){detail}"))
        cur = self.current
        if cur is not None and cur.chat_active:
            effects += self.mark_ended(cur, status)
        return effects

    def _on_error(self, data: dict[str, Any]) -> list[Effect]:
        code, message = str(data.get("code", "")), one_line(data.get("message", ""))
        effects: list[Effect] = []
        pending = self.starting
        if pending is not None:
            pending.last_error = f"{code}: {message}"
            if code in START_REFUSALS:
                effects.append(StartFailed(f"the gateway refused start_session: {code}: {message}"))
        effects.append(self._emit("error", self.current, code=code, message=message))
        return effects

    # ----------------------------------------------------------------------------- one session's conversation

    def _on_ai_state(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        state = data.get("state")
        return self._set_ai_state(session, state, "gateway") if isinstance(state, str) else []

    def _on_user_transcript(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        if data.get("final") and data.get("text"):
            session.last_user_text = str(data["text"])
        return [self._emit("user_transcript", session, text=data.get("text", ""), final=bool(data.get("final")),
                           item_id=data.get("item_id"))]

    def _on_ai_response(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        if data.get("response"):
            session.last_assistant_text = str(data["response"])
        return [self._emit("ai_response", session, transcript=data.get("transcript", ""),
                           response=data.get("response", ""))]

    def _on_response_complete(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        session.responses += 1
        return [self._emit("response_complete", session, response_id=data.get("response_id"),
                           status=data.get("status"))]

    def _on_audio_delta(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        if not self.audio_wanted:
            return []
        try:
            pcm = base64.b64decode(str(data.get("audio", "")))
        except (binascii.Error, ValueError):
            pcm = b""
        item_id = data.get("item_id")  # sent by newer gateways
        return [self._emit("audio", session, pcm=pcm, index=data.get("index"),
                           item_id=item_id if isinstance(item_id, str) else None)]

    def _on_ai_transcript(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        if data.get("final") and data.get("text"):
            session.last_assistant_text = str(data["text"])
        return [self._emit("ai_transcript", session, text=data.get("text", ""), final=bool(data.get("final")),
                           item_id=data.get("item_id"))]

    def _on_interrupted(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        effects: list[Effect] = [self._emit("interrupted", session, item_id=data.get("item_id"))]
        if session.ai_state == "speaking":
            effects += self._set_ai_state(session, "listening", "interrupted")
        return effects

    def _on_session_recycled(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        return [self._emit("session_recycled", session, message=data.get("message", ""))]

    # ----------------------------------------------------------------------------- a followed session

    def _on_followed_state(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        session.server = dict(data)
        if not data.get("chat_active"):
            return self.mark_ended(session, "ended")
        state = data.get("ai_state")
        return self._set_ai_state(session, state, "resync") if isinstance(state, str) else []

    def _on_followed_ended(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        return self.mark_ended(session, str(data.get("status") or "ended"))

    def _on_followed_error(self, data: dict[str, Any], session: SessionState) -> list[Effect]:
        return [self._emit("error", session, code=str(data.get("code", "")),
                           message=one_line(data.get("message", "")))]

    # ----------------------------------------------------------------------------- helpers

    def _set_ai_state(self, session: SessionState, new: str, reason: str) -> list[Effect]:
        if session.ai_state == new:
            return []
        old, session.ai_state = session.ai_state, new
        return [self._emit("ai_state_changed", session, old=old, new=new, reason=reason)]

    @staticmethod
    def _emit(event: str, session: SessionState | None, /, **fields: Any) -> Emit:
        return Emit(event, {"session_id": session.session_id if session is not None else None, **fields})


# the dispatch tables (see the module docstring)
_OWN: dict[str, _Handler] = {
    c.SESSION_STATE: StateMirror._on_session_state,
    c.SESSION_CREATED: StateMirror._on_session_created,
    c.SESSION_STARTED: StateMirror._on_session_started,
    c.SESSION_ENDED: StateMirror._on_session_ended,
    c.ERROR: StateMirror._on_error,
}
_SHARED: dict[str, _SessionHandler] = {  # mirrored alike for the own session and followed ones
    c.AI_STATE: StateMirror._on_ai_state,
    c.USER_TRANSCRIPT: StateMirror._on_user_transcript,
    c.AI_RESPONSE: StateMirror._on_ai_response,
    c.RESPONSE_COMPLETE: StateMirror._on_response_complete,
}
_IN_SESSION: dict[str, _SessionHandler] = {
    **_SHARED,
    c.AUDIO_DELTA: StateMirror._on_audio_delta,
    c.AI_TRANSCRIPT: StateMirror._on_ai_transcript,
    c.INTERRUPTED: StateMirror._on_interrupted,
    c.SESSION_RECYCLED: StateMirror._on_session_recycled,
}
_FOLLOWED: dict[str, _SessionHandler] = {
    **_SHARED,
    c.SESSION_STATE: StateMirror._on_followed_state,
    c.SESSION_ENDED: StateMirror._on_followed_ended,
    c.ERROR: StateMirror._on_followed_error,
}
