"""The talk screens' plain parts: the conversation model, the level meter, the status figures, the cost."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from textual.widgets import Static

from voicerelay.talk import TalkStatus, status_line
from voicerelay.tui.demo import show_talk, talk_status
from voicerelay.tui.talk_app import METER_CELLS, Conversation, TalkApp, cost_label, level_meter


def test_partials_show_until_the_final_line_replaces_them() -> None:
    talk = Conversation()
    talk.transcript("user", "hello ", final=False)
    talk.transcript("user", "there", final=False)
    talk.transcript("assistant", "Hel", final=False)
    assert talk.render().plain == "     user  hello there…\nassistant  Hel…"
    talk.transcript("user", "hello there", final=True)
    assert talk.render().plain == "     user  hello there\nassistant  Hel…"
    talk.transcript("assistant", "Hello!", final=True, note="  (interrupted after 0.4 s)")
    talk.notice("          [interrupted: 0.4 s of 1.2 s heard]")
    assert talk.render().plain.splitlines() == [
        "     user  hello there", "assistant  Hello!  (interrupted after 0.4 s)",
        "          [interrupted: 0.4 s of 1.2 s heard]"]
    talk.transcript("user", "", final=True)  # an empty final line (nothing recognised) adds nothing
    assert len(talk.render().plain.splitlines()) == 3


def test_the_level_meter_spans_minus_60_to_0_dbfs() -> None:
    assert level_meter(float("-inf"), None).plain == "·" * METER_CELLS + "    -∞ dBFS"
    assert level_meter(-90.0, None).plain.startswith("·" * METER_CELLS)
    assert level_meter(-30.0, None).plain.startswith("█" * (METER_CELLS // 2) + "·")
    assert level_meter(0.0, None).plain.startswith("█" * METER_CELLS)
    assert level_meter(-10.0, "muted").plain.endswith("muted")  # muted: no level, the reason


def test_status_figures() -> None:
    status = talk_status()
    assert status.latency(50) == 104.0 and round(status.latency(95) or 0) == 119
    assert dataclasses.replace(status, latencies_ms=()).latency(50) is None
    line = status_line(dataclasses.replace(status, state="user_speaking", push_to_talk=True, talking=False))
    assert line.plain.startswith("● user speaking  Enter to talk  │ mic -31 dBFS │ reply queued 1.3 s")
    assert isinstance(status, TalkStatus)


def test_the_cost_label_says_estimates_and_why_a_cost_is_unknown() -> None:
    assert cost_label({"usd": 0.01234, "estimate": False}).plain == "$0.0123"
    assert cost_label({"usd": 0.01234, "estimate": True}).plain == "~$0.0123 estimate"
    unknown = {"model": "house-model", "usd": None, "estimate": False,
               "note": "model house-model is not in the price table"}
    assert cost_label(unknown).plain == "unknown (house-model is not priced)"
    assert cost_label({"usd": None, "note": "price table /x.toml: not valid TOML"}).plain == \
        "unknown (price table unusable)"
    assert cost_label(None).plain == "-"


async def test_the_session_panel_shows_the_cost_beside_the_time_left() -> None:
    app = TalkApp(None)
    async with app.run_test(size=(130, 34)) as pilot:
        show_talk(app.view)
        await pilot.pause()
        lines = str(app.query_one("#session", Static).content).splitlines()
        assert "cost      ~$0.0215 estimate" in lines
        assert lines[lines.index("cost      ~$0.0215 estimate") + 1] == "remaining 28:32 to the session cap"
        app.view.state("listening")  # a state change keeps the cost it showed
        await pilot.pause()
        assert "cost      ~$0.0215 estimate" in str(app.query_one("#session", Static).content)


class _Session:
    """What :meth:`TuiView.tick` reads of a running talk: a real relay (never connected) and the
    status ``Talk.status()`` would give."""

    def __init__(self) -> None:
        from voicerelay.protocol.config import RealtimeConfig
        from voicerelay.protocol.events import Dialect
        from voicerelay.relay import Relay
        from voicerelay.upstream import embedded_spec

        self.relay = Relay(RealtimeConfig(), embedded_spec("ws://127.0.0.1:9/v1/realtime", "gpt-realtime", Dialect.GA))

    def status(self) -> TalkStatus:
        return talk_status()


async def test_a_broken_price_table_is_said_once_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "broken.toml"
    table.write_text("date = ")
    monkeypatch.setenv("VOICERELAY_PRICES", str(table))
    app, talk = TalkApp(None), _Session()
    async with app.run_test(size=(130, 34)) as pilot:
        app.view.tick(talk)  # type: ignore[arg-type]
        app.view.tick(talk)  # type: ignore[arg-type]
        await pilot.pause()
        assert "cost      unknown (price table unusable)" in str(app.query_one("#session", Static).content)
        transcript = str(app.query_one("#transcript", Static).content)
        assert transcript.count(f"cost unknown: price table {table} (VOICERELAY_PRICES): not valid TOML") == 1
    monkeypatch.delenv("VOICERELAY_PRICES")
    app = TalkApp(None)
    async with app.run_test(size=(130, 34)) as pilot:
        app.view.tick(_Session())  # type: ignore[arg-type]
        await pilot.pause()
        assert "cost      ~$0.0000 estimate" in str(app.query_one("#session", Static).content)
