"""The ``/monitor`` namespace: a read-only, rate-bounded view of every session of a gateway.

Monitors (``voicerelay inspect``) connect to ``/monitor`` (with the admin token when the gateway
has one) and receive:

* ``sessions``: ``{sessions: [state, ...]}``, the full picture, on connect and after a resync;
* ``session_update``: one session's state, coalesced: at most ``MAX_RATE`` per second each;
* ``session_closed``: ``{session_id, status}``;
* ``session_detail``: for the session a monitor selected (``select {session_id}``), new
  transcript lines and raw Realtime events (audio elided) since the last batch.

The audio path never waits for a monitor. Sessions only mark themselves dirty and append to
bounded ring buffers; one publisher task sends at most ``MAX_RATE`` batches per second. The last
event of each batch asks for a Socket.IO ack, which python-socketio clients (``voicerelay
inspect``) send when their handler returns (a JavaScript client calls the ack function its
handler gets). A monitor with more than ``MAX_UNACKED`` batches unacknowledged has stopped
reading: it is skipped, and gets a full resync once it acknowledges again. Memory stays bounded
(at most ``MAX_UNACKED + 1`` batches wait for a monitor) and no session notices.

A monitor's batches go to its own connection on this node, never through Redis.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from ..protocol.events import Event
from ..protocol.redact import elide
from .contract import token_ok
from .registry import Registered, SessionRegistry

if TYPE_CHECKING:
    import socketio

    from .cluster import Cluster

log = logging.getLogger(__name__)

NAMESPACE = "/monitor"
MAX_RATE = 10  # updates per second per session, at most
MAX_UNACKED = 10  # batches a monitor has not acknowledged before it is skipped
EVENT_LOG = 200
#: The publisher lets the event loop run other work after this many states or emits: a tick of
#: fifty sessions in one go held every session's events for a few milliseconds.
YIELD_EVERY = 8
TRANSCRIPT_LOG = 100


class SessionLog:
    """What a monitor can see of one session beyond its state: bounded, newest last."""

    def __init__(self) -> None:
        self.seq = 0
        self.transcripts: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(maxlen=TRANSCRIPT_LOG)
        # (seq, direction, time, event): an event is elided only when a monitor is sent it, so that
        # logging costs every session an append and only the selected session pays for elide()
        self.events: collections.deque[tuple[int, str, float, Event]] = collections.deque(maxlen=EVENT_LOG)

    def add_transcript(self, role: str, text: str) -> None:
        self.seq += 1
        self.transcripts.append((self.seq, {"role": role, "text": text, "t": time.time()}))

    def add_event(self, direction: str, event: Event) -> None:
        self.seq += 1
        self.events.append((self.seq, direction, time.time(), event))

    def since(self, seq: int) -> dict[str, list[dict[str, Any]]]:
        return {"transcripts": [t for s, t in self.transcripts if s > seq],
                "events": [{"dir": d, "t": t, "event": elide(e)} for s, d, t, e in self.events if s > seq]}


class _Watcher:
    """One connected monitor: what it selected, what it was sent, and what it acknowledged."""

    __slots__ = ("selected", "seen", "stale", "unacked")

    def __init__(self) -> None:
        self.selected: str | None = None
        self.seen = 0  # SessionLog.seq already sent
        self.stale = True  # needs a full "sessions" resync
        self.unacked = 0  # batches sent and not acknowledged yet

    @property
    def backed_up(self) -> bool:
        """It stopped reading: skip it until it acknowledges again."""
        return self.unacked > MAX_UNACKED

    def acked(self, *_: Any) -> None:
        """The Socket.IO ack of one batch."""
        self.unacked = max(0, self.unacked - 1)


class Monitor:
    """The ``/monitor`` namespace of one gateway node; see the module docstring. It reads the
    node's sessions from ``registry`` (and other nodes' from ``cluster``, when there is one)."""

    def __init__(self, sio: socketio.AsyncServer, registry: SessionRegistry[Any], admin_token: str | None,
                 cluster: Cluster | None = None) -> None:
        self.sio = sio
        self.registry = registry
        self.cluster = cluster
        self.admin_token = admin_token
        self.watchers: dict[str, _Watcher] = {}
        self._dirty: set[str] = set()
        self._closed: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._remote_seen: tuple[int, dict[str, dict[str, Any]]] = (0, {})
        self.skipped = 0  # batches not sent to a backed-up monitor
        sio.on("connect", self._on_connect, namespace=NAMESPACE)
        sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)
        sio.on("select", self._on_select, namespace=NAMESPACE)

    # ----------------------------------------------------------------------------- from sessions

    def touch(self, session: Registered) -> None:
        """A session changed: publish it at the next tick (cheap: the audio path calls this)."""
        if self.watchers:
            self._dirty.add(session.id)

    def closed(self, session: Registered, status: str) -> None:
        if self.watchers:
            self._closed.append({"session_id": session.id, "status": status})

    # ----------------------------------------------------------------------------- monitors

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if not token_ok(auth, self.admin_token):
            import socketio

            raise socketio.exceptions.ConnectionRefusedError("unauthorized: the admin token is required")
        if self.cluster is not None:
            self.cluster.start()
        self.watchers[sid] = _Watcher()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._publish(), name="monitor publisher")
            self._task.add_done_callback(_report_failure)

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        self.watchers.pop(sid, None)

    async def _on_select(self, sid: str, data: Any = None) -> None:
        watcher = self.watchers.get(sid)
        if watcher is None:
            return
        session_id = data.get("session_id") if isinstance(data, dict) else None
        watcher.selected = session_id if isinstance(session_id, str) else None
        watcher.seen = 0

    async def _publish(self) -> None:
        """One task for all monitors: at most MAX_RATE batches a second, never blocking a session."""
        while self.watchers:
            await asyncio.sleep(1 / MAX_RATE)
            dirty, self._dirty = self._dirty, set()
            closed, self._closed = self._closed, []
            sessions = {s.id: s for s in self.registry.sessions()}
            updates = []
            for n, i in enumerate(dirty, 1):
                if i in sessions:
                    updates.append(sessions[i].state())
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # (the sessions' own events go first: no burst of work)
            remote = self._remote_changes(updates, closed)
            for sid, watcher in list(self.watchers.items()):
                if watcher.backed_up:
                    watcher.stale = True
                    self.skipped += 1
                    continue
                batch: list[tuple[str, Any]] = []
                if watcher.stale:
                    watcher.stale = False
                    batch.append(("sessions", {"sessions": [s.state() for s in sessions.values()] + remote}))
                else:
                    batch += [("session_update", update) for update in updates]
                    batch += [("session_closed", item) for item in closed]
                session = sessions.get(watcher.selected or "")
                if session is not None and session.log.seq > watcher.seen:
                    batch.append(("session_detail", {"session_id": session.id, **session.log.since(watcher.seen)}))
                    watcher.seen = session.log.seq
                await self._send(sid, watcher, batch)

    async def _send(self, sid: str, watcher: _Watcher, batch: list[tuple[str, Any]]) -> None:
        """Emit ``batch`` to one monitor (on this node: never through Redis); its last event asks
        for the ack that tells the monitor is still reading. A monitor that disconnected
        meanwhile is simply not sent anything (python-socketio emits to nobody)."""
        if not batch:
            return
        *first, (name, data) = batch
        for n, (event, payload) in enumerate(first, 1):
            await self.sio.emit(event, payload, to=sid, namespace=NAMESPACE, ignore_queue=True)
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # (an emit to a local monitor never waits: let the sessions' events by)
        watcher.unacked += 1
        await self.sio.emit(name, data, to=sid, namespace=NAMESPACE, ignore_queue=True, callback=watcher.acked)

    def _remote_changes(self, updates: list[dict[str, Any]], closed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Other nodes' sessions (multi-node): add their changes to this tick; return them all."""
        cluster = self.cluster
        if cluster is None:
            return []
        version, seen = self._remote_seen
        if cluster.remote_version != version:
            current = dict(cluster.remote)
            updates += [state for i, state in current.items() if seen.get(i) != state]
            closed += [{"session_id": i, "status": "ended"} for i in seen if i not in current]
            self._remote_seen = (cluster.remote_version, current)
        return list(self._remote_seen[1].values())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # a failure was logged when it happened


def _report_failure(task: asyncio.Task[None]) -> None:
    """The publisher ended by a bug (emitting to a local connection raises nothing else): say so;
    the next monitor that connects starts a new one."""
    if not task.cancelled() and task.exception() is not None:
        log.error("monitor publisher failed: %r", task.exception(), exc_info=task.exception())
