"""``RealtimeConfig``: ragent's configuration keys, turned into a GA or beta ``session.update``.

Keys (ragent's): ``voice``, ``model``, ``instructions``, ``turn_detection_mode``
(``normal`` | ``aggressive`` | ``disabled``), ``turn_detection_params`` (``threshold``,
``prefix_padding_ms``, ``silence_duration_ms``), ``transcription_model``,
``max_output_tokens`` (1-4096 or ``"inf"``) and ``tools`` (Realtime function schemas).
voicerelay adds ``create_response`` (``False`` in agent-wrapper mode, where the gateway
decides when to speak).

Turn detection modes:

* ``normal``: server VAD, threshold 0.5, 300 ms prefix padding, 500 ms of silence ends a turn;
* ``aggressive``: server VAD tuned to answer quickly, 200 ms prefix, 250 ms of silence;
* ``disabled``: no turn detection; the client commits each turn (push-to-talk).

``turn_detection_params`` override the mode's values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from .events import Dialect, Event, ga_session_to_beta, session_update

TurnDetectionMode = Literal["normal", "aggressive", "disabled"]

TURN_DETECTION_PRESETS: dict[str, dict[str, float | int]] = {
    "normal": {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500},
    "aggressive": {"threshold": 0.5, "prefix_padding_ms": 200, "silence_duration_ms": 250},
}
GA_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
BETA_VOICES = GA_VOICES[:8]
DEFAULT_INSTRUCTIONS = "You are a helpful voice assistant. Answer briefly."
PCM_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclasses.dataclass(frozen=True, slots=True)
class RealtimeConfig:
    """One session's settings, independent of dialect. Build with :meth:`from_mapping`."""

    voice: str = "alloy"
    model: str = "gpt-realtime"
    instructions: str = DEFAULT_INSTRUCTIONS
    turn_detection_mode: TurnDetectionMode = "normal"
    turn_detection_params: Mapping[str, float | int] = dataclasses.field(default_factory=dict)
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    max_output_tokens: int | Literal["inf"] = "inf"
    tools: tuple[Mapping[str, Any], ...] = ()
    create_response: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.voice, str) and self.voice, "voice", "a non-empty string")
        _check(isinstance(self.model, str) and self.model, "model", "a non-empty string")
        _check(isinstance(self.instructions, str), "instructions", "a string")
        _check(self.turn_detection_mode in ("normal", "aggressive", "disabled"), "turn_detection_mode",
               "one of normal, aggressive, disabled")
        _check(isinstance(self.turn_detection_params, Mapping), "turn_detection_params", "a table")
        for key, value in self.turn_detection_params.items():
            if key == "threshold":
                _check(_is_number(value) and 0.0 <= value <= 1.0, "turn_detection_params.threshold",
                       "a number from 0 to 1")
            elif key in ("prefix_padding_ms", "silence_duration_ms"):
                _check(_is_int(value) and 0 <= value <= 10_000, f"turn_detection_params.{key}",
                       "an integer from 0 to 10000")
            else:
                raise ConfigError(f"turn_detection_params.{key}: unknown key (threshold, prefix_padding_ms, "
                                  "silence_duration_ms)")
        _check(self.transcription_model is None or (isinstance(self.transcription_model, str)
                                                    and self.transcription_model), "transcription_model",
               "a model name or none")
        _check(self.max_output_tokens == "inf" or (_is_int(self.max_output_tokens)
                                                   and 1 <= self.max_output_tokens <= 4096),
               "max_output_tokens", 'an integer from 1 to 4096 or "inf"')
        for i, tool in enumerate(self.tools):
            _check(isinstance(tool, Mapping) and isinstance(tool.get("name"), str) and tool["name"],
                   f"tools[{i}]", "a function schema with a name")
            _check(tool.get("type", "function") == "function", f"tools[{i}].type", '"function"')
        _check(isinstance(self.create_response, bool), "create_response", "true or false")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: RealtimeConfig | None = None) -> RealtimeConfig:
        """Build from ragent-style keys (a dict, TOML table or ``config_overrides``).

        Unknown keys are an error (a typo should not silently do nothing). ``base`` supplies
        the values not given.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
        kwargs = dict(values)
        if "tools" in kwargs:
            tools = kwargs["tools"]
            _check(isinstance(tools, (list, tuple)), "tools", "a list of function schemas")
            kwargs["tools"] = tuple({"type": "function", **t} if isinstance(t, Mapping) else t for t in tools)
        if "turn_detection_params" in kwargs and kwargs["turn_detection_params"] is None:
            kwargs["turn_detection_params"] = {}
        return dataclasses.replace(base or cls(), **kwargs)

    def public(self) -> dict[str, Any]:
        """The settings safe to show a browser (``/session-config``): no secrets live here."""
        return {
            "voice": self.voice,
            "model": self.model,
            "turn_detection_mode": self.turn_detection_mode,
            "turn_detection": self.turn_detection(),
            "transcription_model": self.transcription_model,
            "max_output_tokens": self.max_output_tokens,
            "audio_format": {"encoding": "pcm16", "sample_rate": 24000, "channels": 1},
            "tools": [t["name"] for t in self.tools],
        }

    def turn_detection(self) -> dict[str, Any] | None:
        """The GA ``turn_detection`` object (``None`` when disabled)."""
        if self.turn_detection_mode == "disabled":
            return None
        params = {**TURN_DETECTION_PRESETS[self.turn_detection_mode], **self.turn_detection_params}
        return {
            "type": "server_vad",
            "threshold": float(params["threshold"]),
            "prefix_padding_ms": int(params["prefix_padding_ms"]),
            "silence_duration_ms": int(params["silence_duration_ms"]),
            "create_response": self.create_response,
            "interrupt_response": True,
        }

    def ga_session(self) -> dict[str, Any]:
        """The GA ``session`` object of a ``session.update``."""
        audio_input: dict[str, Any] = {
            "format": dict(PCM_FORMAT),
            "turn_detection": self.turn_detection(),
            "transcription": {"model": self.transcription_model} if self.transcription_model else None,
        }
        return {
            "type": "realtime",
            "model": self.model,
            "instructions": self.instructions,
            "output_modalities": ["audio"],
            "audio": {"input": audio_input, "output": {"format": dict(PCM_FORMAT), "voice": self.voice}},
            "tools": [dict(t) for t in self.tools],
            "tool_choice": "auto",
            "max_output_tokens": self.max_output_tokens,
        }

    def session_update(self, dialect: Dialect = Dialect.GA) -> Event:
        """The ``session.update`` client event for ``dialect``."""
        session = self.ga_session()
        if dialect is Dialect.BETA:
            session = ga_session_to_beta(session)
            session.pop("model", None)  # beta sessions take the model from the URL only
            if session.get("voice") not in BETA_VOICES:
                raise ConfigError(f"voice {self.voice!r} does not exist in the beta dialect "
                                  f"(beta voices: {', '.join(BETA_VOICES)})")
        return session_update(session)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: Any, key: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}")
