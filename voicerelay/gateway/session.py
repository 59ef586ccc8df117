"""One browser's session: its Relay, its limits, its playback, and the translation both ways
(browser events -> Relay inputs, Relay observations -> browser events).

The session is one :class:`~voicerelay.conversation.Conversation`, as ``talk`` and ``replay`` are:
the browser is its source (``audio_data``, ``text_input``, ...) and, through a
:class:`~voicerelay.gateway.playback.BrowserPlayback`, its sink. The playback says what the browser
has played (its own ``playback_position`` reports, else an estimate), so the conversation's
barge-in rule (the truncate carries ``min(played, received)``) and its idle rule (listening once
the browser played everything) hold here exactly as for the speakers.

What waits for a browser that stopped reading is bounded: the connection's
:class:`~voicerelay.gateway.wire.Wire` says when the browser takes nothing, and once more than
``max_backlog_bytes`` were queued for it since, the session ends (``error {code: "not_reading"}``
and ``session_ended {status: "not_reading"}``, which such a browser finds at the end of what
waits for it, should it read again) and its upstream is closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import socketio
from engineio.exceptions import SocketIsClosedError
from socketio import packet

from ..conversation import Conversation, Interrupted
from ..protocol.audio import BYTES_PER_MS
from ..protocol.config import RealtimeConfig
from ..protocol.lint import StreamLinter
from ..protocol.session import Error, PlayAudio, ResponseDone, StateChanged, ToolCall, Transcript
from ..relay import Notice, Observation, Relay
from ..upstream import UpstreamError, UpstreamSpec
from . import contract as c
from .modes import AgentWrapper, EventEmitter, call_function
from .monitor import Monitor, SessionLog
from .playback import BrowserPlayback
from .registry import SessionRegistry
from .wire import Wire

__all__ = ["MAX_BACKLOG_BYTES", "EventEmitter", "GatewaySession", "SessionOptions"]

log = logging.getLogger(__name__)

RATE_WINDOW_S = 5.0
RATE_LIMIT = 2.0  # times real time, sustained over RATE_WINDOW_S
READY_TIMEOUT_S = 15.0
#: Queued for a browser that takes nothing, at most: then the session ends (``not_reading``). About
#: 16 s of reply audio in base64, on top of what the sockets' buffers hold; a browser that reads,
#: however slowly, never meets it (what counts is what was queued since it last took anything).
MAX_BACKLOG_BYTES = 1024 * 1024
#: The relay's notices a browser hears of: the upstream connection was lost (a reconnect is under
#: way), or it is back and the session goes on (a failed reconnect ends the session with an error).
UPSTREAM_STATUS = {"reconnecting": "lost", "recovered": "recovered"}


@dataclasses.dataclass(frozen=True, slots=True)
class SessionOptions:
    """What every session of a gateway shares (set once, by the gateway)."""

    max_session_seconds: float = 3600.0
    record_dir: Path | None = None
    node_id: str | None = None
    on_transcript: Callable[..., Any] | None = None  # agent-wrapper mode
    function_map: Mapping[str, Callable[..., Any]] | None = None  # function-calling mode
    tool_timeout: float = 30.0
    lint: bool = True  # the protocol linter over every session's wire events (voicerelay.protocol.lint)
    max_backlog_bytes: int = MAX_BACKLOG_BYTES


class GatewaySession:
    """One browser's session; see the module docstring."""

    def __init__(self, sio: socketio.AsyncServer, registry: SessionRegistry[GatewaySession], monitor: Monitor,
                 options: SessionOptions, sid: str, chat_payload: dict[str, Any], client: str,
                 playback: BrowserPlayback | None = None, wire: Wire | None = None) -> None:
        self.sio = sio
        self.registry = registry
        self.monitor = monitor
        self.options = options
        self.sid = sid
        self.id = f"vr_{sid}"
        self.chat_payload = chat_payload
        self.client = client
        self.started_at = time.monotonic()
        self.relay: Relay | None = None
        self.conversation: Conversation | None = None
        self.playback = playback or BrowserPlayback()
        self.wire = wire  # the browser's connection as its transport sees it (None: not served by Gateway.asgi_app)
        self.task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.errors = 0
        self.ended = False
        self.log = SessionLog()  # what /monitor shows of this session
        self.lint = StreamLinter() if options.lint else None
        self.followers: set[str] = set()  # other connections (any node) that acted on this session
        self.agent = AgentWrapper(options.on_transcript, self, options.tool_timeout) \
            if options.on_transcript is not None else None
        self._delta_index = 0
        self._rate: collections.deque[tuple[float, float]] = collections.deque()
        self._rate_ms = 0.0
        self._last_user = ""
        self._recorder: Any = None
        self._outbox: collections.deque[tuple[str, Any]] = collections.deque()  # for the browser, in order
        self._flushing = False
        self._kick_pending = False
        self._not_reading = False  # the browser stopped reading: the session is ending

    # ----------------------------------------------------------------------------- to the browser

    async def emit(self, name: str, data: Any = None, binary: bool | None = None) -> None:
        """Send an event to the browser and the followers. Each connection's transport queues it
        and nothing is raised (a connection that is gone gets nothing; Redis' failures are logged
        by its manager). ``binary=False`` says ``data`` holds no bytes (python-socketio need not
        look); ``None`` lets it look."""
        if isinstance(data, dict) and "session_id" not in data:
            data = {**data, "session_id": self.id}  # an addition: followers act on several sessions
        await self._to_browser(name, data, binary)
        if self.followers:
            local = self.registry.clients
            for follower in list(self.followers):  # programs acting on this session, maybe on other nodes
                await self.sio.emit(name, data, to=follower, ignore_queue=follower in local)

    async def _to_browser(self, name: str, data: Any, binary: bool | None) -> None:
        """The event to this session's own browser, which is connected to this node: never through
        Redis (audio must not depend on it). What ``sio.emit(name, data, to=sid, ignore_queue=True)``
        does, less its cost per event (a task per packet sent, a room looked up, the payload searched
        for bytes when the caller knows it holds none): the Socket.IO packet is encoded once and
        handed to engine.io, which queues it for the connection's writer, in order."""
        sio = self.sio
        eio_sid = sio.manager.eio_sid_from_sid(self.sid, "/")
        if eio_sid is None:  # the browser is gone (as python-socketio's emit, nothing is sent)
            return
        encoded = sio.packet_class(packet.EVENT, data=[name, data], namespace="/", binary=binary).encode()
        parts = encoded if isinstance(encoded, list) else (encoded,)  # binary attachments follow the packet
        wire = self.wire
        if wire is not None and wire.stalled and not self.ended:
            self._queued_while_stalled(wire, sum(len(part) + 1 for part in parts))  # (+1: engine.io's type)
        try:
            for part in parts:
                await sio.eio.send(eio_sid, part)
        except SocketIsClosedError:  # closed since it was looked up: as for a browser gone
            pass

    def _queued_while_stalled(self, wire: Wire, nbytes: int) -> None:
        """The browser takes nothing: count what waits for it (``nbytes``, the packet's size) and
        end the session once it is over the bound."""
        waiting = wire.queued(nbytes)
        if waiting > self.options.max_backlog_bytes and not self._not_reading:
            self._not_reading = True
            self._spawn(self._stopped_reading(waiting))

    async def _stopped_reading(self, waiting: int) -> None:
        limit = self.options.max_backlog_bytes
        log.warning("session %s: the browser took nothing while %d KiB were queued for it (the limit is %d KiB): "
                    "ending the session", self.id, waiting // 1024, limit // 1024)
        why = (f"the browser read nothing while {waiting // 1024} KiB of events were queued for it (the limit is "
               f"{limit // 1024} KiB): the session ends")
        await self.end("not_reading", error=("not_reading", why))

    def _emit_soon(self, name: str, data: Any = None) -> None:
        """Queue an event for the browser (observers are sync); :meth:`flush` sends the queue in order.
        ``data`` holds no bytes (what observers send is made of the server's JSON and plain values).

        The relay's reader flushes after each server event, in its own task; what is queued
        elsewhere (a browser's request, a timer) is flushed by a task started at the loop's next
        turn, if nobody flushed it by then.
        """
        self._outbox.append((name, data))
        if not self._kick_pending and not (self.relay is not None and self.relay.flush_follows):
            self._kick_pending = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_pending = False
        if self._outbox and not self._flushing and not self.ended:
            self._spawn(self.flush())

    @property
    def has_output(self) -> bool:
        """Whether something waits in the queue for the browser (:meth:`flush` sends it)."""
        return bool(self._outbox)

    async def flush(self) -> None:
        """Send what the observers queued for the browser, in order (one flush at a time: a flush
        that finds another under way leaves the queue to it). Cheap when nothing is queued."""
        if self._flushing or not self._outbox:
            return
        self._flushing = True
        try:
            while self._outbox:
                await self.emit(*self._outbox.popleft(), False)
        finally:
            self._flushing = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: %s", self.id, task.exception(), exc_info=task.exception())

    async def error(self, code: str, message: str) -> None:
        self.errors += 1
        await self.emit(c.ERROR, c.error_payload(code, message), False)

    def refused(self) -> None:
        """The browser sent something the contract refuses (it gets its ``error`` from the namespace)."""
        self.errors += 1

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self, spec: UpstreamSpec, config: RealtimeConfig) -> None:
        if self.options.record_dir is not None:
            from ..recording import Recorder

            self._recorder = Recorder(self.options.record_dir / self.id,
                                      {"command": "serve", "session_id": self.id, "client": self.client})
        self.relay = Relay(config, spec, recorder=self, flush=self.flush)
        self.conversation = Conversation(self.relay, self.playback, ready_timeout=READY_TIMEOUT_S)
        self.conversation.subscribe(self._observe)
        await self.emit(c.SESSION_CREATED, {"session_id": self.id, "status": "created"})
        self.task = asyncio.create_task(self._run(), name=f"gateway session {self.id}")

    def record(self, direction: str, event: dict[str, Any]) -> None:
        """The Relay's recorder hook: every wire event, to the recording and any monitor."""
        if self._recorder is not None:
            self._recorder.record(direction, event)
        if self.monitor.watchers:
            self.log.add_event(direction, event)
        if self.lint is not None:
            for finding in self.lint.feed(direction, time.monotonic(), event):
                log.warning("session %s %s", self.id, finding.line())
                self.log.add_transcript("lint", finding.short())
                self.monitor.touch(self)

    async def _run(self) -> None:
        assert self.conversation is not None
        run = self.conversation.start()
        try:
            await self.conversation.wait_ready()
            await self.emit(c.SESSION_STARTED, {"session_id": self.id, "message": "connected to the Realtime upstream"})
            limit = self.options.max_session_seconds - (time.monotonic() - self.started_at)
            done, _ = await asyncio.wait({run}, timeout=max(0.0, limit))
            if not done:
                await self.error("session_timeout", f"the session reached its limit of "
                                                    f"{self.options.max_session_seconds:g} s")
                await self.end("expired")
            await run
        except UpstreamError as exc:
            await self.error("upstream_error", str(exc))
            await self.end("error")
        except asyncio.CancelledError:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)  # cancelled with the session: how it ends is moot
            raise
        except Exception as exc:  # a bug below the session: logged with its traceback, told to the browser
            log.exception("session %s failed", self.id)
            await self.error("internal_error", f"{type(exc).__name__}: {exc}")
            await self.end("error")

    async def end(self, status: str = "ended", notify: bool = True, ack_timeout: float | None = None,
                  error: tuple[str, str] | None = None) -> None:
        """Stop the relay and everything of this session; tell the browser unless it is gone.

        With ``ack_timeout``, wait (at most that long) until the browser acknowledged
        ``session_ended`` (Socket.IO's ack: python-socketio clients and the demo page send it).
        ``error`` (code, message) is why it ends: the browser gets it just before ``session_ended``.
        """
        if self.ended:
            return
        self.ended = True
        if self.conversation is not None:
            await self.conversation.stop()
        if self.task is not None and self.task is not asyncio.current_task():
            # _run reports its own failures; one that does not end within a second is cancelled
            done, _ = await asyncio.wait({self.task}, timeout=1.0)
            if not done:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
        if notify:  # what the relay said before the end reaches the browser before session_ended
            while self._outbox:
                await self.emit(*self._outbox.popleft(), False)
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self.agent is not None:
            self.agent.cancel()
        if self._recorder is not None:
            self._recorder.close()
        self.registry.remove(self)
        self.monitor.closed(self, status)
        if notify:
            if error is not None:
                await self.error(*error)
            await self._goodbye(status, ack_timeout)

    async def _goodbye(self, status: str, ack_timeout: float | None) -> None:
        data = {"status": status, "session_id": self.id}
        if ack_timeout is None:
            await self.emit(c.SESSION_ENDED, data)
            return
        acked = asyncio.get_running_loop().create_future()

        def ack(*_: Any) -> None:
            if not acked.done():
                acked.set_result(None)

        await self.sio.emit(c.SESSION_ENDED, data, to=self.sid, ignore_queue=True, callback=ack)
        for follower in list(self.followers):
            await self.sio.emit(c.SESSION_ENDED, data, to=follower, ignore_queue=follower in self.registry.clients)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(acked, ack_timeout)

    def state(self) -> dict[str, Any]:
        """What a client mirrors (``session_state``) and a monitor shows."""
        from ..cost import cost_state as _cost_state  # (the session's cost so far: voicerelay.cost)

        snapshot = self.relay.snapshot() if self.relay is not None else {}
        turns = self.relay.session.turns if self.relay is not None else []
        last = next((t.first_audio_ms for t in reversed(turns) if t.first_audio_ms is not None), None)
        return {
            "session_id": self.id, "node": self.options.node_id,
            "chat_active": not self.ended and self.relay is not None,
            "ai_state": snapshot.get("state"), "client": self.client,
            "duration_s": round(time.monotonic() - self.started_at, 1), "errors": self.errors,
            "turns": len(turns), "last_latency_ms": None if last is None else round(last),
            "queues": {k: snapshot.get(k) for k in ("queued_events", "queued_audio_ms", "dropped_audio_ms")},
            "session_remaining_s": snapshot.get("session_remaining_s"),
            "cost": None if self.relay is None else _cost_state(self.relay.session, self.relay.spec),
            "lint": None if self.lint is None else self.lint.summary(),
        }

    # ----------------------------------------------------------------------------- from the browser

    async def audio(self, audio_b64: str, nbytes: int) -> None:
        """One ``audio_data`` chunk, checked (:func:`contract.check_audio`): forwarded as it is."""
        assert self.relay is not None
        now = time.monotonic()
        ms = nbytes / BYTES_PER_MS
        self._rate.append((now, ms))
        self._rate_ms += ms
        while self._rate and self._rate[0][0] < now - RATE_WINDOW_S:
            self._rate_ms -= self._rate.popleft()[1]
        if self._rate_ms > RATE_LIMIT * RATE_WINDOW_S * 1000:
            raise c.ContractError("rate_limited", f"audio arrives faster than {RATE_LIMIT:g}x real time")
        await self.relay.forward_audio(audio_b64, nbytes)

    def playback_position(self, item_id: str, played_ms: float) -> None:
        """``playback_position``: the browser has played ``played_ms`` of ``item_id``."""
        if not self.playback.report(item_id, played_ms):
            log.debug("session %s: playback_position for an item it was not sent: %s", self.id, item_id)

    # ----------------------------------------------------------------------------- from the relay

    def _observe(self, obs: Observation | Interrupted) -> None:
        self.monitor.touch(self)  # a set insertion; the monitor publishes at most 10/s
        if isinstance(obs, PlayAudio):  # (the Conversation fed it to self.playback)
            self._delta_index += 1
            # the server's base64 as it is (checked by the session); session_id as emit() adds it
            self._emit_soon(c.AUDIO_DELTA, {"audio": obs.audio_b64, "index": self._delta_index,
                                            "item_id": obs.item_id, "session_id": self.id})
        elif isinstance(obs, Interrupted):  # (the Conversation stopped self.playback and truncated)
            self._emit_soon(c.INTERRUPTED, {"item_id": obs.item_id, "played_ms": obs.played_ms,
                                            "received_ms": obs.received_ms})
        elif isinstance(obs, Transcript):
            self._transcript(obs)
        elif isinstance(obs, StateChanged):
            self._emit_soon(c.AI_STATE, {"state": obs.new.value})
        elif isinstance(obs, ResponseDone):
            self._emit_soon(c.RESPONSE_COMPLETE, {"response_id": obs.response_id, "status": obs.status})
        elif isinstance(obs, ToolCall):
            self._spawn(call_function(self.options.function_map or {}, self.options.tool_timeout, self, obs))
        elif isinstance(obs, Error):
            self.errors += 1
            self._emit_soon(c.ERROR, c.error_payload(obs.code, obs.message))
        elif isinstance(obs, Notice) and obs.kind == "recycled":
            self._emit_soon(c.SESSION_RECYCLED, {"message": obs.message})
        elif isinstance(obs, Notice) and obs.kind in UPSTREAM_STATUS:
            self._emit_soon(c.UPSTREAM_STATUS, {"status": UPSTREAM_STATUS[obs.kind], "message": obs.message})

    def _transcript(self, obs: Transcript) -> None:
        if obs.final and obs.text:
            self.log.add_transcript(obs.role, obs.text)
        if obs.role == "user":
            self._emit_soon(c.USER_TRANSCRIPT, {"text": obs.text, "final": obs.final, "item_id": obs.item_id})
            if obs.final and obs.text:
                self._last_user = obs.text
                if self.agent is not None:
                    self._spawn(self.agent.heard_user(obs.text))
            return
        self._emit_soon(c.AI_TRANSCRIPT, {"text": obs.text, "final": obs.final, "item_id": obs.item_id})
        if obs.final:
            answers = self.agent.said(obs.text, obs.out_of_band) if self.agent is not None else not obs.out_of_band
            heard = self._last_user if answers else ""
            self._emit_soon(c.AI_RESPONSE, {"transcript": heard, "response": obs.text})

    async def say(self, text: str) -> str:
        """``TTS(text)`` of agent-wrapper mode (see :meth:`AgentWrapper.say`)."""
        assert self.agent is not None, "say() is the agent wrapper's TTS"
        return await self.agent.say(text)
