"""RealtimeSession driven by scripted server events: no sockets, no clock but the one we pass."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from voicerelay.protocol.audio import AudioFormatError
from voicerelay.protocol.config import RealtimeConfig
from voicerelay.protocol.events import Dialect
from voicerelay.protocol.session import (
    Error,
    PlayAudio,
    Ready,
    RealtimeSession,
    SendEvent,
    State,
    StateChanged,
    StopPlayback,
    ToolCall,
    Transcript,
    TurnFinished,
)

MS_100 = base64.b64encode(b"\x01\x00" * 2400).decode()  # 100 ms of PCM16 at 24 kHz


def sent(effects: list[Any]) -> list[dict[str, Any]]:
    return [e.event for e in effects if isinstance(e, SendEvent)]


def of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def ready_session(config: RealtimeConfig | None = None, dialect: Dialect = Dialect.GA) -> RealtimeSession:
    session = RealtimeSession(config or RealtimeConfig(), dialect)
    first = session.connected()
    assert sent(first)[0]["type"] == "session.update"
    session.server_event({"type": "session.created", "session": {"expires_at": 0}}, 0.0)
    effects = session.server_event({"type": "session.updated", "session": {"type": "realtime"}}, 0.0)
    assert of(effects, Ready) and session.state is State.LISTENING
    return session


def reply(session: RealtimeSession, now: float, response_id: str = "resp_1", item_id: str = "item_a",
          chunks: int = 3, beta: bool = False) -> list[Any]:
    delta = "response.audio.delta" if beta else "response.output_audio.delta"
    out = session.server_event({"type": "response.created", "response": {"id": response_id,
                                                                          "conversation_id": "conv_1"}}, now)
    for i in range(chunks):
        out += session.server_event({"type": delta, "response_id": response_id, "item_id": item_id,
                                     "delta": MS_100}, now + 0.1 * (i + 1))
    return out


def test_a_voice_turn_measures_latency_and_audio() -> None:
    s = ready_session()
    assert sent(s.audio(b"\0\0" * 480))[0]["type"] == "input_audio_buffer.append"
    s.server_event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 200, "item_id": "item_u"}, 1.0)
    assert s.state is State.USER_SPEAKING
    s.server_event({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1700, "item_id": "item_u"}, 2.0)
    assert s.state is State.THINKING
    effects = reply(s, 2.0)
    assert [len(e.pcm) for e in of(effects, PlayAudio)] == [4800, 4800, 4800]
    assert s.state is State.SPEAKING
    s.server_event({"type": "response.output_audio_transcript.done", "response_id": "resp_1", "item_id": "item_a",
                    "transcript": "Hello!"}, 2.5)
    done = s.server_event({"type": "response.done", "response": {"id": "resp_1", "status": "completed",
                                                                 "usage": {"total_tokens": 9}}}, 2.6)
    turn = of(done, TurnFinished)[0].turn
    assert turn.first_audio_ms == pytest.approx(100) and turn.streaming_ms == pytest.approx(500)
    assert (turn.audio_in_ms, turn.audio_out_ms) == (1500, 300)
    assert turn.usage == {"total_tokens": 9}
    # the user transcript may arrive after response.done; it still lands on its turn
    late = s.server_event({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_u",
                           "content_index": 0, "transcript": "hello there"}, 2.7)
    assert of(late, Transcript)[0] == Transcript("user", "hello there", True, "item_u")
    assert turn.user_transcript == "hello there" and turn.assistant_transcript == "Hello!"
    assert s.state is State.SPEAKING  # until the front door has played it all
    assert of(s.playback_idle(), StateChanged)[0].new is State.LISTENING


def test_barge_in_stops_cancels_and_truncates_to_what_was_heard() -> None:
    s = ready_session()
    reply(s, 1.0, chunks=3)  # 300 ms received
    effects = s.server_event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0,
                              "item_id": "item_u2"}, 1.5)
    assert of(effects, StopPlayback) == [StopPlayback("item_a")]
    assert [e["type"] for e in sent(effects)] == ["response.cancel"]
    # deltas of the interrupted response are ignored from now on
    late = s.server_event({"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_a",
                           "delta": MS_100}, 1.6)
    assert late == []
    truncate = sent(s.playback_stopped("item_a", 180))
    assert truncate == [{"type": "conversation.item.truncate", "item_id": "item_a", "content_index": 0,
                         "audio_end_ms": 180}]
    assert s.playback_stopped("item_a", 180) == []  # only once


def test_truncate_is_clamped_to_received_audio_and_skipped_when_nothing_played() -> None:
    s = ready_session()
    reply(s, 1.0, chunks=2)  # 200 ms received
    s.interrupt()
    assert sent(s.playback_stopped("item_a", 5000))[0]["audio_end_ms"] == 200
    s2 = ready_session()
    reply(s2, 1.0, chunks=1)
    s2.interrupt()
    assert s2.playback_stopped("item_a", 0) == []


def test_no_cancel_when_the_response_is_already_done() -> None:
    s = ready_session()
    reply(s, 1.0)
    s.server_event({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}, 1.4)
    effects = s.interrupt()  # still playing locally, but nothing runs upstream
    assert of(effects, StopPlayback) and sent(effects) == []


def test_beta_names_are_understood() -> None:
    s = ready_session(dialect=Dialect.BETA)
    effects = reply(s, 1.0, beta=True)
    assert len(of(effects, PlayAudio)) == 3
    done = s.server_event({"type": "response.audio_transcript.done", "response_id": "resp_1", "item_id": "item_a",
                           "transcript": "Hi"}, 1.2)
    assert of(done, Transcript)[0].text == "Hi"


def test_function_call_round_trip_requests_the_answer_after_the_output() -> None:
    s = ready_session(RealtimeConfig(tools=({"type": "function", "name": "get_weather"},)))
    s.server_event({"type": "response.created", "response": {"id": "resp_1", "conversation_id": "c"}}, 1.0)
    s.server_event({"type": "response.output_item.added", "response_id": "resp_1", "output_index": 0,
                    "item": {"type": "function_call", "call_id": "call_1", "name": "get_weather"}}, 1.0)
    calls = of(s.server_event({"type": "response.function_call_arguments.done", "response_id": "resp_1",
                               "call_id": "call_1", "arguments": '{"city":"paris"}'}, 1.1), ToolCall)
    assert calls == [ToolCall("call_1", "get_weather", '{"city":"paris"}')]  # name taken from the item (beta)
    done = s.server_event({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}, 1.2)
    assert not of(done, TurnFinished)  # the turn continues once the tool has answered
    out = sent(s.tool_result("call_1", json.dumps({"temp_c": 18})))
    assert [e["type"] for e in out] == ["conversation.item.create", "response.create"]
    assert out[0]["item"] == {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 18}'}
    assert s.turns[0].tool_calls == [{"name": "get_weather", "call_id": "call_1", "arguments": {"city": "paris"}}]


def test_push_to_talk_commit_asks_for_a_response_and_refuses_tiny_buffers() -> None:
    s = ready_session(RealtimeConfig(turn_detection_mode="disabled"))
    s.audio(b"\0\0" * 1200)  # 50 ms
    errors = of(s.commit(1.0), Error)
    assert errors and errors[0].code == "input_audio_buffer_commit_empty"
    s.audio(b"\0\0" * 2400)
    assert [e["type"] for e in sent(s.commit(2.0))] == ["input_audio_buffer.commit", "response.create"]
    assert s.state is State.THINKING and s.turns[-1].audio_in_ms == 150


def test_fatal_errors_end_the_session_and_benign_ones_are_silent() -> None:
    s = ready_session()
    assert s.server_event({"type": "error", "error": {"code": "response_cancel_not_active", "message": "x"}}, 1) == []
    effects = s.server_event({"type": "error", "error": {"code": "session_expired", "message": "cap"}}, 2)
    assert of(effects, Error)[0].fatal and s.state is State.ENDED


@pytest.mark.parametrize("event", [
    "not a dict", {"no": "type"}, {"type": "response.output_audio.delta", "delta": "%%%", "response_id": "r",
                                   "item_id": "i"},
    {"type": "response.done", "response": "oops"}, {"type": "x.unknown.future"},
])
def test_odd_server_events_never_raise(event: Any) -> None:
    s = ready_session()
    effects = s.server_event(event, 1.0)
    assert all(isinstance(e, Error) for e in effects)


def test_a_flood_of_made_up_event_types_is_ignored_and_remembers_a_bounded_number() -> None:
    s = ready_session()
    for i in range(2000):
        assert s.server_event({"type": f"x.made_up_{i}", "event_id": f"e{i}"}, 1.0) == []
    assert len(RealtimeSession._handlers) <= 256  # the per-type lookup cache does not grow with what a server sends
    out = reply(s, 2.0)  # the known types are still handled
    assert len(of(out, PlayAudio)) == 3 and s.state is State.SPEAKING


def test_history_is_replayed_when_reconnecting() -> None:
    s = ready_session()
    s.user_text("hello", 1.0)
    s.server_event({"type": "response.output_audio_transcript.done", "transcript": "Hi there."}, 1.2)
    s.reset_for_new_connection()
    events = sent(s.connected())
    assert [e["type"] for e in events] == ["session.update", "conversation.item.create", "conversation.item.create"]
    assert events[1]["item"]["content"][0] == {"type": "input_text", "text": "hello"}
    assert events[2]["item"]["role"] == "assistant"
    assert events[2]["item"]["content"][0] == {"type": "output_text", "text": "Hi there."}


def test_a_reply_asked_for_during_a_cancelled_response_waits_for_its_done() -> None:
    s = ready_session()
    reply(s, 1.0)  # resp_1 running and playing
    effects = s.user_text("tell me a joke", 1.2)  # barges in, then asks for an answer
    types = [e["type"] for e in sent(effects)]
    assert types == ["response.cancel", "conversation.item.create"]  # no response.create yet
    assert s.state is State.THINKING
    # the cancelled response's transcript is not an answer
    assert s.server_event({"type": "response.output_audio_transcript.done", "response_id": "resp_1",
                           "item_id": "item_a", "transcript": "Hel"}, 1.3) == []
    done = s.server_event({"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}}, 1.4)
    assert [e["type"] for e in sent(done)] == ["response.create"]


def test_interrupt_returns_to_listening_at_once() -> None:
    s = ready_session()
    reply(s, 1.0)
    effects = s.interrupt()
    assert StateChanged(State.SPEAKING, State.LISTENING) in effects and s.state is State.LISTENING


def test_say_is_out_of_band_and_never_truncated() -> None:
    s = ready_session()
    assert sent(s.say("Welcome."))[0]["response"]["conversation"] == "none"
    s.server_event({"type": "response.created", "response": {"id": "resp_say", "conversation_id": None,
                                                              "metadata": {"voicerelay": "say"}}}, 1.0)
    s.server_event({"type": "response.output_audio.delta", "response_id": "resp_say", "item_id": "item_s",
                    "delta": MS_100}, 1.1)
    final = of(s.server_event({"type": "response.output_audio_transcript.done", "response_id": "resp_say",
                               "item_id": "item_s", "transcript": "Welcome."}, 1.2), Transcript)
    assert final == [Transcript("assistant", "Welcome.", True, "item_s", out_of_band=True)]
    assert s.turns == []  # a say is nobody's turn
    effects = s.interrupt()
    assert of(effects, StopPlayback) == [StopPlayback("item_s")] and sent(effects) == []
    assert s.playback_stopped("item_s", 100) == []  # not in the conversation: nothing to truncate


def test_reply_audio_keeps_the_servers_base64_and_decodes_only_when_asked() -> None:
    s = ready_session()
    play = of(reply(s, 1.0, chunks=1), PlayAudio)[0]
    assert play.audio_b64 is MS_100 and play.nbytes == 4800  # the very string: a relay forwards it as it is
    assert play.pcm == b"\x01\x00" * 2400 and play.pcm is play.pcm  # decoded once
    assert play == PlayAudio(b"\x01\x00" * 2400, "resp_1", "item_a")  # built from PCM, as before
    assert s.turns[-1].audio_out_ms == 100


@pytest.mark.parametrize("delta", ["AAA", "not base64!", base64.b64encode(b"\0\0\0").decode(), "AAAA="])
def test_bad_reply_audio_is_an_error_and_plays_nothing(delta: str) -> None:
    s = ready_session()
    s.server_event({"type": "response.created", "response": {"id": "resp_1", "conversation_id": "c"}}, 1.0)
    effects = s.server_event({"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_a",
                              "delta": delta}, 1.1)
    assert [e.code for e in of(effects, Error)] == ["invalid_audio"] and not of(effects, PlayAudio)
    assert s.state is State.THINKING


def test_base64_microphone_audio_is_sent_as_it_is() -> None:
    s = ready_session()
    chunk = base64.b64encode(b"\x02\x00" * 960).decode()
    assert sent(s.audio_b64(chunk)) == [{"type": "input_audio_buffer.append", "audio": chunk}]
    assert sent(s.audio_b64(chunk, 1920))[0]["audio"] is chunk
    assert s.audio_sent_ms == s.buffered_ms == 80
    assert s.audio_b64("") == []
    with pytest.raises(AudioFormatError, match="odd byte count"):
        s.audio_b64(base64.b64encode(b"\0").decode())
    s.closed()
    assert s.audio_b64(chunk) == []


def test_a_reply_cut_by_a_lost_connection_ends_as_interrupted() -> None:
    from voicerelay.protocol.session import ResponseDone

    session = ready_session()
    session.server_event({"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 0}, 1.0)
    session.server_event({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900}, 2.0)
    reply(session, 2.1)
    effects = session.connection_lost(2.5)
    [done] = of(effects, ResponseDone)
    [finished] = of(effects, TurnFinished)
    assert done.status == "interrupted" and finished.turn.status == "interrupted" and finished.turn.done_at == 2.5
    assert not session.response_active
    # the same response's late deltas (if any arrive) are not played
    late = session.server_event({"type": "response.output_audio.delta", "response_id": "resp_1",
                                 "item_id": "item_a", "delta": MS_100}, 2.6)
    assert not of(late, PlayAudio)


def test_a_reply_that_had_not_begun_stays_open_for_the_new_connection() -> None:
    session = ready_session()
    session.server_event({"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 0}, 1.0)
    session.server_event({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900}, 2.0)
    session.server_event({"type": "response.created", "response": {"id": "resp_1", "conversation_id": "c"}}, 2.1)
    assert session.connection_lost(2.2) == []
    assert session.turns[-1].done_at is None and not session.response_active


USAGE_A = {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
           "input_token_details": {"text_tokens": 5, "audio_tokens": 15, "cached_tokens": 4,
                                   "cached_tokens_details": {"text_tokens": 4, "audio_tokens": 0}},
           "output_token_details": {"text_tokens": 2, "audio_tokens": 8}}
USAGE_B = {"total_tokens": 7, "input_tokens": 6, "output_tokens": 1,
           "input_token_details": {"text_tokens": 6, "audio_tokens": 0, "cached_tokens": 0},
           "output_token_details": {"text_tokens": 1, "audio_tokens": 0}}


def test_a_turn_with_a_tool_call_carries_the_usage_of_both_its_responses() -> None:
    """Both responses are billed: the turn's usage is their sum, details included (the second
    response.done used to replace the first's)."""
    s = ready_session(RealtimeConfig(tools=({"type": "function", "name": "get_weather"},)))
    s.server_event({"type": "response.created", "response": {"id": "resp_1", "conversation_id": "c"}}, 1.0)
    s.server_event({"type": "response.output_item.added", "response_id": "resp_1", "output_index": 0,
                    "item": {"type": "function_call", "call_id": "call_1", "name": "get_weather"}}, 1.0)
    s.server_event({"type": "response.function_call_arguments.done", "response_id": "resp_1",
                    "call_id": "call_1", "arguments": "{}"}, 1.1)
    s.server_event({"type": "response.done", "response": {"id": "resp_1", "status": "completed",
                                                          "usage": USAGE_A}}, 1.2)
    s.tool_result("call_1", "{}")
    reply(s, 1.3, response_id="resp_2")
    done = s.server_event({"type": "response.done", "response": {"id": "resp_2", "status": "completed",
                                                                 "usage": USAGE_B}}, 1.9)
    turn = of(done, TurnFinished)[0].turn
    assert turn.usage == {"total_tokens": 37, "input_tokens": 26, "output_tokens": 11,
                          "input_token_details": {"text_tokens": 11, "audio_tokens": 15, "cached_tokens": 4,
                                                  "cached_tokens_details": {"text_tokens": 4, "audio_tokens": 0}},
                          "output_token_details": {"text_tokens": 3, "audio_tokens": 8}}
    assert USAGE_A["total_tokens"] == 30  # the server's dicts are not changed


def test_say_usage_is_kept_outside_the_turns() -> None:
    s = ready_session()
    assert s.say_usage is None
    s.say("Welcome.")
    s.server_event({"type": "response.created", "response": {"id": "resp_say", "metadata": {"voicerelay": "say"}}},
                   1.0)
    s.server_event({"type": "response.done", "response": {"id": "resp_say", "status": "completed", "usage": USAGE_B,
                                                          "metadata": {"voicerelay": "say"}}}, 1.5)
    assert s.turns == [] and s.say_usage == USAGE_B


def test_an_idle_timeout_is_a_turn_of_its_own_that_the_reply_answers() -> None:
    """server VAD's idle_timeout_ms: the server commits the user's silence and answers it; the
    session makes it a turn (marked idle_timeout) and the reply lands on it, as for speech."""
    s = ready_session()
    s.server_event({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": 4000, "audio_end_ms": 9000,
                    "item_id": "item_idle"}, 9.0)
    assert s.state is State.THINKING
    s.server_event({"type": "input_audio_buffer.committed", "item_id": "item_idle", "previous_item_id": None}, 9.0)
    reply(s, 9.2)
    s.server_event({"type": "response.output_audio_transcript.done", "response_id": "resp_1", "item_id": "item_a",
                    "transcript": "Are you still there?"}, 9.4)
    s.server_event({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_idle",
                    "content_index": 0, "transcript": ""}, 9.4)
    done = s.server_event({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}, 9.5)
    (finished,) = of(done, TurnFinished)
    turn = finished.turn
    assert turn.idle_timeout and turn.user_item_id == "item_idle" and turn.user_transcribed
    assert (turn.audio_in_ms, turn.assistant_transcript) == (5000, "Are you still there?")
    assert turn.first_audio_ms == pytest.approx(300)  # from the timeout to the first reply audio
    assert turn.report()["idle_timeout"] is True
    assert len(s.turns) == 1
