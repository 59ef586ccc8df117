"""The browser contract (ragent's Voice Gateway events) and its payload checks. No I/O.

Browser -> gateway: ``start_session``, ``audio_data``, ``commit_audio``, ``end_session``;
voicerelay's additions: ``text_input``, ``interrupt``, ``say``, ``get_state`` and
``playback_position``.
Gateway -> browser: ``session_created``, ``session_started``, ``audio_delta``, ``ai_response``,
``response_complete``, ``error``, ``session_ended``; voicerelay's additions (``audio_delta``
also carries ``item_id``):
``user_transcript``, ``ai_transcript``, ``ai_state``, ``interrupted``, ``session_recycled``,
``session_state``.
"""

from __future__ import annotations

import hmac
from typing import Any

from ..errors import ContractError
from ..protocol.audio import AudioFormatError, b64_nbytes

# browser -> gateway
START_SESSION = "start_session"
AUDIO_DATA = "audio_data"
COMMIT_AUDIO = "commit_audio"
END_SESSION = "end_session"
TEXT_INPUT = "text_input"  # addition: {text, immediate_reply?}
INTERRUPT = "interrupt"  # addition: stop the assistant now
SAY = "say"  # addition: {text}: speak this text verbatim through the session
GET_STATE = "get_state"  # addition: answered with session_state
PLAYBACK_POSITION = "playback_position"  # addition: {item_id, played_ms, session_id?}: what the client played

# gateway -> browser
SESSION_CREATED = "session_created"
SESSION_STARTED = "session_started"
AUDIO_DELTA = "audio_delta"  # {audio, index, item_id (addition)}
AI_RESPONSE = "ai_response"
RESPONSE_COMPLETE = "response_complete"
ERROR = "error"
SESSION_ENDED = "session_ended"
USER_TRANSCRIPT = "user_transcript"  # addition: {text, final, item_id}
AI_TRANSCRIPT = "ai_transcript"  # addition: {text, final, item_id} (assistant deltas)
AI_STATE = "ai_state"  # addition: {state}
INTERRUPTED = "interrupted"  # addition: {item_id}: stop playback now
SESSION_RECYCLED = "session_recycled"  # addition: {message}
UPSTREAM_STATUS = "upstream_status"  # addition: {status: "lost"|"recovered", message}
SESSION_STATE = "session_state"  # addition: {session_id|null, chat_active, ai_state, ...}

DEFAULT_MAX_CHUNK_B64 = 64 * 1024




def error_payload(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def token_ok(auth: Any, expected: str | None) -> bool:
    """Does the Socket.IO ``auth`` payload carry ``{token: expected}``? (Always, without a token.)"""
    if expected is None:
        return True
    given = auth.get("token") if isinstance(auth, dict) else None
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def parse_start(data: Any) -> dict[str, Any]:
    """The ``chat_payload`` of ``start_session`` (``{}`` when none is given)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ContractError("invalid_payload", "start_session takes an object: {chat_payload: {...}}")
    chat = data.get("chat_payload", {})
    if chat is None:
        return {}
    if not isinstance(chat, dict):
        raise ContractError("invalid_payload", "chat_payload must be an object")
    return chat


def check_audio(data: Any, max_chunk_b64: int = DEFAULT_MAX_CHUNK_B64) -> tuple[str, int]:
    """The base64 audio of an ``audio_data`` event, checked but not decoded, and its PCM16 byte count."""
    if not isinstance(data, dict) or not isinstance(data.get("audio"), str):
        raise ContractError("invalid_payload", "audio_data takes {audio: base64 PCM16 mono 24 kHz}")
    audio = data["audio"]
    if len(audio) > max_chunk_b64:
        raise ContractError("chunk_too_large",
                            f"audio chunk of {len(audio)} base64 characters is over the limit of {max_chunk_b64}")
    try:
        nbytes = b64_nbytes(audio)
    except AudioFormatError:
        raise ContractError("invalid_audio", "audio is not valid base64") from None
    if nbytes % 2:
        raise ContractError("invalid_audio", f"audio has an odd byte count ({nbytes}): PCM16 needs whole samples")
    return audio, nbytes


def parse_say(data: Any) -> str:
    """``say {text}``."""
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise ContractError("invalid_payload", "say takes {text: non-empty string}")
    return data["text"]


def parse_text(data: Any) -> tuple[str, bool]:
    """``text_input {text, immediate_reply=true}``."""
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise ContractError("invalid_payload", "text_input takes {text: non-empty string, immediate_reply?: bool}")
    reply = data.get("immediate_reply", True)
    if not isinstance(reply, bool):
        raise ContractError("invalid_payload", "immediate_reply must be true or false")
    return data["text"], reply


def parse_playback_position(data: Any) -> tuple[str, float]:
    """``playback_position {item_id, played_ms}``: how much of ``item_id`` the browser has played."""
    if not isinstance(data, dict):
        raise ContractError("invalid_payload", "playback_position takes {item_id: string, played_ms: number >= 0}")
    item_id, played = data.get("item_id"), data.get("played_ms")
    if not isinstance(item_id, str) or not item_id:
        raise ContractError("invalid_payload", "playback_position needs item_id: the item_id of an audio_delta")
    if isinstance(played, bool) or not isinstance(played, (int, float)) or not 0 <= played < float("inf"):
        raise ContractError("invalid_payload", "played_ms must be a number of milliseconds >= 0")
    return item_id, float(played)
