"""The browser contract on Socket.IO's default namespace: one thin ``on_<event>`` method per
event of :mod:`~voicerelay.gateway.contract` (python-socketio's class-based namespace).

Connections are checked in :meth:`GatewayNamespace.on_connect` (token, session count, shutting
down) and refused with ``ConnectionRefusedError``. Every browser event runs under one guard
(:meth:`GatewayNamespace.trigger_event`): a :class:`~voicerelay.errors.ContractError` becomes an
``error {code, message}`` for that browser alone and the session goes on (``rate_limited`` also
ends it and closes the connection); what the event queued for the browser is sent before the
next event is read. Unknown events are ignored.

The server runs without python-socketio's task per event (``async_handlers=False``). The events
of the browser's own session (:data:`INLINE`: ``start_session``, ``audio_data``,
``commit_audio``, ``playback_position``) are handled on the connection's reader as they are read,
strictly in order: audio sent right after ``start_session`` finds its session started (its relay
queues audio until the upstream is connected), and an upstream that takes audio slower than it
arrives holds the browser's reads back rather than piling up tasks. ``start_session`` waits at
most for the embedded backend's first start; the actions, which may wait on Redis or on a
session's end, each get a task of their own, as before, so that the connection's heartbeat is
read meanwhile.

A message too big for the transport to read closes the connection before any event is seen
(:mod:`~voicerelay.gateway.wire` records it): the session ends as ``message_too_big`` (what a
monitor sees) and the gateway logs one line; the browser sees its WebSocket closed with code
1009.

Actions that may target another session (``text_input``, ``say``, ``interrupt``,
``end_session``, ``get_state`` with a ``session_id``) are carried out here when the session
lives on this node (:meth:`GatewayNamespace.act_locally`), else sent to its node through the
cluster. A connection that acted on another node's session follows it from then on, and this
node tells it what that node cannot: that the session was lost with its node (``error {code:
"node_lost"}`` then ``session_ended {status: "node_lost"}``), that Redis is down so its events
cannot arrive (``error {code: "cluster_degraded"}``), and, once Redis is back, the session's
state again (``session_state``, or the ``error`` that it is gone).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

import socketio

from ..errors import ClusterUnavailable
from ..protocol.config import RealtimeConfig
from ..upstream import UpstreamError, UpstreamSpec
from . import contract as c
from .cluster import Cluster
from .monitor import Monitor
from .registry import SessionRegistry
from .session import GatewaySession, SessionOptions
from .wire import Wires

log = logging.getLogger(__name__)

#: Events that act on a session, maybe on another node (``{session_id}`` names it).
ROUTED = frozenset({c.TEXT_INPUT, c.SAY, c.INTERRUPT, c.END_SESSION, c.GET_STATE})
#: Browser events handled on the connection's reader, in order, with no task each (see the
#: module docstring).
INLINE = frozenset({c.START_SESSION, c.AUDIO_DATA, c.COMMIT_AUDIO, c.PLAYBACK_POSITION})
#: Browser events handled under the guard.
GUARDED = ROUTED | INLINE
_HANDLER = {event: "on_" + event for event in GUARDED}


class NamespaceHost(Protocol):
    """What the namespace asks of the gateway."""

    registry: SessionRegistry[GatewaySession]
    monitor: Monitor
    cluster: Cluster | None
    config: RealtimeConfig
    session_options: SessionOptions
    token: str | None
    max_sessions: int
    max_chunk_b64: int
    max_message_bytes: int
    wires: Wires
    closing: bool

    async def upstream_spec(self) -> UpstreamSpec: ...

    def start_cluster(self) -> None: ...


class GatewayNamespace(socketio.AsyncNamespace):
    """The default namespace; see the module docstring."""

    def __init__(self, gateway: NamespaceHost) -> None:
        super().__init__("/")
        self.gateway = gateway
        self.registry = gateway.registry
        self.remote_followed: dict[str, set[str]] = {}  # another node's session -> connections here following it
        self._tasks: set[asyncio.Task[None]] = set()

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event not in GUARDED:
            if event not in ("connect", "disconnect"):
                log.debug("ignoring unknown event %r", event)
                return None
            return await super().trigger_event(event, *args)
        if event in INLINE:
            await self._guarded(event, args)
        else:  # may wait on Redis or a session's end: in a task, as python-socketio's async_handlers would
            self._spawn(self._guarded(event, args))
        return None

    async def _guarded(self, event: str, args: tuple[Any, ...]) -> None:
        """One browser event under the guard (see the module docstring)."""
        sid = args[0]
        try:
            # each guarded event has its coroutine here: called as python-socketio's dispatch would
            # (a cancelled handler returns nothing), without inspecting it again for every audio chunk
            try:
                await getattr(self, _HANDLER[event])(*args)
            except asyncio.CancelledError:
                pass
            session = self.registry.by_sid(sid)
            if session is not None and session.has_output:
                await session.flush()  # what the action queued for the browser
        except c.ContractError as exc:
            session = self.registry.by_sid(sid)
            if session is not None:
                session.refused()
            payload = exc.payload()
            target = args[1].get("session_id") if event in ROUTED and len(args) > 1 and isinstance(args[1], dict) \
                else None
            if isinstance(target, str):  # an action on a named (followed) session: its handlers hear of it
                payload["session_id"] = target
            await self.emit(c.ERROR, payload, to=sid, ignore_queue=True)  # the caller: connected here
            if exc.code == "rate_limited":  # ended and closed in a task: this may run on the connection's reader
                self._spawn(self._end_rate_limited(sid, session))
        except Exception as exc:  # a bug below: logged with its traceback, told to this browser alone
            log.exception("%s event from %s failed", event, sid)
            await self.emit(c.ERROR, c.error_payload("internal_error", f"{type(exc).__name__}: {exc}"), to=sid,
                            ignore_queue=True)

    async def _end_rate_limited(self, sid: str, session: GatewaySession | None) -> None:
        if session is not None:
            await session.end("rate_limited")
        await self.disconnect(sid)

    def _session(self, sid: str) -> GatewaySession:
        session = self.registry.by_sid(sid)
        if session is None:
            raise c.ContractError("no_session", "no session: send start_session first")
        return session

    # ----------------------------------------------------------------------------- connections

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        gateway = self.gateway
        gateway.start_cluster()
        if not c.token_ok(auth, gateway.token):
            raise socketio.exceptions.ConnectionRefusedError("unauthorized: a valid token is required")
        if len(self.registry.clients) >= gateway.max_sessions:
            raise socketio.exceptions.ConnectionRefusedError("too many sessions: try again later")
        if gateway.closing:
            raise socketio.exceptions.ConnectionRefusedError("the gateway is shutting down")
        address = environ.get("REMOTE_ADDR") or str((environ.get("asgi.scope") or {}).get("client"))
        client_id = auth.get("client_id") if isinstance(auth, dict) else None
        self.registry.connected(sid, f"{client_id} ({address})" if isinstance(client_id, str) and client_id
                                else address)

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        client = self.registry.client(sid)
        self.registry.disconnected(sid)
        for followers in self.remote_followed.values():
            followers.discard(sid)
        wire = self.gateway.wires.of(self.server.get_environ(sid))
        status = "disconnected"
        if wire is not None and wire.too_big is not None:
            how = f"a message of {wire.too_big} bytes" if wire.too_big else "a message"
            closed = "the connection was closed" if wire.too_big else \
                "the server closed the connection unread (WebSocket code 1009, message too big)"
            log.warning("connection %s (%s) sent %s over the transport's limit of %d bytes: %s", sid, client, how,
                        self.gateway.max_message_bytes, closed)
            status = "message_too_big"
        session = self.registry.by_sid(sid)
        if session is not None:
            await session.end(status, notify=False)

    # ----------------------------------------------------------------------------- the browser's own session

    async def on_start_session(self, sid: str, data: Any = None) -> None:
        if sid in self.registry:
            raise c.ContractError("session_exists", "this connection already has a session")
        chat_payload = c.parse_start(data)
        gateway = self.gateway
        session = GatewaySession(self.server, self.registry, gateway.monitor, gateway.session_options, sid,
                                 chat_payload, self.registry.client(sid),
                                 wire=gateway.wires.of(self.server.get_environ(sid)))
        self.registry.add(session)
        try:
            spec = await gateway.upstream_spec()
        except UpstreamError as exc:
            await session.error("upstream_error", str(exc))
            await session.end("error")
            return
        await session.start(spec, gateway.config)

    async def on_audio_data(self, sid: str, data: Any = None) -> None:
        session = self._session(sid)
        await session.audio(*c.check_audio(data, self.gateway.max_chunk_b64))

    async def on_commit_audio(self, sid: str, data: Any = None) -> None:
        session = self._session(sid)
        assert session.relay is not None
        session.relay.commit()

    async def on_playback_position(self, sid: str, data: Any = None) -> None:
        session = self._session(sid)
        session.playback_position(*c.parse_playback_position(data))

    # ----------------------------------------------------------------------------- actions (any session)

    async def on_text_input(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.TEXT_INPUT, data)

    async def on_interrupt(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.INTERRUPT, data)

    async def on_say(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.SAY, data)

    async def on_get_state(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.GET_STATE, data)

    async def on_end_session(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.END_SESSION, data)

    async def _route(self, sid: str, action: str, data: Any) -> None:
        """An action on the caller's own session, or (with ``session_id``) on any session of the cluster."""
        target = data.get("session_id") if isinstance(data, dict) else None
        if target is None:
            if action == c.GET_STATE and sid not in self.registry:
                await self.emit(c.SESSION_STATE, {"session_id": None, "chat_active": False, "ai_state": None}, to=sid,
                                ignore_queue=True)
                return
            await self.act_locally(action, self._session(sid).id, data, sid)
            return
        if not isinstance(target, str):
            raise c.ContractError("invalid_payload", "session_id must be a string")
        if self.registry.by_id(target) is not None:
            await self.act_locally(action, target, data, sid)
            return
        cluster = self.gateway.cluster
        if cluster is not None:
            try:
                if await cluster.locate(target) is not None:  # asks Redis when the last heartbeat did not know
                    await cluster.send(target, action, data, sid)
                    self.remote_followed.setdefault(target, set()).add(sid)
                    return
            except ClusterUnavailable as exc:
                raise c.ContractError("cluster_degraded", str(exc)) from None
        raise c.ContractError("no_session", f"no session {target}")

    # ----------------------------------------------------------------------------- other nodes' sessions

    def remote_session_gone(self, session_id: str, node: str, why: str) -> None:
        """The cluster saw another node's session vanish (see :mod:`~voicerelay.gateway.cluster`):
        tell this node's followers of it, unless its node did (``why == "ended"``)."""
        followers = self.remote_followed.pop(session_id, set())
        if why == "ended" or not followers:
            return
        if why == "node":
            code, status = "node_lost", "node_lost"
            message = f"node {node}, which held session {session_id}, stopped or restarted: the session is lost"
        else:
            code, status = "cluster_degraded", "unknown"
            message = f"session {session_id} of node {node} ended while Redis was unreachable: how it ended did not " \
                      "reach this node"
        self._spawn(self._tell(followers, [(c.ERROR, {**c.error_payload(code, message), "session_id": session_id}),
                                           (c.SESSION_ENDED, {"status": status, "session_id": session_id})]))

    def cluster_status(self, status: str) -> None:
        """Redis went down (``"degraded"``) or came back (``"ok"``): followers of other nodes' sessions
        are told their events cannot arrive, then sent each session's state again."""
        cluster = self.gateway.cluster
        if cluster is None:
            return
        for session_id, followers in list(self.remote_followed.items()):
            if not followers:
                continue
            if status == "degraded":
                message = f"Redis is unreachable: the events of session {session_id} (node " \
                          f"{cluster.node_of(session_id)}) cannot reach you until it is back; its session_state follows then"
                self._spawn(self._tell(set(followers), [(c.ERROR, {**c.error_payload("cluster_degraded", message),
                                                                   "session_id": session_id})]))
            else:
                self._spawn(self._resync(session_id, set(followers)))

    async def _resync(self, session_id: str, followers: set[str]) -> None:
        """Ask the owning node to send each follower the session's state (as a ``get_state`` would)."""
        cluster = self.gateway.cluster
        assert cluster is not None
        for sid in followers:
            try:
                await cluster.send(session_id, c.GET_STATE, {"session_id": session_id}, sid)
            except (ClusterUnavailable, LookupError) as exc:  # gone meanwhile, or Redis down again: say so
                code = "cluster_degraded" if isinstance(exc, ClusterUnavailable) else "no_session"
                message = str(exc) if isinstance(exc, ClusterUnavailable) else f"no session {session_id}"
                await self.emit(c.ERROR, {**c.error_payload(code, message), "session_id": session_id}, to=sid,
                                ignore_queue=True)

    async def _tell(self, sids: set[str], events: list[tuple[str, Any]]) -> None:
        for sid in sids:
            for name, data in events:
                await self.emit(name, data, to=sid, ignore_queue=True)  # connected here: never through Redis

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a task of the browser contract failed: %s", task.exception(), exc_info=task.exception())

    async def act_locally(self, action: str, session_id: str, data: Any, reply_to: str) -> None:
        """Carry out an action on a session of this node, for ``reply_to`` (any node's client)."""
        session = self.registry.by_id(session_id)
        try:
            if session is None or session.relay is None:
                raise c.ContractError("no_session", f"no session {session_id}")
            if reply_to != session.sid:
                session.followers.add(reply_to)
            if action == c.TEXT_INPUT:
                text, reply = c.parse_text(data)
                # in agent-wrapper mode the final user transcript this produces calls on_transcript
                session.relay.user_text(text, respond=reply and session.agent is None)
            elif action == c.SAY:
                session.relay.say(c.parse_say(data))
            elif action == c.INTERRUPT:
                session.relay.interrupt()
            elif action == c.END_SESSION:
                await session.end("ended")
                if reply_to != session.sid:
                    await self._reply(reply_to, c.SESSION_ENDED, {"status": "ended", "session_id": session_id})
            elif action == c.GET_STATE:
                await self._reply(reply_to, c.SESSION_STATE, session.state())
        except c.ContractError as exc:
            payload = exc.payload()
            if reply_to != (session.sid if session is not None else None):  # a follower's action
                payload["session_id"] = session_id
            await self._reply(reply_to, c.ERROR, payload)

    async def _reply(self, sid: str, event: str, data: Any) -> None:
        """Answer a connection of any node: straight to it when it is connected here, else through
        Redis (a burst of answers published to every node made Socket.IO's Redis client open a
        connection each, and keep them)."""
        await self.emit(event, data, to=sid, ignore_queue=sid in self.registry.clients)
