from __future__ import annotations

from typing import Any

import pytest

from voicerelay.protocol.config import ConfigError, RealtimeConfig
from voicerelay.protocol.events import Dialect

WEATHER = {"name": "get_weather", "description": "Get the weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_defaults_make_a_valid_ga_session_update(sdk: Any) -> None:
    event = RealtimeConfig().session_update()
    parsed = sdk.GA_CLIENT.validate_python(event)
    session = event["session"]
    assert parsed.type == "session.update" and session["type"] == "realtime"
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["max_output_tokens"] == "inf"


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA])
def test_ragent_keys_map_to_both_dialects(sdk: Any, dialect: Dialect) -> None:
    config = RealtimeConfig.from_mapping({
        "voice": "echo", "model": "gpt-realtime-mini", "instructions": "Be terse.",
        "turn_detection_mode": "aggressive", "turn_detection_params": {"silence_duration_ms": 300},
        "transcription_model": "whisper-1", "max_output_tokens": 256, "tools": [WEATHER],
    })
    event = config.session_update(dialect)
    adapter = sdk.GA_CLIENT if dialect is Dialect.GA else sdk.BETA_CLIENT
    adapter.validate_python(event)
    s = event["session"]
    if dialect is Dialect.GA:
        td, voice, tokens = s["audio"]["input"]["turn_detection"], s["audio"]["output"]["voice"], s["max_output_tokens"]
        assert s["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    else:
        td, voice, tokens = s["turn_detection"], s["voice"], s["max_response_output_tokens"]
        assert "type" not in s and s["input_audio_format"] == "pcm16"
    assert td["silence_duration_ms"] == 300 and td["prefix_padding_ms"] == 200  # param overrides the preset
    assert (voice, tokens) == ("echo", 256)
    assert s["tools"][0]["type"] == "function" and s["tools"][0]["name"] == "get_weather"


def test_disabled_turn_detection_and_agent_mode() -> None:
    s = RealtimeConfig(turn_detection_mode="disabled").session_update()["session"]
    assert s["audio"]["input"]["turn_detection"] is None
    td = RealtimeConfig(create_response=False).turn_detection()
    assert td is not None and td["create_response"] is False


@pytest.mark.parametrize(("values", "message"), [
    ({"turn_detection_mode": "fast"}, "turn_detection_mode"),
    ({"turn_detection_params": {"threshold": 2}}, "threshold"),
    ({"turn_detection_params": {"silence": 1}}, "unknown key"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": "lots"}, "max_output_tokens"),
    ({"tools": [{"description": "nameless"}]}, r"tools\[0\]"),
    ({"voise": "alloy"}, "unknown configuration key"),
    ({"voice": ""}, "voice"),
])
def test_bad_values_name_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RealtimeConfig.from_mapping(values)


def test_ga_only_voice_is_refused_for_beta() -> None:
    with pytest.raises(ConfigError, match="beta"):
        RealtimeConfig(voice="marin").session_update(Dialect.BETA)


def test_public_settings_hold_no_secrets_and_name_the_format() -> None:
    public = RealtimeConfig.from_mapping({"tools": [WEATHER]}).public()
    assert public["audio_format"] == {"encoding": "pcm16", "sample_rate": 24000, "channels": 1}
    assert public["tools"] == ["get_weather"]
    assert not any("key" in k for k in public)
