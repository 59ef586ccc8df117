"""Multi-node ``serve`` on Redis: a session registry and a command channel per node.

Several gateway nodes share one Redis (``serve --redis redis://...``):

* Socket.IO's ``AsyncRedisManager`` lets any node emit to any client (python-socketio >= 5.14,
  whose Redis messages are JSON, not pickles);
* each node keeps ``voicerelay:node:<node_id>:sessions`` (session id -> state JSON) alive with a
  heartbeat; the key expires ``TTL_S`` after the node stops, so a dead node's sessions vanish;
* an action on a session that lives on another node (a ``session_id`` in ``text_input``,
  ``say``, ``interrupt``, ``end_session``, ``get_state``) is published on that node's
  ``voicerelay:node:<node_id>:commands`` channel; the owning node carries it out and from then
  on also sends that session's events to the requester.

What the requester's node must tell its followers, it hears of through ``gone`` and ``status``
(the namespace does the telling): a session of another node that vanished, and why (``ended``:
its node told the followers itself; ``node``: its node stopped or restarted, so nobody did --
each node writes a boot id beside its heartbeat, so that a node restarted within the registry's
expiry is told apart from one that ended a session; ``outage``: it vanished while Redis was down,
when its node's word could not get through), and the cluster going ``degraded`` or ``ok`` (while
Redis is down, the owning node's events to followers on other nodes are lost).

Audio never goes through Redis: a session emits to its own browser on the local node only. So
when Redis is down, local sessions carry on; cross-node features report ``degraded`` (in
``/health`` and as ``error {code: "cluster_degraded"}``) and recover by themselves.

The node checks Redis when the gateway starts (:meth:`Cluster.check`): a Redis that cannot be
reached is one warning line and the node starts degraded (``/health`` says so from the start);
it never refuses to start, so nodes and Redis may come up in any order. The node is ``ok`` only
once its sessions are registered and it listens for commands again (and Socket.IO's own Redis
subscription is back, when Redis lets it see that), so that ``ok`` means other nodes can reach
its sessions. An outage is two log lines, one when it starts and one when it ends, whichever
part noticed it: Socket.IO's Redis manager logs through :meth:`Cluster.socketio_logger`, whose
filter turns its per-event errors into that one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ClusterUnavailable
from .registry import SessionRegistry

__all__ = ["Cluster", "ClusterUnavailable", "Departures"]

#: Carries out an action on a session of this node: ``act(action, session_id, data, reply_to)``.
Act = Callable[[str, str, Any, str], Awaitable[None]]
#: A session of another node vanished: ``gone(session_id, node, why)``, ``why`` one of ``"ended"``,
#: ``"node"``, ``"outage"`` (see the module docstring).
Gone = Callable[[str, str, str], None]
#: The cluster became ``"degraded"`` or ``"ok"`` again (transitions only, not the first check).
Status = Callable[[str], None]

log = logging.getLogger(__name__)

PREFIX = "voicerelay:node:"
HEARTBEAT_S = 1.0
TTL_S = 5


class Departures:
    """Why sessions of other nodes left the registry: pure, fed each heartbeat's view.

    A session that vanished was ``ended`` by its node (which told its followers), unless its node
    is gone or restarted (``node``: a new boot id), or it vanished when the word of its end could
    not get through (``outage``: seen first by the heartbeat that found Redis again). A node
    missing from Redis has normally expired (it stopped refreshing for ``TTL_S``), but just after
    Redis came back (or lost its data, restarted), the nodes have not all registered again: for
    ``grace_s`` from then, a session whose node is missing waits, and is forgotten if it comes back.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.grace_until = float("-inf")
        self._waiting: dict[str, tuple[str, str | None, bool]] = {}  # session -> (node, boot, outage): node missing

    def redis_back(self, now: float) -> None:
        """Redis answers again after failing, or lost its data: the nodes are registering again."""
        self.grace_until = now + self.grace_s

    def update(self, now: float, before: dict[str, tuple[str, str | None]], after: dict[str, tuple[str, str | None]],
               nodes: dict[str, str | None], outage: bool) -> list[tuple[str, str, str]]:
        """``before``/``after``: the other nodes' sessions (session -> (node, boot)) at the last
        heartbeat and at this one; ``nodes``: the live nodes' boot ids; ``outage``: this heartbeat
        is the first since Redis failed. Returns ``(session, node, why)`` for each decided departure."""
        decided = []
        candidates = {i: (node, boot, outage) for i, (node, boot) in before.items() if i not in after}
        candidates.update({i: v for i, v in self._waiting.items() if i not in after})
        self._waiting = {}
        for session_id, (node, boot, in_outage) in candidates.items():
            if node in nodes:
                why = "node" if nodes[node] != boot else "outage" if in_outage else "ended"
            elif now < self.grace_until:
                self._waiting[session_id] = (node, boot, in_outage)
                continue
            else:
                why = "node"
            decided.append((session_id, node, why))
        return decided


class Cluster:
    """This node's part of the cluster: publishes ``registry``'s sessions, learns the others',
    sends actions to their nodes and carries out theirs with ``act``."""

    def __init__(self, registry: SessionRegistry[Any], url: str, node_id: str | None = None,
                 act: Act | None = None, gone: Gone | None = None, status: Status | None = None) -> None:
        import redis.asyncio as aioredis

        self.registry = registry
        self.act = act
        self.gone = gone
        self.on_status = status
        self.url = url
        self.node_id = node_id or secrets.token_hex(4)
        self.boot = secrets.token_hex(6)  # this run of the node: a restarted node has a new one
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2,
                                             health_check_interval=5)
        self.remote: dict[str, dict[str, Any]] = {}  # session id -> state (with "node") on other nodes
        self._boots: dict[str, str | None] = {}  # session id (other nodes) -> the boot id of its node
        self.departures = Departures(TTL_S + 2 * HEARTBEAT_S)
        self._failing = False  # the last heartbeat failed
        self._written = float("-inf")  # when the last heartbeat wrote this node's keys (monotonic)
        self.degraded = False  # Redis failed, and this node is not back in full yet
        self.ready = False  # registered and listening: other nodes can reach this node's sessions
        self.last_error: str | None = None
        self.checked = asyncio.Event()  # the first heartbeat is over (ready or degraded)
        self._listening = False  # subscribed to this node's command channel
        self._socketio_seen = False  # Socket.IO's Redis subscription was seen once (so it is checked)
        self._tasks: list[asyncio.Task[None]] = []
        self.remote_version = 0  # bumps when self.remote changes (the monitor republishes)

    @property
    def sessions_key(self) -> str:
        return f"{PREFIX}{self.node_id}:sessions"

    @property
    def status(self) -> str:
        """``starting`` (not checked yet), ``ok`` or ``degraded``."""
        return "ok" if self.ready else "degraded" if self.degraded else "starting"

    @property
    def socketio_client_name(self) -> str:
        """The Redis client name of this node's Socket.IO manager (seen in ``CLIENT LIST``)."""
        return f"voicerelay-{self.node_id}-socketio"

    def socketio_manager(self) -> Any:
        """Socket.IO's Redis manager for this node: its connections are named (so the heartbeat
        can see its subscription) and it logs through :meth:`socketio_logger`."""
        import socketio

        return socketio.AsyncRedisManager(self.url, logger=self.socketio_logger(),
                                          redis_options={"client_name": self.socketio_client_name})

    def socketio_logger(self) -> logging.Logger:
        """The logger of Socket.IO's Redis manager: its Redis errors (one or two per event emitted
        while Redis is down) become this node's one "cluster degraded" line; the rest goes on."""
        logger = logging.getLogger(f"{__name__}.socketio.{self.node_id}")
        logger.setLevel(logging.WARNING)  # not its INFO "backend initialized" nor DEBUG per message
        logger.addFilter(self._socketio_record)
        return logger

    def _socketio_record(self, record: logging.LogRecord) -> bool:
        reason = getattr(record, "redis_exception", None)  # the extra its Redis errors carry
        if reason is None:
            return True
        self._trouble(ConnectionError(reason))  # (its message says what it was doing: publish or receive)
        return False

    async def check(self, timeout: float = 3.0) -> None:
        """Start the cluster and wait (at most ``timeout`` seconds) until Redis was tried once,
        so that ``/health`` tells the truth from the start and a dead Redis is said at once."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.checked.wait(), timeout)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._heartbeat(), name="cluster heartbeat"),
                           asyncio.create_task(self._listen(), name="cluster commands")]

    async def close(self) -> None:
        from redis.exceptions import RedisError

        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # cancelled: they catch Redis' errors themselves
        self._tasks = []
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # Redis is down: the key expires after TTL_S
            await asyncio.wait_for(self.redis.delete(self.sessions_key), 1)
        await self.redis.aclose()

    def _trouble(self, exc: BaseException) -> None:
        from ..errors import one_line

        if not self.degraded:
            when = "at start-up" if not self.checked.is_set() else "now"
            log.warning("cluster degraded: Redis at %s is unusable %s (%s): local sessions carry on, cross-node "
                        "actions wait until it is back (/health says degraded)", self.url, when, one_line(exc))
            if self.checked.is_set() and self.on_status is not None:
                self.on_status("degraded")
        self.degraded = True
        self.ready = False
        self.last_error = one_line(f"{type(exc).__name__}: {exc}")
        self.checked.set()

    def _recovered(self) -> None:
        was_degraded = self.degraded
        if was_degraded:
            log.warning("cluster recovered: Redis at %s is back and this node's sessions are registered again",
                        self.url)
        self.degraded = False
        self.ready = True
        self.last_error = None
        self.checked.set()
        if was_degraded and self.on_status is not None:
            self.on_status("ok")

    async def _socketio_subscribed(self) -> bool:
        """Whether Socket.IO's manager is subscribed, as Redis sees it (``CLIENT LIST``). True
        before its first subscription (python-socketio starts it with the first connection) and
        where Redis does not allow ``CLIENT LIST``."""
        from redis.exceptions import ResponseError

        try:
            clients = await self.redis.client_list(_type="pubsub")
        except ResponseError:  # CLIENT LIST not allowed (a managed Redis): trust it
            return True
        subscribed = any(c.get("name") == self.socketio_client_name and int(c.get("sub", 0)) > 0 for c in clients)
        self._socketio_seen = self._socketio_seen or subscribed
        return subscribed or not self._socketio_seen

    # ----------------------------------------------------------------------------- registry

    async def _heartbeat(self) -> None:
        from redis.exceptions import RedisError

        while True:
            try:
                states = {s.id: json.dumps({**s.state(), "node": self.node_id, "boot": self.boot})
                          for s in self.registry.sessions()}
                alive = f"{PREFIX}{self.node_id}:alive"
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.exists(alive)  # written a second ago, unless Redis lost its data since (restarted)
                    pipe.delete(self.sessions_key)
                    if states:
                        pipe.hset(self.sessions_key, mapping=states)
                    pipe.hset(alive, mapping={"t": time.time(), "boot": self.boot})
                    pipe.expire(self.sessions_key, TTL_S)
                    pipe.expire(alive, TTL_S)
                    existed = (await pipe.execute())[0]
                now = time.monotonic()
                # Redis failed since the last heartbeat (here, or for Socket.IO's manager), or lost its
                # data (restarted between two heartbeats: the key written a moment ago is gone)
                outage = self._failing or self.degraded or (not existed and now - self._written < TTL_S)
                if outage:
                    self.departures.redis_back(now)
                self._failing = False
                self._written = now
                remote: dict[str, dict[str, Any]] = {}
                boots: dict[str, str | None] = {}
                async for key in self.redis.scan_iter(match=f"{PREFIX}*:sessions", count=100):
                    name = key.decode()
                    if name == self.sessions_key:
                        continue
                    for session_id, raw in (await self.redis.hgetall(name)).items():
                        state = json.loads(raw)
                        boots[session_id.decode()] = state.pop("boot", None)
                        remote[session_id.decode()] = state
                nodes = await self._nodes()  # after the sessions: a node that restarted meanwhile has its new boot
                departed = self.departures.update(time.monotonic(), self._owners(self.remote, self._boots),
                                                  self._owners(remote, boots), nodes, outage)
                if remote != self.remote:
                    self.remote = remote
                    self.remote_version += 1
                self._boots = boots
                for session_id, node, why in departed:
                    if self.gone is not None:
                        self.gone(session_id, node, why)
                if self._listening and await self._socketio_subscribed():
                    self._recovered()
                elif not self.checked.is_set():
                    await asyncio.sleep(0.05)  # the listener subscribes in a moment: check again soon
                    continue
            except (RedisError, OSError) as exc:
                self._failing = True
                self._trouble(exc)
            await asyncio.sleep(HEARTBEAT_S)

    @staticmethod
    def _owners(sessions: dict[str, dict[str, Any]], boots: dict[str, str | None]) -> dict[str, tuple[str, str | None]]:
        return {i: (state["node"], boots.get(i)) for i, state in sessions.items() if isinstance(state.get("node"), str)}

    async def _nodes(self) -> dict[str, str | None]:
        """The live nodes (their ``alive`` key has not expired) and the boot id of each."""
        nodes: dict[str, str | None] = {}
        async for key in self.redis.scan_iter(match=f"{PREFIX}*:alive", count=100):
            name = key.decode()[len(PREFIX):-len(":alive")]
            boot = await self.redis.hget(key, "boot")
            nodes[name] = boot.decode() if boot is not None else None
        return nodes

    def node_of(self, session_id: str) -> str | None:
        state = self.remote.get(session_id)
        return state.get("node") if state else None

    async def locate(self, session_id: str) -> str | None:
        """The node of ``session_id``, asking Redis when the last heartbeat did not know it (a
        session that another node registered since). Raises :class:`ClusterUnavailable` when
        Redis cannot say."""
        from redis.exceptions import RedisError

        node = self.node_of(session_id)
        if node is not None:
            return node
        if self.degraded:
            raise ClusterUnavailable(f"no session {session_id} on this node, and the cluster is degraded "
                                     f"({self.last_error}): the other nodes cannot be asked")
        try:
            async for key in self.redis.scan_iter(match=f"{PREFIX}*:sessions", count=100):
                if key.decode() == self.sessions_key:
                    continue
                raw = await self.redis.hget(key, session_id)
                if raw is not None:
                    state = json.loads(raw)
                    self._boots[session_id] = state.pop("boot", None)
                    self.remote[session_id] = state
                    return state.get("node")
        except (RedisError, OSError) as exc:
            self._trouble(exc)
            raise ClusterUnavailable(f"cannot reach Redis: {exc}") from None
        return None

    # ----------------------------------------------------------------------------- commands

    async def send(self, session_id: str, action: str, data: Any, reply_to: str) -> None:
        """Ask the node that owns ``session_id`` to carry out ``action`` for ``reply_to``."""
        from redis.exceptions import RedisError

        node = self.node_of(session_id)
        if node is None:
            raise LookupError(session_id)
        if self.degraded:
            raise ClusterUnavailable(f"the cluster is degraded ({self.last_error}); cross-node actions are paused")
        message = json.dumps({"action": action, "session_id": session_id, "data": data, "reply_to": reply_to})
        try:
            receivers = await self.redis.publish(f"{PREFIX}{node}:commands", message)
        except (RedisError, OSError) as exc:
            self._trouble(exc)
            raise ClusterUnavailable(f"cannot reach Redis: {exc}") from None
        if not receivers:  # its node is not listening (yet): the command would be lost
            raise ClusterUnavailable(f"node {node} of session {session_id} is not listening for commands right "
                                     "now (it is reconnecting to Redis or gone); try again")

    async def _listen(self) -> None:
        from redis.exceptions import RedisError

        channel = f"{PREFIX}{self.node_id}:commands"
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                self._listening = True
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        await self._carry_out(message["data"])
            except (RedisError, OSError) as exc:
                self._listening = False
                self._trouble(exc)
                await asyncio.sleep(HEARTBEAT_S)
            finally:
                self._listening = False
                with contextlib.suppress(RedisError, OSError):  # the connection is already gone
                    await pubsub.aclose()

    async def _carry_out(self, raw: bytes) -> None:
        try:
            command = json.loads(raw)
            action, session_id, reply_to = command["action"], command["session_id"], command["reply_to"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed cluster command: %r", raw[:200])
            return
        if self.act is None:
            log.warning("ignoring a cluster command: this node carries out none")
            return
        await self.act(action, session_id, command.get("data"), reply_to)
