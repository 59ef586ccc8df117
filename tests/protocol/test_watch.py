"""SessionWatch: a session's figures from its events alone, as a proxy sees them (no sockets)."""

from __future__ import annotations

from voicerelay.protocol.watch import SessionWatch

CREATED = {"type": "session.created", "session": {"type": "realtime", "model": "gpt-realtime",
                                                   "expires_at": 1_000_3600}}
USAGE = {"input_tokens": 120, "output_tokens": 60, "input_token_details": {"text_tokens": 20, "audio_tokens": 100},
         "output_token_details": {"text_tokens": 10, "audio_tokens": 50}}


def voice_turn(watch: SessionWatch, t: float, rid: str, *, beta: bool = False) -> float:
    """One voice turn at ``t``: speech 1 s, the reply's first audio 0.4 s after the speech ended."""
    delta = "response.audio.delta" if beta else "response.output_audio.delta"
    done = "response.audio_transcript.done" if beta else "response.output_audio_transcript.done"
    watch.feed("up", t, {"type": "input_audio_buffer.append", "audio": "AAAA"})
    watch.feed("down", t, {"type": "input_audio_buffer.speech_started"})
    assert watch.state == "user_speaking"
    watch.feed("down", t + 1.0, {"type": "input_audio_buffer.speech_stopped"})
    watch.feed("down", t + 1.05, {"type": "input_audio_buffer.committed"})
    watch.feed("down", t + 1.1, {"type": "conversation.item.input_audio_transcription.completed",
                                 "transcript": " what time is it "})
    watch.feed("down", t + 1.2, {"type": "response.created", "response": {"id": rid, "conversation_id": "c"}})
    assert watch.state == "thinking"
    watch.feed("down", t + 1.4, {"type": delta, "response_id": rid, "delta": "AAAA"})
    assert watch.state == "speaking"
    watch.feed("down", t + 1.5, {"type": delta, "response_id": rid, "delta": "AAAA"})
    watch.feed("down", t + 1.6, {"type": done, "response_id": rid, "transcript": "It is noon."})
    watch.feed("down", t + 1.7, {"type": "response.done", "response": {"id": rid, "conversation_id": "c",
                                                                        "usage": USAGE}})
    assert watch.state == "listening"
    return t + 2.0


def test_turns_latency_transcripts_and_usage() -> None:
    watch = SessionWatch()
    assert watch.state == "connecting"
    watch.feed("down", 0.0, CREATED)
    assert (watch.state, watch.model, watch.dialect) == ("listening", "gpt-realtime", "ga")
    t = voice_turn(watch, 1.0, "r1")
    voice_turn(watch, t, "r2")
    assert watch.turns == 2
    assert watch.latencies_ms == [400.0, 400.0]  # speech_stopped -> first audio, not commit or created
    assert [(x.role, x.text) for x in watch.transcripts] == [
        ("user", "what time is it"), ("assistant", "It is noon."), ("user", "what time is it"),
        ("assistant", "It is noon.")]
    assert watch.usage is not None and watch.usage["input_tokens"] == 240
    assert watch.usage["output_token_details"]["audio_tokens"] == 100
    assert watch.remaining_s(1_000_3600 - 90) == 90


def test_a_beta_session_is_read_the_same_way() -> None:
    watch = SessionWatch()
    watch.feed("down", 0.0, {"type": "session.created", "session": {"model": "gpt-4o-realtime-preview"}})
    voice_turn(watch, 1.0, "r1", beta=True)
    assert watch.dialect == "beta" and watch.turns == 1 and watch.latencies_ms == [400.0]
    assert watch.transcripts[-1].text == "It is noon."


def test_a_text_turn_counts_from_the_request() -> None:
    watch = SessionWatch()
    watch.feed("down", 0.0, CREATED)
    watch.feed("up", 1.0, {"type": "conversation.item.create", "item": {"type": "message"}})
    watch.feed("up", 1.0, {"type": "response.create"})
    watch.feed("down", 1.1, {"type": "response.created", "response": {"id": "r1", "conversation_id": "c"}})
    watch.feed("down", 1.25, {"type": "response.output_text.delta", "response_id": "r1", "delta": "Hi"})
    watch.feed("down", 1.3, {"type": "response.output_text.done", "response_id": "r1", "text": "Hi there."})
    watch.feed("down", 1.4, {"type": "response.done", "response": {"id": "r1", "conversation_id": "c"}})
    assert watch.turns == 1 and watch.latencies_ms == [250.0]
    assert watch.transcripts[-1].role == "assistant"


def test_an_out_of_band_response_is_billed_but_is_not_a_turn() -> None:
    watch = SessionWatch()
    watch.feed("down", 0.0, CREATED)
    watch.feed("down", 1.0, {"type": "response.created", "response": {"id": "oob", "conversation_id": None}})
    watch.feed("down", 1.1, {"type": "response.output_audio.delta", "response_id": "oob", "delta": "AA"})
    watch.feed("down", 1.2, {"type": "response.output_audio_transcript.done", "response_id": "oob",
                             "transcript": "a side remark"})
    watch.feed("down", 1.3, {"type": "response.done", "response": {"id": "oob", "conversation_id": None,
                                                                    "usage": USAGE}})
    assert watch.turns == 0 and watch.transcripts == [] and watch.state == "listening"
    assert watch.usage is not None and watch.usage["output_tokens"] == 60


def test_errors_and_the_end() -> None:
    watch = SessionWatch()
    watch.feed("down", 0.0, CREATED)
    watch.feed("down", 0.5, {"type": "error", "error": {"code": "response_cancel_not_active"}})
    watch.close("client")
    assert watch.errors == 1 and watch.state == "ended" and watch.ended == "client"


def test_garbage_is_skipped_never_raised() -> None:
    watch = SessionWatch()
    for event in ({}, {"type": 3}, {"type": "session.created", "session": "x"},
                  {"type": "session.created", "session": {"expires_at": "soon", "model": 4}},
                  {"type": "response.done"}, {"type": "response.done", "response": {"id": [], "usage": "lots"}},
                  {"type": "response.created", "response": None},
                  {"type": "response.output_audio.delta", "response_id": None},
                  {"type": "conversation.item.input_audio_transcription.completed", "transcript": 7}):
        watch.feed("down", 1.0, event)
        watch.feed("up", 1.0, event)
    assert watch.turns == 0 and watch.transcripts == [] and watch.usage is None and watch.expires_at is None
