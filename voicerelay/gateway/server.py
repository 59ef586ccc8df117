"""``Gateway``: the Socket.IO edge. Each browser session drives its own Relay.

One python-socketio ``AsyncServer`` (ASGI) serves the ragent event contract (``contract.py``)
on the default namespace, plus three HTTP routes: ``GET /health``, ``GET /session-config`` and
``GET /`` (the demo page, with ``/static/*``). The gateway itself decides nothing about the
Realtime protocol: it turns browser events into Relay inputs and Relay observations into
browser events, and enforces the limits (token, origins, session count and length, chunk size,
audio rate).

Use it as ``voicerelay serve`` or in Python::

    gateway = Gateway(on_transcript=my_agent)          # or tools=..., function_map=...
    app = FastAPI(lifespan=gateway.lifespan)
    app.mount("/voice", gateway.asgi_app())
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import logging
import mimetypes
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import socketio

from ..protocol import wirejson
from ..protocol.audio import BYTES_PER_MS
from ..protocol.config import RealtimeConfig
from ..protocol.events import Dialect
from ..protocol.session import (
    Error,
    PlayAudio,
    ResponseDone,
    StateChanged,
    StopPlayback,
    ToolCall,
    Transcript,
)
from ..relay import Notice, Observation, Relay
from ..upstream import UpstreamError, UpstreamSpec, choose_backend, embedded_spec, remote_spec
from . import contract as c
from .agent import GatewayConfigError, call_maybe_async, check_modes, run_tool
from .monitor import Monitor, SessionLog

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SOCKETIO_JS = Path("socket.io-client") / "dist" / "socket.io.min.js"
RATE_WINDOW_S = 5.0
RATE_LIMIT = 2.0  # times real time, sustained over RATE_WINDOW_S
GC_YOUNG_THRESHOLD = 10_000  # a standalone gateway's first garbage-collector threshold (see _HttpRoutes)


def find_socketio_client(node_modules: str | os.PathLike[str] | None = None) -> Path | None:
    """The browser Socket.IO client installed by ``npm install`` (never committed, never a CDN).

    Looks in ``node_modules`` when given, else in $VOICERELAY_NODE_MODULES, ./node_modules and
    the checkout's node_modules.
    """
    if node_modules is not None:
        candidates = [Path(node_modules)]
    else:
        candidates = [Path(os.environ["VOICERELAY_NODE_MODULES"])] if os.environ.get("VOICERELAY_NODE_MODULES") else []
        candidates += [Path.cwd() / "node_modules", Path(__file__).resolve().parents[2] / "node_modules"]
    for base in candidates:
        if (base / SOCKETIO_JS).is_file():
            return base / SOCKETIO_JS
    return None


INSTALL_HINT = "the browser Socket.IO client is missing: run `npm install` in the voicerelay checkout " \
               "(or set VOICERELAY_NODE_MODULES to a node_modules folder holding socket.io-client)"


class EventEmitter:
    """What an ``on_transcript`` callback gets to reach its browser: ``emit(name, data)``."""

    def __init__(self, session: GatewaySession) -> None:
        self._session = session

    async def emit(self, name: str, data: Any = None) -> None:
        await self._session.emit(name, data)


class GatewaySession:
    """One browser's session: its Relay, its limits, and the translation both ways."""

    def __init__(self, gateway: Gateway, sid: str, chat_payload: dict[str, Any], client: str) -> None:
        self.gateway = gateway
        self.sid = sid
        self.id = f"vr_{sid}"
        self.chat_payload = chat_payload
        self.client = client
        self.started_at = time.monotonic()
        self.relay: Relay | None = None
        self.task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.errors = 0
        self.ended = False
        self._delta_index = 0
        self._rate: collections.deque[tuple[float, float]] = collections.deque()
        self._rate_ms = 0.0
        self._last_user = ""
        self._assistant = ""
        self._item_started: dict[str, float] = {}  # item_id -> when its first delta went out
        self._item_ms: dict[str, int] = {}  # item_id -> audio ms sent to the browser
        self._say_waiters: list[asyncio.Future[str]] = []
        self._recorder: Any = None
        self.log = SessionLog()  # what /monitor shows of this session
        self.followers: set[str] = set()  # other connections (any node) that acted on this session
        self._answering_says = 0  # TTS() calls of the agent still to be heard
        self._outbox: collections.deque[tuple[str, Any]] = collections.deque()  # for the browser, in order
        self._flushing = False
        self._kick_pending = False

    # ----------------------------------------------------------------------------- to the browser

    async def emit(self, name: str, data: Any = None) -> None:
        # the browser is connected to this node: never through Redis (audio must not depend on it)
        if isinstance(data, dict) and "session_id" not in data:
            data = {**data, "session_id": self.id}  # an addition: followers act on several sessions
        await self.gateway.sio.emit(name, data, to=self.sid, ignore_queue=True)
        if self.followers:
            for follower in list(self.followers):  # programs acting on this session, maybe on other nodes
                await self.gateway.sio.emit(name, data, to=follower)

    def _emit_soon(self, name: str, data: Any = None) -> None:
        """Queue an event for the browser (observers are sync); :meth:`flush` sends the queue in order.

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

    async def flush(self) -> None:
        """Send what the observers queued for the browser, in order (one flush at a time: a flush
        that finds another under way leaves the queue to it)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._outbox:
                await self.emit(*self._outbox.popleft())
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
        await self.emit(c.ERROR, c.error_payload(code, message))

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self, spec: UpstreamSpec, config: RealtimeConfig) -> None:
        if self.gateway.record_dir is not None:
            from ..recording import Recorder

            self._recorder = Recorder(self.gateway.record_dir / self.id,
                                      {"command": "serve", "session_id": self.id, "client": self.client})
        self.relay = Relay(config, spec, recorder=self, flush=self.flush)
        self.relay.subscribe(self._observe)
        await self.emit(c.SESSION_CREATED, {"session_id": self.id, "status": "created"})
        self.task = asyncio.create_task(self._run(), name=f"gateway session {self.id}")

    def record(self, direction: str, event: dict[str, Any]) -> None:
        """The Relay's recorder hook: every wire event, to the recording and any monitor."""
        if self._recorder is not None:
            self._recorder.record(direction, event)
        if self.gateway.monitor.watchers:
            self.log.add_event(direction, event)

    async def _run(self) -> None:
        assert self.relay is not None
        run = asyncio.create_task(self.relay.run(), name=f"relay {self.id}")
        try:
            ready = asyncio.create_task(self.relay.wait_ready(15))
            await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and ready.exception() is None:
                await self.emit(c.SESSION_STARTED, {"session_id": self.id,
                                                    "message": "connected to the Realtime upstream"})
            else:
                ready.cancel()
            limit = self.gateway.max_session_seconds - (time.monotonic() - self.started_at)
            done, _ = await asyncio.wait({run}, timeout=max(0.0, limit))
            if not done:
                await self.error("session_timeout", f"the session reached its limit of "
                                                    f"{self.gateway.max_session_seconds:g} s")
                await self.end("expired")
            await run
        except UpstreamError as exc:
            await self.error("upstream_error", str(exc))
            await self.end("error")
        except asyncio.CancelledError:
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
            raise
        except Exception as exc:
            log.exception("session %s failed", self.id)
            await self.error("internal_error", f"{type(exc).__name__}: {exc}")
            await self.end("error")

    async def end(self, status: str = "ended", notify: bool = True) -> None:
        """Stop the relay and everything of this session; tell the browser unless it is gone."""
        if self.ended:
            return
        self.ended = True
        if self.relay is not None:
            await self.relay.stop()
        if self.task is not None and self.task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 1.0)
            except (TimeoutError, Exception):
                self.task.cancel()
                with contextlib.suppress(BaseException):
                    await self.task
        if notify:  # what the relay said before the end reaches the browser before session_ended
            with contextlib.suppress(Exception):
                while self._outbox:
                    await self.emit(*self._outbox.popleft())
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        for waiter in self._say_waiters:
            if not waiter.done():
                waiter.cancel()
        if self._recorder is not None:
            self._recorder.close()
        self.gateway.sessions.pop(self.sid, None)
        self.gateway.monitor.closed(self, status)
        if notify:
            with contextlib.suppress(Exception):
                await self.emit(c.SESSION_ENDED, {"status": status})

    def state(self) -> dict[str, Any]:
        """What a client mirrors (``session_state``) and a monitor shows."""
        snapshot = self.relay.snapshot() if self.relay is not None else {}
        turns = self.relay.session.turns if self.relay is not None else []
        last = next((t.first_audio_ms for t in reversed(turns) if t.first_audio_ms is not None), None)
        return {
            "session_id": self.id, "node": self.gateway.node_id,
            "chat_active": not self.ended and self.relay is not None,
            "ai_state": snapshot.get("state"), "client": self.client,
            "duration_s": round(time.monotonic() - self.started_at, 1), "errors": self.errors,
            "turns": len(turns), "last_latency_ms": None if last is None else round(last),
            "queues": {k: snapshot.get(k) for k in ("queued_events", "queued_audio_ms", "dropped_audio_ms")},
            "session_remaining_s": snapshot.get("session_remaining_s"),
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

    # ----------------------------------------------------------------------------- from the relay

    def _observe(self, obs: Observation) -> None:
        self.gateway.monitor.touch(self)  # a set insertion; the monitor publishes at most 10/s
        if isinstance(obs, PlayAudio):
            item_id = obs.item_id
            if item_id not in self._item_started:
                self._item_started[item_id] = time.monotonic()
            self._item_ms[item_id] = self._item_ms.get(item_id, 0) + obs.nbytes // BYTES_PER_MS
            self._delta_index += 1
            # the server's base64 as it is (checked by the session); session_id as emit() adds it
            self._emit_soon(c.AUDIO_DELTA, {"audio": obs.audio_b64, "index": self._delta_index, "session_id": self.id})
        elif isinstance(obs, StopPlayback):
            self._emit_soon(c.INTERRUPTED, {"item_id": obs.item_id})
            # the browser plays in real time from the first delta: that is what was heard
            started = self._item_started.get(obs.item_id or "")
            played = int((time.monotonic() - started) * 1000) if started else 0
            assert self.relay is not None
            self.relay.playback_stopped(obs.item_id, played)
        elif isinstance(obs, Transcript):
            self._transcript(obs)
        elif isinstance(obs, StateChanged):
            self._emit_soon(c.AI_STATE, {"state": obs.new.value})
        elif isinstance(obs, ResponseDone):
            self._emit_soon(c.RESPONSE_COMPLETE, {"response_id": obs.response_id, "status": obs.status})
            self._schedule_idle()
        elif isinstance(obs, ToolCall):
            self._spawn(self._run_tool(obs))
        elif isinstance(obs, Error):
            self.errors += 1
            self._emit_soon(c.ERROR, c.error_payload(obs.code, obs.message))
        elif isinstance(obs, Notice) and obs.kind == "recycled":
            self._emit_soon(c.SESSION_RECYCLED, {"message": obs.message})

    def _transcript(self, obs: Transcript) -> None:
        if obs.final and obs.text:
            self.log.add_transcript(obs.role, obs.text)
        if obs.role == "user":
            self._emit_soon(c.USER_TRANSCRIPT, {"text": obs.text, "final": obs.final, "item_id": obs.item_id})
            if obs.final and obs.text:
                self._last_user = obs.text
                if self.gateway.on_transcript is not None:
                    self._spawn(self._run_agent(obs.text))
            return
        self._emit_soon(c.AI_TRANSCRIPT, {"text": obs.text, "final": obs.final, "item_id": obs.item_id})
        if obs.final:
            answers = not obs.out_of_band
            if obs.out_of_band and self._answering_says:
                self._answering_says -= 1  # the agent's TTS() answers the user; a program's say does not
                answers = True
            heard = self._last_user if answers else ""
            self._emit_soon(c.AI_RESPONSE, {"transcript": heard, "response": obs.text})
            for waiter in self._say_waiters:
                if not waiter.done():
                    waiter.set_result(obs.text)
                    break

    def _schedule_idle(self) -> None:
        """The browser plays in real time: it is idle once the last item's audio has run out."""
        relay = self.relay
        if relay is None:
            return
        ends = [self._item_started[i] + self._item_ms.get(i, 0) / 1000 for i in self._item_started]
        remaining = max(0.0, max(ends, default=0.0) - time.monotonic())
        asyncio.get_running_loop().call_later(remaining, relay.playback_idle)
        self._item_started.clear()
        self._item_ms.clear()

    async def say(self, text: str) -> str:
        """``TTS(text)`` of agent-wrapper mode: speak through the upstream, wait until it is said."""
        assert self.relay is not None
        self._answering_says += 1
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._say_waiters.append(waiter)
        try:
            self.relay.say(text)
            return await asyncio.wait_for(waiter, self.gateway.tool_timeout)
        finally:
            self._say_waiters.remove(waiter)

    async def _run_agent(self, transcript: str) -> None:
        assert self.gateway.on_transcript is not None
        try:
            result = await call_maybe_async(self.gateway.on_transcript, self.id, transcript, self.chat_payload,
                                            EventEmitter(self), self.say)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent's bug is reported, and the session goes on
            log.warning("session %s: on_transcript failed: %r", self.id, exc)
            await self.error("agent_error", f"on_transcript failed: {type(exc).__name__}: {exc}")
            return
        if isinstance(result, Mapping):
            self.chat_payload.update(result)

    async def _run_tool(self, call: ToolCall) -> None:
        assert self.relay is not None
        output, problem = await run_tool(self.gateway.function_map or {}, call.name, call.arguments,
                                         self.gateway.tool_timeout)
        if problem is not None:
            await self.error("tool_error", problem)
        self.relay.tool_result(call.call_id, output)


class Gateway:
    """The gateway; see the module docstring. Both modes at once is a :class:`GatewayConfigError`."""

    def __init__(self, *, backend: str | None = None, dialect: Dialect | str = Dialect.GA,
                 config: RealtimeConfig | None = None, config_overrides: Mapping[str, Any] | None = None,
                 on_transcript: Callable[..., Any] | None = None, tools: list[dict[str, Any]] | None = None,
                 function_map: Mapping[str, Callable[..., Any]] | None = None,
                 allow_origins: list[str] | str | None = None, token: str | None = None, max_sessions: int = 100,
                 max_chunk_b64: int = c.DEFAULT_MAX_CHUNK_B64, max_session_seconds: float = 3600.0,
                 record_dir: str | os.PathLike[str] | None = None, tool_timeout: float = 30.0,
                 embedded_options: Mapping[str, Any] | None = None,
                 node_modules: str | os.PathLike[str] | None = None, admin_token: str | None = None,
                 redis_url: str | None = None, node_id: str | None = None) -> None:
        check_modes(on_transcript, tools, function_map)
        base = config or RealtimeConfig()
        base = RealtimeConfig.from_mapping(dict(config_overrides or {}), base)
        if tools:
            base = RealtimeConfig.from_mapping({"tools": list(tools)}, base)
        if on_transcript is not None:
            base = RealtimeConfig.from_mapping({"create_response": False}, base)
        self.config = base
        self.backend = choose_backend(backend)
        self.dialect = Dialect(dialect)
        self.on_transcript = on_transcript
        self.function_map = function_map
        self.token = token
        self.max_sessions = max_sessions
        self.closing = False  # shut_down_sessions() began: no new connections
        self.max_chunk_b64 = max_chunk_b64
        self.max_session_seconds = max_session_seconds
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.tool_timeout = tool_timeout
        self.embedded_options = dict(embedded_options or {})
        self.sessions: dict[str, GatewaySession] = {}
        self._clients: dict[str, str] = {}
        self._spec: UpstreamSpec | None = None
        self._backend_server: Any = None
        self._spec_lock = asyncio.Lock()
        if allow_origins == "*" or (isinstance(allow_origins, list) and "*" in allow_origins):
            log.warning("--allow-origin '*': any web page can open sessions on this gateway (and spend its key)")
            cors: Any = "*"
        else:
            cors = allow_origins  # None = same origin only (python-socketio's default)
        self.cluster = None
        manager = None
        if redis_url is not None:
            from .cluster import Cluster

            if not redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise GatewayConfigError(f"--redis takes a redis://, rediss:// or unix:// URL, not {redis_url!r}")

            manager = socketio.AsyncRedisManager(redis_url)
            self.cluster = Cluster(self, redis_url, node_id)
        self.node_id = self.cluster.node_id if self.cluster else None
        self.sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=cors, client_manager=manager,
                                        max_http_buffer_size=max(1_000_000, max_chunk_b64 * 4), json=wirejson)
        self._register()
        self.monitor = Monitor(self, admin_token)
        self.socketio_js = find_socketio_client(node_modules)
        if self.socketio_js is None:
            log.warning("demo page: %s", INSTALL_HINT)

    # ----------------------------------------------------------------------------- upstream

    async def upstream_spec(self) -> UpstreamSpec:
        """The upstream of every session; the embedded backend starts on first use."""
        async with self._spec_lock:
            if self._spec is None:
                if self.backend == "embedded":
                    from ..backend.server import BackendServer

                    server = BackendServer(host="127.0.0.1", port=0, **self.embedded_options)
                    await server.start()
                    self._backend_server = server
                    self._spec = embedded_spec(server.url, self.config.model, self.dialect)
                else:
                    self._spec = remote_spec(self.backend, self.config.model, self.dialect, dict(os.environ))
            return self._spec

    async def shut_down_sessions(self, timeout: float = 2.0) -> None:
        """The first step of a graceful stop, before the server closes the connections: refuse
        new connections, end every session (the browser gets ``session_ended {status:
        "shutdown"}``), and wait, at most ``timeout`` seconds, until those last words are written."""
        self.closing = True
        await asyncio.gather(*(s.end("shutdown") for s in list(self.sessions.values())), return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(
                not getattr(sock, "queue", None) or not sock.queue.empty() for sock in self.sio.eio.sockets.values()):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # a packet the writer took from its queue is written meanwhile

    async def close(self) -> None:
        """End every session and stop the embedded backend, if one was started."""
        for session in list(self.sessions.values()):
            await session.end("shutdown")
        await self.monitor.close()
        if self.cluster is not None:
            await self.cluster.close()
        if self._backend_server is not None:
            await self._backend_server.close()
            self._backend_server = None
            self._spec = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> Any:
        """For a host app that mounts the gateway: ``FastAPI(lifespan=gateway.lifespan)``.

        Mounted apps get no lifespan events of their own, so the host must close the gateway.
        """
        try:
            yield
        finally:
            await self.close()

    async def upstream_reachable(self) -> bool:
        if self.backend == "embedded":
            return True
        try:
            spec = await self.upstream_spec()
        except UpstreamError:
            return False
        parts = urlsplit(spec.url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), 2.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True

    # ----------------------------------------------------------------------------- Socket.IO

    def _register(self) -> None:
        sio = self.sio

        @sio.event
        async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            self.start_cluster()
            if not c.token_ok(auth, self.token):
                raise socketio.exceptions.ConnectionRefusedError("unauthorized: a valid token is required")
            if len(self._clients) >= self.max_sessions:
                raise socketio.exceptions.ConnectionRefusedError("too many sessions: try again later")
            if self.closing:
                raise socketio.exceptions.ConnectionRefusedError("the gateway is shutting down")
            address = environ.get("REMOTE_ADDR") or str((environ.get("asgi.scope") or {}).get("client"))
            client_id = auth.get("client_id") if isinstance(auth, dict) else None
            self._clients[sid] = f"{client_id} ({address})" if isinstance(client_id, str) and client_id else address

        @sio.event
        async def disconnect(sid: str, *args: Any) -> None:
            self._clients.pop(sid, None)
            session = self.sessions.get(sid)
            if session is not None:
                await session.end("disconnected", notify=False)

        handlers = {
            c.START_SESSION: self._on_start,
            c.AUDIO_DATA: self._on_audio,
            c.COMMIT_AUDIO: self._on_commit,
            c.END_SESSION: self._on_end,
            c.TEXT_INPUT: self._on_text,
            c.INTERRUPT: self._on_interrupt,
            c.SAY: self._on_say,
            c.GET_STATE: self._on_get_state,
        }
        for name, handler in handlers.items():
            sio.on(name, self._guarded(handler))

        @sio.on("*")
        async def unknown(event: str, sid: str, data: Any = None) -> None:
            log.debug("ignoring unknown event %r from %s", event, sid)

    def _guarded(self, handler: Callable[[str, Any], Any]) -> Callable[..., Any]:
        async def run(sid: str, data: Any = None) -> None:
            try:
                await handler(sid, data)
                session = self.sessions.get(sid)
                if session is not None and session._outbox:  # what the action queued for the browser
                    await session.flush()
            except c.ContractError as exc:
                session = self.sessions.get(sid)
                if session is not None:
                    session.errors += 1
                await self.sio.emit(c.ERROR, exc.payload(), to=sid)
                if exc.code == "rate_limited":
                    if session is not None:
                        await session.end("rate_limited")
                    await self.sio.disconnect(sid)

        return run

    def _session(self, sid: str) -> GatewaySession:
        session = self.sessions.get(sid)
        if session is None:
            raise c.ContractError("no_session", "no session: send start_session first")
        return session

    async def _on_start(self, sid: str, data: Any) -> None:
        if sid in self.sessions:
            raise c.ContractError("session_exists", "this connection already has a session")
        chat_payload = c.parse_start(data)
        session = GatewaySession(self, sid, chat_payload, self._clients.get(sid, ""))
        self.sessions[sid] = session
        try:
            spec = await self.upstream_spec()
        except UpstreamError as exc:
            await session.error("upstream_error", str(exc))
            await session.end("error")
            return
        await session.start(spec, self.config)

    async def _on_audio(self, sid: str, data: Any) -> None:
        session = self._session(sid)
        await session.audio(*c.check_audio(data, self.max_chunk_b64))

    async def _on_commit(self, sid: str, data: Any) -> None:
        session = self._session(sid)
        assert session.relay is not None
        session.relay.commit()

    def start_cluster(self) -> None:
        if self.cluster is not None:
            self.cluster.start()

    def session_by_id(self, session_id: str) -> GatewaySession | None:
        return next((s for s in self.sessions.values() if s.id == session_id), None)

    async def _route(self, sid: str, action: str, data: Any) -> None:
        """An action on the caller's own session, or (with ``session_id``) on any session of the cluster."""
        target = data.get("session_id") if isinstance(data, dict) else None
        if target is None:
            if action == c.GET_STATE and sid not in self.sessions:
                await self.sio.emit(c.SESSION_STATE, {"session_id": None, "chat_active": False, "ai_state": None},
                                    to=sid)
                return
            await self.act_locally(action, self._session(sid).id, data, sid)
            return
        if not isinstance(target, str):
            raise c.ContractError("invalid_payload", "session_id must be a string")
        if self.session_by_id(target) is not None:
            await self.act_locally(action, target, data, sid)
            return
        if self.cluster is not None and self.cluster.node_of(target) is not None:
            from .cluster import ClusterUnavailable

            try:
                await self.cluster.send(target, action, data, sid)
            except ClusterUnavailable as exc:
                raise c.ContractError("cluster_degraded", str(exc)) from None
            return
        raise c.ContractError("no_session", f"no session {target}")

    async def act_locally(self, action: str, session_id: str, data: Any, reply_to: str) -> None:
        """Carry out an action on a session of this node, for ``reply_to`` (any node's client)."""
        session = self.session_by_id(session_id)
        try:
            if session is None or session.relay is None:
                raise c.ContractError("no_session", f"no session {session_id}")
            if reply_to != session.sid:
                session.followers.add(reply_to)
            if action == c.TEXT_INPUT:
                text, reply = c.parse_text(data)
                # in agent-wrapper mode the final user transcript this produces calls on_transcript
                session.relay.user_text(text, respond=reply and self.on_transcript is None)
            elif action == c.SAY:
                session.relay.say(c.parse_say(data))
            elif action == c.INTERRUPT:
                session.relay.interrupt()
            elif action == c.END_SESSION:
                await session.end("ended")
                if reply_to != session.sid:
                    await self.sio.emit(c.SESSION_ENDED, {"status": "ended", "session_id": session_id}, to=reply_to)
            elif action == c.GET_STATE:
                await self.sio.emit(c.SESSION_STATE, session.state(), to=reply_to)
        except c.ContractError as exc:
            await self.sio.emit(c.ERROR, exc.payload(), to=reply_to)

    async def _on_text(self, sid: str, data: Any) -> None:
        await self._route(sid, c.TEXT_INPUT, data)

    async def _on_interrupt(self, sid: str, data: Any) -> None:
        await self._route(sid, c.INTERRUPT, data)

    async def _on_say(self, sid: str, data: Any) -> None:
        await self._route(sid, c.SAY, data)

    async def _on_get_state(self, sid: str, data: Any) -> None:
        await self._route(sid, c.GET_STATE, data)

    async def _on_end(self, sid: str, data: Any) -> None:
        await self._route(sid, c.END_SESSION, data)

    # ----------------------------------------------------------------------------- HTTP

    def asgi_app(self, other_asgi_app: Any = None) -> Any:
        """The ASGI application: Socket.IO at ``/socket.io``, the HTTP routes, else ``other_asgi_app``."""
        http = _HttpRoutes(self, other_asgi_app)
        inner = socketio.ASGIApp(self.sio, other_asgi_app=http, socketio_path="socket.io")

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            # mounted under a prefix (Starlette/FastAPI mount): route on the path inside the mount
            root = scope.get("root_path", "")
            path = scope.get("path", "")
            if root and path.startswith(root):
                scope = {**scope, "path": path[len(root):] or "/"}
            await inner(scope, receive, send)

        return app

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = {"status": "ok", "sessions": len(self.sessions), "connections": len(self._clients),
                                  "backend": self.backend if self.backend in ("embedded", "openai") else "custom"}
        if self.cluster is not None:
            health["cluster"] = {"node": self.cluster.node_id, "redis": "degraded" if self.cluster.degraded else "ok",
                                 "error": self.cluster.last_error, "remote_sessions": len(self.cluster.remote)}
            if self.cluster.degraded:
                health["status"] = "degraded"
        return health

    def session_config(self) -> dict[str, Any]:
        mode = "agent" if self.on_transcript else "functions" if self.function_map else "realtime"
        return {**self.config.public(), "dialect": self.dialect.value, "mode": mode,
                "backend": self.health()["backend"], "token_required": self.token is not None,
                "max_chunk_b64": self.max_chunk_b64, "socketio_client": self.socketio_js is not None}


class _HttpRoutes:
    """A minimal ASGI app: /health, /session-config, / and /static/*."""

    def __init__(self, gateway: Gateway, fallback: Any) -> None:
        self.gateway = gateway
        self.fallback = fallback

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            if self.fallback is not None:  # the wrapped app owns the lifespan
                await self.fallback(scope, receive, send)
            else:
                await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain")
            return
        if path == "/health":
            body = {**self.gateway.health(), "upstream_reachable": await self.gateway.upstream_reachable()}
            await _respond(send, 200, json.dumps(body).encode(), "application/json")
        elif path == "/session-config":
            await _respond(send, 200, json.dumps(self.gateway.session_config()).encode(), "application/json")
        elif path in ("/", "/index.html"):
            await _respond(send, 200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
        elif path == "/static/socket.io.min.js":
            js = self.gateway.socketio_js
            if js is None:
                hint = f"console.error({json.dumps('voicerelay: ' + INSTALL_HINT)});\n"
                await _respond(send, 404, hint.encode(), "text/javascript")
            else:
                await _respond(send, 200, js.read_bytes(), "text/javascript")
        elif path.startswith("/static/") and "/" not in path[len("/static/"):]:
            file = STATIC / path[len("/static/"):]
            if file.is_file():
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                await _respond(send, 200, file.read_bytes(), kind)
            else:
                await _respond(send, 404, b"not found\n", "text/plain")
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        else:
            await _respond(send, 404, b"not found\n", "text/plain")

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The gateway owns the process: what start-up loaded lives as long as it, so keep
                # it out of the collector's full passes, which stop every session while they run;
                # and collect the young generation every 10,000 net allocations rather than 700:
                # the audio path allocates a lot that lives briefly, and at 80 sessions the
                # default made 25 young collections a second, each near half a millisecond.
                gc.collect()
                gc.freeze()
                gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
