"""StateMirror driven by plain dicts, as the gateway sends them: no sockets, no asyncio."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from voicerelay.client.mirror import (
    KEEP_ENDED,
    Effect,
    Emit,
    EndAbandoned,
    SessionState,
    StartFailed,
    StartSucceeded,
    StateAnswered,
    StateMirror,
)


def emitted(effects: list[Effect], name: str | None = None) -> list[dict[str, Any]]:
    return [e.payload for e in effects if isinstance(e, Emit) and (name is None or e.name == name)]


def names(effects: list[Effect]) -> list[str]:
    return [e.name for e in effects if isinstance(e, Emit)]


def started(mirror: StateMirror, sid: str = "vr_1", chat_payload: dict[str, Any] | None = None) -> SessionState:
    """A session started the way the connection does it: begin_start, created, started, end_start."""
    attempt = mirror.begin_start(chat_payload or {"contextId": "ctx-1"})
    assert mirror.receive("session_created", {"session_id": sid, "status": "created"}) == []
    assert attempt.session_id == sid
    effects = mirror.receive("session_started", {"session_id": sid, "message": "ready"})
    assert effects[0] == StartSucceeded(sid)
    mirror.end_start()
    session = mirror.session
    assert session is not None and session.session_id == sid and session.started
    return session


def test_a_start_then_the_gateways_states() -> None:
    mirror = StateMirror()
    attempt = mirror.begin_start({"contextId": "ctx-1"})
    assert mirror.receive("session_created", {"session_id": "vr_1"}) == []
    assert attempt.session_id == "vr_1" and mirror.session is not None and not mirror.session.started
    effects = mirror.receive("session_started", {"session_id": "vr_1", "message": "ready"})
    assert effects == [StartSucceeded("vr_1"), Emit("session_started", {
        "session_id": "vr_1", "message": "ready", "resumed": False, "previous_session_id": None})]
    mirror.end_start()
    session = mirror.sessions["vr_1"]
    assert session.chat_payload == {"contextId": "ctx-1"} and session.ai_state == "connecting"

    changes = []
    for state in ("listening", "listening", "user_speaking", "thinking", "speaking", "listening"):
        changes += emitted(mirror.receive("ai_state", {"state": state, "session_id": "vr_1"}), "ai_state_changed")
    assert [(c["old"], c["new"]) for c in changes] == [
        ("connecting", "listening"), ("listening", "user_speaking"), ("user_speaking", "thinking"),
        ("thinking", "speaking"), ("speaking", "listening")]  # no event when the state does not change
    assert {c["reason"] for c in changes} == {"gateway"} and {c["session_id"] for c in changes} == {"vr_1"}
    assert mirror.receive("ai_state", {"state": 7}) == [] and session.ai_state == "listening"


def test_a_resumed_start_says_so() -> None:
    mirror = StateMirror()
    mirror.begin_start({"contextId": "ctx-7"}, resumed_from="vr_old")
    mirror.receive("session_created", {"session_id": "vr_new"})
    [_, event] = mirror.receive("session_started", {"session_id": "vr_new"})
    assert event == Emit("session_started", {"session_id": "vr_new", "message": "", "resumed": True,
                                             "previous_session_id": "vr_old"})
    assert mirror.sessions["vr_new"].resumed_from == "vr_old"


def test_transcripts_replies_and_completions_update_the_session() -> None:
    mirror = StateMirror()
    session = started(mirror)
    partial = mirror.receive("user_transcript", {"text": "what is", "final": False, "item_id": "it_1"})
    assert emitted(partial) == [{"session_id": "vr_1", "text": "what is", "final": False, "item_id": "it_1"}]
    assert session.last_user_text == ""
    mirror.receive("user_transcript", {"text": "what is your name", "final": True, "item_id": "it_1"})
    assert session.last_user_text == "what is your name"
    mirror.receive("ai_transcript", {"text": "My name", "final": True, "item_id": "it_2"})
    assert session.last_assistant_text == "My name"
    reply = mirror.receive("ai_response", {"transcript": "what is your name", "response": "My name is voicerelay."})
    assert emitted(reply, "ai_response") == [{"session_id": "vr_1", "transcript": "what is your name",
                                              "response": "My name is voicerelay."}]
    assert session.last_assistant_text == "My name is voicerelay."
    done = mirror.receive("response_complete", {"response_id": "resp_1", "status": "completed"})
    assert emitted(done) == [{"session_id": "vr_1", "response_id": "resp_1", "status": "completed"}]
    assert session.responses == 1
    assert emitted(mirror.receive("session_recycled", {"message": "renewed"})) == \
        [{"session_id": "vr_1", "message": "renewed"}]


def test_audio_carries_the_item_id_when_the_gateway_sends_one() -> None:
    mirror = StateMirror()
    started(mirror)
    pcm = b"\x01\x00" * 240
    b64 = base64.b64encode(pcm).decode()
    with_item = mirror.receive("audio_delta", {"audio": b64, "index": 1, "item_id": "it_9", "session_id": "vr_1"})
    assert emitted(with_item) == [{"session_id": "vr_1", "pcm": pcm, "index": 1, "item_id": "it_9"}]
    without = mirror.receive("audio_delta", {"audio": b64, "index": 2})  # an older gateway
    assert emitted(without) == [{"session_id": "vr_1", "pcm": pcm, "index": 2, "item_id": None}]
    assert emitted(mirror.receive("audio_delta", {"audio": "not base64!", "index": 3}))[0]["pcm"] == b""
    mirror.audio_wanted = False  # nobody listens: no decoding, no event
    assert mirror.receive("audio_delta", {"audio": b64, "index": 4}) == []


def test_interrupted_moves_speaking_to_listening_at_once() -> None:
    mirror = StateMirror()
    session = started(mirror)
    mirror.receive("ai_state", {"state": "speaking"})
    effects = mirror.receive("interrupted", {"item_id": "it_3"})
    assert effects == [Emit("interrupted", {"session_id": "vr_1", "item_id": "it_3"}),
                       Emit("ai_state_changed", {"session_id": "vr_1", "old": "speaking", "new": "listening",
                                                 "reason": "interrupted"})]
    assert session.ai_state == "listening"
    # the gateway's own listening arrives later: nothing changes twice
    assert mirror.receive("ai_state", {"state": "listening"}) == []
    # interrupted while not speaking: reported, but the state is left as it is
    mirror.receive("ai_state", {"state": "thinking"})
    assert names(mirror.receive("interrupted", {"item_id": "it_4"})) == ["interrupted"]
    assert session.ai_state == "thinking"


def test_session_ended_goes_out_once() -> None:
    mirror = StateMirror()
    session = started(mirror)
    effects = mirror.receive("session_ended", {"status": "expired", "session_id": "vr_1"})
    assert effects == [Emit("session_ended", {"session_id": "vr_1", "status": "expired"})]
    assert not session.chat_active and session.status == "expired" and session.ai_state == "ended"
    assert mirror.session is None and mirror.session_id is None
    assert mirror.receive("session_ended", {"status": "ended"}) == []  # again: nothing
    assert mirror.mark_ended(session, "stopped") == [] and session.status == "expired"
    answer = mirror.receive("session_state", {"session_id": None, "chat_active": False, "ai_state": None})
    assert answer == [StateAnswered(None)]  # the resync finds nothing more to end
    assert mirror.receive("session_ended", {}) == []  # no status: still nothing for an ended session


def test_a_status_defaults_to_ended() -> None:
    mirror = StateMirror()
    session = started(mirror)
    assert emitted(mirror.receive("session_ended", {"status": None})) == [{"session_id": "vr_1", "status": "ended"}]
    assert session.status == "ended"


def test_late_events_of_an_ended_session_are_dropped_and_others_are_custom_events() -> None:
    mirror = StateMirror()
    assert emitted(mirror.receive("agent_note", {"x": 1})) == \
        [{"session_id": None, "name": "agent_note", "data": {"x": 1}}]  # before any session
    assert mirror.receive("ai_state", {"state": "listening"}) == []
    session = started(mirror)
    assert emitted(mirror.receive("agent_note", "plain")) == \
        [{"session_id": "vr_1", "name": "agent_note", "data": {"data": "plain"}}]
    mirror.receive("session_ended", {"status": "ended"})
    for name in ("audio_delta", "ai_state", "ai_transcript", "user_transcript", "interrupted", "ai_response",
                 "response_complete", "session_recycled"):
        assert mirror.receive(name, {"state": "speaking", "text": "late", "final": True}) == [], name
    assert session.ai_state == "ended" and session.last_user_text == "" and session.responses == 0
    assert names(mirror.receive("agent_note", {})) == ["custom_event"]  # after it, too


# ----------------------------------------------------------------------------------------- resync


def test_resync_marks_a_vanished_session_ended_and_names_it() -> None:
    mirror = StateMirror()
    session = started(mirror, chat_payload={"contextId": "ctx-9"})
    effects = mirror.receive("session_state", {"session_id": None, "chat_active": False, "ai_state": None})
    assert effects == [Emit("session_ended", {"session_id": "vr_1", "status": "disconnected"}),
                       StateAnswered(session)]
    assert session.status == "disconnected" and not session.chat_active and mirror.session is None
    assert session.chat_payload == {"contextId": "ctx-9"}  # what a resume starts from


def test_resync_adopts_the_gateways_session_and_its_state() -> None:
    mirror = StateMirror()
    old = started(mirror)
    state = {"session_id": "vr_2", "chat_active": True, "ai_state": "thinking", "client": "bot"}
    effects = mirror.receive("session_state", state)
    assert effects == [Emit("session_ended", {"session_id": "vr_1", "status": "disconnected"}),
                       Emit("ai_state_changed", {"session_id": "vr_2", "old": "connecting", "new": "thinking",
                                                 "reason": "resync"}),
                       StateAnswered(old)]
    adopted = mirror.session
    assert adopted is not None and adopted.session_id == "vr_2" and adopted.started and adopted.server == state
    # the same session again: its state follows, nothing ends
    assert mirror.receive("session_state", {**state, "ai_state": "speaking"}) == [
        Emit("ai_state_changed", {"session_id": "vr_2", "old": "thinking", "new": "speaking", "reason": "resync"}),
        StateAnswered(None)]


def test_ended_sessions_are_capped() -> None:
    mirror = StateMirror()
    for n in range(KEEP_ENDED + 8):
        started(mirror, f"vr_{n}")
        mirror.receive("session_ended", {"status": "ended"})
    assert KEEP_ENDED == 32 and len(mirror.sessions) == 32
    assert list(mirror.sessions) == [f"vr_{n}" for n in range(8, 40)]  # the newest are kept
    active = started(mirror, "vr_live")
    assert active.session_id in mirror.sessions and len(mirror.sessions) == 33  # an active one is never dropped


# ----------------------------------------------------------------------------------------- starts that fail


def test_start_refusals_and_errors_are_routed() -> None:
    mirror = StateMirror()
    attempt = mirror.begin_start({})
    effects = mirror.receive("error", {"code": "upstream_unavailable", "message": "cannot\nreach it"})
    assert effects == [Emit("error", {"session_id": None, "code": "upstream_unavailable",
                                      "message": "cannot reach it"})]  # not a refusal: only remembered
    assert attempt.last_error == "upstream_unavailable: cannot reach it"
    mirror.receive("session_created", {"session_id": "vr_1"})
    ended = mirror.receive("session_ended", {"status": "error"})
    assert ended[0] == StartFailed("the gateway ended the session while starting it (error): "
                                   "upstream_unavailable: cannot reach it")
    assert emitted(ended) == [{"session_id": "vr_1", "status": "error"}]
    mirror.end_start()

    mirror.begin_start({})
    refused = mirror.receive("error", {"code": "session_exists", "message": "one per connection"})
    assert refused[0] == StartFailed("the gateway refused start_session: session_exists: one per connection")
    mirror.end_start()
    # no start pending: an error is only reported, for the current session
    assert mirror.receive("error", {"code": "invalid_payload", "message": "bad"}) == \
        [Emit("error", {"session_id": "vr_1", "code": "invalid_payload", "message": "bad"})]


def test_a_session_created_after_an_abandoned_start_is_ended() -> None:
    mirror = StateMirror()
    mirror.begin_start({})
    mirror.abandon_start()  # no session_created in time
    mirror.end_start()
    assert mirror.receive("session_created", {"session_id": "vr_late"}) == [EndAbandoned()]
    assert mirror.receive("session_created", {"session_id": "vr_other"}) == []  # once
    assert mirror.receive("session_started", {"session_id": "vr_unknown"}) == []


# ----------------------------------------------------------------------------------------- followed sessions


def test_followed_sessions_are_mirrored_apart_from_the_own_one() -> None:
    mirror = StateMirror()
    own = started(mirror)
    followed = mirror.follow("vr_b")
    assert followed.followed and followed.server == {} and mirror.session is own
    state = {"session_id": "vr_b", "chat_active": True, "ai_state": "listening"}
    assert emitted(mirror.receive("session_state", state)) == [
        {"session_id": "vr_b", "old": "connecting", "new": "listening", "reason": "resync"}]
    assert followed.server == state and own.ai_state == "connecting"  # the answer to attach, not a resync
    reply = mirror.receive("ai_response", {"session_id": "vr_b", "transcript": "hi", "response": "Hello."})
    assert emitted(reply) == [{"session_id": "vr_b", "transcript": "hi", "response": "Hello."}]
    assert followed.last_assistant_text == "Hello." and own.last_assistant_text == ""
    mirror.receive("ai_state", {"session_id": "vr_b", "state": "speaking"})
    assert followed.ai_state == "speaking" and own.ai_state == "connecting"
    # audio and deltas of a followed session are not mirrored
    assert mirror.receive("audio_delta", {"session_id": "vr_b", "audio": "AAAA", "index": 1}) == []
    assert mirror.receive("interrupted", {"session_id": "vr_b", "item_id": "it_1"}) == []
    assert followed.ai_state == "speaking"
    # the own connection's resync leaves it alone
    mirror.receive("session_state", {"session_id": "vr_1", "chat_active": True, "ai_state": "listening"})
    assert followed.chat_active and own.chat_active
    assert mirror.followed("vr_b") is followed and mirror.followed("vr_1") is None


def test_a_followed_session_ends_once_by_its_events_or_its_state() -> None:
    mirror = StateMirror()
    started(mirror)
    b, c = mirror.follow("vr_b"), mirror.follow("vr_c")
    assert emitted(mirror.receive("session_ended", {"session_id": "vr_b", "status": "expired"})) == \
        [{"session_id": "vr_b", "status": "expired"}]
    assert mirror.receive("session_ended", {"session_id": "vr_b"}) == []
    assert emitted(mirror.receive("session_state", {"session_id": "vr_c", "chat_active": False})) == \
        [{"session_id": "vr_c", "status": "ended"}]
    assert (b.status, c.status) == ("expired", "ended") and mirror.session is not None  # the own one goes on
    mirror.forget("vr_b")
    assert "vr_b" not in mirror.sessions


def test_errors_are_routed_by_session_id() -> None:
    mirror = StateMirror()
    started(mirror)
    mirror.follow("vr_b")
    assert mirror.receive("error", {"session_id": "vr_b", "code": "no_session", "message": "gone"}) == \
        [Emit("error", {"session_id": "vr_b", "code": "no_session", "message": "gone"})]
    assert mirror.receive("error", {"code": "rate_limited", "message": "slow down"}) == \
        [Emit("error", {"session_id": "vr_1", "code": "rate_limited", "message": "slow down"})]
    # an id the mirror does not follow is not routed there
    assert emitted(mirror.receive("error", {"session_id": "vr_zzz", "code": "x", "message": "y"})) == \
        [{"session_id": "vr_1", "code": "x", "message": "y"}]


def test_follow_again_resets_what_the_gateway_said() -> None:
    mirror = StateMirror()
    first = mirror.follow("vr_b")
    mirror.receive("session_state", {"session_id": "vr_b", "chat_active": True, "ai_state": "listening"})
    assert mirror.follow("vr_b") is first and first.server == {}  # attach waits for a fresh answer


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("name", "data"), [
    ("session_state", None), ("session_state", {"session_id": 5, "chat_active": True}),
    ("session_state", {"session_id": ["x"], "chat_active": True}), ("session_created", {"session_id": None}),
    ("session_started", {"session_id": {"a": 1}}), ("session_ended", ["x"]), ("error", "boom"),
    ("error", {"code": None, "message": {"nested": "dict"}}), ("ai_state", {"state": None}),
    ("user_transcript", {"text": None, "final": "yes"}), ("ai_response", {"response": 3}),
    ("audio_delta", {"audio": None}), ("audio_delta", {"audio": "x", "item_id": 5}), ("interrupted", 42),
    ("response_complete", None),
])
def test_malformed_events_never_raise(name: str, data: Any) -> None:
    mirror = StateMirror()
    started(mirror)
    mirror.follow("vr_b")
    mirror.receive(name, data)
    mirror.receive(name, {"session_id": "vr_b", **(data if isinstance(data, dict) else {"data": data})})
    assert mirror.sessions["vr_1"].session_id == "vr_1"
