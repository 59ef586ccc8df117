"""``GatewayClient``: drive a running voicerelay gateway (``voicerelay serve``) from a program.

One asyncio client holds one Socket.IO connection (python-socketio's ``AsyncClient``, websocket
transport) and at most one session on it, mirrors the session's state, turns the gateway's
events into semantic events, and reconnects by itself::

    client = GatewayClient("http://127.0.0.1:8000", token="s3cret")
    client.on("ai_response", lambda e: print(e["response"]))
    async with client:                       # or: task = asyncio.create_task(client.start()) ... await client.stop()
        await client.start_session({"contextId": "ctx-1"})
        await client.send_text("what is your name")

**Running.** ``await start()`` connects, then runs until ``await stop()``. A failed connection
attempt or a dropped connection is retried after an exponential backoff with jitter
(``reconnect_delay * 2**(n-1)``, at most ``reconnect_delay_max``, scaled by a random factor in
``[1 - jitter, 1]``), forever unless ``max_connect_attempts`` is set. After every (re)connection
the client resyncs before it accepts actions: it emits ``get_state`` and applies the
``session_state`` answer, so the mirror matches the gateway. The HTTP calls (``health_check``,
and ``/session-config`` read at each connection to learn the audio chunk limit) retry with the
same kind of backoff. ``url`` is the gateway's base URL, mount prefix included
(``http://host/voice``): Socket.IO is at ``<prefix>/<socketio_path>``, health at ``<prefix>/health``.
``token`` and ``client_id`` (a stable random one when not given) go in the Socket.IO ``auth``
payload.

**The mirror.** ``client.sessions`` maps session ids to :class:`SessionState` (``session_id``,
``chat_active``, ``ai_state``, ``last_user_text``, ``last_assistant_text``, ...);
``client.session`` is the active one or ``None``. ``ai_state`` takes the gateway's values:
``connecting``, ``listening`` (the idle state), ``user_speaking``, ``thinking``, ``speaking``,
``ended``. An ``interrupted`` event from the gateway moves a ``speaking`` session to
``listening`` at once (the gateway's own state follows later). Ended sessions stay in
``sessions`` with ``chat_active=False`` and their ``status`` (the newest 32 are kept).

**Reconnection and sessions.** The gateway ends a session when its Socket.IO connection drops.
While disconnected the mirror keeps the last known state (``client.connected`` is False); the
resync after reconnecting marks a session the gateway no longer has as ended
(``chat_active=False``, ``status="disconnected"``) and emits ``session_ended`` once. With
``resume=True`` the client then starts a new session with the same ``chat_payload``
(``session_started`` carries ``resumed: True`` and ``previous_session_id``), unless an
``end_session`` was queued for it. Sessions the gateway itself ends (``session_ended``) are
never resumed.

**Actions while disconnected** (or while a resync runs). Nothing is silently dropped:

- control actions (``send_text``, ``say``, ``interrupt``, ``end_session``) on the active session
  are queued, at most ``max_queued_actions``; one more raises :class:`QueueFullError`. After
  the reconnection (and the resume, if any) the queue is flushed in order. If no session is
  active by then, each queued action is reported as an ``error`` event with code
  ``not_delivered`` (a queued ``end_session`` is simply done: the session is gone);
- ``send_audio`` raises :class:`NotConnectedError`: stale audio is useless;
- ``start_session`` waits for the connection, within its ``timeout``.

While connected, a control action returns once the gateway acknowledged it (a Socket.IO ack);
an action whose ack is lost with the connection goes back to the front of the queue. The
gateway reports a refused action with an ``error`` event. ``stop()`` logs queued actions it
discards.

**Events** (``client.on(name, handler)``; every handler gets one ``dict``, which always has
``session_id``): ``session_started`` {message, resumed, previous_session_id},
``user_transcript`` {text, final, item_id} (partial deltas, then the final text),
``ai_response`` {transcript, response}, ``ai_state_changed`` {old, new, reason: ``gateway``,
``interrupted`` or ``resync``}, ``response_complete`` {response_id, status}, ``error`` {code,
message}, ``session_ended`` {status}; and also ``ai_transcript`` {text, final, item_id},
``audio`` {pcm: bytes, index}, ``interrupted`` {item_id}, ``session_recycled`` {message},
``custom_event`` {name, data} (any other gateway event, e.g. an agent's ``event_emitter``),
``connected`` {reconnect}, ``disconnected`` {reason}. A **sync handler** is called inline, in
event order: keep it quick, it runs on the client's loop. An **async handler** (or any handler
returning an awaitable) runs as its own task, so a slow one never delays the client or other
handlers; several such tasks may run at once, and the ones still running when ``stop()`` is
called are cancelled. A handler's exception is logged and does not reach the client. No events
are delivered once ``stop()`` has begun.

**Audio.** ``send_audio(pcm)`` takes PCM16 mono 24 kHz (any bytes-like object, an int16 numpy
array too), cuts it into chunks of at most ``audio_chunk_ms`` and of the gateway's
``max_chunk_b64``, and paces itself below 1.5x real time over any 5 s (the gateway disconnects
clients above 2x), so a long buffer takes a while to send.

**Errors.** Everything the client raises derives from :class:`GatewayClientError`, and every
message is one line::

    GatewayClientError
    ├── GatewayUnreachableError   the gateway (Socket.IO or HTTP) cannot be reached, after retries
    ├── AuthenticationError       the gateway refused the token (never retried)
    ├── NotConnectedError         send_audio while disconnected; no connection within a timeout
    ├── NoSessionError            an action needs a session: start_session() first
    ├── SessionStartError         start_session failed: the gateway's error, or no session_started in time
    ├── QueueFullError            a control action while disconnected, with the queue full
    ├── GatewayTimeoutError       the gateway did not acknowledge an action in time (also a TimeoutError)
    └── UsageError                a wrong argument or call (also a ValueError)
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import inspect
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import socketio

from .backoff import backoff_delay
from .errors import (  # noqa: F401 - GatewayClient's errors, importable from here as before
    AuthenticationError,
    GatewayClientError,
    GatewayTimeoutError,
    GatewayUnreachableError,
    NoSessionError,
    NotConnectedError,
    QueueFullError,
    SessionStartError,
)
from .errors import ClientUsageError as UsageError
from .errors import one_line as _one_line
from .gateway import contract as c

log = logging.getLogger(__name__)

EVENTS = frozenset({
    "session_started", "user_transcript", "ai_response", "ai_state_changed", "response_complete", "error",
    "session_ended", "ai_transcript", "audio", "interrupted", "session_recycled", "custom_event", "connected",
    "disconnected",
})
CONTROL_ACTIONS = (c.TEXT_INPUT, c.SAY, c.INTERRUPT, c.END_SESSION)
BYTES_PER_MS = 48  # PCM16 mono 24 kHz
PACE_WINDOW_S = 5.0
PACE_FACTOR = 1.5  # the gateway cuts off above 2x real time over 5 s
KEEP_ENDED = 32


# ----------------------------------------------------------------------------------- errors


class _Lost(Exception):
    """The connection dropped while waiting for the gateway (internal)."""


# ----------------------------------------------------------------------------------- state


@dataclasses.dataclass
class SessionState:
    """The mirror of one gateway session."""

    session_id: str
    chat_active: bool = True
    ai_state: str = "connecting"
    started: bool = False  # session_started arrived: the upstream is connected and configured
    last_user_text: str = ""
    last_assistant_text: str = ""
    responses: int = 0  # response_complete events seen
    status: str | None = None  # why it ended: ended, error, expired, rate_limited, shutdown, disconnected, stopped
    chat_payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    resumed_from: str | None = None
    server: dict[str, Any] = dataclasses.field(default_factory=dict)  # the last session_state, as sent
    followed: bool = False  # another connection's session (any node), attached with attach()


@dataclasses.dataclass
class _Action:
    event: str
    data: Any
    label: str  # the method that made it, for messages
    session_id: str


@dataclasses.dataclass
class _PendingStart:
    chat_payload: dict[str, Any]
    resumed_from: str | None
    future: asyncio.Future[str]
    session_id: str | None = None
    last_error: str = ""


# ----------------------------------------------------------------------------------- the client


class GatewayClient:
    """A program's client of a voicerelay gateway; see the module docstring for the rules."""

    def __init__(self, url: str, client_id: str | None = None, token: str | None = None, *,
                 socketio_path: str = "socket.io", max_queued_actions: int = 100, resume: bool = False,
                 reconnect_delay: float = 0.5, reconnect_delay_max: float = 10.0, jitter: float = 0.5,
                 max_connect_attempts: int | None = None, connect_timeout: float = 10.0,
                 ack_timeout: float = 10.0, start_timeout: float = 15.0, http_attempts: int = 4,
                 http_timeout: float = 5.0, http_retry_delay: float = 0.2, audio_chunk_ms: int = 100,
                 transports: list[str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
            raise UsageError(f"url must be http(s)://host[:port][/prefix], not {url!r}")
        if max_queued_actions < 0:
            raise UsageError("max_queued_actions must be 0 or more")
        if max_connect_attempts is not None and max_connect_attempts < 1:
            raise UsageError("max_connect_attempts must be None (retry forever) or at least 1")
        if http_attempts < 1:
            raise UsageError("http_attempts must be at least 1")
        if not 0.0 <= jitter <= 1.0:
            raise UsageError("jitter must be between 0 and 1")
        http_scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        prefix = parts.path.rstrip("/")
        self.url = url
        self._http_base = urlunsplit((http_scheme, parts.netloc, prefix, "", ""))
        self._sio_url = urlunsplit((http_scheme, parts.netloc, "", parts.query, ""))
        self._sio_path = socketio_path.strip("/") if socketio_path.startswith("/") else \
            f"{prefix.strip('/')}/{socketio_path.strip('/')}".strip("/")
        self.client_id = client_id or f"gwc-{uuid.uuid4().hex[:12]}"
        self.token = token
        self.max_queued_actions = max_queued_actions
        self.resume = resume
        self.reconnect_delay = reconnect_delay
        self.reconnect_delay_max = reconnect_delay_max
        self.jitter = jitter
        self.max_connect_attempts = max_connect_attempts
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.start_timeout = start_timeout
        self.http_attempts = http_attempts
        self.http_timeout = http_timeout
        self.http_retry_delay = http_retry_delay
        self.audio_chunk_ms = audio_chunk_ms
        self.transports = transports or ["websocket"]
        self.max_chunk_b64 = c.DEFAULT_MAX_CHUNK_B64  # updated from /session-config at each connection

        self.sessions: dict[str, SessionState] = {}
        self._current: SessionState | None = None
        self._handlers: dict[str, list[Callable[[dict[str, Any]], Any]]] = collections.defaultdict(list)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queue: collections.deque[_Action] = collections.deque()
        self._lock: asyncio.Lock | None = None
        self._audio_lock: asyncio.Lock | None = None
        self._online: asyncio.Event | None = None  # connected and resynced: actions go straight out
        self._lost: asyncio.Event | None = None  # set when the current connection drops
        self._stop_event: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None
        self._sio: socketio.AsyncClient | None = None
        self._http: Any = None  # aiohttp.ClientSession while start() runs
        self._running = False
        self._stopping = False
        self._failure: BaseException | None = None  # why start() ended, for wait_connected()
        self._refusal: Any = None
        self._pending_start: _PendingStart | None = None
        self._pending_state: asyncio.Future[SessionState | None] | None = None
        self._abandoned_start = False
        self._pace: collections.deque[tuple[float, float]] = collections.deque()
        self._pace_ms = 0.0
        self._runner: asyncio.Task[None] | None = None  # the task of ``async with``
        self._start_task: asyncio.Task[Any] | None = None  # the task running start()
        self._stoppers: set[asyncio.Task[Any]] = set()  # tasks in stop(): never cancelled by it
        self.connections = 0  # successful connections (the first one included)
        self.failed_connects = 0  # failed connection attempts, in all

    # ----------------------------------------------------------------------------- public state

    @property
    def connected(self) -> bool:
        """Connected and resynced: actions go straight to the gateway."""
        return self._online is not None and self._online.is_set()

    @property
    def session(self) -> SessionState | None:
        """The active session, if any."""
        cur = self._current
        return cur if cur is not None and cur.chat_active else None

    @property
    def session_id(self) -> str | None:
        return self.session.session_id if self.session is not None else None

    @property
    def queued_actions(self) -> int:
        return len(self._queue)

    # ----------------------------------------------------------------------------- events

    def on(self, name: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``handler(event: dict)`` for each ``name`` event (see the module docstring)."""
        if name not in EVENTS:
            raise UsageError(f"unknown event {name!r}: one of {', '.join(sorted(EVENTS))}")
        if not callable(handler):
            raise UsageError(f"the handler for {name!r} is not callable")
        self._handlers[name].append(handler)

    def off(self, name: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        with contextlib.suppress(ValueError):
            self._handlers.get(name, []).remove(handler)

    def _emit(self, name: str, payload: dict[str, Any]) -> None:
        if self._stopping:
            return
        for handler in list(self._handlers.get(name, ())):
            try:
                result = handler(dict(payload))
            except Exception:
                log.exception("GatewayClient: the %s handler %r failed", name, handler)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("GatewayClient: an async handler failed: %r", exc, exc_info=exc)

    # ----------------------------------------------------------------------------- running

    async def start(self) -> None:
        """Connect, then run until :meth:`stop`, reconnecting as needed.

        Raises :class:`AuthenticationError` when the gateway refuses the token, and
        :class:`GatewayUnreachableError` after ``max_connect_attempts`` failed attempts in a row.
        """
        if self._running:
            raise UsageError("start() is already running")
        import aiohttp

        self._running = True
        self._start_task = asyncio.current_task()
        self._stopping = False
        self._failure = None
        self._lock = asyncio.Lock()
        self._audio_lock = asyncio.Lock()
        self._online = asyncio.Event()
        self._lost = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._finished = asyncio.Event()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout))
        self._sio = self._make_socket()
        failures = 0
        started = time.monotonic()
        connected_once = False
        try:
            while not self._stop_event.is_set():
                if failures:
                    delay = backoff_delay(max(1, failures), self.reconnect_delay, self.reconnect_delay_max, self.jitter)
                    if await self._sleep_unless_stopped(delay):
                        break
                self._lost = asyncio.Event()
                try:
                    await self._connect_once()
                except AuthenticationError:
                    raise
                except GatewayUnreachableError as exc:
                    failures += 1
                    self.failed_connects += 1
                    if self.max_connect_attempts is not None and failures >= self.max_connect_attempts:
                        raise GatewayUnreachableError(
                            f"cannot connect to the gateway at {self.url} after {failures} attempts in "
                            f"{time.monotonic() - started:.1f} s: {exc}") from None
                    log.info("GatewayClient: connection attempt %d failed: %s", failures, exc)
                    continue
                self.connections += 1
                if self._stop_event.is_set():
                    break
                reconnect, connected_once = connected_once, True
                self._emit("connected", {"session_id": self.session_id, "reconnect": reconnect})
                try:
                    await self._resync(reconnect)
                except _Lost:
                    failures += 1
                    continue
                except GatewayTimeoutError as exc:  # connected, but the gateway does not answer: start over
                    failures += 1
                    self._emit("error", {"session_id": self.session_id, "code": "resync_failed",
                                         "message": f"could not resync with the gateway: {exc}"})
                    with contextlib.suppress(Exception):
                        await self._sio.disconnect()
                    continue
                failures = 0
                started = time.monotonic()
                await self._wait_any(self._lost, self._stop_event)
                self._online.clear()
                if not self._stop_event.is_set():
                    failures = 1
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            await self._shutdown()

    async def stop(self) -> None:
        """Disconnect (the gateway then ends the session), cancel the handlers' tasks, and make
        :meth:`start` return. Idempotent; no events are delivered once it begins."""
        await asyncio.sleep(0)  # a start() task created just before this call begins first
        me = asyncio.current_task()
        if me is not None:
            self._stoppers.add(me)
        try:
            self._stopping = True
            if self._stop_event is not None:
                self._stop_event.set()
            if self._sio is not None and self._sio.connected:
                with contextlib.suppress(Exception):
                    await self._sio.disconnect()
            if self._running and self._finished is not None:
                if self._start_task is not me:
                    await self._finished.wait()
            else:
                await self._shutdown()
            if self._runner is not None and not self._runner.done() and self._runner is not me:
                with contextlib.suppress(BaseException):
                    await self._runner
        finally:
            if me is not None:
                self._stoppers.discard(me)

    async def __aenter__(self) -> Self:
        self._stopping = False
        self._failure = None
        self._runner = asyncio.create_task(self.start(), name="GatewayClient.start")
        try:
            await self.wait_connected(self.connect_timeout if self.max_connect_attempts is None else None)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected and resynced; re-raises why :meth:`start` ended, if it did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._failure is not None:
                if isinstance(self._failure, GatewayClientError):
                    raise self._failure
                raise NotConnectedError(f"the client stopped: {type(self._failure).__name__}")
            if self._online is not None and self._online.is_set():
                return
            if self._stopping:
                raise NotConnectedError("the client is stopped")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                hint = "" if self._running else \
                    ": the client is not running (await start() in a task, or use `async with`)"
                raise NotConnectedError(f"not connected to the gateway at {self.url} within {timeout:g} s{hint}")
            step = 0.05 if left is None else min(0.05, left)
            if self._online is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._online.wait(), step)
            else:
                await asyncio.sleep(step)

    def _make_socket(self) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, logger=False, engineio_logger=False,
                                   http_session=self._http, request_timeout=self.connect_timeout)
        sio.on("connect", self._on_connect)
        sio.on("connect_error", self._on_connect_error)
        sio.on("disconnect", self._on_disconnect)
        sio.on("*", self._on_gateway_event)
        return sio

    async def _connect_once(self) -> None:
        assert self._sio is not None
        self._refusal = None
        auth: dict[str, Any] = {"client_id": self.client_id}
        if self.token is not None:
            auth["token"] = self.token
        try:
            await asyncio.wait_for(self._sio.connect(self._sio_url, auth=auth, transports=self.transports,
                                                     socketio_path=self._sio_path, wait_timeout=self.connect_timeout),
                                   self.connect_timeout + 2)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await self._sio.eio.disconnect(abort=True)
            raise GatewayUnreachableError(f"no answer within {self.connect_timeout:g} s") from None
        except (socketio.exceptions.ConnectionError, OSError) as exc:
            refusal = self._refusal
            reason = refusal.get("message") if isinstance(refusal, dict) else refusal
            reason = _one_line(reason or exc or type(exc).__name__)
            if reason.startswith("unauthorized"):
                raise AuthenticationError(f"the gateway at {self.url} refused the connection: {reason}"
                                          + ("" if self.token else " (pass token=...)")) from None
            raise GatewayUnreachableError(reason) from None

    async def _sleep_unless_stopped(self, delay: float) -> bool:
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)
        return self._stop_event.is_set()

    @staticmethod
    async def _wait_any(*events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._online is not None:
            self._online.clear()
        if self._sio is not None:
            with contextlib.suppress(Exception):
                if self._sio.connected:
                    await self._sio.disconnect()
                elif self._sio.eio.state != "disconnected":
                    await self._sio.eio.disconnect(abort=True)
        if self._http is not None and not self._http.closed:
            await self._http.close()
        self._http = None
        if self._pending_start is not None and not self._pending_start.future.done():
            self._pending_start.future.set_exception(NotConnectedError("the client stopped"))
        if self._pending_state is not None and not self._pending_state.done():
            self._pending_state.cancel()
        cur = self.session
        if cur is not None:
            self._mark_ended(cur, "stopped", notify=False)
        if self._queue:
            log.warning("GatewayClient: stop() discards %d queued action(s): %s", len(self._queue),
                        ", ".join(a.label for a in self._queue))
            self._queue.clear()
        tasks = [t for t in self._tasks if t is not asyncio.current_task() and t not in self._stoppers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running = False
        if self._finished is not None:
            self._finished.set()

    # ----------------------------------------------------------------------------- resync

    async def _resync(self, reconnect: bool) -> None:
        """Make the mirror match the gateway, resume if asked, flush the queue; then go online."""
        assert self._lock is not None and self._online is not None
        async with self._lock:
            config = asyncio.ensure_future(self._read_session_config())
            try:
                lost = await self._request_state()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(config, self.http_timeout)
            finally:
                if not config.done():
                    config.cancel()
                    with contextlib.suppress(BaseException):
                        await config
            if reconnect and self.resume and lost is not None and lost.status == "disconnected" \
                    and not any(a.event == c.END_SESSION for a in self._queue):
                try:
                    await self._start_locked(lost.chat_payload, self.start_timeout, resumed_from=lost.session_id)
                except GatewayClientError as exc:
                    self._emit("error", {"session_id": lost.session_id, "code": "resume_failed",
                                         "message": f"could not resume session {lost.session_id}: {exc}"})
            await self._flush_locked()
            self._online.set()

    async def _read_session_config(self) -> None:
        try:
            config = await self._get_json("/session-config", attempts=2)
        except GatewayClientError as exc:
            log.debug("GatewayClient: /session-config: %s", exc)
            return
        limit = config.get("max_chunk_b64")
        if isinstance(limit, int) and limit >= 8:
            self.max_chunk_b64 = limit

    async def _request_state(self) -> SessionState | None:
        """``get_state``; the answer is applied as it arrives, in event order. Returns the session it
        found gone, if any."""
        future: asyncio.Future[SessionState | None] = asyncio.get_running_loop().create_future()
        self._pending_state = future
        try:
            await self._send(c.GET_STATE, None)
            return await self._wait(future, self.ack_timeout, "get_state")
        finally:
            self._pending_state = None

    async def refresh(self) -> SessionState | None:
        """Ask the gateway for its state now (``get_state``) and apply it; returns the active session."""
        if not self.connected:
            raise NotConnectedError(f"not connected to the gateway at {self.url}")
        assert self._lock is not None
        async with self._lock:
            try:
                await self._request_state()
            except _Lost:
                raise NotConnectedError("the connection dropped during refresh()") from None
        return self.session

    def _apply_state(self, state: dict[str, Any]) -> SessionState | None:
        """Apply a ``session_state``; returns the session it found gone, if any."""
        sid = state.get("session_id")
        active = bool(state.get("chat_active")) and isinstance(sid, str)
        gone: SessionState | None = None
        for session in list(self.sessions.values()):
            if session.followed:
                continue  # other connections' sessions: their own session_state keeps them current
            if session.chat_active and (not active or session.session_id != sid):
                self._mark_ended(session, "disconnected")
                gone = session
        if active:
            assert isinstance(sid, str)
            session = self.sessions.get(sid)
            if session is None:  # a session this client had not heard of: adopt it
                session = SessionState(sid, started=True)
                self.sessions[sid] = session
            session.server = dict(state)
            session.chat_active = True
            self._current = session
            new = state.get("ai_state")
            if isinstance(new, str):
                self._set_ai_state(session, new, "resync")
        return gone

    # ----------------------------------------------------------------------------- the gateway's events

    def _on_connect(self) -> None:
        log.debug("GatewayClient: connected to %s", self.url)

    def _on_connect_error(self, data: Any = None) -> None:
        self._refusal = data

    def _on_disconnect(self, reason: Any = None) -> None:
        if self._online is not None:
            self._online.clear()
        if self._lost is not None:
            self._lost.set()
        if self._pending_start is not None and not self._pending_start.future.done():
            self._pending_start.future.set_exception(_Lost())
        if not self._stopping:
            log.info("GatewayClient: disconnected from %s (%s)", self.url, reason)
            self._emit("disconnected", {"session_id": self.session_id, "reason": str(reason or "")})

    def _on_gateway_event(self, name: str, data: Any = None) -> None:
        """Every gateway event, in order (a sync handler: nothing here awaits)."""
        try:
            self._handle(name, data if isinstance(data, dict) else {"data": data})
        except Exception:
            log.exception("GatewayClient: could not handle %s %r", name, data)

    def _handle(self, name: str, data: dict[str, Any]) -> None:
        target = data.get("session_id")
        followed = self.sessions.get(target) if isinstance(target, str) else None
        if followed is not None and followed.followed:
            self._handle_followed(name, data, followed)
            return
        cur = self._current
        sid = cur.session_id if cur is not None else None
        if name == c.SESSION_STATE:
            gone = self._apply_state(data)
            if self._pending_state is not None and not self._pending_state.done():
                self._pending_state.set_result(gone)
        elif name == c.SESSION_CREATED:
            self._created(data)
        elif name == c.SESSION_STARTED:
            self._started(data)
        elif name == c.SESSION_ENDED:
            status = str(data.get("status") or "ended")
            pending = self._pending_start
            if pending is not None and not pending.future.done():
                detail = f": {pending.last_error}" if pending.last_error else ""
                pending.future.set_exception(SessionStartError(f"the gateway ended the session while starting it "
                                                               f"({status}){detail}"))
            if cur is not None and cur.chat_active:
                self._mark_ended(cur, status)
        elif name == c.ERROR:
            code, message = str(data.get("code", "")), _one_line(data.get("message", ""))
            pending = self._pending_start
            if pending is not None and not pending.future.done():
                pending.last_error = f"{code}: {message}"
                if code in ("session_exists", "invalid_payload"):
                    pending.future.set_exception(SessionStartError(f"the gateway refused start_session: "
                                                                   f"{code}: {message}"))
            self._emit("error", {"session_id": sid, "code": code, "message": message})
        elif cur is None or not cur.chat_active:
            # late events of an ended session, or agent events before any session
            if name not in (c.AUDIO_DELTA, c.AI_STATE, c.AI_TRANSCRIPT, c.USER_TRANSCRIPT, c.INTERRUPTED,
                            c.AI_RESPONSE, c.RESPONSE_COMPLETE, c.SESSION_RECYCLED):
                self._emit("custom_event", {"session_id": sid, "name": name, "data": data})
        elif self._mirror(name, data, cur):
            pass
        elif name == c.AUDIO_DELTA:
            if self._handlers.get("audio"):
                try:
                    pcm = base64.b64decode(str(data.get("audio", "")))
                except ValueError:
                    pcm = b""
                self._emit("audio", {"session_id": sid, "pcm": pcm, "index": data.get("index")})
        elif name == c.AI_TRANSCRIPT:
            if data.get("final") and data.get("text"):
                cur.last_assistant_text = str(data["text"])
            self._emit("ai_transcript", {"session_id": sid, "text": data.get("text", ""),
                                         "final": bool(data.get("final")), "item_id": data.get("item_id")})
        elif name == c.INTERRUPTED:
            self._emit("interrupted", {"session_id": sid, "item_id": data.get("item_id")})
            if cur.ai_state == "speaking":
                self._set_ai_state(cur, "listening", "interrupted")
        elif name == c.SESSION_RECYCLED:
            self._emit("session_recycled", {"session_id": sid, "message": data.get("message", "")})
        else:
            self._emit("custom_event", {"session_id": sid, "name": name, "data": data})

    def _mirror(self, name: str, data: dict[str, Any], session: SessionState) -> bool:
        """The events mirrored alike for the client's own and attached sessions; False if not one."""
        sid = session.session_id
        if name == c.AI_STATE:
            if isinstance(data.get("state"), str):
                self._set_ai_state(session, data["state"], "gateway")
        elif name == c.USER_TRANSCRIPT:
            if data.get("final") and data.get("text"):
                session.last_user_text = str(data["text"])
            self._emit("user_transcript", {"session_id": sid, "text": data.get("text", ""),
                                           "final": bool(data.get("final")), "item_id": data.get("item_id")})
        elif name == c.AI_RESPONSE:
            if data.get("response"):
                session.last_assistant_text = str(data["response"])
            self._emit("ai_response", {"session_id": sid, "transcript": data.get("transcript", ""),
                                       "response": data.get("response", "")})
        elif name == c.RESPONSE_COMPLETE:
            session.responses += 1
            self._emit("response_complete", {"session_id": sid, "response_id": data.get("response_id"),
                                             "status": data.get("status")})
        else:
            return False
        return True

    def _handle_followed(self, name: str, data: dict[str, Any], session: SessionState) -> None:
        """An event of an attached session (another connection's, maybe on another node)."""
        sid = session.session_id
        if name == c.SESSION_STATE:
            session.server = dict(data)
            if not data.get("chat_active"):
                self._mark_ended(session, "ended")
            elif isinstance(data.get("ai_state"), str):
                self._set_ai_state(session, data["ai_state"], "resync")
        elif name == c.SESSION_ENDED:
            self._mark_ended(session, str(data.get("status") or "ended"))
        elif self._mirror(name, data, session):
            pass
        elif name == c.ERROR:
            self._emit("error", {"session_id": sid, "code": str(data.get("code", "")),
                                 "message": _one_line(data.get("message", ""))})
        # audio, transcripts deltas and the rest of a followed session are not mirrored

    def _created(self, data: dict[str, Any]) -> None:
        sid = data.get("session_id")
        if not isinstance(sid, str):
            return
        pending = self._pending_start
        session = SessionState(sid, chat_payload=dict(pending.chat_payload) if pending else {},
                               resumed_from=pending.resumed_from if pending else None)
        self.sessions[sid] = session
        self._current = session
        if pending is not None:
            pending.session_id = sid
        elif self._abandoned_start:  # a start_session that timed out: do not leave it running
            self._abandoned_start = False
            asyncio.ensure_future(self._quietly(c.END_SESSION))

    def _started(self, data: dict[str, Any]) -> None:
        sid = data.get("session_id")
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            return
        session.started = True
        pending = self._pending_start
        if pending is not None and pending.session_id == sid and not pending.future.done():
            pending.future.set_result(sid)
        self._emit("session_started", {"session_id": sid, "message": data.get("message", ""),
                                       "resumed": session.resumed_from is not None,
                                       "previous_session_id": session.resumed_from})

    def _set_ai_state(self, session: SessionState, new: str, reason: str) -> None:
        if session.ai_state == new:
            return
        old, session.ai_state = session.ai_state, new
        self._emit("ai_state_changed", {"session_id": session.session_id, "old": old, "new": new, "reason": reason})

    def _mark_ended(self, session: SessionState, status: str, notify: bool = True) -> None:
        """The one place a mirrored session ends: ``session_ended`` goes out once."""
        if not session.chat_active:
            return
        session.chat_active = False
        session.status = status
        session.ai_state = "ended"
        if notify:
            self._emit("session_ended", {"session_id": session.session_id, "status": status})
        ended = [s for s in self.sessions.values() if not s.chat_active]
        for old in ended[:-KEEP_ENDED]:
            self.sessions.pop(old.session_id, None)

    # ----------------------------------------------------------------------------- sending

    async def _send(self, event: str, data: Any) -> None:
        """Emit and wait for the gateway's ack; :class:`_Lost` if the connection drops first."""
        sio, lost = self._sio, self._lost
        if sio is None or lost is None or lost.is_set() or not sio.connected:
            raise _Lost()
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def ack(*args: Any) -> None:
            if not acked.done():
                acked.set_result(args)

        try:
            await sio.emit(event, data, callback=ack)
        except socketio.exceptions.SocketIOError:
            raise _Lost() from None
        await self._wait(acked, self.ack_timeout, event)

    async def _wait(self, future: asyncio.Future[Any], timeout: float, what: str) -> Any:
        lost = self._lost
        assert lost is not None
        lost_waiter = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait({future, lost_waiter}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost_waiter.cancel()
            with contextlib.suppress(BaseException):
                await lost_waiter
        if future in done:
            return future.result()
        future.cancel()
        if lost.is_set():
            raise _Lost()
        raise GatewayTimeoutError(f"the gateway did not answer {what} within {timeout:g} s")

    async def _quietly(self, event: str) -> None:
        with contextlib.suppress(Exception):
            if self._sio is not None and self._sio.connected:
                await self._sio.emit(event)

    def _require_session(self, label: str) -> SessionState:
        session = self.session
        if session is None:
            raise NoSessionError(f"{label}: no active session: call start_session() first")
        return session

    def _enqueue(self, action: _Action, front: bool = False) -> None:
        if len(self._queue) >= self.max_queued_actions:
            raise QueueFullError(f"{action.label}: not connected, and {len(self._queue)} actions are already queued "
                                 f"(max_queued_actions={self.max_queued_actions})")
        if front:
            self._queue.appendleft(action)
        else:
            self._queue.append(action)
        log.debug("GatewayClient: queued %s (%d queued)", action.label, len(self._queue))

    async def _control(self, event: str, data: Any, label: str, session_id: str | None = None) -> None:
        if session_id is None:
            session = self._require_session(label)
        else:
            session = self.sessions.get(session_id)  # type: ignore[assignment]
            if session is None or not session.followed:
                raise UsageError(f"{label}: session {session_id} is not attached: call attach({session_id!r}) first")
            data = {**(data or {}), "session_id": session_id}
        action = _Action(event, data, label, session.session_id)
        if not self.connected:
            self._enqueue(action)
            return
        assert self._lock is not None
        async with self._lock:
            if not self.connected:
                self._enqueue(action)
                return
            try:
                await self._send(event, data)
            except _Lost:
                self._enqueue(action, front=True)

    async def _flush_locked(self) -> None:
        while self._queue:
            action = self._queue[0]
            attached = self.sessions.get(action.session_id)
            session = attached if attached is not None and attached.followed else self.session
            if session is None:
                self._queue.popleft()
                if action.event != c.END_SESSION:  # an end_session for a session that is gone is done
                    message = (f"{action.label} queued while disconnected was not sent: session "
                               f"{action.session_id} ended with the connection"
                               + ("" if self.resume else " (resume=True starts a new session instead)"))
                    log.warning("GatewayClient: %s", message)
                    self._emit("error", {"session_id": action.session_id, "code": "not_delivered",
                                         "message": message, "action": action.label})
                continue
            await self._send(action.event, action.data)
            self._queue.popleft()
            if action.event == c.END_SESSION:
                await self._await_end(session)

    async def _await_end(self, session: SessionState) -> None:
        deadline = time.monotonic() + self.ack_timeout
        while session.chat_active and time.monotonic() < deadline:
            if self._lost is not None and self._lost.is_set():
                raise _Lost()
            await asyncio.sleep(0.02)

    # ----------------------------------------------------------------------------- actions

    async def start_session(self, chat_payload: dict[str, Any] | None = None, timeout: float | None = None) -> str:
        """Start a session and return its id once the gateway says ``session_started``.

        Waits for the connection first; both waits together take at most ``timeout`` seconds
        (``start_timeout`` by default), else :class:`NotConnectedError` or :class:`SessionStartError`.
        """
        if chat_payload is not None and not isinstance(chat_payload, dict):
            raise UsageError("chat_payload must be a dict")
        if self.session is not None:
            raise SessionStartError(f"this client already has session {self.session.session_id}: "
                                    "end_session() first (one session per connection)")
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        await self.wait_connected(timeout)
        assert self._lock is not None
        async with self._lock:
            if self.session is not None:
                raise SessionStartError(f"this client already has session {self.session.session_id}")
            left = max(0.1, deadline - time.monotonic())
            try:
                return await self._start_locked(dict(chat_payload or {}), left)
            except _Lost:
                raise NotConnectedError("the connection dropped while the session was starting") from None

    async def _start_locked(self, chat_payload: dict[str, Any], timeout: float,
                            resumed_from: str | None = None) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        pending = _PendingStart(chat_payload, resumed_from, future)
        self._pending_start = pending
        try:
            await self._send(c.START_SESSION, {"chat_payload": chat_payload})
            try:
                return await self._wait(future, timeout, "start_session")
            except GatewayTimeoutError:
                if pending.session_id is not None:
                    await self._quietly(c.END_SESSION)
                else:
                    self._abandoned_start = True
                detail = f" (last error: {pending.last_error})" if pending.last_error else ""
                raise SessionStartError(f"no session_started from the gateway within {timeout:g} s{detail}") from None
        finally:
            self._pending_start = None
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: never "exception was never retrieved"

    async def send_audio(self, pcm: Any) -> None:
        """Send PCM16 mono 24 kHz audio, in chunks within the gateway's limit, paced below 1.5x
        real time. Raises :class:`NotConnectedError` while disconnected (nothing is queued)."""
        try:
            data = memoryview(pcm).cast("B").tobytes()
        except TypeError:
            raise UsageError("send_audio takes PCM16 bytes (bytes, bytearray, memoryview or an int16 array)") from None
        if len(data) % 2:
            raise UsageError(f"PCM16 audio needs an even byte count, not {len(data)}")
        self._require_session("send_audio")
        if not self.connected:
            raise NotConnectedError("send_audio: not connected to the gateway; audio is not queued")
        if not data:
            return
        limit = (self.max_chunk_b64 // 4) * 3
        step = max(2, min(limit, self.audio_chunk_ms * BYTES_PER_MS))
        step -= step % 2
        assert self._audio_lock is not None
        async with self._audio_lock:
            for offset in range(0, len(data), step):
                chunk = data[offset:offset + step]
                await self._pace_for(len(chunk) / BYTES_PER_MS)
                sio = self._sio
                if not self.connected or sio is None or self.session is None:
                    sent_ms = offset // BYTES_PER_MS
                    raise NotConnectedError(f"send_audio: the connection or the session ended after {sent_ms} of "
                                            f"{len(data) // BYTES_PER_MS} ms were sent")
                try:
                    await sio.emit(c.AUDIO_DATA, {"audio": base64.b64encode(chunk).decode()})
                except socketio.exceptions.SocketIOError:
                    raise NotConnectedError("send_audio: the connection dropped") from None

    async def _pace_for(self, ms: float) -> None:
        budget = PACE_FACTOR * PACE_WINDOW_S * 1000
        while True:
            now = time.monotonic()
            while self._pace and self._pace[0][0] <= now - PACE_WINDOW_S:
                self._pace_ms -= self._pace.popleft()[1]
            if not self._pace or self._pace_ms + ms <= budget:
                break
            await asyncio.sleep(self._pace[0][0] + PACE_WINDOW_S - now + 0.001)
        self._pace.append((time.monotonic(), ms))
        self._pace_ms += ms

    async def attach(self, session_id: str, timeout: float | None = None) -> SessionState:
        """Follow another connection's session (on any node of a cluster) and allow actions on it.

        ``send_text``, ``say`` and ``interrupt`` then take ``session_id=``; its events reach the
        handlers with that ``session_id``, and ``sessions[session_id]`` mirrors it (``followed``).
        """
        if not isinstance(session_id, str) or not session_id:
            raise UsageError("attach takes a session id")
        if not self.connected:
            raise NotConnectedError(f"attach: not connected to the gateway at {self.url}")
        session = self.sessions.get(session_id)
        if session is None or not session.followed:
            session = SessionState(session_id, started=True, followed=True)
            self.sessions[session_id] = session
        session.server = {}
        assert self._lock is not None
        async with self._lock:
            try:
                await self._send(c.GET_STATE, {"session_id": session_id})
            except _Lost:
                self.sessions.pop(session_id, None)
                raise NotConnectedError("attach: the connection dropped") from None
        deadline = time.monotonic() + (self.ack_timeout if timeout is None else timeout)
        while not session.server and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not session.server:
            self.sessions.pop(session_id, None)
            raise NoSessionError(f"attach: the gateway knows no session {session_id}")
        return session

    async def send_text(self, text: str, immediate_reply: bool = True, session_id: str | None = None) -> None:
        """A typed user message (``text_input``); the assistant answers unless ``immediate_reply=False``.
        ``session_id``: an attached session instead of this client's own."""
        if not isinstance(text, str) or not text.strip():
            raise UsageError("send_text takes a non-empty string")
        if not isinstance(immediate_reply, bool):
            raise UsageError("immediate_reply must be True or False")
        await self._control(c.TEXT_INPUT, {"text": text, "immediate_reply": immediate_reply}, "send_text", session_id)

    async def say(self, text: str, session_id: str | None = None) -> None:
        """Speak ``text`` verbatim through the session (or an attached one)."""
        if not isinstance(text, str) or not text.strip():
            raise UsageError("say takes a non-empty string")
        await self._control(c.SAY, {"text": text}, "say", session_id)

    async def interrupt(self, session_id: str | None = None) -> None:
        """Stop the assistant now (the gateway answers with ``interrupted`` if it was speaking)."""
        await self._control(c.INTERRUPT, None, "interrupt", session_id)

    async def end_session(self) -> None:
        """End the active session; connected, returns once the gateway said ``session_ended``."""
        session = self._require_session("end_session")
        await self._control(c.END_SESSION, None, "end_session")
        if self.connected:
            with contextlib.suppress(_Lost):
                await self._await_end(session)

    # ----------------------------------------------------------------------------- HTTP

    async def health_check(self) -> dict[str, Any]:
        """``GET <url>/health``, retried with backoff and jitter (``http_attempts`` in all);
        :class:`GatewayUnreachableError` when it never answers."""
        return await self._get_json("/health", attempts=self.http_attempts)

    async def _get_json(self, path: str, attempts: int) -> dict[str, Any]:
        import aiohttp

        url = self._http_base + path
        own = self._http is None or self._http.closed
        http = aiohttp.ClientSession() if own else self._http
        started = time.monotonic()
        last = ""
        try:
            for attempt in range(1, attempts + 1):
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=self.http_timeout)) as response:
                        if response.status == 200:
                            body = await response.json(content_type=None)
                            if isinstance(body, dict):
                                return body
                            last = "the answer is not a JSON object"
                        elif 400 <= response.status < 500:
                            raise GatewayClientError(f"GET {url} answered HTTP {response.status}: is {self._http_base} "
                                                     "a voicerelay gateway?")
                        else:
                            last = f"HTTP {response.status}"
                except (aiohttp.ClientError, OSError, ValueError) as exc:
                    last = _one_line(str(exc) or type(exc).__name__)
                except TimeoutError:
                    last = f"no answer within {self.http_timeout:g} s"
                if attempt < attempts:
                    await asyncio.sleep(backoff_delay(attempt, self.http_retry_delay, self.reconnect_delay_max,
                                                      self.jitter))
        finally:
            if own:
                await http.close()
        raise GatewayUnreachableError(f"GET {url} failed {attempts} times in {time.monotonic() - started:.1f} s: "
                                      f"{last}")
