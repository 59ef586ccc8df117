"""ServerSession, the embedded backend's session state, driven with plain dicts: no sockets, no
event loop, no engines. Jobs (VAD, STT, TTS, pacing) are effects; their results are fed back by
hand. Every event the session sends is checked against the SDK's strict GA types."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from voicerelay.backend import responder
from voicerelay.backend.session import (
    CHUNK_MS,
    STT_TAIL_MS,
    DetectSpeech,
    Pause,
    SendEvent,
    ServerSession,
    StartVad,
    StopVad,
    Synthesize,
    Transcribe,
)
from voicerelay.protocol.events import Dialect, say_exactly

from ..conftest import SDK

BYTES_PER_MS = 48  # PCM16 mono 24 kHz
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def pcm(ms: int, value: int = 1) -> bytes:
    return value.to_bytes(2, "little", signed=True) * (ms * BYTES_PER_MS // 2)


def append(ms: int, value: int = 1) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm(ms, value)).decode()}


def sent(effects: list[Any]) -> list[dict[str, Any]]:
    events = [e.event for e in effects if isinstance(e, SendEvent)]
    for event in events:
        SDK.GA_SERVER.validate_python(event)  # every event must be a valid GA server event
        assert event["event_id"].startswith("event_")
    return events


def types(effects: list[Any]) -> list[str]:
    return [e["type"] for e in sent(effects)]


def jobs(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def error_of(effects: list[Any]) -> dict[str, Any]:
    errors = [e["error"] for e in sent(effects) if e["type"] == "error"]
    assert len(errors) == 1, sent(effects)
    return errors[0]


def new_session(dialect: Dialect = Dialect.GA, turn_detection: bool = False) -> ServerSession:
    session = ServerSession(model="gpt-realtime", expires_at=2_000_000_000, dialect=dialect)
    session.start()
    if not turn_detection:
        update(session, {"audio": {"input": {"turn_detection": None}}})
    return session


def update(session: ServerSession, fields: dict[str, Any]) -> list[Any]:
    effects = session.handle({"type": "session.update", "session": {"type": "realtime", **fields}})
    assert types(effects)[-1] == "session.updated", sent(effects)
    return effects


def user_text(session: ServerSession, text: str) -> list[Any]:
    return session.handle({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})


def run_audio_reply(session: ServerSession, effects: list[Any], pcm_ms: int = 250) -> list[Any]:
    """Carry out a response's Synthesize and Pauses like the pump does; return every effect."""
    (synth,) = jobs(effects, Synthesize)
    out = session.synthesized(synth.response_id, pcm(pcm_ms, 1000))
    collected = list(out)
    while jobs(out, Pause):
        out = session.stream(synth.response_id)
        collected += out
    return collected


# ---------------------------------------------------------------------------------- session


def test_start_announces_the_session_and_starts_server_vad() -> None:
    session = ServerSession(model="gpt-test", expires_at=1234)
    effects = session.start()
    assert effects[0] == StartVad(0.5, 300, 500)
    (created,) = sent(effects)
    assert created["type"] == "session.created"
    assert created["session"]["model"] == "gpt-test" and created["session"]["expires_at"] == 1234
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_session_update_merges_into_the_effective_session() -> None:
    session = new_session(turn_detection=True)
    effects = update(session, {"instructions": "Be brief.", "audio": {"output": {"voice": "marin"}}})
    merged = sent(effects)[-1]["session"]
    assert merged["instructions"] == "Be brief."
    assert merged["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin",
                                         "speed": 1.0}
    assert merged["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500  # untouched
    assert not jobs(effects, StartVad) and not jobs(effects, StopVad)  # turn detection did not change
    assert session.session["instructions"] == "Be brief."


def test_a_turn_detection_change_restarts_or_stops_vad_with_defaults_filled_in() -> None:
    session = new_session(turn_detection=True)
    effects = update(session, {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.9,
                                                                      "silence_duration_ms": 200}}}})
    assert jobs(effects, StartVad) == [StartVad(0.9, 300, 200)]
    td = sent(effects)[-1]["session"]["audio"]["input"]["turn_detection"]
    assert td["create_response"] is True and td["prefix_padding_ms"] == 300
    assert jobs(update(session, {"audio": {"input": {"turn_detection": None}}}), StopVad) == [StopVad()]


@pytest.mark.parametrize(("eagerness", "silence_ms"), [("low", 1600), ("medium", 800), ("auto", 800), ("high", 400)])
def test_semantic_vad_is_echoed_with_its_own_fields_and_eagerness_sets_when_a_turn_ends(eagerness: str,
                                                                                       silence_ms: int) -> None:
    session = new_session(turn_detection=True)
    effects = update(session, {"audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                                      "eagerness": eagerness}}}})
    assert jobs(effects, StartVad) == [StartVad(0.5, 300, silence_ms)]
    td = sent(effects)[-1]["session"]["audio"]["input"]["turn_detection"]
    assert td == {"type": "semantic_vad", "eagerness": eagerness, "create_response": True,
                  "interrupt_response": True}
    # back to server VAD: its own fields again, with their defaults
    effects = update(session, {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
    assert jobs(effects, StartVad) == [StartVad(0.5, 300, 500)]
    assert sent(effects)[-1]["session"]["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
        "idle_timeout_ms": None, "create_response": True, "interrupt_response": True}


def test_beta_session_update_is_nested_into_the_ga_shape() -> None:
    session = new_session(Dialect.BETA, turn_detection=True)
    effects = session.handle({"type": "session.update", "session": {"voice": "verse", "modalities": ["text"]}})
    merged = sent(effects)[-1]["session"]
    assert merged["audio"]["output"]["voice"] == "verse" and merged["output_modalities"] == ["text"]


SESSION_ERRORS: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("no type", {"instructions": "x"}, "missing_required_parameter", "session.type"),
    ("wrong type", {"type": "transcription"}, "invalid_value", "session.type"),
    ("unknown key", {"type": "realtime", "temperature": 0.8}, "unknown_parameter", "session.temperature"),
    ("unknown audio side", {"type": "realtime", "audio": {"sideways": {}}}, "unknown_parameter",
     "session.audio.sideways"),
    ("unknown audio key", {"type": "realtime", "audio": {"input": {"volume": 3}}}, "unknown_parameter",
     "session.audio.input.volume"),
    ("rate below 24 kHz", {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "integer_below_min_value", "session.audio.input.format.rate"),
    ("g711", {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}}, "invalid_value",
     "session.audio.output.format"),
    ("vad threshold", {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad",
                                                                                  "threshold": 2}}}},
     "invalid_value", "session.audio.input.turn_detection.threshold"),
    ("vad type", {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "psychic"}}}},
     "invalid_value", "session.audio.input.turn_detection.type"),
    ("speed", {"type": "realtime", "audio": {"output": {"speed": 3}}}, "invalid_value", "session.audio.output.speed"),
    ("modalities", {"type": "realtime", "output_modalities": ["audio", "text"]}, "invalid_value",
     "session.output_modalities"),
    ("max tokens", {"type": "realtime", "max_output_tokens": 0}, "invalid_value", "session.max_output_tokens"),
    ("nameless tool", {"type": "realtime", "tools": [{"type": "function"}]}, "invalid_value", "session.tools"),
    ("instructions", {"type": "realtime", "instructions": 42}, "invalid_value", "session.instructions"),
]


@pytest.mark.parametrize(("fields", "code", "param"), [e[1:] for e in SESSION_ERRORS],
                         ids=[e[0] for e in SESSION_ERRORS])
def test_a_bad_session_update_is_refused_whole_with_openais_code(fields: dict[str, Any], code: str,
                                                                 param: str | None) -> None:
    session = new_session()
    before = session.session
    # a valid field first: one bad field rejects the whole update, as OpenAI does
    effects = session.handle({"type": "session.update", "event_id": "evt_7",
                              "session": {"instructions": "new", **fields}})
    error = error_of(effects)
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_7")
    assert types(effects) == ["error"]
    assert session.session is before and session.session["instructions"] != "new"


def test_beta_session_update_with_a_ga_only_key_is_refused() -> None:
    session = new_session(Dialect.BETA, turn_detection=True)
    error = error_of(session.handle({"type": "session.update", "session": {"output_modalities": ["text"]}}))
    assert (error["code"], error["param"]) == ("unknown_parameter", "session.output_modalities")


@pytest.mark.parametrize("etype", ["output_audio_buffer.clear", "transcription_session.update", "session.close"])
def test_unsupported_events_are_refused_with_param_type(etype: str) -> None:
    error = error_of(new_session().handle({"type": etype, "session": {}}))
    assert (error["code"], error["param"]) == ("invalid_value", "type")


# ---------------------------------------------------------------------------------- input audio


def test_append_commit_and_clear_keep_the_buffer_books() -> None:
    session = new_session()
    assert session.handle(append(60)) == [] and session.handle(append(60, 2)) == []  # no VAD: nothing to do
    assert session.buffered_ms == 120
    effects = session.handle({"type": "input_audio_buffer.commit"})
    assert types(effects) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    committed = sent(effects)[0]
    assert committed["previous_item_id"] is None
    (job,) = jobs(effects, Transcribe)
    assert job.item_id == committed["item_id"] and job.audio == pcm(60) + pcm(60, 2)  # the whole buffer, in order
    assert session.buffered_ms == 0
    item = sent(effects)[2]["item"]
    assert item["role"] == "user" and item["content"] == [{"type": "input_audio", "transcript": None}]

    session.handle(append(200))
    assert types(session.handle({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert session.buffered_ms == 0
    error = error_of(session.handle({"type": "input_audio_buffer.commit"}))
    assert error["code"] == "input_audio_buffer_commit_empty" and "0.00ms" in error["message"]


def test_commit_of_less_than_100ms_is_input_audio_buffer_commit_empty() -> None:
    session = new_session()
    session.handle(append(50))
    effects = session.handle({"type": "input_audio_buffer.commit", "event_id": "evt_c"})
    error = error_of(effects)
    assert error["code"] == "input_audio_buffer_commit_empty" and error["event_id"] == "evt_c"
    assert "50.00ms" in error["message"] and not jobs(effects, Transcribe)
    session.handle(append(50))  # the 50 ms stayed: now there is enough
    assert jobs(session.handle({"type": "input_audio_buffer.commit"}), Transcribe)


@pytest.mark.parametrize("audio", ["@@not-base64@@", base64.b64encode(b"\x00\x01\x02").decode()])
def test_bad_audio_is_refused_and_not_buffered(audio: str) -> None:
    session = new_session()
    error = error_of(session.handle({"type": "input_audio_buffer.append", "audio": audio}))
    assert (error["code"], error["param"]) == ("invalid_value", "audio")
    assert session.buffered_ms == 0


def test_server_vad_turn_commits_the_speech_and_creates_a_response() -> None:
    session = new_session(turn_detection=True)
    effects = session.handle(append(1000))
    assert effects == [DetectSpeech(pcm(1000))]  # the pump feeds the detector
    started = sent(session.speech_judged([("speech_started", 200)]))
    assert [e["type"] for e in started] == ["input_audio_buffer.speech_started"]
    assert started[0]["audio_start_ms"] == 200
    session.handle(append(1000, 2))
    effects = session.speech_judged([("speech_stopped", 1500)])
    assert types(effects) == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                              "conversation.item.added", "conversation.item.done", "response.created"]
    stopped = sent(effects)[0]
    assert stopped["audio_end_ms"] == 1500 and stopped["item_id"] == started[0]["item_id"]
    (job,) = jobs(effects, Transcribe)
    # the recogniser hears from the prefix padding to the end of speech plus a tail, not the silence after
    assert job.audio == pcm(800) + pcm(1500 + STT_TAIL_MS - 1000, 2)
    assert not jobs(effects, Synthesize)  # the response waits for the transcript
    assert session.active_response is not None


def test_outside_speech_the_buffer_keeps_only_what_prefix_padding_can_reach() -> None:
    session = new_session(turn_detection=True)
    session.handle(append(1500))
    session.speech_judged([])
    assert session.buffered_ms == 1500  # less than 1 s over prefix padding + 500 ms: trimmed later
    session.handle(append(1000))
    session.speech_judged([])
    assert session.buffered_ms == 300 + 500
    session.speech_judged([("speech_started", 2300)])
    assert session.buffered_ms == 200  # from audio_start_ms on
    session.handle(append(3000, 2))
    session.speech_judged([])
    assert session.buffered_ms == 3200  # never trimmed inside speech
    (job,) = jobs(session.speech_judged([("speech_stopped", 5000)]), Transcribe)
    assert job.audio == pcm(200) + pcm(5000 + STT_TAIL_MS - 2500, 2)


def test_vad_times_count_from_the_session_start_after_a_vad_restart() -> None:
    session = new_session(turn_detection=True)
    session.handle(append(700))
    update(session, {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.6}}}})
    session.handle(append(500))
    event = sent(session.speech_judged([("speech_started", 100)]))[0]
    assert event["audio_start_ms"] == 800  # the new detector's 100 ms is 700 ms into the session


def test_manual_commit_during_speech_starts_a_fresh_detector() -> None:
    session = new_session(turn_detection=True)
    session.handle(append(500))
    session.speech_judged([("speech_started", 0)])
    effects = session.handle({"type": "input_audio_buffer.commit"})
    assert jobs(effects, StartVad) == [StartVad(0.5, 300, 500)]
    assert "input_audio_buffer.committed" in types(effects)
    session.handle(append(200))
    assert jobs(session.handle({"type": "input_audio_buffer.commit"}), StartVad) == []  # not speaking now


def paused_turn() -> tuple[ServerSession, str, Transcribe]:
    """A session whose speech (from 200 ms) ended at 1500 ms and was followed by the recogniser's tail
    of silence: the detector said so (``speech_paused``) before it could say that the turn ended."""
    session = new_session(turn_detection=True)
    session.handle(append(1000))
    item_id = sent(session.speech_judged([("speech_started", 200)]))[0]["item_id"]
    session.handle(append(1000, 2))
    effects = session.speech_judged([("speech_paused", 1500)])
    assert not sent(effects)  # nothing for the client: the turn may go on
    (job,) = jobs(effects, Transcribe)
    return session, item_id, job


def test_a_turn_is_recognised_early_from_the_very_audio_its_commit_would_send() -> None:
    session, item_id, early = paused_turn()
    assert (early.item_id, early.early_end_ms) == (item_id, 1500)
    assert early.audio == pcm(800) + pcm(1500 + STT_TAIL_MS - 1000, 2)  # as in the turn without the pause
    assert session.transcribed(item_id, "hello there", early_end_ms=1500) == []  # kept until the turn ends
    effects = session.speech_judged([("speech_stopped", 1500)])
    assert not jobs(effects, Transcribe)  # recognised already: the reply is decided at once
    assert types(effects)[:5] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                                  "conversation.item.added", "conversation.item.done", "response.created"]
    (speak,) = jobs(effects, Synthesize)
    assert speak.text == responder.respond("hello there").text


def test_an_early_recognition_still_running_when_the_turn_ends_answers_it_when_done() -> None:
    session, item_id, _ = paused_turn()
    effects = session.speech_judged([("speech_stopped", 1500)])
    assert not jobs(effects, Transcribe) and not jobs(effects, Synthesize)
    (speak,) = jobs(session.transcribed(item_id, "how are you today", early_end_ms=1500), Synthesize)
    assert speak.text == responder.respond("how are you today").text


def test_speech_that_goes_on_after_a_pause_is_recognised_again_whole() -> None:
    session, item_id, _ = paused_turn()
    session.handle(append(600, 3))
    session.speech_judged([])  # the speaker goes on: the early result is of no use
    assert session.transcribed(item_id, "hello there", early_end_ms=1500) == []
    effects = session.speech_judged([("speech_stopped", 2400)])
    (job,) = jobs(effects, Transcribe)
    assert job.early_end_ms is None and job.audio == pcm(800) + pcm(1000, 2) + pcm(2400 + STT_TAIL_MS - 2000, 3)
    assert not jobs(session.transcribed(item_id, "hello there", early_end_ms=1500), Synthesize)  # late: dropped
    (speak,) = jobs(session.transcribed(item_id, "what can you do"), Synthesize)
    assert speak.text == responder.respond("what can you do").text


def test_an_early_failure_fails_the_transcription_of_the_turn() -> None:
    session, item_id, _ = paused_turn()
    update(session, {"audio": {"input": {"transcription": {"model": "whisper-1"}}}})  # (restarts no detector)
    assert session.transcription_failed(item_id, "boom", early_end_ms=1500) == []
    effects = session.speech_judged([("speech_stopped", 1500)])
    failed = [e for e in sent(effects) if e["type"] == "conversation.item.input_audio_transcription.failed"]
    assert [f["item_id"] for f in failed] == [item_id]


@pytest.mark.parametrize("then", [{"type": "input_audio_buffer.clear"}, {"type": "input_audio_buffer.commit"}])
def test_an_early_recognition_is_dropped_when_the_buffer_is_cleared_or_committed_by_hand(
        then: dict[str, Any]) -> None:
    session, item_id, _ = paused_turn()
    effects = session.handle(then)
    assert session.transcribed(item_id, "hello there", early_end_ms=1500) == []
    if then["type"] == "input_audio_buffer.commit":  # recognised anew, from all the audio committed
        (job,) = jobs(effects, Transcribe)
        assert job.early_end_ms is None and job.audio == pcm(800) + pcm(1000, 2)


# ---------------------------------------------------------------------------------- items


def test_item_create_orders_items_and_refuses_unknown_or_duplicate_ids() -> None:
    session = new_session()
    first = sent(user_text(session, "one"))
    assert [e["type"] for e in first] == ["conversation.item.added", "conversation.item.done"]
    first_id = first[0]["item"]["id"]
    assert first[0]["previous_item_id"] is None
    second = sent(session.handle({"type": "conversation.item.create", "previous_item_id": "root", "item": {
        "id": "item_mine", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}]}}))
    assert second[0]["previous_item_id"] == "root"
    assert second[0]["item"]["content"] == [{"type": "output_text", "text": "hi"}]  # GA part names
    assert session.order == ["item_mine", first_id]
    third = sent(user_text(session, "three"))
    assert third[0]["previous_item_id"] == first_id

    error = error_of(session.handle({"type": "conversation.item.create", "previous_item_id": "item_nope", "item": {
        "type": "message", "role": "user", "content": []}}))
    assert (error["code"], error["param"]) == ("invalid_value", "previous_item_id")
    error = error_of(session.handle({"type": "conversation.item.create", "item": {
        "id": "item_mine", "type": "message", "role": "user", "content": []}}))
    assert (error["code"], error["param"]) == ("invalid_value", "item.id")
    assert len(session.order) == 3


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "banana"}, "item.type"),
    ({"type": "message", "role": "robot", "content": []}, "item.role"),
    ({"type": "message", "role": "user", "content": "hi"}, "item.content"),
    ({"type": "function_call_output", "call_id": "c"}, "item"),
])
def test_item_create_checks_the_item(item: dict[str, Any], param: str) -> None:
    error = error_of(new_session().handle({"type": "conversation.item.create", "item": item}))
    assert (error["code"], error["param"]) == ("invalid_value", param)


def test_item_delete_and_retrieve() -> None:
    session = new_session()
    session.handle(append(100, 7))
    item_id = sent(session.handle({"type": "input_audio_buffer.commit"}))[0]["item_id"]
    retrieved = sent(session.handle({"type": "conversation.item.retrieve", "item_id": item_id}))[0]["item"]
    assert base64.b64decode(retrieved["content"][0]["audio"]) == pcm(100, 7)
    assert types(session.handle({"type": "conversation.item.delete", "item_id": item_id})) == \
        ["conversation.item.deleted"]
    assert session.order == [] and item_id not in session.items
    for etype in ("conversation.item.delete", "conversation.item.retrieve"):
        error = error_of(session.handle({"type": etype, "item_id": item_id}))
        assert (error["code"], error["param"]) == ("invalid_value", "item_id")


def test_truncate_rules() -> None:
    session = new_session()
    user_text(session, "tell me a joke")
    effects = session.handle({"type": "response.create"})
    item_id = sent(effects)[1]["item"]["id"]
    (synth,) = jobs(effects, Synthesize)
    session.synthesized(synth.response_id, pcm(1000))
    session.stream(synth.response_id)  # two 100 ms chunks sent so far
    truncate = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}

    error = error_of(session.handle({**truncate, "audio_end_ms": 201}))
    assert error["code"] == "invalid_value" and error["param"] == "audio_end_ms"
    assert error["message"] == "Audio content of 200ms is already shorter than 201ms"
    error = error_of(session.handle({**truncate, "content_index": 1, "audio_end_ms": 10}))
    assert error["param"] == "content_index"
    error = error_of(session.handle({**truncate, "item_id": "item_nope", "audio_end_ms": 10}))
    assert error["param"] == "item_id"
    user_id = sent(user_text(session, "hi"))[0]["item"]["id"]
    assert error_of(session.handle({**truncate, "item_id": user_id, "audio_end_ms": 0}))["param"] == "item_id"

    (done,) = sent(session.handle({**truncate, "audio_end_ms": 150}))
    assert done == {"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                    "audio_end_ms": 150, "event_id": done["event_id"]}
    # what was cut is gone: a later truncate cannot reach past it
    assert "shorter than 151ms" in error_of(session.handle({**truncate, "audio_end_ms": 151}))["message"]


# ---------------------------------------------------------------------------------- responses


def test_the_events_of_a_spoken_response_in_order() -> None:
    session = new_session()
    user_text(session, "hello")
    created = session.handle({"type": "response.create"})
    assert types(created) == ["response.created", "response.output_item.added", "conversation.item.added",
                              "response.content_part.added"]
    (synth,) = jobs(created, Synthesize)
    assert synth.text == "Hello! I am the voicerelay test assistant. How can I help?" and synth.voice == "alloy"
    assert sent(created)[0]["response"]["status"] == "in_progress"

    first = session.synthesized(synth.response_id, pcm(250, 1000))  # 3 chunks: 100 + 100 + 50 ms
    assert types(first)[0] == "response.output_audio.delta"
    assert set(types(first)[1:]) == {"response.output_audio_transcript.delta"}
    assert first[-1] == Pause(synth.response_id, CHUNK_MS)
    rest = [session.stream(synth.response_id) for _ in range(3)]
    assert [jobs(r, Pause) != [] for r in rest] == [True, True, False]
    assert types(rest[2]) == ["response.output_audio.done", "response.output_audio_transcript.done",
                              "response.content_part.done", "conversation.item.done", "response.output_item.done",
                              "response.done"]
    everything = sent(first) + [e for r in rest for e in sent(r)]
    audio = b"".join(base64.b64decode(e["delta"]) for e in everything if e["type"] == "response.output_audio.delta")
    assert audio == pcm(250, 1000)
    words = "".join(e["delta"] for e in everything if e["type"] == "response.output_audio_transcript.delta")
    assert words == synth.text
    done = everything[-1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"] == [
        {"type": "output_audio", "transcript": synth.text}]
    assert done["usage"]["output_token_details"]["audio_tokens"] == 250 // 50
    assert session.active_response is None
    assert session.stream(synth.response_id) == []  # a late timer does nothing


def test_a_response_waits_for_the_transcript_of_the_turn() -> None:
    session = new_session()
    update(session, {"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    session.handle(append(500))
    item_id = jobs(session.handle({"type": "input_audio_buffer.commit"}), Transcribe)[0].item_id
    created = session.handle({"type": "response.create"})
    assert types(created) == ["response.created"]  # nothing to say yet
    effects = session.transcribed(item_id, "how are you")
    assert types(effects) == ["conversation.item.input_audio_transcription.delta"] * 3 + [
        "conversation.item.input_audio_transcription.completed", "response.output_item.added",
        "conversation.item.added", "response.content_part.added"]
    assert sent(effects)[3]["usage"] == {"type": "duration", "seconds": 0.5}
    assert jobs(effects, Synthesize)[0].text == "I am fine, thank you for asking."
    assert session.items[item_id]["content"][0]["transcript"] == "how are you"


def test_a_failed_transcription_is_reported_and_the_response_says_nothing() -> None:
    session = new_session()
    update(session, {"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    session.handle(append(500))
    item_id = jobs(session.handle({"type": "input_audio_buffer.commit"}), Transcribe)[0].item_id
    session.handle({"type": "response.create"})
    effects = session.transcription_failed(item_id, "decoder broke")
    failed = sent(effects)[0]
    assert failed["type"] == "conversation.item.input_audio_transcription.failed"
    assert failed["error"]["code"] == "transcription_failed" and failed["error"]["message"] == "decoder broke"
    assert types(effects)[1:] == ["response.done"] and not jobs(effects, Synthesize)  # nothing heard, nothing said
    assert sent(effects)[-1]["response"]["output"] == []


def test_response_create_while_one_is_active_is_refused_but_out_of_band_is_not() -> None:
    session = new_session()
    user_text(session, "tell me a joke")
    first = sent(session.handle({"type": "response.create"}))[0]["response"]["id"]
    error = error_of(session.handle({"type": "response.create", "event_id": "evt_2"}))
    assert error["code"] == "conversation_already_has_active_response" and error["event_id"] == "evt_2"
    assert first in error["message"]
    effects = session.handle(say_exactly("One moment."))
    assert types(effects) == ["response.created", "response.output_item.added", "response.content_part.added"]
    assert sent(effects)[0]["response"]["conversation_id"] is None  # out of band: not in the conversation
    assert jobs(effects, Synthesize)[0].text == "One moment."
    assert session.active_response == first


def test_cancel_with_nothing_active_is_response_cancel_not_active() -> None:
    session = new_session()
    error = error_of(session.handle({"type": "response.cancel", "event_id": "evt_x"}))
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "evt_x")
    assert error["message"] == "Cancellation failed: no active response found"
    error = error_of(session.handle({"type": "response.cancel", "response_id": "resp_nope"}))
    assert error["code"] == "response_cancel_not_active"


def test_cancel_mid_stream_ends_the_response_at_the_next_chunk() -> None:
    session = new_session()
    user_text(session, "tell me a joke")
    (synth,) = jobs(session.handle({"type": "response.create"}), Synthesize)
    session.synthesized(synth.response_id, pcm(1000))
    assert session.handle({"type": "response.cancel"}) == []
    assert error_of(session.handle({"type": "response.cancel"}))["code"] == "response_cancel_not_active"
    effects = session.stream(synth.response_id)
    assert "response.output_audio.delta" not in types(effects)
    done = sent(effects)[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"] == {"type": "cancelled",
                                                                        "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    assert session.active_response is None


def test_speech_during_a_response_cancels_it_and_starts_the_next_turn() -> None:
    session = new_session(turn_detection=True)
    user_text(session, "tell me a joke")
    (synth,) = jobs(session.handle({"type": "response.create"}), Synthesize)
    session.synthesized(synth.response_id, pcm(1000))
    session.handle(append(600))
    session.speech_judged([("speech_started", 0)])
    effects = session.speech_judged([("speech_stopped", 400)])
    assert types(effects)[-1] == "response.created"  # the interrupted response does not block the new turn
    new_id = sent(effects)[-1]["response"]["id"]
    assert session.active_response == new_id
    done = sent(session.stream(synth.response_id))[-1]["response"]
    assert done["id"] == synth.response_id and done["status_details"]["reason"] == "turn_detected"
    assert session.active_response == new_id  # the old one finishing does not clear the new one


def test_a_matching_tool_becomes_a_function_call() -> None:
    session = new_session()
    update(session, {"tools": [WEATHER]})
    user_text(session, "what is the weather in paris")
    effects = session.handle({"type": "response.create"})
    assert types(effects) == ["response.created", "response.output_item.added", "conversation.item.added",
                              "response.function_call_arguments.delta", "response.function_call_arguments.done",
                              "conversation.item.done", "response.output_item.done", "response.done"]
    args = sent(effects)[4]
    assert args["name"] == "get_weather" and args["arguments"] == '{"city":"paris"}'
    output = sent(effects)[-1]["response"]["output"]
    assert output[0]["call_id"] == args["call_id"] and output[0]["status"] == "completed"
    assert not jobs(effects, Synthesize) and session.active_response is None

    user_call = {"type": "function_call_output", "call_id": args["call_id"], "output": '{"temp_c": 18}'}
    session.handle({"type": "conversation.item.create", "item": user_call})
    answer = session.handle({"type": "response.create"})
    assert jobs(answer, Synthesize)[0].text == "The result of get weather is temp c 18."


def test_a_text_response_streams_at_once_and_respects_max_output_tokens() -> None:
    session = new_session()
    update(session, {"output_modalities": ["text"], "max_output_tokens": 2})
    user_text(session, "tell me a joke")
    effects = session.handle({"type": "response.create"})
    assert types(effects) == ["response.created", "response.output_item.added", "conversation.item.added",
                              "response.content_part.added", "response.output_text.delta",
                              "response.output_text.delta", "response.output_text.done",
                              "response.content_part.done", "conversation.item.done", "response.output_item.done",
                              "response.done"]
    assert sent(effects)[6]["text"] == "Why did"
    done = sent(effects)[-1]["response"]
    assert done["status"] == "incomplete" and done["status_details"]["reason"] == "max_output_tokens"


def test_a_synthesis_failure_fails_the_response_and_frees_the_conversation() -> None:
    session = new_session()
    user_text(session, "hello")
    (synth,) = jobs(session.handle({"type": "response.create"}), Synthesize)
    (done,) = sent(session.synthesis_failed(synth.response_id, "no voice"))
    assert done["response"]["status"] == "failed" and done["response"]["output"] == []
    assert done["response"]["status_details"]["error"]["code"] == "embedded_backend_error"
    assert session.active_response is None
    assert types(session.handle({"type": "response.create"}))[0] == "response.created"


# ---------------------------------------------------------------------------------- what a response reads


def item_of(session: ServerSession, role: str, text: str) -> str:
    """Create a text message of ``role``; return its id."""
    part = "output_text" if role == "assistant" else "input_text"
    effects = session.handle({"type": "conversation.item.create", "item": {
        "type": "message", "role": role, "content": [{"type": part, "text": text}]}})
    return sent(effects)[0]["item"]["id"]


def spoken(effects: list[Any]) -> str:
    """What a spoken response says (the text handed to the synthesizer)."""
    (synth,) = jobs(effects, Synthesize)
    return synth.text


def finish(session: ServerSession, effects: list[Any], pcm_ms: int = 250) -> dict[str, Any]:
    """Play a spoken response out (``pcm_ms`` of speech); return its ``response.done`` response."""
    return sent(run_audio_reply(session, effects, pcm_ms))[-1]["response"]


def test_a_system_item_after_a_user_turn_is_what_the_next_response_answers() -> None:
    """Pipecat appends context as a system item, then asks for a response: the newest item is answered."""
    session = new_session()
    item_of(session, "user", "hello there")
    finish(session, session.handle({"type": "response.create"}))
    item_of(session, "system", 'The user is back from lunch. Say "Welcome back, Ada." to the user.')
    assert spoken(session.handle({"type": "response.create"})) == "Welcome back, Ada."  # not a second greeting


def test_the_newest_item_is_answered_whatever_its_role() -> None:
    session = new_session()
    item_of(session, "user", "tell me a joke")
    finish(session, session.handle({"type": "response.create"}))
    # the assistant spoke last: nothing to answer again (the joke is not told twice)
    effects = session.handle({"type": "response.create"})
    assert spoken(effects) == responder.OFFER
    finish(session, effects)
    item_of(session, "system", "Greet the user.")
    effects = session.handle({"type": "response.create"})
    assert spoken(effects) == "Hello! I am the voicerelay test assistant. How can I help?"
    finish(session, effects)
    item_of(session, "system", "Greet the user.")
    item_of(session, "user", "what is your name")  # a user item after the system one: the user is answered
    assert spoken(session.handle({"type": "response.create"})) == \
        "My name is voicerelay. I am an offline test assistant."


def test_a_system_instruction_the_rules_do_not_cover_is_acknowledged_not_echoed() -> None:
    session = new_session()
    item_of(session, "user", "what can you do")
    finish(session, session.handle({"type": "response.create"}))
    item_of(session, "system", "The caller's account number is 1234.")
    assert spoken(session.handle({"type": "response.create"})) == responder.ACKNOWLEDGE


def test_an_out_of_band_response_reads_only_its_input_and_adds_nothing() -> None:
    session = new_session()
    joke = item_of(session, "user", "tell me a joke")
    before = (list(session.order), {k: dict(v) for k, v in session.items.items()})
    own = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is your name"}]}
    effects = session.handle({"type": "response.create", "response": {
        "conversation": "none", "input": [own], "metadata": {"purpose": "aside"}}})
    assert spoken(effects) == "My name is voicerelay. I am an offline test assistant."  # its input, not the joke
    assert "conversation.item.added" not in types(effects)
    done = finish(session, effects)
    assert done["conversation_id"] is None and done["metadata"] == {"purpose": "aside"}
    assert done["output"][0]["content"][0]["transcript"] == "My name is voicerelay. I am an offline test assistant."
    assert (session.order, session.items) == before  # neither its input nor its output joined the conversation
    assert session.active_response is None
    # a reference reads the conversation's item; an empty input reads nothing
    effects = session.handle({"type": "response.create", "response": {
        "conversation": "none", "input": [{"type": "item_reference", "id": joke}]}})
    assert spoken(effects) == "Why did the microphone blush? It saw the speaker."
    effects = session.handle({"type": "response.create", "response": {"conversation": "none", "input": []}})
    assert spoken(effects) == responder.OFFER
    # without an input, an out-of-band response reads the conversation (OpenAI: input makes a new context)
    effects = session.handle({"type": "response.create", "response": {"conversation": "none"}})
    assert spoken(effects) == "Why did the microphone blush? It saw the speaker."
    assert (session.order, session.items) == before


def test_an_in_band_response_with_its_own_input_reads_it_and_its_output_joins_the_conversation() -> None:
    session = new_session()
    item_of(session, "user", "tell me a joke")
    own = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "how are you"}]}
    effects = session.handle({"type": "response.create", "response": {"input": [own]}})
    assert spoken(effects) == "I am fine, thank you for asking."
    done = finish(session, effects)
    assert done["conversation_id"] == session.conversation_id
    assert session.order[-1] == done["output"][0]["id"] and len(session.order) == 2  # the input itself was not added


@pytest.mark.parametrize(("entry", "param"), [
    ({"type": "item_reference", "id": "item_nope"}, "response.input[0].id"),
    ({"type": "message", "role": "robot", "content": []}, "response.input[0].role"),
    ("hello", "response.input[0]"),
])
def test_a_bad_response_input_is_refused_before_any_response(entry: Any, param: str) -> None:
    session = new_session()
    effects = session.handle({"type": "response.create", "response": {"conversation": "none", "input": [entry]}})
    error = error_of(effects)
    assert (error["code"], error["param"]) == ("invalid_value", param)
    assert types(effects) == ["error"]


def test_a_user_item_created_with_audio_is_heard_and_answered() -> None:
    session = new_session()
    audio = base64.b64encode(pcm(600, 5)).decode()
    effects = session.handle({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio}]}})
    added = sent(effects)[0]["item"]
    assert added["content"] == [{"type": "input_audio", "transcript": None}]  # the events carry no audio
    (job,) = jobs(effects, Transcribe)
    assert job.item_id == added["id"] and job.audio == pcm(600, 5)
    assert types(session.handle({"type": "response.create"})) == ["response.created"]  # waits for the transcript
    assert spoken(session.transcribed(job.item_id, "what time is it")) == \
        "I have no clock, but I heard you ask for the time."
    retrieved = sent(session.handle({"type": "conversation.item.retrieve", "item_id": added["id"]}))[0]["item"]
    assert base64.b64decode(retrieved["content"][0]["audio"]) == pcm(600, 5)
    assert retrieved["content"][0]["transcript"] == "what time is it"


# ---------------------------------------------------------------------------------- nothing heard


def no_reply(effects: list[Any]) -> dict[str, Any]:
    """Check a response ended having said nothing; return its ``response.done`` response."""
    assert not jobs(effects, Synthesize)
    assert not {"response.output_item.added", "response.output_audio.delta", "response.output_text.delta",
                "conversation.item.added"} & set(types(effects))
    done = sent(effects)[-1]
    assert done["type"] == "response.done"
    return done["response"]


def test_a_server_vad_turn_with_no_speech_heard_gets_no_reply() -> None:
    session = new_session(turn_detection=True)
    session.handle(append(1200))
    session.speech_judged([("speech_started", 0)])
    effects = session.speech_judged([("speech_stopped", 700)])  # the detector took noise for speech
    assert types(effects)[-1] == "response.created"
    (job,) = jobs(effects, Transcribe)
    done = no_reply(session.transcribed(job.item_id, ""))
    assert (done["status"], done["output"]) == ("completed", [])
    assert session.active_response is None  # the next turn is answered as usual
    session.handle(append(1000))
    session.speech_judged([("speech_started", 1300)])
    (job,) = jobs(session.speech_judged([("speech_stopped", 2000)]), Transcribe)
    assert spoken(session.transcribed(job.item_id, "hello")).startswith("Hello!")


def test_a_manual_commit_of_audio_with_no_speech_gets_no_reply() -> None:
    session = new_session()
    item_of(session, "user", "tell me a joke")  # history a reconnecting client sends again
    item_of(session, "assistant", "Why did the microphone blush? It saw the speaker.")
    session.handle(append(1000))
    (job,) = jobs(session.handle({"type": "input_audio_buffer.commit"}), Transcribe)
    assert types(session.handle({"type": "response.create"})) == ["response.created"]
    done = no_reply(session.transcribed(job.item_id, ""))  # not "Sorry, ..." and not the joke again
    assert done["status"] == "completed" and done["output"] == []


def test_an_empty_commit_is_an_error_and_makes_nothing_to_answer() -> None:
    session = new_session()
    item_of(session, "user", "tell me a joke")
    item_of(session, "assistant", "Why did the microphone blush? It saw the speaker.")
    order = list(session.order)
    session.handle(append(40))
    effects = session.handle({"type": "input_audio_buffer.commit"})
    assert error_of(effects)["code"] == "input_audio_buffer_commit_empty" and types(effects) == ["error"]
    assert session.order == order  # no item: the response a client may still ask for has nothing new to answer
    assert spoken(session.handle({"type": "response.create"})) == responder.OFFER


# ---------------------------------------------------------------------------------- memory


def talk_turns(session: ServerSession, turns: int, ms: int = 2000) -> list[str]:
    """``turns`` committed user turns of ``ms`` each, transcribed and answered in text."""
    ids = []
    for n in range(turns):
        session.handle(append(ms, n % 1000 + 1))
        effects = session.handle({"type": "input_audio_buffer.commit"})
        (job,) = jobs(effects, Transcribe)
        session.transcribed(job.item_id, "what is your name")
        ids.append(job.item_id)
        done = session.handle({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert types(done)[-1] == "response.done"
    return ids


def test_a_long_session_holds_bounded_audio_and_items() -> None:
    """600 turns of 2 s (20 minutes of speech): what the session holds stops growing after the first few."""
    from voicerelay.backend.session import KEEP_AUDIO_BYTES, KEEP_AUDIO_ITEMS, MAX_ITEMS

    session = new_session()
    update(session, {"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    talk_turns(session, 20)
    early = session.held_bytes
    ids = talk_turns(session, 580)
    assert session.held_bytes <= min(KEEP_AUDIO_ITEMS * 2000 * BYTES_PER_MS, KEEP_AUDIO_BYTES)
    assert session.held_bytes == early  # flat: the same 8 turns' worth
    assert len(session.items) == len(session.order) == MAX_ITEMS
    # the newest items' audio is still retrievable, an older one keeps its transcript and loses its audio
    newest = sent(session.handle({"type": "conversation.item.retrieve", "item_id": ids[-1]}))[0]["item"]
    assert base64.b64decode(newest["content"][0]["audio"]) == pcm(2000, 580)  # the last of the 580: value 580
    older = sent(session.handle({"type": "conversation.item.retrieve", "item_id": ids[-KEEP_AUDIO_ITEMS - 1]}))
    assert "audio" not in older[0]["item"]["content"][0]
    assert older[0]["item"]["content"][0]["transcript"] == "what is your name"
    # the oldest left the conversation, like any unknown item
    assert error_of(session.handle({"type": "conversation.item.retrieve", "item_id": ids[0]}))["param"] == "item_id"


def test_usage_still_counts_the_audio_of_items_whose_audio_was_dropped() -> None:
    session = new_session()
    talk_turns(session, 12, ms=1000)
    effects = session.handle({"type": "response.create", "response": {"output_modalities": ["text"]}})
    usage = sent(effects)[-1]["response"]["usage"]
    assert usage["input_token_details"]["audio_tokens"] == 12 * 10  # 10 tokens per second of audio in


def test_a_big_turn_does_not_keep_the_older_turns_audio_beyond_the_byte_bound() -> None:
    from voicerelay.backend.session import KEEP_AUDIO_BYTES

    session = new_session()
    talk_turns(session, 3, ms=30_000)  # 3 × 1.4 MB
    assert session.held_bytes <= KEEP_AUDIO_BYTES
    talk_turns(session, 1, ms=100_000)  # one turn above the bound on its own: kept alone
    assert session.held_bytes == 100_000 * BYTES_PER_MS


# ---------------------------------------------------------------------------------- idle timeout

IDLE_VAD = {"type": "server_vad", "idle_timeout_ms": 3000}


def idle_session() -> ServerSession:
    session = new_session(turn_detection=True)
    update(session, {"audio": {"input": {"turn_detection": IDLE_VAD}}})
    return session


def silence(session: ServerSession, ms: int, step: int = 500) -> list[Any]:
    """``ms`` of input audio in which the detector hears no speech, ``step`` ms per append."""
    effects: list[Any] = []
    for _ in range(ms // step):
        session.handle(append(step))
        effects += session.speech_judged([])
    return effects


def test_an_idle_timeout_commits_the_silence_and_prompts_the_user() -> None:
    session = idle_session()
    assert not sent(silence(session, 2500))  # under the timeout: nothing
    effects = silence(session, 500)
    assert types(effects) == ["input_audio_buffer.timeout_triggered", "input_audio_buffer.committed",
                              "conversation.item.added", "conversation.item.done", "response.created"]
    triggered, committed = sent(effects)[:2]
    assert (triggered["audio_start_ms"], triggered["audio_end_ms"]) == (0, 3000)
    assert triggered["item_id"] == committed["item_id"]
    (job,) = jobs(effects, Transcribe)  # the silence is recognised like any turn...
    effects = session.transcribed(job.item_id, "")
    assert spoken(effects) == responder.STILL_THERE  # ...and, nothing heard, the user is asked to go on
    done = finish(session, effects, pcm_ms=1000)
    assert done["status"] == "completed"


def test_words_heard_in_an_idle_timeouts_audio_are_answered() -> None:
    session = idle_session()
    (job,) = jobs(silence(session, 3000), Transcribe)
    assert spoken(session.transcribed(job.item_id, "tell me a joke")) == responder.INTENTS[5][1]


def test_the_idle_timeout_counts_from_the_end_of_the_replys_playback_and_restarts_on_speech() -> None:
    session = idle_session()
    session.handle(append(500))
    session.speech_judged([("speech_started", 100)])
    session.handle(append(500))
    effects = session.speech_judged([("speech_stopped", 800)])
    (job,) = jobs(effects, Transcribe)
    reply = session.transcribed(job.item_id, "hello")
    assert not sent(silence(session, 4000))  # a response in progress: nothing times out
    # the reply's 2 s of audio all go out at once (faster than real time, as from OpenAI) at 5000 ms
    finish(session, reply, pcm_ms=2000)
    assert not sent(silence(session, 4500))  # its playback ends at 7000 ms: 2500 ms of idle so far
    triggered = sent(silence(session, 500))[0]
    assert (triggered["type"], triggered["audio_start_ms"], triggered["audio_end_ms"]) == (
        "input_audio_buffer.timeout_triggered", 7000, 10000)
    # speech stops the count; it starts again where the next turn ends
    session2 = idle_session()
    silence(session2, 2500)
    session2.handle(append(500))
    session2.speech_judged([("speech_started", 2600)])
    assert not sent(silence(session2, 3000))  # the user speaks (no end yet): nothing times out


@pytest.mark.parametrize("turn_detection", [
    {"type": "server_vad"},  # no idle timeout (null)
    {"type": "server_vad", "idle_timeout_ms": 0},
    {"type": "semantic_vad"},  # OpenAI: server_vad only
])
def test_no_idle_timeout_without_one_set_for_server_vad(turn_detection: dict[str, Any]) -> None:
    session = new_session(turn_detection=True)
    update(session, {"audio": {"input": {"turn_detection": turn_detection}}})
    assert "input_audio_buffer.timeout_triggered" not in types(silence(session, 20_000))
