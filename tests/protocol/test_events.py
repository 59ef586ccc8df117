from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest

from voicerelay.protocol import events as ev
from voicerelay.protocol.events import Dialect


def _sdk_types(alias: Any) -> set[str]:
    """The ``type`` literals of every member of one of the SDK's event unions."""
    union = get_args(alias)[0]
    names = set()
    for member in get_args(union):
        names.update(get_args(member.model_fields["type"].annotation))
    return names


def test_name_tables_match_the_installed_sdk() -> None:
    from openai.types.beta.realtime import RealtimeClientEvent as BetaClient
    from openai.types.beta.realtime import RealtimeServerEvent as BetaServer
    from openai.types.realtime import RealtimeClientEvent as GAClient
    from openai.types.realtime import RealtimeServerEvent as GAServer

    assert ev.GA_CLIENT_EVENTS == _sdk_types(GAClient)
    assert ev.GA_SERVER_EVENTS == _sdk_types(GAServer)
    assert ev.BETA_CLIENT_EVENTS == _sdk_types(BetaClient)
    assert ev.BETA_SERVER_EVENTS == _sdk_types(BetaServer)


def test_name_tables_match_the_protocol_reference() -> None:
    data = json.loads((Path(__file__).resolve().parent / "realtime_events.json").read_text())
    assert sorted(ev.GA_SERVER_EVENTS) == data["ga"]["server"]
    assert sorted(ev.BETA_SERVER_EVENTS) == data["beta"]["server"]
    assert {b: g[0] for b, g in data["beta_to_ga"]["server"].items() if len(g) == 1} == ev.BETA_TO_GA_SERVER


@pytest.mark.parametrize(("beta", "ga"), [
    ("response.audio.delta", "response.output_audio.delta"),
    ("response.audio_transcript.done", "response.output_audio_transcript.done"),
    ("response.text.delta", "response.output_text.delta"),
    ("conversation.item.created", "conversation.item.added"),
    ("response.done", "response.done"),
])
def test_normalize_maps_beta_names_to_ga(beta: str, ga: str) -> None:
    event = {"type": beta, "event_id": "event_1", "delta": "AAAA"}
    out = ev.normalize(event)
    assert out["type"] == ga and out["delta"] == "AAAA"
    assert event["type"] == beta  # the input is never mutated


def test_normalize_keeps_unknown_events() -> None:
    event = {"type": "x.future_event", "n": 1}
    assert ev.normalize(event) is event


def test_to_dialect_beta_renames_and_reshapes(sdk: Any) -> None:
    added = {"type": "conversation.item.added", "event_id": "event_1", "previous_item_id": None,
             "item": {"id": "item_1", "type": "message", "role": "assistant", "status": "completed",
                      "object": "realtime.item", "content": [{"type": "output_audio", "transcript": "hi"}]}}
    beta = ev.to_dialect(added, Dialect.BETA)
    assert beta is not None and beta["type"] == "conversation.item.created"
    assert beta["item"]["content"][0]["type"] == "audio"
    sdk.BETA_SERVER.validate_python(beta)
    assert ev.to_dialect({**added, "type": "conversation.item.done"}, Dialect.BETA) is None
    done = {"type": "response.function_call_arguments.done", "event_id": "e", "response_id": "r", "item_id": "i",
            "output_index": 0, "call_id": "c", "name": "f", "arguments": "{}"}
    assert "name" not in ev.to_dialect(done, Dialect.BETA)
    assert ev.to_dialect(done, Dialect.GA) is done


def test_session_events_keep_their_name_for_beta(sdk: Any) -> None:
    updated = {"type": "session.updated", "event_id": "e", "session": {
        "type": "realtime", "id": "sess_1", "object": "realtime.session", "model": "gpt-realtime",
        "audio": {"output": {"voice": "alloy"}}}}
    beta = ev.to_dialect(updated, Dialect.BETA)
    assert beta is not None and beta["type"] == "session.updated" and beta["session"]["voice"] == "alloy"
    sdk.BETA_SERVER.validate_python(beta)


def test_session_shapes_round_trip() -> None:
    ga = {"type": "realtime", "instructions": "x", "output_modalities": ["audio"], "max_output_tokens": 100,
          "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None,
                              "transcription": {"model": "whisper-1"}},
                    "output": {"format": {"type": "audio/pcmu"}, "voice": "ash"}}}
    beta = ev.ga_session_to_beta(ga)
    assert beta == {"instructions": "x", "modalities": ["audio", "text"], "max_response_output_tokens": 100,
                    "input_audio_format": "pcm16", "turn_detection": None,
                    "input_audio_transcription": {"model": "whisper-1"}, "output_audio_format": "g711_ulaw",
                    "voice": "ash"}
    assert ev.beta_session_to_ga(beta) == ga


@pytest.mark.parametrize("builder", [
    lambda: ev.input_audio_append("AAAA"),
    ev.input_audio_commit,
    ev.input_audio_clear,
    ev.response_create,
    lambda: ev.response_cancel("resp_1"),
    lambda: ev.item_truncate("item_1", 1500),
    lambda: ev.user_text_item("hello"),
    lambda: ev.function_call_output("call_1", '{"ok":true}'),
    lambda: ev.history_item("assistant", "earlier answer"),
    lambda: ev.say_exactly("Read this."),
])
def test_builders_validate_against_the_sdk(sdk: Any, builder: Any) -> None:
    event = builder()
    assert sdk.GA_CLIENT.validate_python(event).type == event["type"]


def test_beta_builders_validate_against_the_beta_sdk(sdk: Any) -> None:
    sdk.BETA_CLIENT.validate_python(ev.say_exactly("Read this.", Dialect.BETA))
    sdk.BETA_CLIENT.validate_python(ev.history_item("assistant", "earlier", Dialect.BETA))


def test_say_exactly_round_trips_its_text() -> None:
    event = ev.say_exactly("  Your table is booked.\nSee you at 8. ")
    response = event["response"]
    assert response["conversation"] == "none" and response["input"] == []
    assert ev.parse_say_instructions(response["instructions"]) == "Your table is booked.\nSee you at 8."
    assert ev.parse_say_instructions("Be brief.") is None


def test_new_ids_are_unique_and_prefixed() -> None:
    ids = {ev.new_id("item") for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("item_") for i in ids)


@pytest.mark.parametrize(("session", "expected"), [
    ({"type": "realtime", "audio": {"input": {"turn_detection": None}}}, None),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}, {"type": "server_vad"}),
    ({"turn_detection": {"type": "semantic_vad"}}, {"type": "semantic_vad"}),  # beta
    ({"turn_detection": None, "voice": "alloy"}, None),  # beta
    ({"type": "realtime", "audio": {"output": {"voice": "marin"}}}, "unsaid"),  # a partial GA update
    ({"type": "realtime", "audio": {"input": {}}, "turn_detection": None}, "unsaid"),  # GA reads audio.input only
    ({"instructions": "be brief"}, "unsaid"),
    ("not a session", "unsaid"),
])
def test_a_sessions_turn_detection_is_read_in_either_shape(session: Any, expected: Any) -> None:
    from voicerelay.protocol.events import UNSAID, session_turn_detection

    found = session_turn_detection(session)
    assert (found is UNSAID) if expected == "unsaid" else (found == expected)
