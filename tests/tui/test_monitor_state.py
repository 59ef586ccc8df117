"""What inspect knows about a gateway's sessions, fed with monitor events as plain data."""

from __future__ import annotations

from voicerelay.tui.monitor_state import COLUMNS, MonitorState


def state(session_id: str, **extra: object) -> dict[str, object]:
    return {"session_id": session_id, "ai_state": "listening", "duration_s": 3.2, "turns": 1, **extra}


def test_a_resync_adds_updates_and_marks_what_is_gone() -> None:
    monitor = MonitorState()
    assert monitor.apply("sessions", {"sessions": [state("a"), state("b")]}) is None
    assert monitor.apply("sessions", {"sessions": [state("b", ai_state="speaking")]}) is None
    assert monitor.resyncs == 2
    assert monitor.sessions["a"].ended == "gone" and monitor.sessions["b"].state["ai_state"] == "speaking"


def test_updates_closings_and_details_reach_their_session_only() -> None:
    monitor = MonitorState()
    assert monitor.apply("session_update", state("a")) == "a"
    assert monitor.apply("session_detail", {"session_id": "a", "transcripts": [{"role": "user", "text": "hi"}],
                                            "events": [{"type": "x"}]}) == "a"
    assert monitor.apply("session_detail", {"session_id": "nobody"}) is None
    assert monitor.apply("session_closed", {"session_id": "a", "status": "disconnected"}) == "a"
    view = monitor.sessions["a"]
    assert list(view.transcripts) == [{"role": "user", "text": "hi"}] and view.ended == "disconnected"
    assert monitor.apply("whatever", {"session_id": "a"}) is None and monitor.apply("session_update", "bad") is None


def test_a_row_fills_every_column_whole() -> None:
    monitor = MonitorState()
    monitor.apply("session_update", state("a", ai_state="user_speaking", node="n1", last_latency_ms=412,
                                          queues={"queued_audio_ms": 40, "dropped_audio_ms": 0},
                                          cost={"model": "gpt-realtime", "usd": 0.01234, "estimate": False},
                                          session_remaining_s=1712.4))
    row = monitor.row(monitor.sessions["a"])
    assert len(row) == len(COLUMNS)
    assert dict(zip(COLUMNS, row)) | {} == {"session": "a", "node": "n1", "client": "", "state": "user_speaking",
                                           "duration": "3 s", "queued audio": "40 ms", "dropped": "0 ms",
                                           "last latency": "412 ms", "errors": "0", "lint": "-", "turns": "1",
                                           "cost": "$0.0123", "time left": "28:32"}
    monitor.apply("session_update", state("b"))
    assert monitor.row(monitor.sessions["b"])[1] == "-"  # a single node


def test_the_lint_column_counts_findings_and_names_the_newest() -> None:
    monitor = MonitorState()

    def lint_of(lint: object) -> str:
        monitor.apply("session_update", state("a", lint=lint))
        return dict(zip(COLUMNS, monitor.row(monitor.sessions["a"])))["lint"]

    assert lint_of(None) == "-"  # not linted
    assert lint_of({"count": 0, "findings": []}) == "0"
    assert lint_of({"count": 7, "findings": [{"code": "VR105"}, {"code": "VR106"}]}) == "7 VR106"
    assert lint_of({"count": "x"}) == "-" and lint_of({"count": 2, "findings": "?"}) == "2"


def test_the_cost_column_says_estimates_and_unknown_costs() -> None:
    monitor = MonitorState()

    def cell(**cost: object) -> str:
        monitor.apply("session_update", state("a", cost=cost or None))
        return dict(zip(COLUMNS, monitor.row(monitor.sessions["a"])))["cost"]

    assert cell(usd=0.0215, estimate=True) == "~$0.0215"
    assert cell(usd=None, estimate=False, note="model x is not in the price table") == "unknown"
    assert cell() == "-"  # a gateway that sends no cost (an older one)
    monitor.apply("session_update", state("a"))
    assert dict(zip(COLUMNS, monitor.row(monitor.sessions["a"])))["time left"] == "-"
