"""The embedded backend's session configuration as pure functions: defaults, update shapes, merging."""

from __future__ import annotations

import copy

import pytest

from voicerelay.backend.session_config import (
    DEFAULT_TURN_DETECTION,
    SEMANTIC_VAD_DEFAULTS,
    default_session,
    merge_session,
    session_update,
)
from voicerelay.backend.validate import EventError
from voicerelay.protocol.events import Dialect

from ..conftest import SDK


def test_the_default_session_is_a_valid_ga_session() -> None:
    session = default_session("gpt-realtime", 99)
    SDK.GA_SERVER.validate_python({"type": "session.created", "event_id": "event_1", "session": session})
    assert session["audio"]["input"]["turn_detection"] == DEFAULT_TURN_DETECTION
    assert session["audio"]["input"]["turn_detection"] is not DEFAULT_TURN_DETECTION  # a copy per session
    assert default_session("m", 1)["id"] != default_session("m", 1)["id"]


def test_merge_leaves_the_current_session_alone_and_ignores_read_only_keys() -> None:
    current = default_session("gpt-realtime", 99)
    before = copy.deepcopy(current)
    merged = merge_session(current, {"type": "realtime", "id": "sess_other", "expires_at": 1, "tools": [],
                                     "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    assert current == before
    assert merged["id"] == current["id"] and merged["expires_at"] == 99
    assert merged["audio"]["input"]["turn_detection"] == SEMANTIC_VAD_DEFAULTS
    assert merged["audio"]["input"]["format"] == current["audio"]["input"]["format"]


def test_beta_updates_come_out_in_the_ga_shape() -> None:
    update = session_update({"voice": "ash", "turn_detection": None, "max_response_output_tokens": 50},
                            Dialect.BETA)
    merged = merge_session(default_session("m", 1), update)
    assert merged["audio"]["output"]["voice"] == "ash"
    assert merged["audio"]["input"]["turn_detection"] is None
    assert merged["max_output_tokens"] == 50


@pytest.mark.parametrize(("raw", "dialect", "code", "param"), [
    ({"instructions": "x"}, Dialect.GA, "missing_required_parameter", "session.type"),
    ({"type": "realtime", "voice": "ash"}, Dialect.GA, "unknown_parameter", "session.voice"),
    ({"output_modalities": ["text"]}, Dialect.BETA, "unknown_parameter", "session.output_modalities"),
])
def test_session_update_checks_keys_in_the_clients_dialect(raw: dict, dialect: Dialect, code: str,
                                                           param: str) -> None:
    with pytest.raises(EventError) as info:
        session_update(raw, dialect)
    assert (info.value.code, info.value.param) == (code, param)


# ---------------------------------------------------------------------------------- turn detection


def _sdk_fields(model: type) -> set[str]:
    return set(model.model_fields)


@pytest.mark.parametrize(("update", "sdk_type"), [
    ({"type": "server_vad", "silence_duration_ms": 300}, "ServerVad"),
    ({"type": "semantic_vad", "eagerness": "high"}, "SemanticVad"),
    # a field of the other type (as beta's flat shape allows) is accepted and dropped, not echoed
    ({"type": "semantic_vad", "threshold": 0.9, "silence_duration_ms": 100, "idle_timeout_ms": 6000}, "SemanticVad"),
    ({"type": "server_vad", "eagerness": "low"}, "ServerVad"),
])
def test_each_turn_detection_type_has_exactly_its_own_fields_in_the_sdks_ga_shape(update: dict, sdk_type: str) -> None:
    from openai.types.realtime import realtime_audio_input_turn_detection as sdk

    merged = merge_session(default_session("gpt-realtime", 99), {"type": "realtime",
                                                                 "audio": {"input": {"turn_detection": update}}})
    td = merged["audio"]["input"]["turn_detection"]
    assert set(td) == _sdk_fields(getattr(sdk, sdk_type))
    assert {k: td[k] for k in update if k in td} == {k: v for k, v in update.items() if k in td}  # what was set
    SDK.GA_SERVER.validate_python({"type": "session.updated", "event_id": "event_1", "session": merged})


def test_the_beta_echo_has_the_fields_of_beta_turn_detection() -> None:
    from openai.types.beta.realtime.session import TurnDetection

    from voicerelay.protocol.events import to_dialect

    for update, expected in [
        ({"type": "server_vad"}, {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                                  "interrupt_response"}),
        ({"type": "semantic_vad", "eagerness": "low"}, {"type", "eagerness", "create_response", "interrupt_response"}),
    ]:
        merged = merge_session(default_session("gpt-realtime", 99),
                               session_update({"turn_detection": update}, Dialect.BETA))
        event = to_dialect({"type": "session.updated", "event_id": "event_1", "session": merged}, Dialect.BETA)
        assert event is not None
        SDK.BETA_SERVER.validate_python(event)
        td = event["session"]["turn_detection"]
        assert set(td) == expected and expected <= set(TurnDetection.model_fields)


@pytest.mark.parametrize(("td", "param"), [
    ({"type": "semantic_vad", "eagerness": "eager"}, "session.audio.input.turn_detection.eagerness"),
    ({"type": "semantic_vad", "create_response": "yes"}, "session.audio.input.turn_detection.create_response"),
    ({"type": "server_vad", "idle_timeout_ms": -1}, "session.audio.input.turn_detection.idle_timeout_ms"),
    ({"type": "server_vad", "interrupt_response": 1}, "session.audio.input.turn_detection.interrupt_response"),
])
def test_a_bad_turn_detection_field_is_invalid_value(td: dict, param: str) -> None:
    with pytest.raises(EventError) as info:
        merge_session(default_session("m", 1), {"type": "realtime", "audio": {"input": {"turn_detection": td}}})
    assert (info.value.code, info.value.param) == ("invalid_value", param)


def test_eagerness_picks_the_silence_that_ends_a_turn_low_longest_high_soonest() -> None:
    from voicerelay.backend.session_config import SEMANTIC_SILENCE_MS, vad_settings

    silence = {e: vad_settings({"type": "semantic_vad", "eagerness": e})[2] for e in ("low", "medium", "high", "auto")}
    assert silence == SEMANTIC_SILENCE_MS == {"low": 1600, "medium": 800, "high": 400, "auto": 800}
    assert silence["low"] > silence["medium"] == silence["auto"] > silence["high"]
    # a fifth of OpenAI's documented longest waits (8, 4 and 2 s)
    assert [silence[e] * 5 for e in ("low", "medium", "high")] == [8000, 4000, 2000]
    assert vad_settings({"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 100,
                         "silence_duration_ms": 250}) == (0.7, 100, 250)
