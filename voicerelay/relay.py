"""``Relay``: one live session's asyncio wiring. Every front door drives one of these.

It owns a :class:`~voicerelay.protocol.session.RealtimeSession` and one upstream connection at a
time, and does only I/O and bookkeeping: front-door inputs and server events go into the
session; the effects that come out are sent upstream (``SendEvent``, in order, through one
queue) or handed to the observers (the front door itself, the TUI, the recorder, reports).

The per-chunk path of a relaying front door (the gateway) is kept short: audio it forwards
(:meth:`Relay.forward_audio`) stays the base64 it arrived as and is sent from the caller's task
when the queue is empty, and its ``flush`` is awaited by the reader after each server event, so
neither direction needs a task switch of its own.

Upstream lifecycle: connect (with retries), configure, pump events both ways. Before the
server's session cap (``expires_at`` of ``session.created``) the relay *recycles* at a quiet
moment: it opens a new session with the same configuration and the conversation's text history,
and tells the observers with a :class:`Notice`. A connection lost mid-session is retried the
same way a few times; then :meth:`Relay.run` raises an :class:`~voicerelay.errors.UpstreamError`.
What to send again on a new connection and when to recycle are decided by the pure layer
(:mod:`voicerelay.protocol.lifetime`); each connection ends with a typed :class:`Ending`.

The relay knows no network library: it connects through its ``spec`` (an :class:`Upstream`,
e.g. :class:`~voicerelay.upstream.UpstreamSpec`), whose :class:`Connection` raises only
:class:`~voicerelay.errors.ConnectionLost` when it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from .errors import ConnectionLost, UpstreamClosed, UpstreamError
from .protocol import wirejson
from .protocol.audio import BYTES_PER_MS, b64_pcm16_nbytes
from .protocol.config import RealtimeConfig
from .protocol.events import Dialect, Event
from .protocol.redact import elide
from .protocol.lifetime import RECYCLE_MARGIN_MAX, RESEND_MAX_MS, ResendLedger, SessionCap, append_ms
from .protocol.session import Effect, Error, RealtimeSession, SendEvent, State

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """Something the relay did on its own: ``connected``, ``recycled``, ``reconnecting`` (a connection
    was lost), ``recovered`` (the next one is ready), ``ended``."""

    kind: str
    message: str


Observation = Effect | Notice
Observer = Callable[[Observation], None]


class EventRecorder(Protocol):
    def record(self, direction: str, event: Event) -> None: ...


class Connection(Protocol):
    """One open connection to a Realtime server (see :class:`~voicerelay.upstream.UpstreamConnection`)."""

    async def send(self, message: str | bytes) -> None: ...
    async def recv(self, timeout: float | None = None) -> str | bytes: ...
    def frames(self) -> AsyncIterator[str | bytes]: ...
    async def close(self, timeout: float = 2.0) -> None: ...
    @property
    def close_code(self) -> int | None: ...


class Upstream(Protocol):
    """Where a relay connects (see :class:`~voicerelay.upstream.UpstreamSpec`)."""

    dialect: Dialect

    def describe(self) -> str: ...
    async def connect(self) -> Connection: ...


class Ending(enum.Enum):
    """Why one connection's pump ended."""

    STOPPED = "stopped"  # stop() was called
    RECYCLE = "recycle"  # before the server's cap (or the server said session_expired)
    LOST = "lost"  # the connection closed or dropped


__all__ = ["RECYCLE_MARGIN_MAX", "RESEND_MAX_MS", "Connection", "Ending", "EventRecorder", "Notice", "Observation",
           "Observer", "Relay", "Upstream"]


class Relay:
    def __init__(self, config: RealtimeConfig, spec: Upstream, *, max_queued_audio_ms: int = 5000,
                 recorder: EventRecorder | None = None, reconnects: int = 2,
                 clock: Callable[[], float] = time.monotonic,
                 flush: Callable[[], Awaitable[None]] | None = None) -> None:
        """``flush``, if given, is awaited by the reader after the effects of each server event
        went to the observers: a front door whose (sync) observers queue output for an async
        transport sends it there, from the reader's task, rather than waking a task of its own."""
        self.spec = spec
        self.session = RealtimeSession(config, spec.dialect)
        self.recorder = recorder
        self.clock = clock
        self.max_queued_audio_ms = max_queued_audio_ms
        self.reconnects = reconnects
        self.connections = 0
        self.recycles = 0
        self.dropped_audio_ms = 0.0
        self.queued_audio_ms = 0.0
        self._out: asyncio.Queue[Event] = asyncio.Queue()
        self._space = asyncio.Event()
        self._space.set()
        self._observers: list[Observer] = []
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._recycle = asyncio.Event()
        self._fatal: Error | None = None
        self._recovering = False  # a connection was lost: say so once the next one is ready
        self._flush = flush
        self._flush_follows = False
        self._inflight: list[Event] = []  # taken for sending, not sent yet: sent again on a new connection
        self._sending = False  # the sender task runs on the open connection: front doors may send directly
        # appends whose turn has not been answered yet: a new connection gets them again, so an
        # utterance cut by a recycle or a dropped connection is not lost
        self.resend = ResendLedger()
        self._cap = SessionCap()
        self.connection: Connection | None = None  # the open connection, if any

    # ----------------------------------------------------------------------------- observing

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` with every effect and notice; returns an unsubscribe function."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def snapshot(self) -> dict[str, Any]:
        """Queue sizes and state, readable at any time (the TUI and monitors poll this)."""
        remaining = self._cap.remaining(self.clock())
        return {
            "state": self.session.state.value,
            "queued_events": self._out.qsize(),
            "queued_audio_ms": round(self.queued_audio_ms),
            "dropped_audio_ms": round(self.dropped_audio_ms),
            "turns": len(self.session.turns),
            "connections": self.connections,
            "recycles": self.recycles,
            "session_remaining_s": None if remaining is None else round(remaining, 1),
        }

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until the upstream accepted the configuration."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def flush_follows(self) -> bool:
        """True while the reader hands a server event's effects to the observers and will await
        ``flush`` right after: an observer need not arrange a flush of its own."""
        return self._flush_follows

    # ----------------------------------------------------------------------------- front door inputs

    async def send_audio(self, pcm: bytes) -> None:
        """Queue one frame, waiting while the queue holds ``max_queued_audio_ms`` (back-pressure)."""
        while self.queued_audio_ms >= self.max_queued_audio_ms and not self._stop.is_set():
            self._space.clear()
            await self._space.wait()
        self._dispatch(self.session.audio(pcm))

    def send_audio_nowait(self, pcm: bytes) -> bool:
        """Queue one frame from a real-time source; when the queue is full the frame is dropped
        (and counted in ``dropped_audio_ms``) rather than delaying the source."""
        if self.queued_audio_ms >= self.max_queued_audio_ms:
            self.dropped_audio_ms += len(pcm) / BYTES_PER_MS
            return False
        self._dispatch(self.session.audio(pcm))
        return True

    async def forward_audio(self, audio_b64: str, nbytes: int | None = None) -> bool:
        """One frame of base64 audio from a real-time source, forwarded as it is (a relay's path).

        Like :meth:`send_audio_nowait`, a frame that finds the queue full is dropped and counted.
        When nothing is queued or being sent before it, the frame is sent from the caller's task,
        without a hop through the sender task; otherwise it is queued behind the rest, in order.
        ``nbytes`` is its PCM16 byte count if the caller checked it already
        (:func:`~voicerelay.protocol.audio.b64_pcm16_nbytes`); else bad audio raises
        :class:`~voicerelay.protocol.audio.AudioFormatError`.
        """
        if nbytes is None:
            nbytes = b64_pcm16_nbytes(audio_b64)
        if self.queued_audio_ms >= self.max_queued_audio_ms:
            self.dropped_audio_ms += nbytes / BYTES_PER_MS
            return False
        effects = self.session.audio_b64(audio_b64, nbytes)
        conn = self.connection
        if not (self._sending and conn is not None and not self._inflight and self._out.empty()):
            self._dispatch(effects)
            return True
        for effect in effects:  # audio_b64 has no effect but this SendEvent (or none)
            assert isinstance(effect, SendEvent)
            ms = append_ms(effect.event)  # (as the ledger counts it when it drops the append)
            self.queued_audio_ms += ms  # until it is sent, as if queued
            try:
                await self._transmit(conn, effect.event, ms)
            except ConnectionLost:  # it stays in flight for the next connection
                pass
        return True

    def commit(self) -> None:
        self._dispatch(self.session.commit(self.clock()))

    def clear(self) -> None:
        self._dispatch(self.session.clear())

    def user_text(self, text: str, respond: bool = True) -> None:
        self._dispatch(self.session.user_text(text, self.clock(), respond))

    def say(self, text: str) -> None:
        self._dispatch(self.session.say(text))

    def interrupt(self) -> None:
        self._dispatch(self.session.interrupt())

    def playback_stopped(self, item_id: str | None, played_ms: int) -> None:
        self._dispatch(self.session.playback_stopped(item_id, played_ms))

    def playback_idle(self) -> None:
        self._dispatch(self.session.playback_idle())

    def tool_result(self, call_id: str, output: str) -> None:
        self._dispatch(self.session.tool_result(call_id, output))

    async def stop(self) -> None:
        """End the session: the upstream is closed and :meth:`run` returns."""
        self._stop.set()
        self._space.set()

    # ----------------------------------------------------------------------------- effects

    def _dispatch(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, SendEvent):
                if effect.event["type"] == "input_audio_buffer.append":
                    self.queued_audio_ms += append_ms(effect.event)
                self._out.put_nowait(effect.event)
                continue
            if isinstance(effect, Error) and effect.fatal:
                self._fatal = effect
            self._notify(effect)

    def _notify(self, observation: Observation) -> None:
        for observer in list(self._observers):
            try:
                observer(observation)
            except Exception:  # an observer's bug must not take the session down
                log.exception("observer %r failed on %r", observer, type(observation).__name__)

    # ----------------------------------------------------------------------------- the pump

    async def run(self) -> None:
        """Run the session until :meth:`stop`; raise ``UpstreamError`` if the upstream fails."""
        retries_left = self.reconnects
        try:
            while not self._stop.is_set():
                conn = await self.spec.connect()
                if self.connections:
                    self.session.reset_for_new_connection()
                self.connections += 1
                self._notify(Notice("connected", f"connected to {self.spec.describe()}"))
                ending, outcome = await self._pump(conn)
                if ending is Ending.STOPPED:
                    break
                if ending is Ending.RECYCLE:
                    self.recycles += 1
                    self._dispatch(self.session.connection_lost(self.clock()))  # (the cap cut a reply short)
                    self._notify(Notice("recycled", "opened a new upstream session before the server's time limit "
                                                    "(the conversation's text history was carried over)"))
                    continue
                if self._fatal is not None and self._fatal.code != "session_expired":
                    raise UpstreamClosed(f"{self.spec.describe()} ended the session: {self._fatal.code}: "
                                         f"{self._fatal.message}", self._fatal.code)
                if retries_left <= 0:
                    raise UpstreamClosed(f"lost the connection to {self.spec.describe()} ({outcome})")
                retries_left -= 1
                self._dispatch(self.session.connection_lost(self.clock()))  # a cut reply ends as interrupted
                self._recovering = True
                self._notify(Notice("reconnecting", f"lost the connection to {self.spec.describe()} ({outcome}); "
                                                    "reconnecting"))
        except UpstreamError as exc:
            self._notify(Notice("ended", str(exc)))
            self._dispatch(self.session.closed(str(exc)))
            raise
        self._dispatch(self.session.closed("stopped"))
        self._notify(Notice("ended", "session ended"))

    async def _pump(self, conn: Connection) -> tuple[Ending, str]:
        """Serve one connection; return why it ended (and, when lost, how it closed)."""
        self.connection = conn
        self._fatal = None
        self._recycle.clear()
        self._cap = SessionCap()
        try:
            for effect in self.session.connected():  # configuration and history go first
                await self._send(conn, effect.event)
            for event in self.resend.take():
                seq = self.resend.number()
                await self._send(conn, event)
                self.resend.written(seq, event)
            inflight, self._inflight = self._inflight, []
            for event in inflight:
                await self._transmit(conn, event)
            tasks = {
                asyncio.create_task(self._reader(conn), name="relay reader"),
                asyncio.create_task(self._sender(conn), name="relay sender"),
                asyncio.create_task(self._stop.wait(), name="relay stop"),
                asyncio.create_task(self._recycle.wait(), name="relay recycle"),
                asyncio.create_task(self._recycle_timer(), name="relay recycle timer"),
            }
            self._sending = True
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._stop.is_set():
                return Ending.STOPPED, "stopped"
            if self._recycle.is_set() or (self._fatal is not None and self._fatal.code == "session_expired"):
                return Ending.RECYCLE, "recycle"
            for task in done:
                if task.exception() is not None and not isinstance(task.exception(), ConnectionLost):
                    raise task.exception()  # type: ignore[misc]
            await self._drain(conn)
            code = conn.close_code
            return Ending.LOST, (f"closed with code {code}" if code is not None and code != 1006
                                 else "connection dropped")
        except ConnectionLost:
            await self._drain(conn)
            return Ending.LOST, "connection dropped"
        finally:
            self._sending = False
            self._ready.clear()
            await conn.close(2)
            self.connection = None

    async def _send(self, conn: Connection, event: Event) -> None:
        await conn.send(wirejson.dumpb(event))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("-> %s", elide(event))
        if self.recorder is not None:
            self.recorder.record("up", event)

    async def _sender(self, conn: Connection) -> None:
        while True:
            await self._transmit(conn, await self._out.get())

    async def _transmit(self, conn: Connection, event: Event, ms: float | None = None) -> None:
        """Send one event taken from the queue (or handed over directly), with its bookkeeping.

        Until it is sent it is in flight (a new connection sends it again); an append counts in
        ``queued_audio_ms`` until then, and is kept for resending, numbered in the order written.
        ``ms`` is an append's :func:`append_ms`, if the caller computed it already.
        """
        append = event["type"] == "input_audio_buffer.append"
        inflight = self._inflight
        inflight.append(event)
        if append:
            seq = self.resend.number()  # send() writes before its first await: this is the order on the wire
        await self._send(conn, event)
        if inflight[-1] is event:  # (nothing was sent meanwhile: the usual case)
            inflight.pop()
        else:
            for i, flying in enumerate(inflight):
                if flying is event:
                    del inflight[i]
                    break
        if append:
            if ms is None:
                ms = append_ms(event)
            self.resend.written(seq, event, ms)
            queued = self.queued_audio_ms - ms
            self.queued_audio_ms = queued if queued > 0.0 else 0.0
            if queued < self.max_queued_audio_ms:
                self._space.set()

    async def _reader(self, conn: Connection) -> None:
        async for message in conn.frames():
            if self._flush is None:
                self._on_message(message)
            else:
                self._flush_follows = True
                try:
                    self._on_message(message)
                finally:
                    self._flush_follows = False
                    try:
                        await self._flush()
                    except Exception:  # a front door's bug must not take the session down
                        log.exception("flush %r failed", self._flush)
            if self._fatal is not None:
                return

    async def _drain(self, conn: Connection) -> None:
        """Read what the server said before it closed (its last words are often an ``error``)."""
        with contextlib.suppress(ConnectionLost, TimeoutError):
            while self._fatal is None:
                self._on_message(await conn.recv(1.0))

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = wirejson.loads(message)
        except ValueError:
            self._notify(Error("invalid_server_event", "the server sent a frame that is not JSON"))
            return
        if self.recorder is not None:
            self.recorder.record("down", event)
        if isinstance(event, dict):
            self.resend.server_event(event)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("<- %s", elide(event) if isinstance(event, dict) else event)
        effects = self.session.server_event(event, self.clock())
        if isinstance(event, dict) and event.get("type") == "session.created":
            self._cap.session_created(event, self.clock(), time.time())
        self._dispatch(effects)
        if self.session.ready and not self._ready.is_set():
            self._ready.set()
            if self._recovering:
                self._recovering = False
                self._notify(Notice("recovered", f"reconnected to {self.spec.describe()}; the session goes on"))

    async def _recycle_timer(self) -> None:
        """Recycle before the cap: at a quiet moment once inside the margin, or just before it."""
        while True:
            now = self.clock()
            quiet = self.session.state in (State.LISTENING, State.CONNECTING)
            if self._cap.should_recycle(now, quiet):
                break
            start = self._cap.recycle_from
            await asyncio.sleep(0.1 if start is None else max(0.05, start - now))
        self._recycle.set()
