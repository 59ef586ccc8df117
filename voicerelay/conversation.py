"""The conversation core: what ``talk``, ``serve`` (per browser) and ``replay`` share.

A front door supplies a source of audio and text (it calls the :class:`~voicerelay.relay.Relay`'s
inputs) and a sink, a :class:`Playback`. The :class:`Conversation` does everything else, once:

- starts the relay and waits until the upstream accepted the configuration (a server that
  accepts the connection but never configures the session is an
  :class:`~voicerelay.errors.UpstreamTimeout`, after ``ready_timeout`` seconds);
- the barge-in rule: when the session says stop (``StopPlayback``), the sink stops at once and
  the truncate carries ``min(played, received)`` of the interrupted item, computed here and
  nowhere else (:meth:`Conversation.heard_ms`); an :class:`Interrupted` observation tells the
  front door what was cut;
- tells the session when the sink has played everything (``playback_idle``), so the state goes
  from speaking to listening when the user has really heard the reply, not when it arrived;
- stops the relay and waits for it within ``close_timeout`` seconds.

Turn bookkeeping and per-turn metrics live in the sans-I/O
:class:`~voicerelay.protocol.session.RealtimeSession` (``session.turns``); recycling before the
server's cap lives in the :class:`~voicerelay.relay.Relay`. Both are reached through
:attr:`Conversation.relay`.

Playback implementations: the speakers' jitter buffer (``talk``), the browser's reported
position or its estimate (``serve``), and :class:`InstantPlayback` (``replay``: a file sink, or
nothing, "plays" everything the moment it arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .errors import UpstreamTimeout
from .protocol.audio import BYTES_PER_MS
from .protocol.session import PlayAudio, ResponseDone, StopPlayback
from .relay import Observation, Relay

log = logging.getLogger(__name__)


@runtime_checkable
class Playback(Protocol):
    """Where reply audio goes, and how much of it the user has heard.

    Every method is called on the event loop. Milliseconds are of PCM16 24 kHz audio.
    """

    def feed(self, audio: PlayAudio) -> None:
        """Reply audio for one item, in the order it arrived."""

    def finish(self) -> None:
        """The response is done: what is queued may play out (no more pre-roll to wait for)."""

    def stop(self) -> None:
        """Barge-in: stop sounding now and drop everything queued."""

    def received_ms(self, item_id: str) -> int:
        """Audio of ``item_id`` handed to :meth:`feed` so far."""

    def played_ms(self, item_id: str) -> int:
        """Audio of ``item_id`` the user has heard so far (at most :meth:`received_ms`)."""

    def pending_ms(self) -> float:
        """Audio fed and not heard yet (0 when the sink is idle)."""


class InstantPlayback:
    """A sink that "plays" everything the moment it arrives: a WAV writer, or nothing (``replay``).

    ``write``, if given, gets each item's PCM16 bytes.
    """

    def __init__(self, write: Callable[[bytes], Any] | None = None) -> None:
        self._write = write
        self._received: dict[str, int] = {}

    def feed(self, audio: PlayAudio) -> None:
        self._received[audio.item_id] = self._received.get(audio.item_id, 0) + audio.nbytes // BYTES_PER_MS
        if self._write is not None:
            self._write(audio.pcm)

    def finish(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def received_ms(self, item_id: str) -> int:
        return self._received.get(item_id, 0)

    def played_ms(self, item_id: str) -> int:
        return self._received.get(item_id, 0)

    def pending_ms(self) -> float:
        return 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Interrupted:
    """The user cut the assistant off: ``played_ms`` of ``received_ms`` of ``item_id`` were heard
    (``played_ms`` is what the truncate carries; 0 means nothing was heard and nothing truncated)."""

    item_id: str | None
    played_ms: int
    received_ms: int


ConversationObserver = Callable[[Observation | Interrupted], None]


class Conversation:
    """One conversation through one :class:`~voicerelay.relay.Relay` into one :class:`Playback`.

    Use it as ``async with Conversation(relay, playback) as conversation: ...`` (starts the relay
    and waits until the session is ready; on exit stops the relay and raises its failure, if it
    failed), or call :meth:`start`, :meth:`wait_ready` and :meth:`close` yourself.
    """

    def __init__(self, relay: Relay, playback: Playback, *, ready_timeout: float = 15.0,
                 close_timeout: float = 1.5) -> None:
        self.relay = relay
        self.playback = playback
        self.ready_timeout = ready_timeout
        self.close_timeout = close_timeout
        self.interrupted: dict[str, Interrupted] = {}  # item_id -> what was cut
        self._observers: list[ConversationObserver] = []
        self._run: asyncio.Task[None] | None = None
        self._idle_check: asyncio.TimerHandle | None = None
        relay.subscribe(self._observe)  # first: the sink hears of audio and barge-in before anyone else

    # ----------------------------------------------------------------------------- observing

    def subscribe(self, observer: ConversationObserver) -> Callable[[], None]:
        """Call ``observer`` with every effect and notice of the relay, and each :class:`Interrupted`."""
        self._observers.append(observer)
        unsubscribe = self.relay.subscribe(observer)

        def both() -> None:
            unsubscribe()
            if observer in self._observers:
                self._observers.remove(observer)

        return both

    def _observe(self, obs: Observation) -> None:
        if isinstance(obs, PlayAudio):
            self.playback.feed(obs)
        elif isinstance(obs, StopPlayback):
            self._barge_in(obs.item_id)
        elif isinstance(obs, ResponseDone):
            self.playback.finish()
            self._check_idle()

    # ----------------------------------------------------------------------------- barge-in

    def heard_ms(self, item_id: str) -> int:
        """What the truncate of ``item_id`` carries: ``min(played, received)``."""
        return max(0, min(self.playback.played_ms(item_id), self.playback.received_ms(item_id)))

    def _barge_in(self, item_id: str | None) -> None:
        """Stop the sink first (silence now), then truncate to what was heard: the session's
        ``response.cancel`` is already queued, so the truncate follows it."""
        played = self.heard_ms(item_id) if item_id else 0
        received = self.playback.received_ms(item_id) if item_id else 0
        self.playback.stop()
        cut = Interrupted(item_id, played, received)
        if item_id:
            self.interrupted[item_id] = cut
        self.relay.playback_stopped(item_id, played)
        for observer in list(self._observers):
            try:
                observer(cut)
            except Exception:  # an observer's bug must not take the session down
                log.exception("observer %r failed on Interrupted", observer)

    # ----------------------------------------------------------------------------- playback idle

    def _check_idle(self) -> None:
        """Tell the session once the sink has played everything (then speaking -> listening)."""
        if self._idle_check is not None:
            self._idle_check.cancel()
            self._idle_check = None
        session = self.relay.session
        if session.playing_item is None or session.response_active:
            return
        pending = self.playback.pending_ms()
        if pending <= 0:
            self.relay.playback_idle()
            return
        loop = asyncio.get_running_loop()
        self._idle_check = loop.call_later(min(pending, 1000) / 1000, self._check_idle)

    # ----------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> asyncio.Task[None]:
        """The relay's task (after :meth:`start`): done when the session ended or failed."""
        assert self._run is not None, "start() first"
        return self._run

    def start(self) -> asyncio.Task[None]:
        if self._run is None:
            self._run = asyncio.create_task(self.relay.run(), name="relay")
        return self._run

    async def wait_ready(self, stop: asyncio.Event | None = None) -> bool:
        """Until the upstream accepted the configuration (True) or ``stop`` was set (False).

        Raises the relay's failure if it ended first, or :class:`~voicerelay.errors.UpstreamTimeout`
        after ``ready_timeout`` seconds.
        """
        run = self.start()
        ready = asyncio.create_task(self.relay.wait_ready(None), name="ready")
        waiters: set[asyncio.Future[Any]] = {run, ready}
        stopping = asyncio.create_task(stop.wait()) if stop is not None else None
        if stopping is not None:
            waiters.add(stopping)
        try:
            await asyncio.wait(waiters, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, stopping):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (ready, stopping) if t is not None), return_exceptions=True)
        if run.done():
            await run  # raises the upstream's failure
        if stop is not None and stop.is_set():
            return False
        if not self.relay.ready:
            raise UpstreamTimeout(f"{self.relay.spec.describe()} did not accept the session configuration within "
                                  f"{self.ready_timeout:g} s")
        return True

    async def stop(self) -> None:
        """Ask the relay to end (its task finishes soon after); nothing is awaited but that."""
        if self._idle_check is not None:
            self._idle_check.cancel()
            self._idle_check = None
        await self.relay.stop()

    async def close(self) -> None:
        """Stop the relay and wait for it (at most ``close_timeout`` s); raise its failure, if any."""
        await self.stop()
        run = self._run
        if run is None:
            return
        if not run.done():
            try:
                await asyncio.wait_for(asyncio.shield(run), self.close_timeout)
            except TimeoutError:
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
                return
        await run  # raises the upstream's failure, if it failed

    async def __aenter__(self) -> Conversation:
        try:
            await self.wait_ready()
        except BaseException:
            await self._abandon()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _abandon(self) -> None:
        """Stop the relay after a failure that is being raised already (its own is then moot)."""
        with contextlib.suppress(Exception):  # the failure in flight is the one to report
            await self.close()
