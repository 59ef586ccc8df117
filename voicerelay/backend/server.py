"""The embedded backend's asyncio side: ``/v1/realtime`` over ``websockets``.

Each connection gets a :class:`~voicerelay.backend.session.ServerSession` (the protocol state,
no I/O) and a :class:`SessionPump` that carries out its effects: it sends events, keeps the
speech detector, runs recognition and synthesis off the event loop and paces reply audio at
``pace`` times real time, feeding each result back into the session. :class:`BackendServer`
does the I/O around them: the handshake (path, ``?model=``, the ``OpenAI-Beta`` header that
picks the dialect), frame parsing and checking, translation of outgoing events for beta peers,
the session cap (``session_expired``), and cleanup when the peer goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..gctune import settle_for_serving
from ..protocol import wirejson
from ..protocol.events import Dialect, Event, elide, to_dialect
from .engines import Engines
from .session import (
    STT_TAIL_MS,
    DetectSpeech,
    Effect,
    Pause,
    SendEvent,
    ServerSession,
    StartVad,
    StopVad,
    Synthesize,
    Transcribe,
)
from .validate import EventError, check_event, error_event, parse_frame
from .vad import VoiceActivityDetector

log = logging.getLogger(__name__)

Send = Callable[[Event], Awaitable[None]]

PATH = "/v1/realtime"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # one 15 MiB append is ~20 MiB of base64


def dialect_of(headers: Headers) -> Dialect:
    """Beta when the client asks for ``OpenAI-Beta: realtime=v1``, GA otherwise."""
    beta = headers.get("OpenAI-Beta", "")
    return Dialect.BETA if "realtime=v1" in beta.replace(" ", "").lower() else Dialect.GA


class SessionPump:
    """Runs one :class:`ServerSession`: carries out its effects and feeds the results back.

    Client events go in through :meth:`handle`, one at a time, in order. Recognition and
    synthesis run in threads (recognition in the engines' worker processes), each in a task of
    its own, so a session never blocks the event loop or another session; :meth:`close` cancels
    them all.
    """

    def __init__(self, session: ServerSession, send: Send, engines: Engines, *, pace: float = 10.0) -> None:
        self.session = session
        self.engines = engines
        self.pace = pace
        self._send = send
        self._vad: VoiceActivityDetector | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._apply(self.session.start())

    async def handle(self, event: Event) -> None:
        """Act on one checked client event."""
        await self._apply(self.session.handle(event))

    async def close(self) -> None:
        """Stop every task of this session (the socket is gone)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _apply(self, effects: Iterable[Effect]) -> None:
        """Carry out effects in order; those of a result fed back go before the rest."""
        todo = deque(effects)
        while todo:
            effect = todo.popleft()
            if isinstance(effect, SendEvent):
                await self._send(effect.event)
            elif isinstance(effect, DetectSpeech):
                assert self._vad is not None, "DetectSpeech without StartVad"
                edges = [(e.kind, e.ms) for e in self._vad.feed(np.frombuffer(effect.pcm, dtype="<i2"))]
                todo.extendleft(reversed(self.session.speech_judged(edges)))
            elif isinstance(effect, StartVad):  # (it tells the session when a turn's audio is all there)
                self._vad = VoiceActivityDetector(effect.threshold, effect.prefix_padding_ms,
                                                  effect.silence_duration_ms, pause_ms=STT_TAIL_MS)
            elif isinstance(effect, StopVad):
                self._vad = None
            elif isinstance(effect, Transcribe):
                self._spawn(self._transcribe(effect), f"transcribe {effect.item_id}")
            elif isinstance(effect, Synthesize):
                self._spawn(self._synthesize(effect), f"response {effect.response_id}")
            elif isinstance(effect, Pause):  # only ever from synthesized()/stream(): we are in its task
                if self.pace > 0:
                    await asyncio.sleep(effect.audio_ms / 1000 / self.pace)
                todo.extendleft(reversed(self.session.stream(effect.response_id)))
            else:
                raise TypeError(f"unknown effect {effect!r}")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _transcribe(self, job: Transcribe) -> None:
        try:
            text = await self.engines.transcribe_async(np.frombuffer(job.audio, dtype="<i2"), job.phrases)
        except Exception as exc:  # a recogniser failure is this turn's problem: the session reports it
            log.exception("transcription of %s failed", job.item_id)
            await self._apply(self.session.transcription_failed(job.item_id, str(exc), job.early_end_ms))
            return
        await self._apply(self.session.transcribed(job.item_id, text, job.early_end_ms))

    async def _synthesize(self, job: Synthesize) -> None:
        try:
            pcm = await asyncio.to_thread(self.engines.synthesize, job.text, job.voice)
            raw = pcm.astype("<i2").tobytes()
        except Exception as exc:  # the response ends as failed, the session goes on
            log.exception("response %s failed", job.response_id)
            await self._apply(self.session.synthesis_failed(job.response_id, str(exc)))
            return
        await self._apply(self.session.synthesized(job.response_id, raw))


class BackendServer:
    """The embedded Realtime server. Use as ``async with BackendServer(port=0) as server:``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, *, pace: float = 10.0,
                 max_session_seconds: float = 3600.0, engines: Engines | None = None,
                 stt_processes: int | None = None, warm_general: bool = True) -> None:
        """``warm_general``: whether the warm-up of engines of its own loads the general recognition
        model too (see :meth:`Engines.warm_up`)."""
        self.host, self.port = host, port
        self.pace = pace
        self.warm_general = warm_general
        self.max_session_seconds = max_session_seconds
        self._owns_engines = engines is None
        self.engines = engines or Engines(stt_processes)
        self.connections = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The Realtime endpoint, e.g. ``ws://127.0.0.1:8765/v1/realtime``."""
        return f"ws://{self.host}:{self.port}{PATH}"

    @property
    def base_url(self) -> str:
        """What the ``openai`` SDK takes as ``websocket_base_url``."""
        return f"ws://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        if self._owns_engines:
            self.engines.start_workers()  # (first, from this thread: see Engines.start_workers)
        # no permessage-deflate: base64 audio hardly compresses, and deflating every reply chunk and
        # inflating every append was a seventh of this process's CPU (benchmarks/backend_latency.py)
        self._server = await serve(self._handle, self.host, self.port, process_request=self._check_path,
                                   max_size=MAX_MESSAGE_BYTES, ping_interval=20, ping_timeout=20, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("embedded Realtime backend listening on %s", self.url)
        if self._owns_engines:  # load the engines while the first session is still talking
            self._warm = asyncio.ensure_future(asyncio.to_thread(self.engines.warm_up, self.warm_general))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._owns_engines:
            warm = getattr(self, "_warm", None)
            if warm is not None:
                with contextlib.suppress(Exception):  # a failed warm-up was the first session's problem, not ours now
                    await warm
            await asyncio.to_thread(self.engines.close)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> BackendServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path.rstrip("/") != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"Not found. The Realtime endpoint is {PATH}\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        dialect = dialect_of(request.headers)
        query = parse_qs(urlsplit(request.path).query)
        model = (query.get("model") or [""])[0]
        if not model:
            await ws.send(json.dumps(error_event("missing_model", "You must provide a model parameter (?model=...).",
                                                 "model")))
            await ws.close(4000, "invalid_request_error.missing_model")
            return
        self.connections += 1

        async def send(event: Event) -> None:
            out = to_dialect(event, dialect)
            if out is None:
                return
            if log.isEnabledFor(logging.DEBUG):
                log.debug("-> %s", elide(out))
            with contextlib.suppress(ConnectionClosed):
                await ws.send(wirejson.dumpb(out), text=True)

        state = ServerSession(model=model, expires_at=int(time.time() + self.max_session_seconds), dialect=dialect)
        session = SessionPump(state, send, self.engines, pace=self.pace)
        expiry = asyncio.get_running_loop().call_later(
            self.max_session_seconds, lambda: asyncio.ensure_future(self._expire(ws, send)))
        try:
            await session.start()
            async for message in ws:
                try:
                    event = parse_frame(message)
                    check_event(event, dialect)
                except EventError as exc:
                    await send(exc.to_event())
                    continue
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("<- %s", elide(event))
                await session.handle(event)
        except ConnectionClosed:
            pass
        finally:
            expiry.cancel()
            await session.close()
            self.connections -= 1

    async def _expire(self, ws: ServerConnection, send: Any) -> None:
        seconds = self.max_session_seconds
        shown = f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"
        await send(error_event("session_expired", f"Your session hit the maximum duration of {shown}."))
        await ws.close(1000, "invalid_request_error.session_expired")


async def run(host: str, port: int, pace: float, max_session_seconds: float, ready: Any = None) -> None:
    """Run a backend until cancelled (the ``voicerelay backend`` command)."""
    import signal

    engines = Engines()
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # SIGTERM ends it like Ctrl-C
        loop.add_signal_handler(signal.SIGTERM, lambda: main.cancel() if main else None)
    try:
        engines.start_workers()  # first, from the main thread: see Engines.start_workers
        async with BackendServer(host, port, pace=pace, max_session_seconds=max_session_seconds,
                                 engines=engines) as server:
            await asyncio.to_thread(engines.warm_up)  # after binding: a busy port is reported at once
            settle_for_serving()  # the backend owns this process (see voicerelay.gctune)
            if ready is not None:
                ready(server)
            await server.serve_forever()
    finally:
        await asyncio.to_thread(engines.close)
