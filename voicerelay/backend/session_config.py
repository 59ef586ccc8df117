"""The embedded backend's session configuration: its defaults and what ``session.update`` may say.

Pure functions, no I/O. :func:`session_update` checks the keys of an update in the client's
dialect and returns it in the GA shape; :func:`merge_session` checks every value and applies it.
Any invalid field rejects the whole update with OpenAI's error code, as api.openai.com does.

Turn detection has two types, each with its own fields (the SDK's GA ``ServerVad`` and
``SemanticVad``): ``server_vad`` takes ``threshold``, ``prefix_padding_ms``,
``silence_duration_ms``, ``idle_timeout_ms``; ``semantic_vad`` takes ``eagerness``; both take
``create_response`` and ``interrupt_response``. A new ``turn_detection`` replaces the old one
whole, its missing fields filled with its type's defaults, and ``session.updated`` echoes only
its type's fields. A field of the other type is accepted and dropped (the beta shape is one flat
object holding both sets, so clients send them).

Semantic VAD asks a model whether the user has finished; here there is none, so ``eagerness``
picks the silence that ends a turn (:data:`SEMANTIC_SILENCE_MS`, see :func:`vad_settings`).
"""

from __future__ import annotations

import copy
from typing import Any

from ..protocol.events import Dialect, beta_session_to_ga, new_id
from .validate import EventError

DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
    "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True,
}
#: turn-detection type -> its fields with their defaults
TURN_DETECTION_DEFAULTS: dict[str, dict[str, Any]] = {"server_vad": DEFAULT_TURN_DETECTION,
                                                      "semantic_vad": SEMANTIC_VAD_DEFAULTS}
#: semantic VAD's eagerness -> the silence (ms) that ends a turn. OpenAI documents the most each
#: waits (low 8 s, medium 4 s, high 2 s; auto is medium); each here is a fifth of that, so low
#: lets a speaker pause longest and high answers soonest.
SEMANTIC_SILENCE_MS: dict[str, int] = {"low": 1600, "medium": 800, "auto": 800, "high": 400}
#: what semantic VAD's detector uses for the fields it does not have
SEMANTIC_THRESHOLD, SEMANTIC_PREFIX_PADDING_MS = 0.5, 300
PCM = {"type": "audio/pcm", "rate": 24000}
_GA_SESSION_KEYS = frozenset({
    "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice", "max_output_tokens",
    "truncation", "tracing", "prompt", "include", "id", "object", "expires_at", "parallel_tool_calls",
    "reasoning",
})
_BETA_SESSION_KEYS = frozenset({
    "modalities", "instructions", "voice", "input_audio_format", "output_audio_format",
    "input_audio_transcription", "turn_detection", "input_audio_noise_reduction", "tools", "tool_choice",
    "temperature", "max_response_output_tokens", "speed", "model", "tracing", "id", "object", "expires_at",
    "client_secret",
})
_AUDIO_SIDE_KEYS = {"input": {"format", "transcription", "turn_detection", "noise_reduction"},
                    "output": {"format", "voice", "speed"}}


def default_session(model: str, expires_at: int) -> dict[str, Any]:
    """The full GA session object announced by ``session.created``."""
    return {
        "type": "realtime", "object": "realtime.session", "id": new_id("sess"), "model": model,
        "output_modalities": ["audio"], "instructions": "You are the voicerelay embedded test assistant.",
        "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "truncation": "auto",
        "prompt": None, "expires_at": expires_at, "include": None,
        "audio": {
            "input": {"format": dict(PCM), "transcription": None, "noise_reduction": None,
                      "turn_detection": dict(DEFAULT_TURN_DETECTION)},
            "output": {"format": dict(PCM), "voice": "alloy", "speed": 1.0},
        },
    }


def session_update(raw: dict[str, Any], dialect: Dialect) -> dict[str, Any]:
    """The ``session`` of a client ``session.update`` as a GA update, its keys checked."""
    if dialect is Dialect.BETA:
        _reject_unknown(raw, _BETA_SESSION_KEYS)
        update = beta_session_to_ga(raw)
    else:
        if "type" not in raw:
            raise EventError("missing_required_parameter", "Missing required parameter: 'session.type'.",
                             "session.type")
        _reject_unknown(raw, _GA_SESSION_KEYS)
        update = raw
    if update.get("type") != "realtime":
        raise EventError("invalid_value", "The embedded backend supports only session.type 'realtime'.",
                         "session.type")
    return update


def _reject_unknown(session: dict[str, Any], allowed: frozenset[str]) -> None:
    for key in session:
        if key not in allowed:
            raise EventError("unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}")


def merge_session(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Apply a GA session update to the effective session, checking every value first.

    Any invalid field rejects the whole update, as OpenAI does.
    """
    merged = copy.deepcopy(current)
    for key, value in update.items():
        if key in ("id", "object", "expires_at", "type"):
            continue
        if key == "audio":
            if not isinstance(value, dict):
                raise EventError("invalid_value", "Invalid type for 'session.audio': expected an object.",
                                 "session.audio")
            for side, cfg in value.items():
                if side not in _AUDIO_SIDE_KEYS or not isinstance(cfg, dict):
                    raise EventError("unknown_parameter", f"Unknown parameter: 'session.audio.{side}'.",
                                     f"session.audio.{side}")
                for sub, sub_value in cfg.items():
                    if sub not in _AUDIO_SIDE_KEYS[side]:
                        raise EventError("unknown_parameter", f"Unknown parameter: 'session.audio.{side}.{sub}'.",
                                         f"session.audio.{side}.{sub}")
                    _check_audio_value(side, sub, sub_value)
                    merged["audio"][side][sub] = _with_td_defaults(sub_value) if sub == "turn_detection" else sub_value
            continue
        _check_session_value(key, value)
        merged[key] = value
    return merged


def _with_td_defaults(td: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checked turn detection with its type's defaults filled in and other types' fields dropped."""
    if td is None:
        return None
    defaults = TURN_DETECTION_DEFAULTS[td["type"]]
    return {key: td.get(key, default) for key, default in defaults.items()}


def vad_settings(td: dict[str, Any]) -> tuple[float, int, int]:
    """``(threshold, prefix_padding_ms, silence_duration_ms)`` for the speech detector of an
    effective turn detection: server VAD's own fields, or semantic VAD's silence for its eagerness."""
    if td["type"] == "semantic_vad":
        return SEMANTIC_THRESHOLD, SEMANTIC_PREFIX_PADDING_MS, SEMANTIC_SILENCE_MS[td.get("eagerness") or "auto"]
    return float(td.get("threshold", 0.5)), int(td.get("prefix_padding_ms", 300)), int(td.get("silence_duration_ms", 500))


def _check_audio_value(side: str, key: str, value: Any) -> None:
    param = f"session.audio.{side}.{key}"
    if key == "format":
        if not isinstance(value, dict) or value.get("type") not in ("audio/pcm", "audio/pcmu", "audio/pcma"):
            raise EventError("invalid_value", f"Invalid '{param}': expected audio/pcm, audio/pcmu or audio/pcma.",
                             param)
        if value["type"] != "audio/pcm":
            raise EventError("invalid_value", "The embedded backend supports only audio/pcm at 24000 Hz.", param)
        rate = value.get("rate", 24000)
        if rate != 24000:
            raise EventError("integer_below_min_value" if isinstance(rate, int) and rate < 24000 else "invalid_value",
                             f"Invalid '{param}.rate': only 24000 is supported.", param + ".rate")
    elif key == "turn_detection":
        if value is None:
            return
        _check_turn_detection(param, value)
    elif key == "voice":
        if not isinstance(value, (str, dict)):
            raise EventError("invalid_value", f"Invalid type for '{param}': expected a string.", param)
    elif key == "speed":
        if not isinstance(value, (int, float)) or not 0.25 <= value <= 1.5:
            raise EventError("invalid_value", f"Invalid '{param}': expected a number from 0.25 to 1.5.", param)
    elif key == "transcription" and value is not None and not isinstance(value, dict):
        raise EventError("invalid_value", f"Invalid type for '{param}': expected an object or null.", param)


def _check_turn_detection(param: str, value: Any) -> None:
    """Check the fields of the turn detection's own type (the other type's are dropped unchecked)."""
    if not isinstance(value, dict) or value.get("type") not in TURN_DETECTION_DEFAULTS:
        raise EventError("invalid_value", f"Invalid '{param}.type': expected 'server_vad' or 'semantic_vad'.",
                         param + ".type")
    for flag in ("create_response", "interrupt_response"):
        if not isinstance(value.get(flag, True), bool):
            raise EventError("invalid_value", f"Invalid type for '{param}.{flag}': expected a boolean.",
                             f"{param}.{flag}")
    if value["type"] == "semantic_vad":
        eagerness = value.get("eagerness", "auto")
        if eagerness not in SEMANTIC_SILENCE_MS:
            raise EventError("invalid_value", f"Invalid '{param}.eagerness': expected 'low', 'medium', 'high' or "
                             "'auto'.", param + ".eagerness")
        return
    threshold = value.get("threshold", 0.5)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise EventError("invalid_value", f"Invalid '{param}.threshold': expected a number from 0 to 1.",
                         param + ".threshold")
    for ms_key in ("prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"):
        ms = value.get(ms_key, 0)
        if ms_key == "idle_timeout_ms" and ms is None:
            continue
        if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
            raise EventError("invalid_value", f"Invalid '{param}.{ms_key}': expected a non-negative integer.",
                             f"{param}.{ms_key}")


def _check_session_value(key: str, value: Any) -> None:
    param = f"session.{key}"
    if key == "instructions" and not isinstance(value, str):
        raise EventError("invalid_value", f"Invalid type for '{param}': expected a string.", param)
    if key == "output_modalities" and (not isinstance(value, list) or value not in (["audio"], ["text"])):
        raise EventError("invalid_value", f"Invalid '{param}': expected [\"audio\"] or [\"text\"].", param)
    if key == "tools":
        if not isinstance(value, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                  for t in value):
            raise EventError("invalid_value", f"Invalid '{param}': expected a list of function tools with names.",
                             param)
    if key == "max_output_tokens" and value != "inf" and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096):
        raise EventError("invalid_value", f"Invalid '{param}': expected an integer from 1 to 4096 or 'inf'.", param)
