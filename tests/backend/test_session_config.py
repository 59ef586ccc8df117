"""The embedded backend's session configuration as pure functions: defaults, update shapes, merging."""

from __future__ import annotations

import copy

import pytest

from voicerelay.backend.session_config import DEFAULT_TURN_DETECTION, default_session, merge_session, session_update
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
    assert merged["audio"]["input"]["turn_detection"] == {**DEFAULT_TURN_DETECTION, "type": "semantic_vad"}
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
