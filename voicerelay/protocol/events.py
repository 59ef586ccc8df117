"""Realtime event names for both dialects, normalisation and builders. No I/O.

Theory of operation
-------------------
Everything inside voicerelay speaks GA. At the edges:

* events *received* in either dialect go through :func:`normalize`, which renames beta server
  events to their GA names (``response.audio.delta`` -> ``response.output_audio.delta``,
  ``conversation.item.created`` -> ``conversation.item.added``) and leaves payloads alone;
* events *emitted* go through :func:`to_dialect`, which renames them back for a beta peer and
  reshapes the payloads whose form changed (sessions, assistant content types, the ``name`` of
  ``response.function_call_arguments.done``), or drops the event when beta has no equivalent
  (``conversation.item.done``).

The name tables below are written out by hand; ``tests/protocol/test_events.py`` compares them
with the event types of the installed ``openai`` SDK, which is the source of truth.
"""

from __future__ import annotations

import enum
import itertools
import secrets
from typing import Any

from .audio import SAMPLE_RATE
from .redact import elide  # noqa: F401 - importable from here as before

Event = dict[str, Any]


class Dialect(str, enum.Enum):
    """Which event names (and session shape) a peer speaks."""

    GA = "ga"
    BETA = "beta"


GA_CLIENT_EVENTS: frozenset[str] = frozenset(
    {
        "conversation.item.create",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "input_audio_buffer.append",
        "input_audio_buffer.clear",
        "input_audio_buffer.commit",
        "output_audio_buffer.clear",
        "response.cancel",
        "response.create",
        "session.update",
    }
)
BETA_CLIENT_EVENTS: frozenset[str] = GA_CLIENT_EVENTS | {"transcription_session.update"}

#: Server events whose name is the same in both dialects.
COMMON_SERVER_EVENTS: frozenset[str] = frozenset(
    {
        "conversation.created",
        "conversation.item.created",
        "conversation.item.deleted",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.retrieved",
        "conversation.item.truncated",
        "error",
        "input_audio_buffer.cleared",
        "input_audio_buffer.committed",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "output_audio_buffer.cleared",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "rate_limits.updated",
        "response.content_part.added",
        "response.content_part.done",
        "response.created",
        "response.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.added",
        "response.output_item.done",
        "session.created",
        "session.updated",
    }
)

#: Beta server event name -> GA name (renames only; see the module docstring).
BETA_TO_GA_SERVER: dict[str, str] = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "transcription_session.updated": "session.updated",
}
#: GA -> beta renames. ``session.updated`` stays: beta only says ``transcription_session.updated``
#: for transcription sessions, which voicerelay never opens.
GA_TO_BETA_SERVER: dict[str, str] = {
    ga: beta for beta, ga in BETA_TO_GA_SERVER.items() if beta != "transcription_session.updated"
}

GA_ONLY_SERVER_EVENTS: frozenset[str] = frozenset(
    {
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.dtmf_event_received",
        "input_audio_buffer.timeout_triggered",
        "mcp_list_tools.completed",
        "mcp_list_tools.failed",
        "mcp_list_tools.in_progress",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
    }
)

GA_SERVER_EVENTS: frozenset[str] = COMMON_SERVER_EVENTS | GA_ONLY_SERVER_EVENTS | frozenset(BETA_TO_GA_SERVER.values())
BETA_SERVER_EVENTS: frozenset[str] = COMMON_SERVER_EVENTS | frozenset(BETA_TO_GA_SERVER)

CLIENT_EVENTS: dict[Dialect, frozenset[str]] = {Dialect.GA: GA_CLIENT_EVENTS, Dialect.BETA: BETA_CLIENT_EVENTS}
SERVER_EVENTS: dict[Dialect, frozenset[str]] = {Dialect.GA: GA_SERVER_EVENTS, Dialect.BETA: BETA_SERVER_EVENTS}

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """An id in OpenAI's style (``event_…``, ``item_…``, ``resp_…``), unique in this process."""
    return f"{prefix}_{secrets.token_hex(6)}{next(_ids):x}"


# --------------------------------------------------------------------------------------------
# Received events


def normalize(event: Event) -> Event:
    """Return ``event`` with a GA type name (a shallow copy when renamed).

    Beta names are mapped to GA; ``conversation.item.created`` (beta, and legacy in GA) becomes
    ``conversation.item.added``. Payload shapes are left as they are: consumers read the few
    fields that differ defensively (see :func:`assistant_text`).
    """
    etype = event.get("type")
    if etype == "conversation.item.created":
        return {**event, "type": "conversation.item.added"}
    if etype in BETA_TO_GA_SERVER:
        return {**event, "type": BETA_TO_GA_SERVER[etype]}
    return event


# --------------------------------------------------------------------------------------------
# Emitted events


_GA_TO_BETA_CONTENT = {"output_text": "text", "output_audio": "audio"}


def _beta_item(item: Any) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    content = [
        {**part, "type": _GA_TO_BETA_CONTENT.get(part.get("type"), part.get("type"))} if isinstance(part, dict) else part
        for part in item["content"]
    ]
    return {**item, "content": content}


def _beta_response(response: Any) -> Any:
    if not isinstance(response, dict):
        return response
    out = {k: v for k, v in response.items() if k not in ("output_modalities", "audio")}
    if "output_modalities" in response:
        mods = list(response["output_modalities"])
        out["modalities"] = ["audio", "text"] if "audio" in mods else mods
    output_cfg = (response.get("audio") or {}).get("output") or {}
    if "voice" in output_cfg:
        out["voice"] = output_cfg["voice"]
    if "format" in output_cfg:
        out["output_audio_format"] = beta_format(output_cfg["format"])
    if isinstance(response.get("output"), list):
        out["output"] = [_beta_item(i) for i in response["output"]]
    return out


def to_dialect(event: Event, dialect: Dialect) -> Event | None:
    """Translate a GA *server* event for a peer of ``dialect``; ``None`` means "do not send"."""
    if dialect is Dialect.GA:
        return event
    etype = event["type"]
    if etype == "conversation.item.done" or etype in GA_ONLY_SERVER_EVENTS - {"conversation.item.added"}:
        return None
    out = dict(event)
    if etype == "conversation.item.added":
        out["type"] = "conversation.item.created"
    elif etype in GA_TO_BETA_SERVER:
        out["type"] = GA_TO_BETA_SERVER[etype]
    if "item" in out:
        out["item"] = _beta_item(out["item"])
    if etype in ("session.created", "session.updated"):
        out["session"] = ga_session_to_beta(out["session"])
    elif etype in ("response.created", "response.done"):
        out["response"] = _beta_response(out["response"])
    elif etype == "response.function_call_arguments.done":
        out.pop("name", None)
    return out


# --------------------------------------------------------------------------------------------
# Session shapes (section 4 and 5 of the protocol reference)

_BETA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
_GA_FORMATS = {beta: ga for ga, beta in _BETA_FORMATS.items()}


#: What :func:`session_turn_detection` returns for a session object that does not say.
UNSAID: Any = object()


def session_turn_detection(session: Any) -> Any:
    """The ``turn_detection`` a session object holds, in either shape: GA's
    ``audio.input.turn_detection`` (a session with ``audio``) or beta's top-level one; ``None`` is
    turn detection off, :data:`UNSAID` when the object does not say (a partial update, or not a dict)."""
    if not isinstance(session, dict):
        return UNSAID
    audio = session.get("audio")
    if isinstance(audio, dict):
        holder = audio.get("input")
        return holder.get("turn_detection", UNSAID) if isinstance(holder, dict) else UNSAID
    return session.get("turn_detection", UNSAID)


def beta_format(fmt: Any) -> Any:
    """``{"type": "audio/pcm", "rate": 24000}`` -> ``"pcm16"``; anything else unchanged."""
    if isinstance(fmt, dict) and fmt.get("type") in _BETA_FORMATS:
        return _BETA_FORMATS[fmt["type"]]
    return fmt


def ga_format(fmt: Any) -> Any:
    """``"pcm16"`` -> ``{"type": "audio/pcm", "rate": 24000}``; anything else unchanged."""
    if isinstance(fmt, str) and fmt in _GA_FORMATS:
        ga = _GA_FORMATS[fmt]
        return {"type": ga, "rate": SAMPLE_RATE} if ga == "audio/pcm" else {"type": ga}
    return fmt


#: (beta key, GA path) for the flat beta session fields that moved under ``audio``.
_SESSION_AUDIO_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input_audio_format", ("input", "format")),
    ("input_audio_transcription", ("input", "transcription")),
    ("turn_detection", ("input", "turn_detection")),
    ("input_audio_noise_reduction", ("input", "noise_reduction")),
    ("output_audio_format", ("output", "format")),
    ("voice", ("output", "voice")),
    ("speed", ("output", "speed")),
)


def ga_session_to_beta(session: dict[str, Any]) -> dict[str, Any]:
    """Flatten a GA session object into the beta shape."""
    out = {
        k: v
        for k, v in session.items()
        if k not in ("type", "audio", "output_modalities", "max_output_tokens", "include", "truncation", "tracing", "prompt")
    }
    if "output_modalities" in session:
        mods = list(session["output_modalities"])
        out["modalities"] = ["audio", "text"] if "audio" in mods else mods
    if "max_output_tokens" in session:
        out["max_response_output_tokens"] = session["max_output_tokens"]
    audio = session.get("audio") or {}
    for beta_key, (side, key) in _SESSION_AUDIO_FIELDS:
        side_cfg = audio.get(side) or {}
        if key in side_cfg:
            value = side_cfg[key]
            out[beta_key] = beta_format(value) if key == "format" else value
    if isinstance(out.get("turn_detection"), dict):  # beta's turn detection has no idle timeout
        out["turn_detection"] = {k: v for k, v in out["turn_detection"].items() if k != "idle_timeout_ms"}
    return out


def beta_session_to_ga(session: dict[str, Any]) -> dict[str, Any]:
    """Nest a flat beta session object into the GA shape (``type: "realtime"`` added)."""
    flat = {beta for beta, _ in _SESSION_AUDIO_FIELDS}
    out: dict[str, Any] = {"type": "realtime"}
    for k, v in session.items():
        if k in flat or k in ("modalities", "max_response_output_tokens", "temperature"):
            continue
        out[k] = v
    if "modalities" in session and isinstance(session["modalities"], list):
        out["output_modalities"] = ["audio"] if "audio" in session["modalities"] else ["text"]
    if "max_response_output_tokens" in session:
        out["max_output_tokens"] = session["max_response_output_tokens"]
    for beta_key, (side, key) in _SESSION_AUDIO_FIELDS:
        if beta_key in session:
            value = session[beta_key]
            out.setdefault("audio", {}).setdefault(side, {})[key] = ga_format(value) if key == "format" else value
    return out


# --------------------------------------------------------------------------------------------
# Client event builders (the same names in both dialects; only session shapes differ)


def session_update(session: dict[str, Any]) -> Event:
    """``session.update`` with a session already in the peer's shape (see ``RealtimeConfig``)."""
    return {"type": "session.update", "session": session}


def input_audio_append(audio_b64: str) -> Event:
    return {"type": "input_audio_buffer.append", "audio": audio_b64}


def input_audio_commit() -> Event:
    return {"type": "input_audio_buffer.commit"}


def input_audio_clear() -> Event:
    return {"type": "input_audio_buffer.clear"}


def response_create(response: dict[str, Any] | None = None) -> Event:
    return {"type": "response.create", "response": response} if response else {"type": "response.create"}


def response_cancel(response_id: str | None = None) -> Event:
    return {"type": "response.cancel", "response_id": response_id} if response_id else {"type": "response.cancel"}


def item_truncate(item_id: str, audio_end_ms: int, content_index: int = 0) -> Event:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": content_index,
        "audio_end_ms": int(audio_end_ms),
    }


def user_text_item(text: str) -> Event:
    """``conversation.item.create`` with a user text message."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {"type": "conversation.item.create", "item": item}


def history_item(role: str, text: str, dialect: Dialect = Dialect.GA) -> Event:
    """``conversation.item.create`` replaying one line of text history (used when recycling)."""
    if role == "assistant":
        ctype = "output_text" if dialect is Dialect.GA else "text"
    else:
        ctype = "input_text"
    item = {"type": "message", "role": role, "content": [{"type": ctype, "text": text}]}
    return {"type": "conversation.item.create", "item": item}


def function_call_output(call_id: str, output: str) -> Event:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return {"type": "conversation.item.create", "item": item}


SAY_PREFIX = "Say exactly the following text, verbatim, and nothing else:"


def say_exactly(text: str, dialect: Dialect = Dialect.GA) -> Event:
    """An out-of-band ``response.create`` that speaks ``text`` verbatim (a gateway's ``TTS``).

    It carries no conversation input (``conversation: "none"``, ``input: []``), so the spoken
    text does not become part of the model's context unless the caller adds it.
    """
    response: dict[str, Any] = {
        "conversation": "none",
        "input": [],
        "instructions": f"{SAY_PREFIX}\n{text}",
        "metadata": {"voicerelay": "say"},
    }
    if dialect is Dialect.GA:
        response["output_modalities"] = ["audio"]
    else:
        response["modalities"] = ["audio", "text"]
    return response_create(response)


def parse_say_instructions(instructions: Any) -> str | None:
    """The text a :func:`say_exactly` request asks to speak, or ``None``."""
    if isinstance(instructions, str) and instructions.startswith(SAY_PREFIX):
        return instructions[len(SAY_PREFIX) :].strip()
    return None


# --------------------------------------------------------------------------------------------
# Reading server events


def assistant_text(item: dict[str, Any]) -> str:
    """The text or transcript of an assistant message item, in either dialect."""
    parts = []
    for part in item.get("content") or []:
        if isinstance(part, dict):
            parts.append(part.get("transcript") or part.get("text") or "")
    return "".join(parts)
