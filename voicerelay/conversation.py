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
