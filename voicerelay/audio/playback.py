"""The playback buffer: a jitter buffer for reply audio and the cursor of what was really heard.

Plain Python and numpy, no device. The event loop feeds it reply deltas (24 kHz PCM16, with
their item id); the sound card's output callback reads exactly the samples it needs; on barge-in
:meth:`~PlaybackBuffer.stop` drops everything queued and tells how many milliseconds of the item
were heard. One lock guards it all: the two sides run on different threads.

Theory of operation
-------------------
*Jitter.* Deltas arrive in bursts; the device asks for a block every few milliseconds. An item
starts playing only once ``preroll_ms`` are queued (or its response is complete, see
:meth:`~PlaybackBuffer.finish`, or it waited ``max_wait_ms``). Servers send faster than real
time, so the queue soon holds much more; deltas that only keep up with real time still leave no
gap while each is late by less than the pre-roll minus one delta's length. If the queue does run
dry before the response is complete, playback pauses and takes a new pre-roll (an *underrun*,
counted) instead of stuttering block by block.

*Heard, not handed.* A sample handed to the device is heard later: after the device's output
latency and whatever the caller still holds downstream (a resampler). ``read`` is told that
delay (PortAudio: ``outputBufferDacTime - currentTime``, else ``stream.latency``), so the
buffer knows when the last handed sample will have been heard. At any moment, the audio still
*in flight* is what lies between now and then. Played ms of an item = samples handed for it
minus its part of what is in flight; never more than was received.

*Stop.* :meth:`~PlaybackBuffer.stop` assumes the caller also drops what the device holds
(PortAudio: abort the stream), so the audio in flight at that moment is never heard: it is
taken off the items' counts for good. Afterwards the buffer is empty and accepts new items.

*Device rate.* After :meth:`~PlaybackBuffer.resample_to`, ``read`` returns samples at the
device's rate: each delta is resampled (soxr) as it is fed, on the feeding thread, in one call
per delta. The output callback then only copies, which matters more than it seems: it runs
every 20 ms on a thread whose caches have gone cold in between, where a resampler call costs
several times what it costs in bulk. One resampler stream per item, flushed when the next item
starts or the response is complete, so each sample is counted for the item it belongs to.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np
import soxr

from voicerelay.protocol.audio import SAMPLE_RATE

__all__ = ["LIVE_QUALITY", "PlaybackBuffer"]

#: soxr quality of the live paths: "LQ" keeps the resampler's delay to a few milliseconds
#: (HQ holds 20-40 ms and releases it in bursts) and is band-limited, which speech needs.
LIVE_QUALITY = "LQ"

_PCM16 = np.dtype("<i2")
_KEEP_ITEMS = 32  # per-item counters kept for played_ms() after the item is gone


@dataclasses.dataclass(slots=True)
class _Item:
    received: int = 0  # samples fed (at the buffer's ``rate``)
    handed: int = 0  # samples given to the device (at ``output_rate``), less those dropped in flight by stop()
    complete: bool = False  # its response is done: no pre-roll needed
    first_fed_at: float | None = None
    first_heard_at: float | None = None  # when its first sample reached the speaker (clock time)


class PlaybackBuffer:
    """Reply audio between the event loop (``feed``) and the output callback (``read``).

    ``latency`` is the default delay (seconds) between ``read`` and the speaker, used when
    ``read`` is not told one. ``rate`` is the rate of the audio fed; ``read`` returns the same
    until :meth:`resample_to`. ``clock`` is ``time.monotonic`` unless a test gives its own.
    ``feed``, ``finish`` and ``stop`` are called from one thread, ``read`` from another.
    """

    def __init__(self, *, preroll_ms: float = 80.0, max_wait_ms: float = 500.0, latency: float = 0.0,
                 rate: int = SAMPLE_RATE, clock: Callable[[], float] = time.monotonic) -> None:
        if preroll_ms < 0 or max_wait_ms < 0 or latency < 0:
            raise ValueError("preroll_ms, max_wait_ms and latency must not be negative")
        self.rate = rate
        self.output_rate = rate
        self.preroll_ms = preroll_ms
        self.preroll = int(preroll_ms * rate / 1000)  # output samples
        self.max_wait = max_wait_ms / 1000
        self.latency = latency
        self.underruns = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[str, np.ndarray]] = collections.deque()
        self._offset = 0  # samples of the head chunk already handed
        self._queued = 0  # samples queued (all chunks, less the head's offset)
        self._items: dict[str, _Item] = {}
        self._handed_order: list[str] = []  # items in the order they were handed (last = most recent)
        self._playing = False  # False: waiting for a pre-roll
        self._heard_by = clock()  # when the last handed sample will have been heard
        self._resampler: soxr.ResampleStream | None = None  # feeding side only
        self._resampling: str | None = None  # the item whose audio the resampler holds

    # ---------------------------------------------------------------------- event-loop side

    def resample_to(self, output_rate: int) -> None:
        """From now on ``read`` returns samples at ``output_rate`` (the device's); call it before feeding."""
        with self._lock:
            if self._queue or self._resampling is not None:
                raise RuntimeError("resample_to() must be called before any audio is fed")
            self.output_rate = output_rate
            self.preroll = int(self.preroll_ms * output_rate / 1000)

    def feed(self, pcm: bytes | bytearray | memoryview, item_id: str) -> None:
        """Queue one delta of reply audio (PCM16 at ``rate``) of ``item_id``."""
        samples = np.frombuffer(pcm, dtype=_PCM16)
        if samples.size == 0:
            return
        chunks = [(item_id, samples)]
        if self.output_rate != self.rate:
            chunks = self._flush() if self._resampling not in (None, item_id) else []
            if self._resampler is None:
                self._resampler = soxr.ResampleStream(self.rate, self.output_rate, 1, dtype="int16",
                                                      quality=LIVE_QUALITY)
            self._resampling = item_id
            chunks.append((item_id, self._resampler.resample_chunk(samples)))
        with self._lock:
            item = self._items.get(item_id)
            if item is None:
                item = self._items[item_id] = _Item()
                self._forget_old_items()
            if item.first_fed_at is None:
                item.first_fed_at = self._clock()
            item.received += samples.size
            self._enqueue(chunks)

    def finish(self) -> None:
        """Every item fed so far is complete (its response is done): play it without waiting for a pre-roll."""
        tail = self._flush()
        with self._lock:
            self._enqueue(tail)
            for item in self._items.values():
                item.complete = True

    def stop(self, drop_in_flight: bool = True) -> tuple[str | None, int]:
        """Drop everything queued; return ``(item_id, played_ms)`` of the item being played.

        The caller must drop what the device holds too (see the module docstring), unless
        ``drop_in_flight`` is false: the device then plays it out, and it counts as heard (the
        output stream keeps running, as echo cancellation wants it). The item
        is the one handed most recently, or the next one queued when nothing was handed yet
        (``played_ms`` 0), or ``None`` when there was nothing at all.
        """
        in_resampler = self._resampling  # an item whose audio only the resampler held
        self._resampler = self._resampling = None  # what it holds is dropped too
        with self._lock:
            now = self._clock()
            for item_id, samples in self._unheard(now).items() if drop_in_flight else ():
                self._items[item_id].handed -= samples
            current = self._handed_order[-1] if self._handed_order else (self._queue[0][0] if self._queue else
                                                                          in_resampler)
            self._queue.clear()
            self._offset = self._queued = 0
            self._handed_order.clear()
            self._playing = False
            if drop_in_flight:
                self._heard_by = now
            return current, self._ms(current, 0) if current is not None else 0

    def handed_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` handed to the device so far, in flight or heard: what will
        have been heard when the device is never made to drop what it holds."""
        with self._lock:
            return self._ms(item_id, 0)

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` heard so far (what is still in flight does not count)."""
        with self._lock:
            return self._ms(item_id, self._unheard(self._clock()).get(item_id, 0))

    def received_ms(self, item_id: str) -> int:
        with self._lock:
            item = self._items.get(item_id)
            return 0 if item is None else item.received * 1000 // self.rate

    def first_audio_latency(self, item_id: str) -> float | None:
        """Seconds from the first delta of ``item_id`` being fed to its first sample being heard."""
        with self._lock:
            item = self._items.get(item_id)
            if item is None or item.first_fed_at is None or item.first_heard_at is None:
                return None
            return item.first_heard_at - item.first_fed_at

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight: everything fed has been heard (or dropped)."""
        with self._lock:
            return not self._queued and self._clock() >= self._heard_by

    @property
    def queued_ms(self) -> float:
        with self._lock:
            return self._queued * 1000 / self.output_rate

    # ---------------------------------------------------------------------- output-callback side

    def read(self, frames: int, delay: float | None = None) -> np.ndarray:
        """Exactly ``frames`` samples (int16, at ``output_rate``) for the device, zero-filled where there is nothing to play.

        ``delay``: seconds from now until the first returned sample is heard (the device's
        output latency plus anything the caller still holds); ``latency`` when not given.
        """
        out = np.empty(frames, dtype=_PCM16)
        self.read_into(out, delay)
        return out

    def read_into(self, out: np.ndarray, delay: float | None = None) -> None:
        """:meth:`read` into ``out`` (a writable int16 array: the device's own buffer), all of it written."""
        frames = out.size
        with self._lock:
            now = self._clock()
            if delay is not None and delay >= 0:
                self.latency = delay
            if not self._playing and self._queue and self._ready(now):
                self._playing = True
            if not self._playing:
                out[:] = 0
                return
            filled = 0
            while filled < frames and self._queue:
                item_id, chunk = self._queue[0]
                take = min(frames - filled, chunk.size - self._offset)
                out[filled:filled + take] = chunk[self._offset:self._offset + take]
                item = self._items[item_id]
                if item.first_heard_at is None:
                    item.first_heard_at = now + self.latency + filled / self.output_rate
                item.handed += take
                if not self._handed_order or self._handed_order[-1] != item_id:
                    self._handed_order.append(item_id)
                    del self._handed_order[:-_KEEP_ITEMS]
                filled += take
                self._offset += take
                self._queued -= take
                if self._offset == chunk.size:
                    self._queue.popleft()
                    self._offset = 0
            if filled:
                self._heard_by = now + self.latency + filled / self.output_rate
            if filled < frames:  # ran dry: the next audio takes a pre-roll again
                out[filled:] = 0
                self._playing = False
                if self._handed_order and not self._items[self._handed_order[-1]].complete:
                    self.underruns += 1  # a gap before its response was complete

    # ---------------------------------------------------------------------- internals

    def _flush(self) -> list[tuple[str, np.ndarray]]:
        """The rest of the item the resampler holds (feeding side), which then starts afresh."""
        if self._resampler is None or self._resampling is None:
            return []
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=_PCM16), last=True)
        item_id = self._resampling
        self._resampler = self._resampling = None
        return [(item_id, tail)]

    def _enqueue(self, chunks: list[tuple[str, np.ndarray]]) -> None:
        for item_id, samples in chunks:
            if samples.size and item_id in self._items:
                self._queue.append((item_id, samples))
                self._queued += samples.size

    def _ms(self, item_id: str, unheard: int) -> int:
        """Milliseconds of ``item_id`` handed less ``unheard`` samples; never more than was received."""
        item = self._items.get(item_id)
        if item is None:
            return 0
        return min((item.handed - unheard) * 1000 // self.output_rate, item.received * 1000 // self.rate)

    def _ready(self, now: float) -> bool:
        """May playback start: pre-roll queued, the head item complete, or it waited long enough."""
        if self._queued >= self.preroll:
            return True
        head = self._items[self._queue[0][0]]
        return head.complete or (head.first_fed_at is not None and now - head.first_fed_at >= self.max_wait)

    def _unheard(self, now: float) -> dict[str, int]:
        """Samples handed to the device and not heard yet at ``now``, per item: the newest handed."""
        left = max(0, round((self._heard_by - now) * self.output_rate))
        unheard = {}
        for item_id in dict.fromkeys(reversed(self._handed_order)):
            if left <= 0:
                break
            unheard[item_id] = min(left, self._items[item_id].handed)
            left -= unheard[item_id]
        return unheard

    def _forget_old_items(self) -> None:
        while len(self._items) > _KEEP_ITEMS:
            oldest = next(iter(self._items))
            if oldest in self._handed_order or any(item_id == oldest for item_id, _ in self._queue):
                break
            del self._items[oldest]
