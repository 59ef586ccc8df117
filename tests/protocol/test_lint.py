"""The lint rules as a live stream would use them: one event at a time, findings as soon as they
are known, audio as base64 (what a proxy sees) rather than a recording's references."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from voicerelay.protocol.audio import pcm16_to_b64
from voicerelay.protocol.lint import RESPONSE_GRACE_S, SPECTRUM_BLOCK_S, Linter, StreamLinter, band_limit_hz

from ..conftest import read_recording
from ..lint.scenarios import through

GA_CREATED = {"type": "session.created", "event_id": "e0", "session": {
    "type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}, "output": {"voice": "alloy"}}}}


def started(spectrum_phase: float = 0.0) -> Linter:
    linter = Linter(spectrum_phase=spectrum_phase)
    assert linter.feed("down", 0.0, GA_CREATED) == []
    return linter


def test_a_finding_comes_out_with_the_event_that_settles_it() -> None:
    linter = started()
    assert linter.feed("up", 1.0, {"type": "response.create"}) == []
    assert linter.feed("down", 1.1, {"type": "response.created", "response": {"id": "r1", "conversation_id": "c"}}) == []
    [finding] = linter.feed("up", 1.2, {"type": "response.create"})
    assert finding.code == "VR104" and finding.t == 1.2 and "r1" in finding.message
    linter.feed("down", 2.0, {"type": "response.done", "response": {"id": "r1", "conversation_id": "c"}})
    assert linter.feed("up", 2.1, {"type": "response.create"}) == []  # after response.done: fine


def test_out_of_band_responses_may_run_alongside() -> None:
    linter = started()
    linter.feed("down", 1.0, {"type": "response.created", "response": {"id": "r1", "conversation_id": "c"}})
    assert linter.feed("up", 1.1, {"type": "response.create", "response": {"conversation": "none"}}) == []


def test_a_pending_function_output_is_reported_once_its_grace_is_over() -> None:
    linter = started()
    linter.feed("up", 3.0, {"type": "conversation.item.create",
                            "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"}})
    assert linter.feed("down", 3.0 + RESPONSE_GRACE_S - 0.1, {"type": "rate_limits.updated"}) == []
    [finding] = linter.feed("down", 3.0 + RESPONSE_GRACE_S + 0.1, {"type": "rate_limits.updated"})
    assert finding.code == "VR103" and finding.t == 3.0 and "call_1" in finding.message
    assert linter.finish() == []  # said once


def test_base64_audio_counts_and_a_played_report_reach_the_truncate_audit() -> None:
    linter = started()
    pcm = np.zeros(24 * 500, dtype=np.int16)  # 500 ms
    linter.feed("down", 1.0, {"type": "response.output_audio.delta", "item_id": "i1", "delta": pcm16_to_b64(pcm)})
    linter.played("i1", 180)
    assert linter.feed("up", 1.25, {"type": "conversation.item.truncate", "item_id": "i1", "content_index": 0,
                                    "audio_end_ms": 180}) == []
    [finding] = linter.feed("up", 1.3, {"type": "conversation.item.truncate", "item_id": "i1", "content_index": 0,
                                        "audio_end_ms": 501})
    assert finding.code == "VR101" and "only 500 ms" in finding.message
    first, second = linter.truncates
    assert (first.received_ms, first.played_ms, first.sent_ms, first.verdict) == (500, 180, 180, "ok")
    assert second.verdict == "past received"


def test_beta_events_queued_before_session_created_are_judged_when_it_arrives() -> None:
    linter = Linter()
    assert linter.feed("up", 0.0, {"type": "session.update", "session": {"voice": "alloy"}}) == []
    [finding] = linter.feed("down", 0.1, GA_CREATED)
    assert finding.code == "VR107" and finding.t == 0.0


def test_ignored_codes_and_unknown_codes() -> None:
    linter = Linter(ignore=["vr106"])
    linter.feed("down", 0.0, GA_CREATED)
    assert linter.feed("up", 1.0, {"type": "response.cancel"}) == []
    with pytest.raises(ValueError, match="VR999"):
        Linter(ignore=["VR999"])


def test_malformed_events_never_raise() -> None:
    linter = started()
    for event in ({}, {"type": 3}, {"type": "conversation.item.truncate"}, {"type": "response.done", "response": 1},
                  {"type": "session.updated", "session": None}, {"type": "error", "error": "x"},
                  {"type": "input_audio_buffer.append", "audio": {"invalid_audio": True}},
                  {"type": "response.output_audio.delta", "item_id": 5, "delta": None}):
        linter.feed("down", 1.0, event)
        linter.feed("up", 1.0, event)
    linter.finish()


@pytest.mark.parametrize("rate, cutoff", [(8000, 4000), (16000, 8000)])
def test_band_limit_of_real_speech_through_a_lower_rate(rate: int, cutoff: float) -> None:
    speech = read_recording("what_can_you_do")
    assert band_limit_hz(speech.tobytes()) is None  # recorded at 24 kHz: full band
    assert band_limit_hz(through(speech, rate).tobytes()) == cutoff


def _append_all(linter: Linter, pcm: np.ndarray, t0: float) -> tuple[float, list[str]]:
    """Feed ``pcm`` as 20 ms appends with their base64 audio, as a proxy sees them."""
    codes: list[str] = []
    t = t0
    raw = pcm.tobytes()
    for i in range(0, len(raw), 960):
        chunk = raw[i:i + 960]
        codes += [f.code for f in linter.feed("up", t, {"type": "input_audio_buffer.append",
                                                        "audio": pcm16_to_b64(chunk)}, chunk)]
        t += 0.02
    return t, codes


def test_a_stream_that_turns_narrow_after_a_long_full_band_stretch_is_still_caught() -> None:
    """The band is judged less often once a stream was full band for a while (a live linter must
    stay cheap), never so seldom that a change of rate goes unnoticed for long."""
    linter = started()
    speech = read_recording("what_can_you_do")
    t, codes = _append_all(linter, np.tile(speech, 30), 1.0)  # 56 s at 24 kHz: full band, skips at their longest
    assert codes == []
    narrow = np.tile(through(speech, 8000), 6)
    _, codes = _append_all(linter, narrow, t)
    assert codes == ["VR108"]
    [finding] = [f for f in linter.findings if f.code == "VR108"]
    assert finding.t - t <= 10.0  # caught within the longest skip plus a block, not at the end


def test_silence_does_not_count_as_a_full_band_judgement() -> None:
    """Quiet audio cannot be judged: it must not make the linter look less often."""
    linter = started()
    quiet = np.zeros(24000 * 60, dtype="<i2")
    t, codes = _append_all(linter, quiet, 1.0)
    _, codes = _append_all(linter, through(read_recording("what_can_you_do"), 8000), t)
    assert codes == ["VR108"]


def test_a_short_narrow_stream_is_judged_when_the_session_ends() -> None:
    linter = started()
    speech = through(read_recording("what_can_you_do"), 16000)[7168: 7168 + 24000 // 4]  # 0.25 s of speech: under one sample
    _, codes = _append_all(linter, speech, 1.0)
    assert codes == []
    assert [f.code for f in linter.finish()] == ["VR108"]


def test_live_linters_started_together_judge_their_spectra_at_different_times() -> None:
    """Fifty sessions that start at once must not all compute a spectrum in the same frame (one
    burst of work per block, the tail latency of everything the loop forwards); each still
    catches a narrow stream within two blocks."""
    narrow = np.tile(through(read_recording("what_can_you_do"), 8000), 2)
    first_finding_at = []
    for _ in range(8):
        live = StreamLinter()
        live.feed("down", 0.0, {"type": "session.created", "session": {"type": "realtime"}})
        raw, t, found = narrow.tobytes(), 0.0, []
        for i in range(0, len(raw), 960):
            t += 0.02
            found += live.feed("up", t, {"type": "input_audio_buffer.append", "audio": pcm16_to_b64(raw[i:i + 960])})
            if found:
                break
        assert [f.code for f in found] == ["VR108"]
        first_finding_at.append(round(t, 2))
    assert len(set(first_finding_at)) == 8
    assert max(first_finding_at) <= 2 * SPECTRUM_BLOCK_S + 0.02


def _stream_all(stream: StreamLinter, pcm: np.ndarray, t0: float) -> tuple[float, int]:
    """Feed ``pcm`` to a live linter as 20 ms base64 appends (no PCM given: it decodes what it needs)."""
    raw = pcm.tobytes()
    t = t0
    for i in range(0, len(raw), 960):
        stream.feed("up", t, {"type": "input_audio_buffer.append", "audio": pcm16_to_b64(raw[i:i + 960])})
        t += 0.02
    return t, (len(raw) + 959) // 960


def test_a_live_linter_decodes_audio_only_when_vr108_looks_at_it() -> None:
    """Between two judgements of the band (a stream judged full band is judged every few blocks)
    an append's byte count is enough: the live linter decodes no base64 for it, and finds what a
    linter given every append's PCM finds, at the same times."""
    speech = read_recording("what_can_you_do")
    full, narrow = np.tile(speech, 30), np.tile(through(speech, 8000), 6)
    stream = StreamLinter()
    stream.feed("down", 0.0, GA_CREATED)
    t, appends = _stream_all(stream, full, 1.0)
    assert stream.count == 0 and not stream.linter.wants_pcm
    assert stream.decoded < appends / 4  # 56 s: judged, then every 2nd, 4th, 8th block
    _, more = _stream_all(stream, narrow, t)
    reference = started(stream.linter.spectrum_phase)  # (each live linter has a phase of its own)
    t, _ = _append_all(reference, full, 1.0)
    _append_all(reference, narrow, t)
    assert [(f.code, f.t) for f in stream.findings] == [(f.code, f.t) for f in reference.findings]
    assert [f.code for f in stream.findings] == ["VR108"]
    assert stream.decoded < (appends + more) / 2


def test_a_live_linter_without_vr108_decodes_nothing() -> None:
    stream = StreamLinter(ignore=["VR108"])
    assert not stream.linter.wants_pcm
    stream.feed("down", 0.0, GA_CREATED)
    _stream_all(stream, through(read_recording("what_can_you_do"), 8000), 1.0)
    assert stream.decoded == 0 and stream.count == 0


def test_a_live_linter_counts_every_chunk_as_a_linter_fed_event_by_event_does() -> None:
    """The live linter counts the two events of every chunk (an append up, a delta down) in one
    step; what it finds, when, and what its truncate audit says are what a linter fed every event
    whole (and every append's PCM) finds: too little audio committed, a truncate past what was
    received, a function output left waiting while the audio goes on, beta audio events."""
    rng = np.random.default_rng(3)

    def chunk(ms: int) -> bytes:
        return rng.normal(0, 2000, 24 * ms).astype("<i2").tobytes()

    def delta(item: str, ms: int) -> dict[str, object]:
        return {"type": "response.output_audio.delta", "response_id": "r1", "item_id": item, "output_index": 0,
                "content_index": 0, "delta": pcm16_to_b64(chunk(ms))}

    vad_off = {"type": "session.created", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
    script: list[tuple[str, dict[str, object]]] = [("down", vad_off)]
    script += [("up", {"type": "input_audio_buffer.append", "audio": pcm16_to_b64(chunk(20))})] * 3
    script += [("up", {"type": "input_audio_buffer.commit"})]  # 60 ms: VR113
    script += [("up", {"type": "input_audio_buffer.append", "audio": pcm16_to_b64(chunk(20))}) for _ in range(150)]
    script += [("up", {"type": "input_audio_buffer.commit"}), ("up", {"type": "response.create"}),
               ("down", {"type": "response.created", "response": {"id": "r1", "conversation_id": "c"}})]
    script += [("down", delta("i1", 25)) for _ in range(20)]  # 500 ms
    script += [("up", {"type": "conversation.item.truncate", "item_id": "i1", "content_index": 0,
                       "audio_end_ms": 501}),  # VR101
               ("up", {"type": "conversation.item.create",
                       "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"}})]
    script += [("down", delta("i2", 40)) for _ in range(200)]  # 8 s: the output's grace runs out (VR103)
    script += [("down", {**delta("i2", 40), "item_id": ["not", "a", "string"]}),
               ("down", {"type": "response.audio.delta", "response_id": "r1", "item_id": "i2", "delta": "AAAA"})]
    script += [("up", {"type": "conversation.item.truncate", "item_id": "i2", "content_index": 0,
                       "audio_end_ms": 8000})]

    live = StreamLinter()
    reference = Linter(spectrum_phase=live.linter.spectrum_phase)  # (the same samples of the band)
    live_found, reference_found = [], []
    for i, (direction, event) in enumerate(script):
        t = 1.0 + i * 0.04
        live_found += [(f.code, round(f.t, 3), f.message) for f in live.feed(direction, t, event)]
        pcm = base64.b64decode(event["audio"]) if event["type"] == "input_audio_buffer.append" else None  # type: ignore[arg-type]
        reference_found += [(f.code, round(f.t, 3), f.message) for f in reference.feed(direction, t - 1.0, event, pcm)]
    assert [f[0] for f in live_found] == ["VR113", "VR101", "VR103"]
    assert live_found == reference_found
    assert live.linter.truncates == reference.truncates and len(live.linter.truncates) == 2
