"""What a browser has played of the reply audio sent to it: the :class:`~voicerelay.conversation.Playback`
of one ``serve`` session. No I/O; the clock is passed in.

A browser plays the ``audio_delta`` chunks it receives back to back, in real time. So the gateway
keeps one timeline: a chunk that arrives at ``t`` starts when everything sent before it has
played (or at ``t`` if that already happened: the browser ran dry) and lasts its own length.
From it follow, per item:

* ``received_ms``: the audio sent to the browser;
* ``played_ms``: the **position the browser reported** (``playback_position {item_id,
  played_ms}``, a voicerelay extension) if it reported one for that item, clamped to what was
  sent; else the **estimate**: what was sent minus what the timeline says is still to play.
  For an item whose audio arrives faster than real time this is ``min(received, (now -
  first_delta_at) * 1000)``;
* ``pending_ms``: how long until everything sent has played.

A report also re-anchors the timeline (the browser is at that position *now*, and plays on in
real time from there), so ``pending_ms`` follows a browser that started late or stalled.
:meth:`BrowserPlayback.stop` (barge-in: the browser drops what it queued) freezes each item at
what it had played.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from ..protocol.audio import BYTES_PER_MS
from ..protocol.session import PlayAudio

ITEMS_KEPT = 16  # items remembered (oldest forgotten first): only the latest can be interrupted


class _Item:
    __slots__ = ("received_bytes", "ends_at", "dropped_ms", "reported_ms", "cut")

    def __init__(self) -> None:
        self.received_bytes = 0
        self.ends_at = 0.0  # clock time at which the last audio sent of this item will have played
        self.dropped_ms = 0.0  # sent but never to be played (cut by stop())
        self.reported_ms: float | None = None  # the browser's last playback_position
        self.cut = False  # stop() dropped part of it

    @property
    def received_ms(self) -> float:
        return self.received_bytes / BYTES_PER_MS


class BrowserPlayback:
    """The browser's playback of one session; see the module docstring. Implements
    :class:`~voicerelay.conversation.Playback` plus :meth:`report` (the browser's own position)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.reports = 0  # playback_position reports taken
        self._items: collections.OrderedDict[str, _Item] = collections.OrderedDict()
        self._ends_at = 0.0  # when everything sent will have played

    # ----------------------------------------------------------------------------- Playback

    def feed(self, audio: PlayAudio) -> None:
        now = self.clock()
        item = self._items.get(audio.item_id)
        if item is None:
            item = self._items[audio.item_id] = _Item()
            while len(self._items) > ITEMS_KEPT:
                self._items.popitem(last=False)
        item.received_bytes += audio.nbytes
        item.cut = False
        self._ends_at = max(self._ends_at, now) + audio.nbytes / BYTES_PER_MS / 1000
        item.ends_at = self._ends_at

    def finish(self) -> None:
        """Nothing to do: a browser plays each chunk as soon as it has it."""

    def stop(self) -> None:
        """Barge-in: the browser drops what it queued; every item keeps what it had played."""
        now = self.clock()
        for item in self._items.values():
            if item.ends_at > now:
                item.dropped_ms += (item.ends_at - now) * 1000
                item.ends_at = now
                item.cut = True
        self._ends_at = min(self._ends_at, now)

    def received_ms(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return 0 if item is None else item.received_bytes // BYTES_PER_MS

    def played_ms(self, item_id: str) -> int:
        item = self._items.get(item_id)
        if item is None:
            return 0
        played = item.reported_ms if item.reported_ms is not None else self._estimate(item, self.clock())
        # round, not truncate (float noise: 299.9999 is 300), and never above what was received
        return min(round(played), item.received_bytes // BYTES_PER_MS)

    def pending_ms(self) -> float:
        return max(0.0, (self._ends_at - self.clock()) * 1000)

    # ----------------------------------------------------------------------------- the browser's word

    def report(self, item_id: str, played_ms: float) -> bool:
        """The browser says it has played ``played_ms`` of ``item_id`` (``playback_position``).

        Returns False (and changes nothing) for an item this playback does not know.
        """
        item = self._items.get(item_id)
        if item is None:
            return False
        self.reports += 1
        item.reported_ms = played_ms
        if item.cut:
            return True  # stopped: the browser dropped the rest, its last word is final
        # re-anchor the timeline: the browser is at `played_ms` of this item now, and plays on in
        # real time; what it was sent before this item has played, what after has not begun
        now = self.clock()
        later = False
        cursor = now
        for other_id, other in self._items.items():
            if other_id == item_id:
                later = True
                cursor += max(0.0, other.received_ms - other.dropped_ms - min(played_ms, other.received_ms)) / 1000
                other.ends_at = cursor
            elif later:
                cursor += max(0.0, other.received_ms - other.dropped_ms) / 1000
                other.ends_at = cursor
            else:
                other.ends_at = min(other.ends_at, now)
        self._ends_at = cursor
        return True

    @staticmethod
    def _estimate(item: _Item, now: float) -> float:
        unplayed = max(0.0, (item.ends_at - now) * 1000)
        return max(0.0, min(item.received_ms, item.received_ms - item.dropped_ms - unplayed))
