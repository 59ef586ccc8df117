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
same way a few times; then :meth:`Relay.run` raises an :class:`~voicerelay.upstream.UpstreamError`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .protocol import wirejson
from .protocol.audio import BYTES_PER_MS, b64_pcm16_nbytes
from .protocol.config import RealtimeConfig
from .protocol.events import Event, elide
from .protocol.session import Effect, Error, RealtimeSession, SendEvent, State
from .upstream import UpstreamClosed, UpstreamError, UpstreamSpec, open_connection

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """Something the relay did on its own: ``connected``, ``recycled``, ``reconnecting``, ``ended``."""

    kind: str
    message: str


Observation = Effect | Notice
Observer = Callable[[Observation], None]


class EventRecorder(Protocol):
    def record(self, direction: str, event: Event) -> None: ...


#: End the proactive recycle this long (at most) before the server's cap.
RECYCLE_MARGIN_MAX = 60.0
#: Audio of unanswered turns kept for re-sending after a recycle or reconnect.
RESEND_MAX_MS = 15_000


def _append_ms(event: Event) -> float:
    """Milliseconds of audio in an ``input_audio_buffer.append`` (from its base64 length)."""
    return len(event["audio"]) * 3 / 4 / BYTES_PER_MS


class Relay:
    def __init__(self, config: RealtimeConfig, spec: UpstreamSpec, *, max_queued_audio_ms: int = 5000,
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
        self._flush = flush
        self._flush_follows = False
        self._inflight: list[Event] = []  # taken for sending, not sent yet: sent again on a new connection
        self._sending = False  # the sender task runs on the open connection: front doors may send directly
        # appends (numbered) whose turn has not been answered yet: a new connection gets them
        # again, so an utterance cut by a recycle or a dropped connection is not lost
        # (two deques, not one of (number, event) tuples: a tuple holding a dict stays tracked by the
        # garbage collector, and 15 s of them per session made its full collections long pauses)
        self._unanswered: collections.deque[Event] = collections.deque()
        self._unanswered_seqs: collections.deque[int] = collections.deque()
        self._unanswered_ms = 0.0
        self._append_seq = 0
        self._committed_upto = 0  # appends numbered below this belong to a committed turn
        self._expires_at: float | None = None  # clock() time of the server's cap
        self._ws: ClientConnection | None = None

    # ----------------------------------------------------------------------------- observing

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` with every effect and notice; returns an unsubscribe function."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def snapshot(self) -> dict[str, Any]:
        """Queue sizes and state, readable at any time (the TUI and monitors poll this)."""
        remaining = None if self._expires_at is None else max(0.0, self._expires_at - self.clock())
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
        ws = self._ws
        if not (self._sending and ws is not None and self._out.empty() and not self._inflight):
            self._dispatch(effects)
            return True
        for effect in effects:  # audio_b64 has no effect but this SendEvent (or none)
            assert isinstance(effect, SendEvent)
            self.queued_audio_ms += _append_ms(effect.event)  # until it is sent, as if queued
            with contextlib.suppress(ConnectionClosed):  # then it stays in flight for the next connection
                await self._transmit(ws, effect.event)
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
                    self.queued_audio_ms += _append_ms(effect.event)
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
                ws = await open_connection(self.spec)
                if self.connections:
                    self.session.reset_for_new_connection()
                self.connections += 1
                self._notify(Notice("connected", f"connected to {self.spec.describe()}"))
                outcome = await self._pump(ws)
                if outcome == "stopped":
                    break
                if outcome == "recycle":
                    self.recycles += 1
                    self._notify(Notice("recycled", "opened a new upstream session before the server's time limit "
                                                    "(the conversation's text history was carried over)"))
                    continue
                if self._fatal is not None and self._fatal.code != "session_expired":
                    raise UpstreamClosed(f"{self.spec.describe()} ended the session: {self._fatal.code}: "
                                         f"{self._fatal.message}", self._fatal.code)
                if retries_left <= 0:
                    raise UpstreamClosed(f"lost the connection to {self.spec.describe()} ({outcome})")
                retries_left -= 1
                self._notify(Notice("reconnecting", f"lost the connection to {self.spec.describe()} ({outcome}); "
                                                    "reconnecting"))
        except UpstreamError as exc:
            self._notify(Notice("ended", str(exc)))
            self._dispatch(self.session.closed(str(exc)))
            raise
        self._dispatch(self.session.closed("stopped"))
        self._notify(Notice("ended", "session ended"))

    async def _pump(self, ws: ClientConnection) -> str:
        """Serve one connection; return why it ended: stopped, recycle, or a close description."""
        self._ws = ws
        self._fatal = None
        self._recycle.clear()
        self._expires_at = None
        try:
            for effect in self.session.connected():  # configuration and history go first
                await self._send(ws, effect.event)
            resend = list(self._unanswered)
            self._unanswered.clear()
            self._unanswered_seqs.clear()
            self._unanswered_ms = 0.0
            self._committed_upto = 0
            for event in resend:
                self._append_seq += 1
                seq = self._append_seq
                await self._send(ws, event)
                self._keep_unanswered(seq, event)
            inflight, self._inflight = self._inflight, []
            for event in inflight:
                await self._transmit(ws, event)
            tasks = {
                asyncio.create_task(self._reader(ws), name="relay reader"),
                asyncio.create_task(self._sender(ws), name="relay sender"),
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
                return "stopped"
            if self._recycle.is_set() or (self._fatal is not None and self._fatal.code == "session_expired"):
                return "recycle"
            for task in done:
                if task.exception() is not None and not isinstance(task.exception(), ConnectionClosed):
                    raise task.exception()  # type: ignore[misc]
            await self._drain(ws)
            code = ws.close_code
            return f"closed with code {code}" if code is not None and code != 1006 else "connection dropped"
        except ConnectionClosed:
            await self._drain(ws)
            return "connection dropped"
        finally:
            self._sending = False
            self._ready.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
            self._ws = None

    async def _send(self, ws: ClientConnection, event: Event) -> None:
        await ws.send(wirejson.dumps(event))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("-> %s", elide(event))
        if self.recorder is not None:
            self.recorder.record("up", event)

    async def _sender(self, ws: ClientConnection) -> None:
        while True:
            await self._transmit(ws, await self._out.get())

    async def _transmit(self, ws: ClientConnection, event: Event) -> None:
        """Send one event taken from the queue (or handed over directly), with its bookkeeping.

        Until it is sent it is in flight (a new connection sends it again); an append counts in
        ``queued_audio_ms`` until then, and is kept for resending, numbered in the order written.
        """
        append = event["type"] == "input_audio_buffer.append"
        self._inflight.append(event)
        if append:
            self._append_seq += 1  # ws.send writes before its first await: this is the order on the wire
            seq = self._append_seq
        await self._send(ws, event)
        for i, flying in enumerate(self._inflight):
            if flying is event:
                del self._inflight[i]
                break
        if append:
            self._keep_unanswered(seq, event)
            self.queued_audio_ms = max(0.0, self.queued_audio_ms - _append_ms(event))
            if self.queued_audio_ms < self.max_queued_audio_ms:
                self._space.set()

    def _keep_unanswered(self, seq: int, event: Event) -> None:
        seqs = self._unanswered_seqs
        if seqs and seqs[-1] > seq:  # one written after it waited less to be sent
            i = len(seqs)
            while i and seqs[i - 1] > seq:
                i -= 1
            seqs.insert(i, seq)
            self._unanswered.insert(i, event)
        else:
            seqs.append(seq)
            self._unanswered.append(event)
        self._unanswered_ms += _append_ms(event)
        while self._unanswered_ms > RESEND_MAX_MS and len(self._unanswered) > 1:
            self._drop_oldest_unanswered()

    def _drop_oldest_unanswered(self) -> None:
        self._unanswered_seqs.popleft()
        self._unanswered_ms -= _append_ms(self._unanswered.popleft())

    def _track_answers(self, event: Event) -> None:
        """Forget resendable audio once its turn is answered (or the buffer was cleared)."""
        etype = event.get("type")
        if etype in ("input_audio_buffer.committed", "input_audio_buffer.cleared"):
            self._committed_upto = self._append_seq + 1
        if etype == "input_audio_buffer.cleared" or (
                etype == "response.done" and ((event.get("response") or {}).get("metadata") or {}).get("voicerelay")
                != "say"):
            while self._unanswered_seqs and self._unanswered_seqs[0] < self._committed_upto:
                self._drop_oldest_unanswered()

    async def _reader(self, ws: ClientConnection) -> None:
        async for message in ws:
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

    async def _drain(self, ws: ClientConnection) -> None:
        """Read what the server said before it closed (its last words are often an ``error``)."""
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while self._fatal is None:
                self._on_message(await asyncio.wait_for(ws.recv(), 1.0))

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = wirejson.loads(message)
        except ValueError:
            self._notify(Error("invalid_server_event", "the server sent a frame that is not JSON"))
            return
        if self.recorder is not None:
            self.recorder.record("down", event)
        if isinstance(event, dict):
            self._track_answers(event)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("<- %s", elide(event) if isinstance(event, dict) else event)
        effects = self.session.server_event(event, self.clock())
        if isinstance(event, dict) and event.get("type") == "session.created":
            self._note_expiry(event)
        self._dispatch(effects)
        if self.session.ready and not self._ready.is_set():
            self._ready.set()

    def _note_expiry(self, event: Event) -> None:
        expires = (event.get("session") or {}).get("expires_at")
        if isinstance(expires, (int, float)) and expires > 0:
            self._expires_at = self.clock() + (expires - time.time())

    async def _recycle_timer(self) -> None:
        """Recycle before the cap: at a quiet moment once inside the margin, or just before it."""
        while self._expires_at is None:
            await asyncio.sleep(0.1)
        lifetime = self._expires_at - self.clock()
        margin = min(RECYCLE_MARGIN_MAX, max(0.5, lifetime * 0.25))
        await asyncio.sleep(max(0.0, lifetime - margin))
        hard = self._expires_at - margin / 4
        while self.clock() < hard and self.session.state not in (State.LISTENING, State.CONNECTING):
            await asyncio.sleep(0.05)
        self._recycle.set()
