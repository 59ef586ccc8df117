"""``GatewayClient``'s connection: Socket.IO and HTTP with retries, the action queue, acks,
resync and resume. What the gateway's events mean is :mod:`voicerelay.client.mirror`'s job: the
connection feeds it every event and carries out the effects it returns.

**Running.** ``await start()`` connects, then runs until ``await stop()``. A failed connection
attempt or a dropped connection is retried after an exponential backoff with jitter
(``reconnect_delay * 2**(n-1)``, at most ``reconnect_delay_max``, scaled by a random factor in
``[1 - jitter, 1]``: :mod:`voicerelay.backoff`), forever unless ``max_connect_attempts`` is set.
After every (re)connection the client resyncs before it accepts actions: it emits ``get_state``
and applies the ``session_state`` answer, so the mirror matches the gateway. The HTTP calls
(``health_check``, and ``/session-config`` read at each connection to learn the audio chunk
limit) retry with the same kind of backoff. ``url`` is the gateway's base URL, mount prefix
included (``http://host/voice``): Socket.IO is at ``<prefix>/<socketio_path>``, health at
``<prefix>/health``. ``token`` and ``client_id`` (a stable random one when not given) go in the
Socket.IO ``auth`` payload. Everything one ``start()`` needs (the socket, the HTTP session,
locks and events) is one :class:`_Run`, made when it begins.

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
- ``start_session`` waits for the connection, within its ``timeout``;
- ``report_playback`` is dropped (with a debug log): a stale playback position is useless.

While connected, a control action returns once the gateway acknowledged it (a Socket.IO ack);
an action whose ack is lost with the connection goes back to the front of the queue. The
gateway reports a refused action with an ``error`` event. ``stop()`` logs queued actions it
discards.

**Events** (``client.on(name, handler)``; every handler gets one ``dict``, which always has
``session_id``): the mirror's semantic events (listed in :mod:`voicerelay.client.mirror`), and
the connection's own: ``connected`` {reconnect}, ``disconnected`` {reason}, and ``error`` with
code ``not_delivered``, ``resume_failed`` or ``resync_failed``. A **sync handler** is called
inline, in event order: keep it quick, it runs on the client's loop. An **async handler** (or
any handler returning an awaitable) runs as its own task, so a slow one never delays the client
or other handlers; several such tasks may run at once, and the ones still running when
``stop()`` is called are cancelled. A handler's exception is logged and does not reach the
client. No events are delivered once ``stop()`` has begun.

**Audio.** ``send_audio(pcm)`` takes PCM16 mono 24 kHz (any bytes-like object, an int16 numpy
array too), cuts it into chunks of at most ``audio_chunk_ms`` and of the gateway's
``max_chunk_b64``, and paces itself below 1.5x real time over any 5 s (the gateway disconnects
clients above 2x), so a long buffer takes a while to send. A program that plays the reply audio
itself (the ``audio`` events) tells the gateway how much of an item it has played with
``report_playback(item_id, played_ms)``: the voicerelay extension event ``playback_position``
{item_id, played_ms}, sent without an ack, for the gateway to cut a reply where it was heard (a
gateway that does not use it ignores it).

**Errors.** Everything the client raises derives from :class:`GatewayClientError` (in
:mod:`voicerelay.errors`, the one error tree), and every message is one line::

    GatewayClientError
    ├── GatewayUnreachableError   the gateway (Socket.IO or HTTP) cannot be reached, after retries
    ├── AuthenticationError       the gateway refused the token (never retried)
    ├── NotConnectedError         send_audio while disconnected; no connection within a timeout
    ├── NoSessionError            an action needs a session: start_session() first
    ├── SessionStartError         start_session failed: the gateway's error, or no session_started in time
    ├── QueueFullError            a control action while disconnected, with the queue full
    ├── GatewayTimeoutError       the gateway did not acknowledge an action in time (also a TimeoutError)
    └── UsageError                a wrong argument or call (also a ValueError; errors.ClientUsageError)

python-socketio's and aiohttp's exceptions are translated into these here, where they enter.
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

import aiohttp
import socketio

from ..backoff import backoff_delay
from ..errors import (
    AuthenticationError,
    GatewayClientError,
    GatewayTimeoutError,
    GatewayUnreachableError,
    NoSessionError,
    NotConnectedError,
    QueueFullError,
    SessionStartError,
    one_line,
)
from ..errors import ClientUsageError as UsageError
from ..gateway import contract as c
from ..protocol.audio import BYTES_PER_MS
from .mirror import (
    Effect,
    Emit,
    EndAbandoned,
    SessionState,
    StartFailed,
    StartSucceeded,
    StateAnswered,
    StateMirror,
)

__all__ = ["CONTROL_ACTIONS", "EVENTS", "GatewayClient"]

log = logging.getLogger(__name__)

EVENTS = frozenset({
    "session_started", "user_transcript", "ai_response", "ai_state_changed", "response_complete", "error",
    "session_ended", "ai_transcript", "audio", "interrupted", "session_recycled", "custom_event", "connected",
    "disconnected",
})
CONTROL_ACTIONS = (c.TEXT_INPUT, c.SAY, c.INTERRUPT, c.END_SESSION)
PACE_WINDOW_S = 5.0
PACE_FACTOR = 1.5  # the gateway cuts off above 2x real time over 5 s


#: What closing a connection can raise from python-socketio and the aiohttp websocket below it,
#: when the connection is already half gone: ignored, since it is being closed anyway.
_CLOSING_ERRORS = (socketio.exceptions.SocketIOError, aiohttp.ClientError, OSError)


class _Lost(Exception):
    """The connection dropped while waiting for the gateway (internal)."""


@dataclasses.dataclass
class _Action:
    event: str
    data: Any
    label: str  # the method that made it, for messages
    session_id: str


@dataclasses.dataclass(eq=False)
class _Run:
    """What one ``start()`` runs with, made when it begins (and kept, finished, once it ends)."""

    sio: socketio.AsyncClient
    http: aiohttp.ClientSession
    task: asyncio.Task[Any] | None  # the task running start()
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)  # one exchange with the gateway at a time
    audio_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    online: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # connected and resynced
    lost: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # the current connection dropped
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    finished: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


# ----------------------------------------------------------------------------------- the client


class GatewayClient:
    """A program's client of a voicerelay gateway; see :mod:`voicerelay.client` for the rules."""

    def __init__(self, url: str, client_id: str | None = None, token: str | None = None, *,
                 socketio_path: str = "socket.io", max_queued_actions: int = 100, resume: bool = False,
                 reconnect_delay: float = 0.5, reconnect_delay_max: float = 10.0, jitter: float = 0.5,
                 max_connect_attempts: int | None = None, connect_timeout: float = 10.0,
                 ack_timeout: float = 10.0, start_timeout: float = 15.0, http_attempts: int = 4,
                 http_timeout: float = 5.0, http_retry_delay: float = 0.2, audio_chunk_ms: int = 100,
                 transports: list[str] | None = None) -> None:
        try:
            parts = urlsplit(url)
            usable = parts.scheme in ("http", "https", "ws", "wss") and bool(parts.hostname) and \
                (parts.port is None or parts.port > 0)
        except ValueError:  # a malformed host or port ("http://[::1", "http://host:99999")
            usable = False
        if not usable:
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

        self._mirror = StateMirror()
        self._mirror.audio_wanted = False  # until someone listens to "audio"
        self._handlers: dict[str, list[Callable[[dict[str, Any]], Any]]] = collections.defaultdict(list)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queue: collections.deque[_Action] = collections.deque()
        self._run: _Run | None = None  # made by start()
        self._running = False
        self._stopping = False
        self._failure: BaseException | None = None  # why start() ended, for wait_connected()
        self._refusal: Any = None
        self._pending_start: asyncio.Future[str] | None = None
        self._pending_state: asyncio.Future[SessionState | None] | None = None
        self._pace: collections.deque[tuple[float, float]] = collections.deque()
        self._pace_ms = 0.0
        self._runner: asyncio.Task[None] | None = None  # the task of ``async with``
        self._stoppers: set[asyncio.Task[Any]] = set()  # tasks in stop(): never cancelled by it
        self.connections = 0  # successful connections (the first one included)
        self.failed_connects = 0  # failed connection attempts, in all

    # ----------------------------------------------------------------------------- public state

    @property
    def connected(self) -> bool:
        """Connected and resynced: actions go straight to the gateway."""
        return self._run is not None and self._run.online.is_set()

    @property
    def mirror(self) -> StateMirror:
        """The state mirror this client feeds (read it; the client changes it)."""
        return self._mirror

    @property
    def sessions(self) -> dict[str, SessionState]:
        """Session ids to :class:`SessionState`: this connection's sessions (the newest ended ones
        too) and the ones it follows."""
        return self._mirror.sessions

    @property
    def session(self) -> SessionState | None:
        """The active session, if any."""
        return self._mirror.session

    @property
    def session_id(self) -> str | None:
        return self._mirror.session_id

    @property
    def queued_actions(self) -> int:
        return len(self._queue)

    # ----------------------------------------------------------------------------- events

    def on(self, name: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``handler(event: dict)`` for each ``name`` event (see :mod:`voicerelay.client`)."""
        if name not in EVENTS:
            raise UsageError(f"unknown event {name!r}: one of {', '.join(sorted(EVENTS))}")
        if not callable(handler):
            raise UsageError(f"the handler for {name!r} is not callable")
        self._handlers[name].append(handler)
        self._mirror.audio_wanted = bool(self._handlers.get("audio"))

    def off(self, name: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        with contextlib.suppress(ValueError):
            self._handlers.get(name, []).remove(handler)
        self._mirror.audio_wanted = bool(self._handlers.get("audio"))

    def _emit(self, name: str, payload: dict[str, Any]) -> None:
        if self._stopping:
            return
        for handler in list(self._handlers.get(name, ())):
            try:
                result = handler(dict(payload))
            except Exception:  # the program's handler: its bug is logged, never the client's failure
                log.exception("GatewayClient: the %s handler %r failed", name, handler)
                continue
            if inspect.isawaitable(result):
                self._spawn(result)

    def _spawn(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("GatewayClient: an async handler failed: %r", exc, exc_info=exc)

    def _carry_out(self, effects: list[Effect]) -> None:
        """Do what the mirror says, in order."""
        for effect in effects:
            if isinstance(effect, Emit):
                self._emit(effect.name, effect.payload)
            elif isinstance(effect, StateAnswered):
                if self._pending_state is not None and not self._pending_state.done():
                    self._pending_state.set_result(effect.gone)
            elif isinstance(effect, StartSucceeded):
                if self._pending_start is not None and not self._pending_start.done():
                    self._pending_start.set_result(effect.session_id)
            elif isinstance(effect, StartFailed):
                if self._pending_start is not None and not self._pending_start.done():
                    self._pending_start.set_exception(SessionStartError(effect.message))
            elif isinstance(effect, EndAbandoned):
                self._spawn(self._quietly(c.END_SESSION))

    # ----------------------------------------------------------------------------- running

    async def start(self) -> None:
        """Connect, then run until :meth:`stop`, reconnecting as needed.

        Raises :class:`AuthenticationError` when the gateway refuses the token, and
        :class:`GatewayUnreachableError` after ``max_connect_attempts`` failed attempts in a row.
        """
        if self._running:
            raise UsageError("start() is already running")
        self._running = True
        self._stopping = False
        self._failure = None
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout))
        run = self._run = _Run(self._make_socket(http), http, asyncio.current_task())
        failures = 0
        started = time.monotonic()
        connected_once = False
        try:
            while not run.stop.is_set():
                if failures:
                    delay = backoff_delay(max(1, failures), self.reconnect_delay, self.reconnect_delay_max, self.jitter)
                    if await self._sleep_unless_stopped(run, delay):
                        break
                run.lost = asyncio.Event()
                try:
                    await self._connect_once(run)
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
                if run.stop.is_set():
                    break
                reconnect, connected_once = connected_once, True
                self._emit("connected", {"session_id": self.session_id, "reconnect": reconnect})
                try:
                    await self._resync(run, reconnect)
                except _Lost:
                    failures += 1
                    continue
                except GatewayTimeoutError as exc:  # connected, but the gateway does not answer: start over
                    failures += 1
                    self._emit("error", {"session_id": self.session_id, "code": "resync_failed",
                                         "message": f"could not resync with the gateway: {exc}"})
                    with contextlib.suppress(*_CLOSING_ERRORS):
                        await run.sio.disconnect()
                    continue
                failures = 0
                started = time.monotonic()
                await self._wait_any(run.lost, run.stop)
                run.online.clear()
                if not run.stop.is_set():
                    failures = 1
        except BaseException as exc:  # whatever ends start(), a cancel too, is what wait_connected() says; re-raised
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
            run = self._run
            if run is not None:
                run.stop.set()
                if run.sio.connected:
                    with contextlib.suppress(*_CLOSING_ERRORS):
                        await run.sio.disconnect()
            if self._running and run is not None:
                if run.task is not me:
                    await run.finished.wait()
            else:
                await self._shutdown()
            if self._runner is not None and not self._runner.done() and self._runner is not me:
                await asyncio.gather(self._runner, return_exceptions=True)  # its failure is in self._failure
        finally:
            if me is not None:
                self._stoppers.discard(me)

    async def __aenter__(self) -> Self:
        self._stopping = False
        self._failure = None
        self._runner = asyncio.create_task(self.start(), name="GatewayClient.start")
        try:
            await self.wait_connected(self.connect_timeout if self.max_connect_attempts is None else None)
        except BaseException:  # a failure or a cancel: the runner must not outlive it; re-raised
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
            if self.connected:
                return
            if self._stopping:
                raise NotConnectedError("the client is stopped")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                hint = "" if self._running else \
                    ": the client is not running (await start() in a task, or use `async with`)"
                raise NotConnectedError(f"not connected to the gateway at {self.url} within {timeout:g} s{hint}")
            step = 0.05 if left is None else min(0.05, left)
            run = self._run
            if run is not None and self._running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.online.wait(), step)
            else:
                await asyncio.sleep(step)

    def _make_socket(self, http: aiohttp.ClientSession) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, logger=False, engineio_logger=False,
                                   http_session=http, request_timeout=self.connect_timeout)
        sio.on("connect", self._on_connect)
        sio.on("connect_error", self._on_connect_error)
        sio.on("disconnect", self._on_disconnect)
        sio.on("*", self._on_gateway_event)
        return sio

    async def _connect_once(self, run: _Run) -> None:
        self._refusal = None
        auth: dict[str, Any] = {"client_id": self.client_id}
        if self.token is not None:
            auth["token"] = self.token
        try:
            await asyncio.wait_for(run.sio.connect(self._sio_url, auth=auth, transports=self.transports,
                                                   socketio_path=self._sio_path, wait_timeout=self.connect_timeout),
                                   self.connect_timeout + 2)
        except TimeoutError:
            with contextlib.suppress(*_CLOSING_ERRORS):
                await run.sio.eio.disconnect(abort=True)
            raise GatewayUnreachableError(f"no answer within {self.connect_timeout:g} s") from None
        except (socketio.exceptions.ConnectionError, aiohttp.ClientError, OSError, ValueError) as exc:
            # aiohttp's errors and ValueError (a host IDNA cannot encode) come through engine.io untranslated
            refusal = self._refusal
            reason = refusal.get("message") if isinstance(refusal, dict) else refusal
            reason = one_line(reason or exc or type(exc).__name__)
            if reason.startswith("unauthorized"):
                raise AuthenticationError(f"the gateway at {self.url} refused the connection: {reason}"
                                          + ("" if self.token else " (pass token=...)")) from None
            raise GatewayUnreachableError(reason) from None

    @staticmethod
    async def _sleep_unless_stopped(run: _Run, delay: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), delay)
        return run.stop.is_set()

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
        run = self._run
        if run is not None:
            run.online.clear()
            with contextlib.suppress(*_CLOSING_ERRORS):
                if run.sio.connected:
                    await run.sio.disconnect()
                elif run.sio.eio.state != "disconnected":
                    await run.sio.eio.disconnect(abort=True)
            if not run.http.closed:
                await run.http.close()
        if self._pending_start is not None and not self._pending_start.done():
            self._pending_start.set_exception(NotConnectedError("the client stopped"))
        if self._pending_state is not None and not self._pending_state.done():
            self._pending_state.cancel()
        cur = self.session
        if cur is not None:
            self._mirror.mark_ended(cur, "stopped")  # its session_ended is not delivered: stop() has begun
        if self._queue:
            log.warning("GatewayClient: stop() discards %d queued action(s): %s", len(self._queue),
                        ", ".join(a.label for a in self._queue))
            self._queue.clear()
        tasks = [t for t in self._tasks if t is not asyncio.current_task() and t not in self._stoppers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running = False
        if run is not None:
            run.finished.set()

    # ----------------------------------------------------------------------------- resync

    async def _resync(self, run: _Run, reconnect: bool) -> None:
        """Make the mirror match the gateway, resume if asked, flush the queue; then go online."""
        async with run.lock:
            config = asyncio.ensure_future(self._read_session_config())
            try:
                lost = await self._request_state()
                with contextlib.suppress(TimeoutError):  # the chunk limit stays as it was
                    await asyncio.wait_for(config, self.http_timeout)
            finally:
                if not config.done():
                    config.cancel()
                    await asyncio.gather(config, return_exceptions=True)
            if reconnect and self.resume and lost is not None and lost.status == "disconnected" \
                    and not any(a.event == c.END_SESSION for a in self._queue):
                try:
                    await self._start_locked(lost.chat_payload, self.start_timeout, resumed_from=lost.session_id)
                except GatewayClientError as exc:
                    self._emit("error", {"session_id": lost.session_id, "code": "resume_failed",
                                         "message": f"could not resume session {lost.session_id}: {exc}"})
            await self._flush_locked()
            run.online.set()

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
        run = self._online_run(f"not connected to the gateway at {self.url}")
        async with run.lock:
            try:
                await self._request_state()
            except _Lost:
                raise NotConnectedError("the connection dropped during refresh()") from None
        return self.session

    # ----------------------------------------------------------------------------- the gateway's events

    def _on_connect(self) -> None:
        log.debug("GatewayClient: connected to %s", self.url)

    def _on_connect_error(self, data: Any = None) -> None:
        self._refusal = data

    def _on_disconnect(self, reason: Any = None) -> None:
        run = self._run
        if run is not None:
            run.online.clear()
            run.lost.set()
        if self._pending_start is not None and not self._pending_start.done():
            self._pending_start.set_exception(_Lost())
        if not self._stopping:
            log.info("GatewayClient: disconnected from %s (%s)", self.url, reason)
            self._emit("disconnected", {"session_id": self.session_id, "reason": str(reason or "")})

    def _on_gateway_event(self, name: str, data: Any = None) -> None:
        """Every gateway event, in order (a sync handler: nothing here awaits)."""
        try:
            effects = self._mirror.receive(name, data)
        except Exception:  # a bug in the mirror: logged, and it must not stop the socket's event loop
            log.exception("GatewayClient: could not handle %s %r", name, data)
            return
        self._carry_out(effects)

    # ----------------------------------------------------------------------------- sending

    def _online_run(self, message: str) -> _Run:
        """The current run, when connected and resynced; else :class:`NotConnectedError`."""
        run = self._run
        if run is None or not run.online.is_set():
            raise NotConnectedError(message)
        return run

    async def _send(self, event: str, data: Any) -> None:
        """Emit and wait for the gateway's ack; :class:`_Lost` if the connection drops first."""
        run = self._run
        if run is None or run.lost.is_set() or not run.sio.connected:
            raise _Lost()
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def ack(*args: Any) -> None:
            if not acked.done():
                acked.set_result(args)

        try:
            await run.sio.emit(event, data, callback=ack)
        except socketio.exceptions.SocketIOError:
            raise _Lost() from None
        await self._wait(acked, self.ack_timeout, event)

    async def _wait(self, future: asyncio.Future[Any], timeout: float, what: str) -> Any:
        run = self._run
        if run is None:
            raise _Lost()
        lost = run.lost
        lost_waiter = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait({future, lost_waiter}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost_waiter.cancel()
            await asyncio.gather(lost_waiter, return_exceptions=True)
        if future in done:
            return future.result()
        future.cancel()
        if lost.is_set():
            raise _Lost()
        raise GatewayTimeoutError(f"the gateway did not answer {what} within {timeout:g} s")

    async def _quietly(self, event: str) -> None:
        """Emit ``event`` without an ack, if connected: a best effort (a dropped connection ends
        the session anyway)."""
        run = self._run
        if run is not None and run.sio.connected:
            with contextlib.suppress(socketio.exceptions.SocketIOError):
                await run.sio.emit(event)

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
            followed = self._mirror.followed(session_id)
            if followed is None:
                raise UsageError(f"{label}: session {session_id} is not attached: call attach({session_id!r}) first")
            session = followed
            data = {**(data or {}), "session_id": session_id}
        action = _Action(event, data, label, session.session_id)
        run = self._run
        if run is None or not run.online.is_set():
            self._enqueue(action)
            return
        async with run.lock:
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
            session = self._mirror.followed(action.session_id) or self.session
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
            run = self._run
            if run is not None and run.lost.is_set():
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
        run = self._online_run("the connection dropped before the session could start")
        async with run.lock:
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
        attempt = self._mirror.begin_start(chat_payload, resumed_from)
        self._pending_start = future
        try:
            await self._send(c.START_SESSION, {"chat_payload": chat_payload})
            try:
                return await self._wait(future, timeout, "start_session")
            except GatewayTimeoutError:
                if attempt.session_id is not None:
                    await self._quietly(c.END_SESSION)
                else:
                    self._mirror.abandon_start()
                detail = f" (last error: {attempt.last_error})" if attempt.last_error else ""
                raise SessionStartError(f"no session_started from the gateway within {timeout:g} s{detail}") from None
        finally:
            self._pending_start = None
            self._mirror.end_start()
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
        run = self._online_run("send_audio: not connected to the gateway; audio is not queued")
        if not data:
            return
        limit = (self.max_chunk_b64 // 4) * 3
        step = max(2, min(limit, self.audio_chunk_ms * BYTES_PER_MS))
        step -= step % 2
        async with run.audio_lock:
            for offset in range(0, len(data), step):
                chunk = data[offset:offset + step]
                await self._pace_for(len(chunk) / BYTES_PER_MS)
                if not self.connected or self.session is None:
                    sent_ms = offset // BYTES_PER_MS
                    raise NotConnectedError(f"send_audio: the connection or the session ended after {sent_ms} of "
                                            f"{len(data) // BYTES_PER_MS} ms were sent")
                try:
                    await run.sio.emit(c.AUDIO_DATA, {"audio": base64.b64encode(chunk).decode()})
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

    async def report_playback(self, item_id: str, played_ms: int, session_id: str | None = None) -> None:
        """Tell the gateway that ``played_ms`` of reply item ``item_id`` have really been played
        (``playback_position`` {item_id, played_ms, session_id?}), for programs that play the
        ``audio`` events themselves, for the gateway to cut a reply where it was heard.

        Fire-and-forget: no ack is awaited, and while disconnected the position is dropped
        (a debug log says so): a stale position is useless. ``session_id`` names the session
        when it is not this connection's own.
        """
        if not isinstance(item_id, str) or not item_id:
            raise UsageError("report_playback takes the item_id of the audio played")
        if isinstance(played_ms, bool) or not isinstance(played_ms, int) or played_ms < 0:
            raise UsageError(f"played_ms must be a whole number of milliseconds, 0 or more, not {played_ms!r}")
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise UsageError("session_id must be a session id or None")
        data: dict[str, Any] = {"item_id": item_id, "played_ms": played_ms}
        if session_id is not None:
            data["session_id"] = session_id
        run = self._run
        if run is None or not run.online.is_set() or not run.sio.connected:
            log.debug("GatewayClient: not connected: playback position %s dropped", data)
            return
        try:
            await run.sio.emit(c.PLAYBACK_POSITION, data)
        except socketio.exceptions.SocketIOError as exc:
            log.debug("GatewayClient: playback position %s dropped: %s", data, one_line(exc))

    async def attach(self, session_id: str, timeout: float | None = None) -> SessionState:
        """Follow another connection's session (on any node of a cluster) and allow actions on it.

        ``send_text``, ``say`` and ``interrupt`` then take ``session_id=``; its events reach the
        handlers with that ``session_id``, and ``sessions[session_id]`` mirrors it (``followed``).
        """
        if not isinstance(session_id, str) or not session_id:
            raise UsageError("attach takes a session id")
        run = self._online_run(f"attach: not connected to the gateway at {self.url}")
        session = self._mirror.follow(session_id)
        async with run.lock:
            try:
                await self._send(c.GET_STATE, {"session_id": session_id})
            except _Lost:
                self._mirror.forget(session_id)
                raise NotConnectedError("attach: the connection dropped") from None
        deadline = time.monotonic() + (self.ack_timeout if timeout is None else timeout)
        while not session.server and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not session.server:
            self._mirror.forget(session_id)
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
        url = self._http_base + path
        own: aiohttp.ClientSession | None = None  # when no run's session is open
        started = time.monotonic()
        last = ""
        try:
            for attempt in range(1, attempts + 1):
                run = self._run  # each attempt: the run may have stopped (and closed its session) meanwhile
                if run is not None and not run.http.closed:
                    http = run.http
                else:
                    http = own = own or aiohttp.ClientSession()
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
                    last = one_line(str(exc) or type(exc).__name__)
                except TimeoutError:
                    last = f"no answer within {self.http_timeout:g} s"
                if attempt < attempts:
                    await asyncio.sleep(backoff_delay(attempt, self.http_retry_delay, self.reconnect_delay_max,
                                                      self.jitter))
        finally:
            if own is not None:
                await own.close()
        raise GatewayUnreachableError(f"GET {url} failed {attempts} times in {time.monotonic() - started:.1f} s: "
                                      f"{last}")
