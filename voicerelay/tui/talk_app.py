"""``voicerelay talk --tui``: one screen onto a live talk session.

The session is the same :func:`~voicerelay.talk.run_talk` as plain mode; :class:`TuiView` is
the window it draws through (the :class:`~voicerelay.talk.View` protocol). Every tick (0.1 s)
the view reads a :class:`~voicerelay.talk.TalkStatus` (plain data) and the session's cost
(:func:`voicerelay.cost.cost_state`), and redraws the state, the microphone's level, the queues,
the latencies, the usage and the cost so far; transcripts, notices and raw wire events arrive as
they happen.

``TalkApp(None)`` runs no session: it draws only what is handed to its view (screenshots,
snapshot tests; see :mod:`voicerelay.tui.demo`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Input, Static

from ..errors import VoiceRelayError
from ..console import transcript_line
from ..cost import cost_state, format_usd
from ..talk import STATE_COLOURS
from .events_view import EventLog, EventLogKeys

if TYPE_CHECKING:
    from ..protocol.events import Event
    from ..talk import Talk, TalkOptions, TalkStatus  # noqa: F401

MAX_LINES = 300
METER_CELLS = 24
METER_FLOOR_DB = -60.0

HELP = """\
[b]voicerelay talk[/b]: speak, and the assistant answers; speak over it to interrupt it.

  [b]m[/b]       mute / unmute the microphone (muted, it sends silence)
  [b]space[/b]   push-to-talk (with --push-to-talk): start a turn, then send it
  [b]i[/b]       interrupt the assistant
  [b]r[/b]       start / stop recording the session into a new folder
  [b]t[/b]       type a message (with --text); Enter sends, Escape leaves
  [b]p[/b]       pause / resume the event log
  [b]/[/b]       filter the event log by event type (empty: all)
  [b]a[/b]       show / hide audio events in the log
  [b]q[/b]       quit          [b]?[/b]  this help

Latency is from the end of the user's turn to the first reply audio; the session's
remaining time is until the upstream's cap (the relay opens a new session before it).
"""


class Conversation:
    """The transcript: final lines, then what is being said now (plain data, rendered as Text)."""

    def __init__(self) -> None:
        self.lines: collections.deque[Text] = collections.deque(maxlen=MAX_LINES)
        self.partial = {"user": "", "assistant": ""}

    def transcript(self, role: str, text: str, final: bool, note: str = "") -> None:
        if not final:
            self.partial[role] += text
            return
        self.partial[role] = ""
        if text:
            self.lines.append(transcript_line(role, text, note))

    def notice(self, text: str, style: str = "dim") -> None:
        self.lines.append(Text(text, style=style or "dim"))

    def render(self) -> Text:
        out = Text("\n").join(self.lines)
        for role in ("user", "assistant"):
            if self.partial[role]:
                if out:
                    out.append("\n")
                out.append_text(Text.assemble((f"{role:>9}  ", "dim"), (self.partial[role] + "…", "italic dim")))
        return out


def level_meter(level_dbfs: float, muted: str | None, echo_dbfs: float | None = None) -> Text:
    """The microphone's level as a bar from -60 to 0 dBFS; with echo cancellation (``echo_dbfs``,
    the echo taken out), the level is after it and a second bar shows the echo."""
    if muted:
        return Text(f"{'·' * METER_CELLS} {muted}", style="yellow")
    if echo_dbfs is not None:
        return (Text("mic  ", style="dim") + level_meter(level_dbfs, None) + Text("\necho ", style="dim")
                + level_meter(echo_dbfs, None))
    if level_dbfs == float("-inf") or level_dbfs < METER_FLOOR_DB:
        filled, label = 0, "   -∞ dBFS"
    else:
        filled = round((1 - level_dbfs / METER_FLOOR_DB) * METER_CELLS)
        label = f"{level_dbfs:5.0f} dBFS"
    bar = Text()
    for cell in range(METER_CELLS):
        if cell >= filled:
            bar.append("·", style="dim")
        else:
            bar.append("█", style="red" if cell >= METER_CELLS - 2 else "yellow" if cell >= METER_CELLS * 0.75
                       else "green")
    return bar + Text(" " + label)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def cost_label(cost: Mapping[str, Any] | None) -> Text:
    """The session's cost so far as the panel shows it: ``$0.0123``, ``~$0.0123 estimate``, or
    ``unknown`` and why (a model the price table lacks, a table that cannot be used)."""
    if not cost:
        return Text("-", style="bold")
    usd = cost.get("usd")
    if usd is None:
        note = str(cost.get("note") or "")
        why = (f"{cost.get('model')} is not priced" if "not in the price table" in note
               else "price table unusable" if note.startswith("price table") else "")
        return Text.assemble(("unknown", "bold yellow"), (f" ({why})" if why else "", "yellow"))
    return Text.assemble((format_usd(float(usd), bool(cost.get("estimate"))), "bold"),
                         (" estimate" if cost.get("estimate") else "", "dim"))


def _remaining(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: auto; max-width: 90; padding: 1 2; border: round $accent; background: $panel; }
    """
    BINDINGS = [
        Binding("escape,question_mark,q,enter", "dismiss", "close"),
        Binding("ctrl+c", "app.quit", "quit", show=False),  # a modal screen hides the app's keys
    ]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class TuiView:
    """The :class:`~voicerelay.talk.View` that draws into a :class:`TalkApp`."""

    keyboard = False  # Textual owns the terminal
    wants_level = True

    def __init__(self, app: TalkApp) -> None:
        self.app = app
        self.status: TalkStatus | None = None
        self.cost: Mapping[str, Any] | None = None  # the session's cost so far (cost_state)
        self._said = ""  # the price table's problem, once said

    def __enter__(self) -> TuiView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def banner(self, markup: str) -> None:
        first, _, rest = markup.partition("\n")
        self.app.sub_title = Text.from_markup(first).plain
        for line in rest.splitlines():
            self.app.conversation.notice(line.strip())
        self.app.redraw_conversation()

    def line(self, text: str, style: str = "", err: bool = False) -> None:
        self.app.conversation.notice(text.rstrip(), style)
        self.app.redraw_conversation()

    def transcript(self, role: str, text: str, final: bool, note: str = "") -> None:
        self.app.conversation.transcript(role, text, final, note)
        self.app.redraw_conversation()

    def state(self, state: str) -> None:
        if self.status is not None:
            self.show(dataclasses.replace(self.status, state=state), self.cost)

    def event(self, direction: str, event: Event) -> None:
        self.app.add_event(direction, event)

    def tick(self, talk: Talk) -> None:
        cost = cost_state(talk.relay.session, talk.relay.spec)
        note = str(cost.get("note") or "")
        if cost["usd"] is None and note.startswith("price table") and note != self._said:
            self._said = note  # a price table that cannot be used: said once, in full, in the conversation
            self.line(f"cost unknown: {note}", "yellow")
        self.show(talk.status(), cost)

    def show(self, status: TalkStatus, cost: Mapping[str, Any] | None = None) -> None:
        self.status, self.cost = status, cost
        self.app.show_status(status, cost)


class TalkApp(EventLogKeys, App[int]):
    TITLE = "voicerelay talk"
    CSS = """
    #state { height: 1; padding: 0 1; }
    #main { height: 1fr; }
    #conversation { width: 1fr; border: round $panel; }
    #side { width: 44; }
    #side > Static { border: round $panel; padding: 0 1; height: auto; }
    #events { height: 12; border: round $panel; scrollbar-size: 1 1; }
    #conversation, #side > Static, #events { border-title-color: $text-muted; }
    #filter, #message { display: none; }
    #filter.visible, #message.visible { display: block; }
    """
    #: The footer shows the keys that apply to this session (:meth:`check_action`): space only
    #: with --push-to-talk, t only with --text. Pressed anyway, the hidden fallbacks say why not.
    BINDINGS = [
        Binding("m", "mute", "mute"),
        Binding("space", "push_to_talk", "push-to-talk"),
        Binding("space", "not_available('push-to-talk is off: server VAD detects the turns "
                "(start with --push-to-talk)')", show=False),
        Binding("i", "interrupt", "interrupt"),
        Binding("r", "record", "record"),
        Binding("t", "type", "type a message"),
        Binding("t", "not_available('typing is off: start talk with --text')", show=False),
        Binding("p", "pause", "pause log"),
        Binding("slash", "filter", "filter log"),
        Binding("a", "audio_events", "audio events", show=False),
        Binding("q,ctrl+c", "quit", "quit", priority=False),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, options: TalkOptions | None) -> None:
        """``options=None`` runs no session (screenshots, snapshot tests): feed :attr:`view`."""
        super().__init__()
        self.options = options
        self.view = TuiView(self)
        self.conversation = Conversation()
        self.talk: Talk | None = None
        self.failure: VoiceRelayError | None = None  # why the session failed: the CLI reports it
        self.stop = asyncio.Event()
        self._shown: dict[str, Text] = {}
        self.log_handler = ViewLogHandler(self)  # the CLI routes logging here

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("● CONNECTING", id="state")
        with Horizontal(id="main"):
            with VerticalScroll(id="conversation"):
                yield Static("", id="transcript")
            with Vertical(id="side"):
                yield Static(level_meter(float("-inf"), None), id="meter")
                yield Static("", id="queues")
                yield Static("", id="latency")
                yield Static("", id="session")
        yield EventLog(id="events")
        yield Input(placeholder="show events whose type contains…", id="filter")
        yield Input(placeholder="a message to send as the user's (Enter sends, Escape leaves)", id="message")
        yield Footer()

    def on_mount(self) -> None:
        for widget_id, title in (("conversation", "conversation"), ("meter", "microphone"), ("queues", "queues"),
                                 ("latency", "turn latency"), ("session", "session")):
            self.query_one(f"#{widget_id}").border_title = title
        self.log_handler.attach(asyncio.get_running_loop())
        if self.options is not None:
            self.run_worker(self._run(), name="talk", exclusive=True)

    async def _run(self) -> None:
        from ..talk import run_talk

        assert self.options is not None
        try:
            await run_talk(self.options, self.view, self.stop, on_start=self._started)
        except VoiceRelayError as exc:
            self.failure = exc
        code = self.failure.exit_code if self.failure else 0
        self.exit(code, return_code=code)

    def _started(self, talk: Talk) -> None:
        self.talk = talk

    # ----------------------------------------------------------------------------- drawing

    def redraw_conversation(self) -> None:
        if not self._drawable():
            return
        self.query_one("#transcript", Static).update(self.conversation.render())
        self.query_one("#conversation", VerticalScroll).scroll_end(animate=False)

    def _drawable(self) -> bool:
        """False once the screen is gone (the session's last words arrive while the app exits)."""
        return self.is_running and bool(self.query("#state"))

    def _update(self, widget_id: str, content: Text) -> None:
        """Redraw a widget only when what it shows changed (most ticks change little)."""
        if self._shown.get(widget_id) != content:
            self._shown[widget_id] = content
            self.query_one(f"#{widget_id}", Static).update(content)

    def show_status(self, s: TalkStatus, cost: Mapping[str, Any] | None = None) -> None:
        if not self._drawable():
            return
        colour = STATE_COLOURS.get(s.state, "red")
        state = Text.assemble(("● ", colour), (s.state.replace("_", " ").upper(), f"bold {colour}"))
        if s.push_to_talk:
            state += Text("   talking: space sends" if s.talking else "   push-to-talk: space starts a turn",
                          style="cyan")
        else:
            state += Text("   server VAD", style="dim")
        if s.muted == "muted":
            state += Text("   microphone muted (m)", style="yellow")
        if s.recording:
            state += Text(f"   ● REC {s.recording}", style="bold red")
        self._update("state", state)
        self._update("meter", level_meter(s.level_dbfs, s.muted, s.echo_dbfs))
        self._update("queues", Text.assemble(
            "mic → upstream  ", (f"{s.upstream_frames} frame{'' if s.upstream_frames == 1 else 's'}", "bold"),
            f" ({s.upstream_ms} ms)\n",
            "dropped         ", (f"{s.dropped_ms} ms", "bold red" if s.dropped_ms else "bold"), "\n",
            "playback buffer ", (f"{s.playback_ms} ms", "bold")))
        last = s.latencies_ms[-1] if s.latencies_ms else None
        self._update("latency", Text.assemble(
            "last ", (_ms(last), "bold"), "   p50 ", (_ms(s.latency(50)), "bold"),
            "   p95 ", (_ms(s.latency(95)), "bold"), f"\nturns {s.turns}, {len(s.latencies_ms)} answered with audio"))
        usage = s.usage
        self._update("session", Text.assemble(
            "tokens in ", (str(usage.get("input_tokens", 0)), "bold"), "  out ",
            (str(usage.get("output_tokens", 0)), "bold"), "  total ", (str(usage.get("total_tokens", 0)), "bold"),
            "\ncost      ", cost_label(cost),
            "\nremaining ", (_remaining(s.remaining_s), "bold"), " to the session cap",
            "\nrecycled  ", (str(s.recycles), "bold"), " time" if s.recycles == 1 else " times",
            "\nlint      ", *lint_label(s.lint)))

    def add_event(self, direction: str, event: Event) -> None:
        if self._drawable():
            self.query_one(EventLog).add(direction, event)

    # ----------------------------------------------------------------------------- keys

    def action_mute(self) -> None:
        if self.talk is not None:
            self.notify("microphone muted" if self.talk.toggle_mute() else "microphone on", timeout=2)

    def action_push_to_talk(self) -> None:
        if self.talk is not None:
            self.talk.push_to_talk()

    def action_interrupt(self) -> None:
        if self.talk is not None and not self.talk.interrupt():
            self.notify("the assistant is not speaking", timeout=2)

    def action_record(self) -> None:
        if self.talk is not None:
            self.talk.toggle_recording()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Push-to-talk and typing exist only when the session was started with them."""
        if action == "push_to_talk":
            return self.options is not None and self.options.push_to_talk
        if action == "type":
            return self.options is not None and self.options.text
        return True

    def action_not_available(self, why: str) -> None:
        self.notify(why, timeout=3)

    def action_type(self) -> None:
        box = self.query_one("#message", Input)
        box.add_class("visible")
        box.focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.options is None:
            self.exit(0)
            return
        self.stop.set()  # the worker ends the session, then the app
        if self.talk is None:  # still connecting or opening devices
            self.workers.cancel_all()
            self.exit(0)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.submit_filter(event.value)
        else:
            if event.value.strip() and self.talk is not None:
                self.talk.send_text(event.value.strip())
            event.input.value = ""
            event.input.remove_class("visible")
        self.set_focus(None)  # the keys are the screen's again (t opens the box for the next message)

    def on_key(self, event: Any) -> None:
        if event.key == "escape" and isinstance(self.focused, Input):
            self.focused.remove_class("visible")
            self.set_focus(None)


class ViewLogHandler(logging.Handler):
    """Log records as lines in the conversation (stderr is the screen): from any thread, once
    the app runs; what comes before is kept for then."""

    def __init__(self, app: TalkApp) -> None:
        super().__init__()
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None
        self.early: list[tuple[str, str]] = []

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for message, style in self.early:
            self.app.view.line(message, style)
        self.early.clear()

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a log handler must never raise into the code that logged
            message = f"{record.levelname.lower()}: {record.getMessage()}"
            style = "dim" if record.levelno < logging.WARNING else "yellow" if record.levelno < logging.ERROR else "red"
            if self.loop is None:
                self.early.append((message, style))
            else:
                self.loop.call_soon_threadsafe(self.app.view.line, message, style)


def lint_label(lint: tuple[int, str | None] | None) -> tuple[tuple[str, str], ...]:
    """The session pane's lint line: ``0 findings``, ``2 findings, newest VR108``, or ``off``."""
    if lint is None:
        return (("off", "dim"),)
    count, newest = lint
    if not count:
        return (("0", "bold"), (" findings", ""))
    return ((str(count), "bold yellow"), (f" finding{'' if count == 1 else 's'}, newest ", ""), (newest or "?", "bold yellow"))
