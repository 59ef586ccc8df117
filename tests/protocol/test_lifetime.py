"""The resend ledger and the session cap: plain data in, decisions out (no sockets, no clock)."""

from __future__ import annotations

import base64

import pytest

from voicerelay.protocol.lifetime import ResendLedger, SessionCap, append_ms


def append(seq: int, ms: int = 40) -> dict[str, str]:
    return {"type": "input_audio_buffer.append",
            "audio": base64.b64encode(seq.to_bytes(2, "little") + b"\0" * (ms * 48 - 2)).decode()}


def seqs(events: list[dict[str, str]]) -> list[int]:
    return [int.from_bytes(base64.b64decode(e["audio"])[:2], "little") for e in events]


def test_append_ms_counts_from_base64() -> None:
    assert append_ms(append(1, 40)) == pytest.approx(40)


def test_unanswered_audio_is_taken_again_in_wire_order() -> None:
    ledger = ResendLedger()
    first, second = ledger.number(), ledger.number()  # numbered as written...
    ledger.written(second, append(2))  # ...but the second's write returned first
    ledger.written(first, append(1))
    assert seqs(ledger.take()) == [1, 2]
    assert ledger.take() == [] and ledger.ms == 0


def test_an_answered_turn_is_forgotten_but_audio_after_its_commit_is_kept() -> None:
    ledger = ResendLedger()
    for n in (1, 2):
        ledger.written(ledger.number(), append(n))
    ledger.server_event({"type": "input_audio_buffer.committed", "item_id": "u1"})
    ledger.written(ledger.number(), append(3))  # the next utterance began
    ledger.server_event({"type": "response.done", "response": {"id": "r1"}})
    assert seqs(ledger.take()) == [3]


def test_an_out_of_band_say_answers_nobody() -> None:
    ledger = ResendLedger()
    ledger.written(ledger.number(), append(1))
    ledger.server_event({"type": "input_audio_buffer.committed"})
    ledger.server_event({"type": "response.done", "response": {"metadata": {"voicerelay": "say"}}})
    assert seqs(ledger.take()) == [1]


def test_a_cleared_buffer_is_forgotten_at_once() -> None:
    ledger = ResendLedger()
    ledger.written(ledger.number(), append(1))
    ledger.server_event({"type": "input_audio_buffer.cleared"})
    assert ledger.take() == []


def test_the_ledger_is_bounded_oldest_first() -> None:
    ledger = ResendLedger(max_ms=400)
    for n in range(1, 21):
        ledger.written(ledger.number(), append(n, 40))
    assert seqs(ledger.take()) == list(range(11, 21))  # 10 x 40 ms


GA_VAD = {"type": "session.updated", "session": {"type": "realtime", "audio": {"input": {
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}}


def test_with_server_vad_a_listening_session_keeps_only_its_newest_silence() -> None:
    """What no turn holds, while the server hears no speech, is silence by the server's own
    judgement: the newest 2 s of it is kept (speech it has begun to hear), not 15 s."""
    ledger = ResendLedger()
    ledger.server_event(GA_VAD)
    for n in range(1, 201):  # 8 s of listening
        ledger.written(ledger.number(), append(n, 40))
    assert ledger.ms == pytest.approx(2000)
    assert seqs(ledger.take()) == list(range(151, 201))


def test_with_server_vad_a_turn_being_spoken_is_kept_whole_until_it_is_answered() -> None:
    ledger = ResendLedger()
    ledger.server_event(GA_VAD)
    for n in range(1, 51):  # 2 s of silence
        ledger.written(ledger.number(), append(n, 40))
    ledger.server_event({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1800})
    for n in range(51, 201):  # a 6 s utterance
        ledger.written(ledger.number(), append(n, 40))
    ledger.server_event({"type": "input_audio_buffer.speech_stopped"})
    for n in range(201, 206):  # the server commits 200 ms later
        ledger.written(ledger.number(), append(n, 40))
    ledger.server_event({"type": "input_audio_buffer.committed", "item_id": "u1"})
    for n in range(206, 281):  # 3 s of waiting for the reply: the turn is kept, silence after it too
        ledger.written(ledger.number(), append(n, 40))
    assert len(ledger) == 280 and ledger.ms == pytest.approx(280 * 40)  # nothing dropped
    ledger.server_event({"type": "response.output_audio.delta", "response_id": "r1", "delta": ""})
    ledger.written(ledger.number(), append(281, 40))  # answered: what follows the turn is silence again
    assert seqs(ledger.take()) == list(range(232, 282))


def test_without_server_vad_the_ledger_keeps_up_to_its_bound() -> None:
    """Manual turns (turn_detection null, or a server that never said): the client decides when
    a turn ends, so everything since the last answered turn is kept, up to max_ms."""
    for session_event in ({"type": "session.updated", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": None}}}}, {"type": "session.updated", "session": {"turn_detection": None}}, None):
        ledger = ResendLedger()
        ledger.server_event(GA_VAD)
        if session_event is not None:
            ledger.server_event(session_event)
        else:
            ledger = ResendLedger()
        for n in range(1, 201):
            ledger.written(ledger.number(), append(n, 40))
        assert ledger.ms == pytest.approx(8000)


def test_a_beta_session_with_turn_detection_is_server_vad() -> None:
    ledger = ResendLedger()
    ledger.server_event({"type": "session.created", "session": {"turn_detection": {"type": "server_vad"}}})
    assert ledger.server_vad
    ledger.server_event({"type": "session.updated", "session": {"instructions": "hi"}})  # says nothing of it
    assert ledger.server_vad


def test_the_cap_recycles_at_a_quiet_moment_inside_the_margin_or_just_before_it() -> None:
    cap = SessionCap()
    assert not cap.should_recycle(0.0, quiet=True)  # no cap known
    cap.session_created({"type": "session.created", "session": {"expires_at": 1_000_400}}, now=100.0,
                        wall_now=1_000_000.0)
    assert cap.expires_at == 500.0 and cap.remaining(100.0) == 400.0
    assert cap.recycle_from == 440.0 and cap.recycle_by == 485.0  # margin min(60, 400 / 4)
    assert not cap.should_recycle(439.0, quiet=True)
    assert cap.should_recycle(441.0, quiet=True) and not cap.should_recycle(441.0, quiet=False)
    assert cap.should_recycle(485.0, quiet=False)


def test_a_short_session_gets_a_proportional_margin_and_a_bad_cap_none() -> None:
    cap = SessionCap()
    cap.session_created({"session": {"expires_at": 1004}}, now=0.0, wall_now=1000.0)
    assert cap.recycle_from == pytest.approx(3.0)  # a quarter of 4 s
    cap.session_created({"session": {"expires_at": True}}, now=0.0, wall_now=1000.0)
    assert cap.expires_at is None and not cap.should_recycle(10**6, quiet=True)


def test_the_first_reply_output_answers_the_turn_but_a_say_answers_nobody() -> None:
    ledger = ResendLedger()
    ledger.written(ledger.number(), append(1))
    ledger.server_event({"type": "input_audio_buffer.committed"})
    ledger.server_event({"type": "response.created", "response": {"id": "say1", "metadata": {"voicerelay": "say"}}})
    ledger.server_event({"type": "response.output_audio.delta", "response_id": "say1", "delta": "AAAA"})
    assert len(ledger) == 1  # an out-of-band say is not the answer
    ledger.server_event({"type": "response.created", "response": {"id": "r1"}})
    assert len(ledger) == 1  # created, nothing heard yet: a reconnect would ask again
    ledger.server_event({"type": "response.output_audio.delta", "response_id": "r1", "delta": "AAAA"})
    assert ledger.take() == []  # the user began to hear the answer: never asked for again
