"""``voicerelay inspect URL``: every session of a running ``serve``, live.

It connects to the gateway's ``/monitor`` namespace (read-only), lists the sessions in a table
that updates as they change, and shows the transcripts and raw event log of the selected one.
It reconnects by itself when the gateway restarts, and resyncs.

Until it first reaches the gateway, each failed attempt says why on the status line (connection
refused, not a voicerelay gateway, the admin token missing or rejected) and it tries again every
few seconds; :attr:`InspectApp.failure` is then what the command line reports once the user quits.
Once connected, python-socketio reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import socketio
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from rich.markup import escape
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static

from ..errors import AuthenticationError, GatewayClientError, GatewayUnreachableError
from .events_view import EventLog, EventLogKeys
from .monitor_state import COLUMNS, MonitorState

#: Seconds one connection attempt may take, and between attempts until the first connection.
ATTEMPT_TIMEOUT = 5.0
RETRY_FIRST = 0.5
RETRY_MAX = 3.0
TOKEN_HINT = "--token or VOICERELAY_ADMIN_TOKEN"


class InspectApp(EventLogKeys, App[None]):
    TITLE = "voicerelay inspect"
    AUTO_FOCUS = "#sessions"
    CSS = """
    #sessions { height: 1fr; }
    #detail { height: 1fr; }
    #transcripts, #events { width: 1fr; border: round $panel; }
    #status { height: 1; padding: 0 1; }
    #filter { display: none; }
    #filter.visible { display: block; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("p", "pause", "pause/resume events"),
        Binding("slash", "filter", "filter events"),
        Binding("a", "audio_events", "audio events", show=False),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, url: str, token: str | None = None, socketio_path: str = "socket.io",
                 connect: bool = True) -> None:
        """``connect=False`` draws only what is fed to :meth:`feed` (screenshots, snapshot tests)."""
        super().__init__()
        self.url = url
        self.connect = connect
        self.token = token
        self.socketio_path = socketio_path
        self.model = MonitorState()
        self.selected: str | None = None
        self.problem: str | None = None  # why the gateway cannot be reached, until it is
        self.token_problem = False  # the problem is the admin token
        self.reached = False  # connected at least once
        self._refusal: Any = None  # what the gateway said when it refused the /monitor namespace
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.5, reconnection_delay_max=3)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting…", id="status")
        with Vertical():
            yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="detail"):
                yield RichLog(id="transcripts", wrap=True, markup=True)
                yield EventLog(id="events")
        yield Input(placeholder="show events whose type contains…", id="filter")
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one("#sessions", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.query_one("#transcripts", RichLog).border_title = "transcripts"
        for name in ("sessions", "session_update", "session_closed", "session_detail"):
            self.sio.on(name, self._handler(name), namespace="/monitor")
        self.sio.on("connect", self._connected, namespace="/monitor")
        self.sio.on("connect_error", self._connect_error, namespace="/monitor")
        self.sio.on("disconnect", self._disconnected, namespace="/monitor")
        if self.connect:
            self.run_worker(self._connect(), exclusive=True, group="connect")

    async def feed(self, name: str, data: Any) -> None:
        """Apply one monitor event as if the gateway had sent it."""
        if name == "connect":
            await self._connected()
        else:
            await self._handler(name)(data)

    async def _connect(self) -> None:
        """Try until the first connection, saying on the status line why each attempt failed;
        from then on python-socketio reconnects by itself."""
        delay = RETRY_FIRST
        while not self.reached:
            self._refusal = None
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT):
                    await self.sio.connect(self.url, namespaces=["/monitor"], transports=["websocket"],
                                           auth={"token": self.token} if self.token else None,
                                           socketio_path=self.socketio_path, wait_timeout=ATTEMPT_TIMEOUT)
                return
            except (socketio.exceptions.ConnectionError, TimeoutError) as exc:
                timed_out = isinstance(exc, TimeoutError)
            with contextlib.suppress(socketio.exceptions.SocketIOError, OSError):
                await self.sio.disconnect()  # what an interrupted attempt left open
            self.problem, self.token_problem = await self._why(timed_out)
            self._status()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _why(self, timed_out: bool) -> tuple[str, bool]:
        """Why the last attempt failed, in the user's words; and whether it is the admin token."""
        refusal = self._refusal.get("message") if isinstance(self._refusal, dict) else None
        if refusal is not None:  # the Socket.IO server answered, and refused /monitor
            if "token" in str(refusal) or "unauthorized" in str(refusal):
                if self.token is None:
                    return f"the gateway at {self.url} requires an admin token ({TOKEN_HINT})", True
                return f"the gateway at {self.url} rejected the admin token ({TOKEN_HINT})", True
            return f"not a voicerelay gateway: {self.url} has no /monitor namespace ({refusal})", False
        return await why_unreachable(self.url, timed_out), False

    @property
    def failure(self) -> GatewayClientError | None:
        """What the command line reports after the app ended: None once it reached the gateway."""
        if self.reached or not self.connect:
            return None
        problem = self.problem or f"no answer from {self.url} yet"
        if self.token_problem:
            return AuthenticationError(f"never connected: {problem}")
        return GatewayUnreachableError(f"never connected: {problem}")

    async def on_unmount(self) -> None:
        if not self.connect:
            return
        await self.sio.shutdown()  # disconnects, or stops reconnecting
        http = getattr(self.sio.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()

    # ----------------------------------------------------------------------------- monitor events

    def _handler(self, name: str) -> Any:
        async def handle(data: Any = None) -> None:
            changed = self.model.apply(name, data)
            if not self._drawable():
                return
            if name == "sessions":
                self._redraw_table()
                if self.selected and self.connect:
                    await self.sio.emit("select", {"session_id": self.selected}, namespace="/monitor")
            elif changed is not None:
                self._redraw_row(changed)
                if name == "session_detail" and changed == self.selected:
                    self._append_detail(data)
            self._status()

        return handle

    async def _connected(self) -> None:
        self.model.connected = True
        self.reached = True
        self.problem, self.token_problem = None, False
        self._status()

    async def _connect_error(self, data: Any = None) -> None:
        self._refusal = data

    async def _disconnected(self, *args: Any) -> None:
        self.model.connected = False
        self._status()

    def _drawable(self) -> bool:
        """False once the screen is gone: the disconnect and the last events arrive while the app exits."""
        return self.is_running and bool(self.query("#status"))

    # ----------------------------------------------------------------------------- drawing

    def _status(self) -> None:
        if not self._drawable():
            return
        live = sum(1 for v in self.model.sessions.values() if v.ended is None)
        if self.problem:
            text = f"[red]{escape(self.problem)}[/] · retrying every few seconds (q quits)"
        elif self.model.connected:
            text = f"[green]connected[/] to {self.url} · {live} live session(s)"
        else:
            text = f"[yellow]disconnected[/] from {self.url}: reconnecting…"
        self.query_one("#status", Static).update(text)

    def _redraw_table(self) -> None:
        table = self.query_one("#sessions", DataTable)
        for session_id in self.model.sessions:
            self._redraw_row(session_id, table)

    def _redraw_row(self, session_id: str, table: DataTable[Any] | None = None) -> None:
        table = table or self.query_one("#sessions", DataTable)
        view = self.model.sessions.get(session_id)
        if view is None:
            return
        row = self.model.row(view)
        if session_id in table.rows:
            for column, value in zip(COLUMNS, row, strict=True):
                table.update_cell(session_id, column, value, update_width=True)
        else:
            table.add_row(*row, key=session_id)

    async def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        session_id = event.row_key.value if event.row_key is not None else None
        if session_id == self.selected or session_id is None:
            return
        self.selected = session_id
        self.query_one("#transcripts", RichLog).clear()
        self.query_one(EventLog).reset()
        view = self.model.sessions.get(session_id)
        if view is not None:
            self._append_detail({"transcripts": list(view.transcripts), "events": list(view.events)})
        if self.connect and self.sio.connected:
            await self.sio.emit("select", {"session_id": session_id}, namespace="/monitor")

    def _append_detail(self, data: dict[str, Any]) -> None:
        transcripts = self.query_one("#transcripts", RichLog)
        for line in data.get("transcripts", []):
            color = {"user": "cyan", "lint": "yellow"}.get(str(line.get("role")), "magenta")
            transcripts.write(f"[bold {color}]{line.get('role')}[/] {line.get('text')}")
        events = self.query_one(EventLog)
        for entry in data.get("events", []):
            events.add(str(entry.get("dir")), entry.get("event") or {})

    # ----------------------------------------------------------------------------- keys

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit_filter(event.value)
        self.query_one("#sessions", DataTable).focus()

    def action_help(self) -> None:
        self.notify("↑/↓ select a session · p pause/resume the event log · / filter events by type · "
                    "a show/hide audio events · q quit",
                    title="voicerelay inspect", timeout=8)


async def why_unreachable(url: str, timed_out: bool = False) -> str:
    """Why a Socket.IO connection to ``url`` failed below Socket.IO: ask its ``/health`` over HTTP.

    Refused or unresolvable: say so. Something answered that is not a voicerelay gateway's
    ``/health``: not a gateway. A gateway's ``/health`` answered: its Socket.IO endpoint is elsewhere.
    """
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT)) as http:
            async with http.get(f"{url}/health") as response:
                body = await response.json(content_type=None) if response.status == 200 else None
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"cannot connect to {url}: connection refused (is voicerelay serve running there?)"
        return f"cannot connect to {url}: {exc.os_error.strerror or exc.os_error}"
    except (TimeoutError, asyncio.TimeoutError):
        return f"no answer from {url} within {ATTEMPT_TIMEOUT:g} s"
    except (aiohttp.ClientError, ValueError) as exc:
        return f"not a voicerelay gateway: {url} answered /health with {type(exc).__name__}"
    if isinstance(body, dict) and "sessions" in body and "status" in body:
        reason = "it did not answer in time" if timed_out else "its Socket.IO endpoint refused the connection"
        return f"{url} is a voicerelay gateway, but {reason}"
    status = response.status
    return f"not a voicerelay gateway: {url}/health answered HTTP {status}" + (
        "" if status != 200 else " without a gateway's status")
