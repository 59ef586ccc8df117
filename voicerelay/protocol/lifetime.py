"""What a relay needs to survive a new connection, without I/O: the audio to send again, and
when to recycle before the server's session cap.

:class:`ResendLedger` keeps the ``input_audio_buffer.append`` events written to the current
connection whose turn the server has not answered yet, numbered in the order they were written.
A new connection (a recycle, or a reconnect after a drop) gets them again, so an utterance cut
in the middle is not lost. It forgets a turn's audio once the turn is answered — from the first
reply output of an in-band response after the audio was committed (a reply the user has begun
to hear is never asked for again: a cut reply ends as interrupted instead of being replayed) —
or the buffer was cleared, and holds at most ``max_ms`` of audio (the oldest goes first).
While the server's voice activity detection is on (``session.created``/``session.updated`` say
so) and it has heard no speech since the last turn, the audio no turn holds is what the server
itself judged silence: only its newest ``idle_ms`` is kept (enough for speech the server has
begun to hear but not yet reported: ``speech_started`` comes a few hundred ms after the voice),
so a listening user's session holds 2 s, not 15 s, and a turn being spoken is kept whole.

:class:`SessionCap` reads the cap from ``session.created`` (``expires_at``, Unix seconds) and
says when to recycle: at a quiet moment once inside the margin before the cap, or just before
it whatever the state.
"""

from __future__ import annotations

import collections
from typing import Any

from .audio import BYTES_PER_MS
from .events import UNSAID, session_turn_detection

Event = dict[str, Any]

#: Audio of unanswered turns kept for re-sending after a recycle or reconnect.
RESEND_MAX_MS = 15_000
#: With the server's VAD on and no speech heard, the audio kept for re-sending (the newest).
RESEND_IDLE_MS = 2_000
#: End the proactive recycle this long (at most) before the server's cap.
RECYCLE_MARGIN_MAX = 60.0


#: Server events that show a turn was answered: the first reply output, or the response's end.
ANSWERS = frozenset({"response.done", "response.output_audio.delta", "response.audio.delta",
                     "response.output_audio_transcript.delta", "response.audio_transcript.delta",
                     "response.output_text.delta", "response.text.delta", "response.function_call_arguments.delta"})


def append_ms(event: Event) -> float:
    """Milliseconds of audio in an ``input_audio_buffer.append`` (from its base64 length)."""
    return len(event["audio"]) * 3 / 4 / BYTES_PER_MS


class ResendLedger:
    """See the module docstring. ``number()`` an append when it is written, ``written()`` it once
    the write returned; ``server_event()`` every event from the server; ``take()`` on a new
    connection."""

    def __init__(self, max_ms: float = RESEND_MAX_MS, idle_ms: float = RESEND_IDLE_MS) -> None:
        self.max_ms = max_ms
        self.idle_ms = idle_ms
        self.server_vad = False  # the server detects turns (from its session events)
        self.speaking = False  # the server reported speech that no commit or stop has ended yet
        # two deques, not one of (number, event) tuples: a tuple holding a dict stays tracked by the
        # garbage collector, and 15 s of them per session made its full collections long pauses
        self._events: collections.deque[Event] = collections.deque()
        self._seqs: collections.deque[int] = collections.deque()
        self._ms = 0.0
        self._seq = 0
        self._committed_upto = 0  # appends numbered below this belong to a committed turn
        self._say: set[str] = set()  # out-of-band responses: they answer nobody

    @property
    def ms(self) -> float:
        """Audio held for re-sending."""
        return self._ms

    def __len__(self) -> int:
        return len(self._events)

    def number(self) -> int:
        """The next append's number: call it when the append is written (the wire's order)."""
        self._seq += 1
        return self._seq

    def written(self, seq: int, event: Event, ms: float | None = None) -> None:
        """Keep append ``seq`` (from :meth:`number`) until its turn is answered (``ms``: its
        :func:`append_ms`, if the caller computed it already)."""
        seqs = self._seqs
        if seqs and seqs[-1] > seq:  # one written after it waited less to be sent
            i = len(seqs)
            while i and seqs[i - 1] > seq:
                i -= 1
            seqs.insert(i, seq)
            self._events.insert(i, event)
        else:
            seqs.append(seq)
            self._events.append(event)
        self._ms += append_ms(event) if ms is None else ms
        while self._ms > self.max_ms and len(self._events) > 1:
            self._drop_oldest()
        if self.server_vad and not self.speaking and seqs[0] >= self._committed_upto:
            # nothing committed waits for an answer, and the server hears no speech: silence
            while self._ms > self.idle_ms and len(self._events) > 1:
                self._drop_oldest()

    def server_event(self, event: Event) -> None:
        """Forget resendable audio once its turn is answered (or the buffer was cleared)."""
        etype = event.get("type")
        if etype == "input_audio_buffer.speech_started":
            self.speaking = True
            return
        if etype in ("session.created", "session.updated"):
            td = session_turn_detection(event.get("session"))
            if td is not UNSAID:
                self.server_vad = td is not None
            return
        if etype in ("input_audio_buffer.committed", "input_audio_buffer.cleared"):
            self._committed_upto = self._seq + 1
            self.speaking = False  # (not at speech_stopped: until the commit, the turn is the newest audio)
        elif etype == "response.created":
            response = event.get("response") or {}
            if (response.get("metadata") or {}).get("voicerelay") == "say":
                self._say.add(str(response.get("id")))
            return
        if etype == "input_audio_buffer.cleared" or (etype in ANSWERS and self._in_band(event)):
            while self._seqs and self._seqs[0] < self._committed_upto:
                self._drop_oldest()

    def _in_band(self, event: Event) -> bool:
        if event.get("type") == "response.done":
            response = event.get("response") or {}
            return (response.get("metadata") or {}).get("voicerelay") != "say" and response.get("id") not in self._say
        return event.get("response_id") not in self._say

    def take(self) -> list[Event]:
        """Everything held, oldest first, for a new connection (which numbers them anew)."""
        events = list(self._events)
        self._events.clear()
        self._seqs.clear()
        self._ms = 0.0
        self._committed_upto = 0
        self.speaking = False  # (a new connection's server has heard nothing yet)
        return events

    def _drop_oldest(self) -> None:
        self._seqs.popleft()
        self._ms -= append_ms(self._events.popleft())


class SessionCap:
    """The server's session cap on the caller's clock, and when to recycle before it."""

    def __init__(self) -> None:
        self.expires_at: float | None = None  # clock time of the cap, once session.created said it
        self.recycle_from: float | None = None  # a quiet moment after this recycles
        self.recycle_by: float | None = None  # ... and this recycles whatever the state

    def session_created(self, event: Event, now: float, wall_now: float) -> None:
        """``now`` is the caller's clock, ``wall_now`` Unix time (``expires_at`` is Unix seconds)."""
        expires = (event.get("session") or {}).get("expires_at")
        if not isinstance(expires, (int, float)) or isinstance(expires, bool) or expires <= 0:
            self.expires_at = self.recycle_from = self.recycle_by = None
            return
        self.expires_at = now + (expires - wall_now)
        lifetime = self.expires_at - now
        margin = min(RECYCLE_MARGIN_MAX, max(0.5, lifetime * 0.25))
        self.recycle_from = self.expires_at - margin
        self.recycle_by = self.expires_at - margin / 4

    def remaining(self, now: float) -> float | None:
        return None if self.expires_at is None else max(0.0, self.expires_at - now)

    def should_recycle(self, now: float, quiet: bool) -> bool:
        """Recycle now? ``quiet``: nobody is speaking and no reply is under way."""
        if self.recycle_from is None or self.recycle_by is None or now < self.recycle_from:
            return False
        return quiet or now >= self.recycle_by
