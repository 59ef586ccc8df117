"""Soak and fault injection: browser-like sessions through the gateway to the embedded backend.

    python benchmarks/soak.py                         # 5 minutes, 20 sessions
    python benchmarks/soak.py --minutes 1 --sessions 4 --json out.json
    python benchmarks/soak.py --minutes 0.6 --sessions 3 --faults restart,vanish,burst   # the test's forms
    python benchmarks/soak.py --minutes 0.7 --sessions 4 --faults redis,nodekill

Processes (each its own, so that each can be killed alone and none shares a GIL):

- **The backend**: the embedded backend's own ``run()`` (what ``voicerelay backend`` runs), with
  reply audio paced at real time (``--pace 1``, so a reply lasts seconds and a kill can land in
  the middle of one). It counts at its door: every ``input_audio_buffer.append`` a session hands
  to its ``SessionPump`` is written (one ``O_APPEND`` write per chunk, so a SIGKILL loses none)
  to ``backend.log`` with its connection and the chunk's number; once a second it writes its
  RSS, open file descriptors, asyncio tasks and recognition worker pids to ``backend.stats``.
  It is restarted on the same port after its kill.
- **The gateway**: ``Gateway(backend=...).asgi_app()`` under uvicorn, configured as
  ``voicerelay serve`` runs it (``gateway.uvicorn_options()``: its message size and heartbeat),
  plus one route, ``/soak-stats`` (RSS, fds by kind, asyncio tasks, sessions, the heartbeat in
  force, ``/health``). With the cluster faults: two such nodes, ``a`` and ``b``, sharing a
  ``redis-server`` of the run's own (nothing saved to disk).
- **The browsers**: python-socketio ``AsyncClient`` s over the websocket transport, each sending
  ``start_session`` and then, like a microphone, an ``audio_data`` every 40 ms on a wall-clock
  schedule: the shipped recordings in turn, each followed by 4 s of their room noise. Every
  chunk carries a mark, its session's number and its own, in the least significant bits of its
  first 64 samples (a change of at most 1 in 32768 per sample: neither VAD nor recogniser notices). The crowd runs in one process; the two victims (the
  browser that vanishes and the one that freezes) in a process each. A session that gets
  ``session_ended`` starts a new one a second later, as a page would. On two nodes the crowd
  alternates between them, and a browser whose connection drops reconnects to the first node
  that answers (its own first) and starts a new session.
- **The followers** (cluster faults): a process on node ``a`` with two programs following the
  session of a crowd browser on node ``b``: one acts on it every half second (``get_state`` with
  its ``session_id``), one only listens.

Faults, at fractions of the run: the backend SIGKILLed (``restart``, from 15 %, once a crowd
session has heard a reply for 0.4 s; its recognition workers are counted 5 s later) and started
again on the same port; a browser SIGKILLed while it speaks (``vanish``, 35 %: the kernel closes
its TCP connection, no Socket.IO disconnect is sent); a burst of malformed events from one crowd
session (``burst``, 50 %); a browser SIGSTOPped while a reply streams to it (``freeze``, 70 %:
its socket's receive buffer is small, as on a slow link, so what it does not read waits in the
gateway; held until its upstream closes or 15 s past the heartbeat's bound). On two nodes: Redis
SIGKILLed and started again 3 s later on the same port (``redis``, 25 %), node ``b`` SIGKILLed
and started again (``nodekill``, 60 %).

Printed: per fault, what the affected sessions saw and when, and whether any neighbour saw an
``error`` or ``session_ended`` (for the cluster faults also what the followers were answered
and told, and the events the listening one missed); for the whole run, chunks sent vs counted
at the backend (lost, reordered within a connection, sent again on a new connection), replies,
user transcripts that match what was said, RSS of the gateway and the backend at minute 1 (for
the backend: one minute after its restart) and at the end, tasks and fds at the end vs the idle
baseline (Redis's clients too, on two nodes). Nothing is asserted here; ``tests/test_soak.py``
runs two short forms and asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import rss_mib  # noqa: E402 - benchmarks/common.py, beside this script

CHUNK_MS = 40
CHUNK_BYTES = CHUNK_MS * 48
MAGIC = 0xA55A  # 16 bits, then the session's number (16) and the chunk's (32): 64 bits in 64 samples' LSBs
MARK_SAMPLES = 64
GAP_MS = 4000  # room noise after each recording
RECORDINGS = {"hello_there": "hello there", "what_is_your_name": "what is your name",
              "how_are_you": "how are you today", "weather_in_paris": "what is the weather in paris",
              "what_can_you_do": "what can you do"}
ALL_FAULTS = ("restart", "vanish", "burst", "freeze", "nodekill", "redis")
AT = {"restart": 0.15, "redis": 0.25, "vanish": 0.35, "burst": 0.5, "nodekill": 0.6, "freeze": 0.7}
CLUSTER_FAULTS = ("nodekill", "redis")
REDIS_DOWN_S = 3.0  # how long Redis stays down in the redis fault
#: The events a follower should get as the session's own browser does (audio aside: counted apart)
FOLLOWED = ("ai_state", "user_transcript", "ai_transcript", "ai_response", "response_complete", "audio_delta")
FREEZE_RCVBUF = 16 * 1024  # the frozen browser's socket receive buffer (a slow link: what waits is the gateway's)


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int | str = "self") -> dict[str, int]:
    """This process's file descriptors by kind: TCP connections it opened by their peer's port
    (``tcp->6379``), ``tcp-accepted`` (clients' connections to it), ``tcp-listen``; a state when not
    established (read from /proc: which connections are left open, and to what)."""
    import collections

    inodes: dict[str, str] = {}
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            rows += [line.split() for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]]
        except OSError:
            continue
    listening = {int(f[1].rsplit(":", 1)[1], 16) for f in rows if f[3] == "0A"}
    states = {"01": "", "08": " close-wait", "04": " fin-wait", "05": " fin-wait", "0B": " closing"}
    for fields in rows:
        local_port, remote_port, state = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), \
            fields[3]
        if state == "0A":
            kind = "tcp-listen"
        elif local_port in listening:  # a client's connection to us: its port is of no interest
            kind = "tcp-accepted"
        else:
            kind = f"tcp->{remote_port}"
        inodes[fields[9]] = kind + ("" if state == "0A" else states.get(state, " " + state))
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            kinds[inodes.get(target[8:-1], "socket")] += 1
        else:
            kinds[target.split(":", 1)[0] if ":" in target else "file"] += 1
    return dict(kinds)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mark(pcm: bytes, number: int, seq: int) -> bytes:
    """Number a chunk in the least significant bits of its first 64 samples (inaudible: +-1 of 32768)."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").copy()
    word = (MAGIC << 48) | (number << 32) | seq
    bits = np.array([(word >> (63 - i)) & 1 for i in range(MARK_SAMPLES)], dtype=np.int16)
    samples[:MARK_SAMPLES] = (samples[:MARK_SAMPLES] & ~1) | bits
    return samples.tobytes()


def read_mark(audio_b64: str) -> tuple[int, int] | None:
    """(session, chunk) numbers of a marked chunk's base64, from its first 172 characters only."""
    head = base64.b64decode(audio_b64[:172])[: MARK_SAMPLES * 2]
    if len(head) < MARK_SAMPLES * 2:
        return None
    word = 0
    for i in range(MARK_SAMPLES):
        word = (word << 1) | (head[2 * i] & 1)  # little-endian: the low byte first
    if word >> 48 != MAGIC:
        return None
    return (word >> 32) & 0xFFFF, word & 0xFFFFFFFF


def _process_kind(pid: int) -> str:
    """``spawn`` (a pool worker) or ``resource_tracker``, from a child's command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    return "resource_tracker" if "resource_tracker" in cmd else "spawn" if "spawn_main" in cmd else cmd[:60]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- backend


def backend_main(port: int, run_dir: Path, pace: float) -> None:
    import itertools

    import voicerelay.backend.server as srv

    log_fd = os.open(run_dir / "backend.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    numbers = itertools.count()
    pid = os.getpid()

    def note(line: str) -> None:
        os.write(log_fd, f"{time.time():.3f} {pid} {line}\n".encode())

    class CountingPump(srv.SessionPump):
        """The backend's own pump, noting each connection and each numbered chunk as it arrives."""

        async def start(self) -> None:
            self.number = next(numbers)
            note(f"{self.number} O")
            await super().start()

        async def handle(self, event: dict[str, Any]) -> None:
            if event.get("type") == "input_audio_buffer.append":
                marked = read_mark(event["audio"])
                if marked is not None:
                    note(f"{self.number} A {marked[0]} {marked[1]}")
            await super().handle(event)

        async def close(self) -> None:
            note(f"{self.number} C")
            await super().close()

    srv.SessionPump = CountingPump  # type: ignore[misc] - the module's own class, counted

    def ready(server: Any) -> None:
        async def stats() -> None:
            with open(run_dir / "backend.stats", "a") as out:
                while True:
                    out.write(json.dumps({"t": time.time(), "pid": pid, "rss_mb": rss_mib(), "fds": fd_count(),
                                          "tasks": len(asyncio.all_tasks()) - 1, "connections": server.connections,
                                          "children": children_of(pid)}) + "\n")
                    out.flush()
                    await asyncio.sleep(1)

        asyncio.ensure_future(stats())

    asyncio.run(srv.run("127.0.0.1", port, pace, 3600.0, ready))


# ------------------------------------------------------------------------------------- gateway


def _task_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or type(coro).__name__


def gateway_main(port: int, backend_url: str, redis_url: str | None = None, node_id: str | None = None) -> None:
    import logging

    import uvicorn

    from voicerelay.gateway.server import Gateway

    logging.basicConfig(level=logging.WARNING, format="%(created).3f %(name)s %(levelname)s %(message)s")
    gateway = Gateway(backend=backend_url, max_sessions=200, redis_url=redis_url, node_id=node_id)

    app = gateway.asgi_app()
    options = gateway.uvicorn_options()

    async def stats(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/soak-stats":
            await app(scope, receive, send)  # the gateway as serve runs it, lifespan included
            return
        eio = gateway.sio.eio
        from collections import Counter

        names = Counter(_task_name(t) for t in asyncio.all_tasks() if t is not asyncio.current_task())
        body = json.dumps({"rss_mb": rss_mib(), "fds": fd_count(), "fd_kinds": fd_kinds(), "tasks": sum(names.values()),
                           "task_names": dict(names),
                           "sessions": len(gateway.sessions), "ping_interval": eio.ping_interval,
                           "ping_timeout": eio.ping_timeout, "ws_ping_interval": options["ws_ping_interval"],
                           "ws_ping_timeout": options["ws_ping_timeout"], "health": gateway.health()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(stats, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options)
    uvicorn.Server(config).run()


# ------------------------------------------------------------------------------------- browsers


def schedule() -> list[tuple[str | None, bytes]]:
    """One pass of the microphone: (recording or None for room noise, PCM) pieces."""
    import numpy as np
    import soundfile

    pieces: list[tuple[str | None, bytes]] = []
    lead, _ = soundfile.read(ROOT / "recordings" / "hello_there.wav", dtype="int16")
    noise = np.tile(lead[: 250 * 24], GAP_MS // 250)
    for stem in RECORDINGS:
        pcm, rate = soundfile.read(ROOT / "recordings" / f"{stem}.wav", dtype="int16")
        assert rate == 24_000
        pieces.append((stem, pcm.tobytes()))
        pieces.append((None, noise.tobytes()))
    return pieces


MALFORMED: list[tuple[str, Any, bool]] = [  # (event, payload, an error is due)
    ("audio_data", "not an object", True),
    ("audio_data", {"audio": 12}, True),
    ("audio_data", {"audio": "!!not base64!!"}, True),
    ("audio_data", {"audio": "AA=="}, True),  # one byte: not whole samples
    ("audio_data", {"audio": "A" * 70_000}, True),  # over --max-chunk
    ("text_input", {"text": 5}, True),
    ("text_input", {"text": "hi", "immediate_reply": "yes"}, True),
    ("playback_position", {"item_id": 3, "played_ms": -1}, True),
    ("say", {}, True),
    ("no_such_event", {"x": 1}, False),
]


class Browser:
    """One browser-like session. ``urls``: the node it talks to first, then the others it falls
    back to when its connection drops (as a page behind a load balancer reconnects); with one URL
    it does not reconnect. ``rcvbuf`` gives its socket a small receive buffer (a slow link)."""

    def __init__(self, number: int, urls: list[str], end_at: float, burst_at: float | None = None,
                 speaking_file: str | None = None, run_dir: str | None = None, rcvbuf: int | None = None) -> None:
        self.number = number
        self.urls = urls
        self.end_at = end_at
        self.burst_at = burst_at
        self.speaking_file = speaking_file
        self.run_dir = run_dir
        self.rcvbuf = rcvbuf
        self.events: list[tuple[float, str, Any]] = []
        self.sent: list[float] = []  # send time of chunk n
        self.active = False
        self.started = asyncio.Event()
        self.expected: list[str] = []  # sentences spoken, in order
        self.burst: dict[str, Any] | None = None
        self.url = urls[0]  # the node it is connected to

    def _on(self, name: str, data: Any = None) -> None:
        now = time.time()
        if name == "audio_delta":
            self.events.append((now, name, None))
            if self.speaking_file:  # the run kills the backend while this reply streams
                Path(self.speaking_file + ".reply").write_text(str(now))
            return
        brief = data if name in ("error", "session_ended", "user_transcript") else None
        self.events.append((now, name, brief))
        if name == "session_started":
            self.active = True
            self.started.set()
            if self.run_dir:  # where followers find it, and on which node
                Path(self.run_dir, f"session-{self.number}").write_text(json.dumps(
                    {"session_id": data["session_id"], "url": self.url}))
        elif name == "session_ended":
            self.active = False
            self.started.clear()

    def _client(self) -> Any:
        import socketio

        options: dict[str, Any] = {}
        if self.rcvbuf is not None:
            import aiohttp

            def small_buffer(addr_info: Any) -> socket.socket:
                family, kind, proto, _, _ = addr_info
                sock = socket.socket(family, kind, proto)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
                return sock

            options["http_session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=small_buffer))
        sio = socketio.AsyncClient(reconnection=False, **options)
        sio.on("*", self._on)
        sio.on("disconnect", lambda reason=None: self.events.append((time.time(), "disconnect", {"reason": str(reason)})))
        return sio

    async def _connect(self, sio: Any) -> bool:
        """Connect to the first node that answers; True once connected."""
        for url in self.urls:
            try:
                await sio.connect(url, transports=["websocket"], wait_timeout=5)
            except Exception as exc:  # noqa: BLE001 - a node down: the next one
                self.events.append((time.time(), "connect_failed", {"url": url, "error": str(exc)}))
                continue
            self.url = url
            self.events.append((time.time(), "connect", {"url": url}))
            return True
        return False

    async def run(self) -> None:
        sio = self._client()
        if not await self._connect(sio):
            raise RuntimeError(f"no node answered: {self.urls}")
        await sio.emit("start_session", {"chat_payload": {}})
        await asyncio.wait_for(self.started.wait(), 30)
        pieces = schedule()
        seq = 0
        next_at = time.time()
        restart_at: float | None = None
        while time.time() < self.end_at:
            for stem, pcm in pieces:
                if stem is not None:
                    self.expected.append(RECORDINGS[stem])
                    if self.speaking_file:
                        Path(self.speaking_file).write_text(str(time.time()))
                for i in range(0, len(pcm) - CHUNK_BYTES + 1, CHUNK_BYTES):
                    next_at += CHUNK_MS / 1000
                    delay = next_at - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    now = time.time()
                    if now >= self.end_at:
                        break
                    if self.burst_at is not None and self.burst is None and now >= self.burst_at:
                        await self._burst(sio)
                    if not self.active:
                        if restart_at is None:
                            restart_at = now + 1.0
                        elif now >= restart_at and not sio.connected and len(self.urls) > 1:
                            restart_at = now + 0.5  # its node is gone: reconnect, as a page would
                            await sio.disconnect()  # (closes what is left of the old connection)
                            sio = self._client()
                            if await self._connect(sio):
                                restart_at = None
                                self.events.append((time.time(), "start_session (again)", None))
                                await sio.emit("start_session", {"chat_payload": {}})
                            next_at = time.time()  # no burst of the chunks the outage skipped
                        elif now >= restart_at and sio.connected:
                            restart_at = None
                            self.events.append((now, "start_session (again)", None))
                            await sio.emit("start_session", {"chat_payload": {}})
                        continue
                    chunk = mark(pcm[i:i + CHUNK_BYTES], self.number, seq)
                    try:
                        await sio.emit("audio_data", {"audio": base64.b64encode(chunk).decode()})
                    except Exception:  # noqa: BLE001 - the connection dropped under it: the next loop reconnects
                        self.active = False
                        continue
                    self.sent.append(now)
                    seq += 1
                if time.time() >= self.end_at:
                    break
        await asyncio.sleep(1.0)
        if sio.connected:
            await sio.emit("end_session", {})
            await asyncio.sleep(0.5)
            await sio.disconnect()

    async def _burst(self, sio: Any) -> None:
        start = time.time()
        sent = due = 0
        for _ in range(20):
            for name, payload, error_due in MALFORMED:
                await sio.emit(name, payload)
                sent += 1
                due += error_due
        self.burst = {"t": start, "sent": sent, "errors_due": due}

    def result(self) -> dict[str, Any]:
        return {"number": self.number, "events": self.events, "sent": self.sent, "expected": self.expected,
                "burst": self.burst, "home": self.urls[0]}


def browsers_main(numbers: list[int], urls: list[list[str]], end_at: float, out: str, burst_at: float | None,
                  speaking_file: str | None, run_dir: str | None, rcvbuf: int | None) -> None:
    async def main() -> list[dict[str, Any]]:
        browsers = [Browser(n, u, end_at, burst_at if i == 0 else None, speaking_file if i == 0 else None, run_dir,
                            rcvbuf) for i, (n, u) in enumerate(zip(numbers, urls))]
        outcome = await asyncio.gather(*(b.run() for b in browsers), return_exceptions=True)
        results = []
        for b, o in zip(browsers, outcome):
            r = b.result()
            r["failure"] = None if o is None else repr(o)
            results.append(r)
        return results

    results = asyncio.run(main())
    Path(out).write_text(json.dumps(results))


class Follower:
    """A program on one node that follows a session living on another (``get_state`` with its
    ``session_id``: from then on the owning node sends it that session's events through Redis).
    It follows crowd browser ``number``'s session, and its next one when that one ends. With
    ``probe`` it asks for the session's state every half second (an action across nodes, whose
    answers are measured); without, it only listens once it follows (what it is told unasked)."""

    def __init__(self, url: str, number: int, run_dir: str, end_at: float, probe: bool = True) -> None:
        self.url = url
        self.number = number
        self.run_dir = run_dir
        self.end_at = end_at
        self.probe = probe
        self.events: list[tuple[float, str, Any]] = []
        self.probes: list[dict[str, Any]] = []  # {t, session_id, answer: "state"|error code|None, after_s}
        self.followed: list[tuple[float, str]] = []

    async def run(self) -> None:
        import socketio

        sio = socketio.AsyncClient(reconnection=False)
        pending: dict[str, Any] = {}

        def on_any(name: str, data: Any = None) -> None:
            now = time.time()
            sid = (data or {}).get("session_id") if isinstance(data, dict) else None
            brief = {k: data.get(k) for k in ("code", "status", "session_id", "message")} if isinstance(data, dict) \
                else None
            if name == "audio_delta" and brief is not None:
                brief = {"session_id": brief["session_id"]}
            self.events.append((now, name, brief))
            probe = pending.get("probe")
            if probe is not None and probe["answer"] is None and sid == probe["session_id"] \
                    and name in ("session_state", "error"):
                probe["answer"] = "state" if name == "session_state" else (data or {}).get("code")
                probe["after_s"] = now - probe["t"]

        sio.on("*", on_any)
        await sio.connect(self.url, transports=["websocket"], wait_timeout=15)
        current = None
        while time.time() < self.end_at:
            try:
                target = json.loads(Path(self.run_dir, f"session-{self.number}").read_text())["session_id"]
            except (OSError, ValueError):
                target = None
            if target is not None and target != current:
                current = target
                self.followed.append((time.time(), target))
            attached = any(n == "session_state" and (b or {}).get("session_id") == current for _, n, b in self.events[-50:])
            if current is not None and not self.probe and not attached:
                await sio.emit("get_state", {"session_id": current})  # follows it once its node answers
            if current is not None and self.probe:
                probe = {"t": time.time(), "session_id": current, "answer": None, "after_s": None}
                pending["probe"] = probe
                self.probes.append(probe)
                await sio.emit("get_state", {"session_id": current})
            await asyncio.sleep(0.5)
        await sio.disconnect()

    def result(self) -> dict[str, Any]:
        return {"events": self.events, "probes": self.probes, "followed": self.followed}


def follower_main(url: str, number: int, run_dir: str, end_at: float, out: str) -> None:
    followers = {"active": Follower(url, number, run_dir, end_at), "passive": Follower(url, number, run_dir, end_at,
                                                                                       probe=False)}

    async def main() -> None:
        await asyncio.gather(*(f.run() for f in followers.values()))

    asyncio.run(main())
    Path(out).write_text(json.dumps({k: f.result() for k, f in followers.items()}))


# ------------------------------------------------------------------------------------- the run


class Run:
    def __init__(self, minutes: float, sessions: int, faults: tuple[str, ...], pace: float, settle: float) -> None:
        self.settle = settle
        self.duration = minutes * 60
        self.sessions = sessions
        self.faults = faults
        self.pace = pace
        self.dir = Path(tempfile.mkdtemp(prefix="voicerelay-soak-"))
        self.bport, self.gport = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.gport}"
        # with the cluster faults: two gateway nodes, "a" (self.url) and "b", sharing a Redis
        self.cluster = any(f in faults for f in CLUSTER_FAULTS)
        self.gport_b, self.rport = (free_port(), free_port()) if self.cluster else (0, 0)
        self.url_b = f"http://127.0.0.1:{self.gport_b}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.report: dict[str, Any] = {"minutes": minutes, "sessions": sessions, "faults": {}, "pace": pace,
                                       "redis_port": self.rport or None, "backend_port": self.bport}

    def spawn(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=open(self.dir / f"{name}.out", "ab"),
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def backend_stats(self, pid: int | None = None) -> dict[str, Any] | None:
        path = self.dir / "backend.stats"
        if not path.exists():
            return None
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        lines = [x for x in lines if pid is None or x["pid"] == pid]
        return lines[-1] if lines else None

    def start_backend(self) -> tuple[subprocess.Popen[bytes], float]:
        proc = self.spawn("--role", "backend", "--port", str(self.bport), "--run-dir", str(self.dir),
                          "--pace", str(self.pace), name="backend")
        deadline = time.time() + 90
        while self.backend_stats(proc.pid) is None:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the backend did not start: {(self.dir / 'backend.out').read_text()[-2000:]}")
            time.sleep(0.05)
        return proc, time.time()

    def gateway_stats(self, url: str | None = None) -> dict[str, Any]:
        with urllib.request.urlopen((url or self.url) + "/soak-stats", timeout=10) as response:
            return json.loads(response.read())

    def start_gateway(self, node: str = "a") -> subprocess.Popen[bytes]:
        port, url = (self.gport, self.url) if node == "a" else (self.gport_b, self.url_b)
        args = ["--role", "gateway", "--port", str(port), "--backend-url", f"ws://127.0.0.1:{self.bport}/v1/realtime"]
        if self.cluster:
            args += ["--redis-url", f"redis://127.0.0.1:{self.rport}/0", "--node-id", node]
        name = "gateway" if node == "a" else f"gateway-{node}"
        proc = self.spawn(*args, name=name)
        deadline = time.time() + 60
        while True:
            try:
                self.gateway_stats(url)
                return proc
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the gateway did not start: {(self.dir / f'{name}.out').read_text()[-2000:]}")
                time.sleep(0.1)

    def start_redis(self) -> subprocess.Popen[bytes]:
        """A Redis server of its own, on the same port each time (nothing saved to disk)."""
        proc = subprocess.Popen(["redis-server", "--port", str(self.rport), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(self.dir)],
                                stdout=open(self.dir / "redis.out", "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        deadline = time.time() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.rport), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return proc
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.dir / 'redis.out').read_text()[-2000:]}")
            time.sleep(0.05)

    def redis_clients(self) -> dict[str, int]:
        """Redis's connected clients by name and command (``CLIENT LIST``): who holds connections."""
        import collections

        with socket.create_connection(("127.0.0.1", self.rport), timeout=2) as sock:
            sock.sendall(b"CLIENT LIST\r\n")
            data = b""
            while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        counts: collections.Counter[str] = collections.Counter()
        for line in data.decode(errors="replace").split("\r\n", 1)[1].splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields:
                counts[f"{fields.get('name') or '-'} {fields.get('cmd')} sub={fields.get('sub')}"] += 1
        return dict(counts)

    def cluster_ok(self) -> bool:
        """Both nodes say ``ok`` (Redis reachable, their sessions registered, listening)."""
        try:
            return all(self.gateway_stats(u)["health"]["status"] == "ok" for u in (self.url, self.url_b))
        except OSError:
            return False

    def browsers(self, numbers: list[int], end_at: float, burst_at: float | None = None,
                 speaking: bool = False, urls: list[list[str]] | None = None,
                 rcvbuf: int | None = None) -> tuple[subprocess.Popen[bytes], Path, Path | None]:
        out = self.dir / f"browsers-{numbers[0]}.json"
        flag = self.dir / f"speaking-{numbers[0]}" if speaking else None
        args = ["--role", "browsers", "--numbers", ",".join(map(str, numbers)),
                "--urls", json.dumps(urls or [[self.url]] * len(numbers)),
                "--end-at", str(end_at), "--out", str(out), "--run-dir", str(self.dir)]
        if burst_at is not None:
            args += ["--burst-at", str(burst_at)]
        if flag is not None:
            args += ["--speaking-file", str(flag)]
        if rcvbuf is not None:
            args += ["--rcvbuf", str(rcvbuf)]
        return self.spawn(*args, name=f"browsers-{numbers[0]}"), out, flag

    def follower(self, number: int, end_at: float) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.dir / "follower.json"
        return self.spawn("--role", "follower", "--url", self.url, "--numbers", str(number), "--run-dir",
                          str(self.dir), "--end-at", str(end_at), "--out", str(out), name="follower"), out

    @staticmethod
    def when_speaking(flag: Path, after: float, timeout: float = 15, then: float = 0.6) -> float:
        """Wait until the browser starts a recording after ``after``; return ``then`` s later
        (0.6 s: mid-utterance; 3.6 s: the crowd's replies are streaming)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                started = float(flag.read_text())
                if started >= after:
                    time.sleep(max(0.0, started + then - time.time()))
                    return time.time()
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        return time.time()

    @staticmethod
    def when_replying(flag: Path, after: float, timeout: float = 30) -> float:
        """Wait until a reply has been streaming to the browser for 0.4 s (audio_delta still arriving)."""
        deadline = time.time() + timeout
        first = None
        while time.time() < deadline:
            try:
                last = float(flag.read_text())
            except (OSError, ValueError):
                last = 0.0
            now = time.time()
            if last >= after and now - last < 0.25:
                first = first or last
                if now - first >= 0.4:
                    return now
            else:
                first = None
            time.sleep(0.02)
        return time.time()

    def conn_events(self) -> list[tuple[float, int, int, str, list[str]]]:
        out = []
        for line in (self.dir / "backend.log").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4:
                out.append((float(parts[0]), int(parts[1]), int(parts[2]), parts[3], parts[4:]))
        return out

    def conns_of(self, number: int) -> set[tuple[int, int]]:
        return {(pid, conn) for _, pid, conn, kind, rest in self.conn_events() if kind == "A" and int(rest[0]) == number}

    def closed_at(self, number: int, after: float) -> float | None:
        conns = self.conns_of(number)
        for t, pid, conn, kind, _ in self.conn_events():
            if kind == "C" and (pid, conn) in conns and t >= after:
                return t
        return None

    def execute(self) -> dict[str, Any]:
        d, rep = self.duration, self.report
        backend, backend_started = self.start_backend()
        redis = self.start_redis() if self.cluster else None
        self.start_gateway()  # (stopped with the others: self.procs)
        gateway_b = self.start_gateway("b") if self.cluster else None
        if self.cluster:
            deadline = time.time() + 15
            while not self.cluster_ok() and time.time() < deadline:
                time.sleep(0.1)
        base_g = self.gateway_stats()
        rep["heartbeat"] = {"engineio_ping_interval_s": base_g["ping_interval"],
                            "engineio_ping_timeout_s": base_g["ping_timeout"],
                            "uvicorn_ws_ping_interval_s": base_g["ws_ping_interval"],
                            "uvicorn_ws_ping_timeout_s": base_g["ws_ping_timeout"]}
        time.sleep(1.5)
        base_b = self.backend_stats(backend.pid)
        t0 = time.time() + 3
        end_at = t0 + d
        rep["t0"] = t0
        victims = [n for n, f in ((self.sessions - 1, "vanish"), (self.sessions - 2, "freeze")) if f in self.faults]
        crowd = [n for n in range(self.sessions) if n not in victims]
        burst_at = t0 + AT["burst"] * d if "burst" in self.faults else None
        # on two nodes the crowd alternates between them (a at even places, b at odd ones), and a
        # browser whose node goes away reconnects to the first that answers, its own first
        homes = [[self.url, self.url_b] if i % 2 == 0 else [self.url_b, self.url] for i in range(len(crowd))] \
            if self.cluster else None
        on_b = [n for i, n in enumerate(crowd) if i % 2 == 1] if self.cluster else []
        rep["node_b_sessions"] = on_b
        crowd_proc, crowd_out, crowd_flag = self.browsers(crowd, end_at, burst_at, speaking=True, urls=homes)
        follower = self.follower(on_b[0], end_at) if on_b else None  # on node a, following a session on b
        victim_procs = {}
        for n, f in ((self.sessions - 1, "vanish"), (self.sessions - 2, "freeze")):
            if f in self.faults:
                victim_procs[f] = (n, *self.browsers([n], end_at, speaking=True,
                                                     rcvbuf=FREEZE_RCVBUF if f == "freeze" else None))
        samples: dict[str, Any] = {}

        def at(t: float) -> None:
            while time.time() < t:
                if "gateway_1min" not in samples and time.time() >= t0 + 60:
                    samples["gateway_1min"] = self.gateway_stats()["rss_mb"]
                if "backend_1min" not in samples and time.time() >= backend_started + 60 and time.time() > t0:
                    b = self.backend_stats(backend.pid)
                    samples["backend_1min"] = b["rss_mb"] if b else None
                    samples["backend_1min_at"] = time.time() - t0
                time.sleep(0.05)

        if "burst" in self.faults:
            rep["faults"]["burst"] = {"t": AT["burst"] * d}
        plan = sorted((t0 + AT[f] * d, f) for f in self.faults if f != "burst")
        for when, fault in plan:
            at(when)
            if fault == "restart":
                assert crowd_flag is not None
                self.when_replying(Path(str(crowd_flag) + ".reply"), time.time())
                workers = [p for p in children_of(backend.pid) if alive(p)]
                kinds = [_process_kind(p) for p in workers]
                kill_t = time.time()
                backend.kill()
                backend.wait()
                backend, backend_started = self.start_backend()
                samples.pop("backend_1min", None)
                time.sleep(max(0.0, kill_t + 5 - time.time()))
                left = [p for p in workers if alive(p)]
                rep["faults"]["restart"] = {"t": kill_t - t0, "back_after_s": backend_started - kill_t,
                                            "workers_before_kill": len(workers), "workers_left_after_5s": len(left),
                                            "worker_kinds": kinds}
                for p in left:
                    os.kill(p, signal.SIGKILL)
            elif fault == "vanish":
                n, proc, _, flag = victim_procs["vanish"]
                kill_t = self.when_speaking(flag, time.time())
                proc.kill()
                deadline = kill_t + 30
                closed = None
                while closed is None and time.time() < deadline:
                    time.sleep(0.1)
                    closed = self.closed_at(n, kill_t)
                rep["faults"]["vanish"] = {"t": kill_t - t0, "session": n,
                                           "upstream_closed_after_s": None if closed is None else closed - kill_t}
            elif fault == "freeze":
                n, proc, _, flag = victim_procs["freeze"]
                assert flag is not None
                stop_t = self.when_replying(Path(str(flag) + ".reply"), time.time())  # a reply streams to it
                before = self.gateway_stats()["rss_mb"]
                os.kill(proc.pid, signal.SIGSTOP)
                hb = rep["heartbeat"]  # held past the heartbeat's bound (see gateway/server.py), to see it act
                bound = hb["uvicorn_ws_ping_interval_s"] + hb["uvicorn_ws_ping_timeout_s"] + hb["engineio_ping_timeout_s"]
                closed, peak = None, before
                while closed is None and time.time() < stop_t + bound + 15:
                    time.sleep(0.5)
                    closed = self.closed_at(n, stop_t)
                    peak = max(peak, self.gateway_stats()["rss_mb"])
                after = self.gateway_stats()["rss_mb"]
                proc.kill()
                os.kill(proc.pid, signal.SIGCONT)
                bounded = any("took nothing while" in line for line in self.gateway_log(stop_t))
                rep["faults"]["freeze"] = {"t": stop_t - t0, "session": n, "held_s": time.time() - stop_t,
                                           "upstream_closed_after_s": None if closed is None else closed - stop_t,
                                           "detection_bound_s": bound, "ended_by": "backlog bound (not_reading)"
                                           if bounded else "heartbeat" if closed is not None else None,
                                           "gateway_rss_mb_before": before, "gateway_rss_mb_peak": peak,
                                           "gateway_rss_mb_after": after}
            elif fault == "nodekill":
                assert gateway_b is not None
                kill_t = time.time()
                gateway_b.kill()
                gateway_b.wait()
                gateway_b = self.start_gateway("b")
                back_t = time.time()
                while not self.cluster_ok() and time.time() < back_t + 20:
                    time.sleep(0.1)
                rep["faults"]["nodekill"] = {"t": kill_t - t0, "back_after_s": back_t - kill_t,
                                             "cluster_ok_after_s": time.time() - kill_t, "sessions": on_b}
            elif fault == "redis":
                assert redis is not None
                stop_t = time.time()
                redis.kill()
                redis.wait()
                time.sleep(REDIS_DOWN_S)
                redis = self.start_redis()
                back_t = time.time()
                while not self.cluster_ok() and time.time() < back_t + 30:
                    time.sleep(0.1)
                rep["faults"]["redis"] = {"t": stop_t - t0, "back_after_s": back_t - stop_t,
                                          "cluster_ok_after_s": time.time() - stop_t}
        at(end_at)
        crowd_proc.wait(timeout=120)
        for _, proc, _, _ in victim_procs.values():
            if proc.poll() is None:
                proc.wait(timeout=60)
        if follower is not None:
            follower[0].wait(timeout=60)
        time.sleep(5)  # let the gateway and the backend close what the sessions left
        rep["resources_5s_after"] = {"gateway": self.gateway_stats(), "backend": self.backend_stats(backend.pid)}
        time.sleep(max(0.0, self.settle - 5))  # past engine.io's ping interval: its per-socket ping tasks end
        end_g = self.gateway_stats()
        end_b = self.backend_stats(backend.pid)
        rep["settle_s"] = max(5.0, self.settle)
        base_b_final = base_b  # the idle baseline of the first backend process: the same program, warmed up
        rep["gateway_fds_left"] = {k: v - base_g["fd_kinds"].get(k, 0) for k, v in end_g["fd_kinds"].items()
                                   if v > base_g["fd_kinds"].get(k, 0)}
        if self.cluster:
            rep["redis_clients_end"] = self.redis_clients()
        rep["gateway_tasks_left"] = {k: v for k, v in end_g["task_names"].items()
                                     if v > base_g["task_names"].get(k, 0)}
        rep["memory"] = {"gateway_rss_mb_1min": samples.get("gateway_1min"), "gateway_rss_mb_end": end_g["rss_mb"],
                         "backend_rss_mb_1min": samples.get("backend_1min"),
                         "backend_1min_at_s": samples.get("backend_1min_at"), "backend_rss_mb_end": end_b["rss_mb"]}
        rep["resources"] = {"gateway": {"tasks": [base_g["tasks"], end_g["tasks"]], "fds": [base_g["fds"], end_g["fds"]],
                                        "sessions": [base_g["sessions"], end_g["sessions"]]},
                            "backend": {"tasks": [base_b_final["tasks"], end_b["tasks"]],
                                        "fds": [base_b_final["fds"], end_b["fds"]],
                                        "connections": [base_b_final["connections"], end_b["connections"]]}}
        results = json.loads(crowd_out.read_text())
        followed = json.loads(follower[1].read_text()) if follower is not None else None
        self.analyse(results, t0, end_at, followed)
        return rep

    def gateway_log(self, after: float) -> list[str]:
        """Node a's log lines (each starts with its time) written after ``after``."""
        lines = []
        for line in (self.dir / "gateway.out").read_text(errors="replace").splitlines():
            head = line.split(" ", 1)[0]
            try:
                if float(head) >= after:
                    lines.append(line)
            except ValueError:
                continue
        return lines

    def _first_stats(self, pid: int) -> dict[str, Any]:
        lines = [json.loads(x) for x in (self.dir / "backend.stats").read_text().splitlines() if x.strip()]
        return next(x for x in lines if x["pid"] == pid)

    def analyse(self, results: list[dict[str, Any]], t0: float, end_at: float,
                followed: dict[str, Any] | None = None) -> None:
        rep = self.report
        conn_events = self.conn_events()
        received: dict[int, list[tuple[tuple[int, int], int]]] = {}
        for _, pid, conn, kind, rest in conn_events:
            if kind == "A":
                received.setdefault(int(rest[0]), []).append(((pid, conn), int(rest[1])))
        restart = rep["faults"].get("restart")
        outage = None
        if restart is not None:
            outage = (t0 + restart["t"] - 0.5, t0 + restart["t"] + restart["back_after_s"] + 1.0)
        nodekill = rep["faults"].get("nodekill")
        node_outage = None  # for the sessions of the killed node only: what it had not forwarded died with it
        if nodekill is not None:
            node_outage = (t0 + nodekill["t"] - 0.5, t0 + nodekill["t"] + 1.0)
        sent = lost = lost_up = reordered = resent = 0
        for r in results:
            got = received.get(r["number"], [])
            seen: set[int] = set()
            last: dict[tuple[int, int], int] = {}
            for conn, seq in got:
                if conn in last and seq <= last[conn]:
                    reordered += 1
                last[conn] = seq
                if seq in seen:
                    resent += 1
                seen.add(seq)
            for seq, t in enumerate(r["sent"]):
                sent += 1
                if seq not in seen:
                    lost += 1
                    in_node_outage = node_outage is not None and r["number"] in nodekill["sessions"] \
                        and node_outage[0] <= t <= node_outage[1]
                    if (outage is None or not outage[0] <= t <= outage[1]) and not in_node_outage:
                        lost_up += 1
        replies = sum(1 for r in results for _, name, _ in r["events"] if name == "response_complete")
        finals = [(b or {}).get("text", "") for r in results for _, name, b in r["events"]
                  if name == "user_transcript" and (b or {}).get("final")]
        sentences = set(RECORDINGS.values())
        matched = sum(1 for text in finals if re.sub(r"[^a-z ]", "", text.lower()).strip() in sentences)
        rep["chunks"] = {"sent": sent, "counted_at_backend": sent - lost, "lost": lost,
                         "lost_while_upstream_up": lost_up, "reordered": reordered, "sent_again_on_new_connection": resent,
                         "outage_window_s": None if outage is None else [outage[0] - t0, outage[1] - t0],
                         "node_outage_window_s": None if node_outage is None
                         else [node_outage[0] - t0, node_outage[1] - t0]}
        rep["replies"] = replies
        rep["user_transcripts"] = {"final": len(finals), "match_what_was_said": matched}
        rep["browser_failures"] = [r["failure"] for r in results if r["failure"]]

        def bad(r: dict[str, Any], start: float, stop: float) -> list[str]:
            """What a session saw that a fault elsewhere should not cause (its own burst's errors aside;
            nothing after the end of the run, when every session ends)."""
            stop = min(stop, end_at)
            own = (r["burst"]["t"], r["burst"]["t"] + 5) if r["burst"] else (0, 0)
            return [f"{name} {(b or {}).get('code') or (b or {}).get('status')} at +{t - start:.1f} s"
                    for t, name, b in r["events"] if start <= t <= stop and name in ("error", "session_ended")
                    and not own[0] <= t <= own[1]]

        burst_owner = next((r for r in results if r["burst"]), None)
        for fault, info in rep["faults"].items():
            start = t0 + info["t"]
            window = (start, start + (info.get("held_s") or 0) + 10)
            if fault == "restart":
                per = []
                for r in results:
                    evs = r["events"]
                    mid = any(n == "audio_delta" and start - 0.5 <= t <= start for t, n, _ in evs) and not any(
                        n == "response_complete" and start - 0.5 <= t <= start for t, n, _ in evs)
                    own = (r["burst"]["t"], r["burst"]["t"] + 5) if r["burst"] else (0, 0)
                    evs = [e for e in evs if not (e[1] == "error" and own[0] <= e[0] <= own[1])]
                    window = start + info["back_after_s"] + 15
                    err = next((t - start for t, n, _ in evs if start <= t <= window and n == "error"), None)
                    ended = next((t - start for t, n, _ in evs if start <= t <= window and n == "session_ended"), None)
                    back = start + info["back_after_s"]
                    reply = next((t - back for t, n, _ in evs if t >= back and n == "response_complete"), None)
                    codes = sorted({(b or {}).get("code", "?") for t, n, b in evs if start <= t <= window and n == "error"})
                    ends = [(t - start, n) for t, n, _ in evs if t >= start and n in ("response_complete", "interrupted")]
                    finals = [(t, (b or {}).get("text")) for t, n, b in evs
                              if n == "user_transcript" and (b or {}).get("final")]
                    before = [x for t, x in finals if t < start]
                    after = [x for t, x in finals if t >= start]
                    per.append({"session": r["number"], "mid_response": mid,
                                "cut_reply_ended_after_s": ends[0][0] if mid and ends else None,
                                "cut_reply_ended_as": ends[0][1] if mid and ends else None,
                                "utterance_heard_again": bool(before and after and before[-1] == after[0]),
                                "error_after_s": err,
                                "session_ended_after_s": ended, "first_reply_after_backend_back_s": reply,
                                "error_codes": codes})
                info["sessions"] = per
            elif fault == "nodekill":
                self._analyse_nodekill(info, results, start, followed, bad)
            elif fault == "redis":
                self._analyse_redis(info, results, start, followed, bad)
            else:
                owner = burst_owner["number"] if fault == "burst" and burst_owner else info.get("session")
                if fault == "burst" and burst_owner:
                    b = burst_owner["burst"]
                    start = b["t"]
                    info.update(t=start - t0, sent=b["sent"], errors_due=b["errors_due"], session=owner)
                    errs = [t for t, n, _ in burst_owner["events"] if n == "error" and start <= t <= start + 10]
                    info["errors_received"] = len(errs)
                    info["first_error_after_s"] = errs[0] - start if errs else None
                    info["session_ended"] = any(n == "session_ended" and start <= t <= start + 10
                                                for t, n, _ in burst_owner["events"])
                    info["reply_after_burst_s"] = next((t - start for t, n, _ in burst_owner["events"]
                                                        if n == "response_complete" and t > start), None)
                    window = (start, start + 10)
                info["neighbours_that_noticed"] = {r["number"]: bad(r, *window) for r in results
                                                   if r["number"] != owner and bad(r, *window)}

    def _analyse_nodekill(self, info: dict[str, Any], results: list[dict[str, Any]], start: float,
                          followed: dict[str, Any] | None, bad: Any) -> None:
        """Node b SIGKILLed: its browsers (their connection dropped, a new session on a node that
        answers), the follower on node a of one of b's sessions (told, or left silent), the rest."""
        per = []
        for r in results:
            if r["number"] not in info["sessions"]:
                continue
            evs = r["events"]
            node = next(((b or {}).get("url") for t, n, b in evs if t >= start and n == "connect"), None)
            per.append({"session": r["number"],
                        "connection_dropped_after_s": next((t - start for t, n, _ in evs
                                                            if t >= start and n == "disconnect"), None),
                        "new_session_after_s": next((t - start for t, n, _ in evs
                                                     if t >= start and n == "session_started"), None),
                        "reconnected_to": None if node is None else "b" if node == self.url_b else "a",
                        "errors": sorted({(b or {}).get("code") for t, n, b in evs if t >= start and n == "error"})})
        info["sessions_on_b"] = per
        if followed is not None:
            info["follower"] = self._follower_told(followed["active"], start)
            info["passive_follower"] = self._follower_told(followed["passive"], start)
        window = (start, start + 15)
        info["neighbours_that_noticed"] = {r["number"]: bad(r, *window) for r in results
                                           if r["number"] not in info["sessions"] and bad(r, *window)}

    @staticmethod
    def _follower_told(followed: dict[str, Any], start: float) -> dict[str, Any]:
        """What the follower heard of the session it followed when its node was killed."""
        target = None
        for t, session_id in followed["followed"]:
            if t <= start:
                target = session_id
        told = [(t - start, n, b) for t, n, b in followed["events"]
                if t >= start and n in ("error", "session_ended") and (b or {}).get("session_id") == target]
        probes = [p for p in followed["probes"] if p["t"] >= start and p["session_id"] == target]
        first = told[0] if told else None
        lost = next((t for t, n, b in told if n == "session_ended" or (b or {}).get("code") == "node_lost"), None)
        return {"session_id": target, "told_after_s": first[0] if first else None, "lost_told_after_s": lost,
                "session_ended": [(b or {}).get("status") for t, n, b in told if n == "session_ended"],
                "told": [f"{n} {(b or {}).get('code') or (b or {}).get('status')} at +{t:.1f} s" for t, n, b in told[:4]],
                "probes_after_kill": len(probes), "probes_unanswered": sum(p["answer"] is None for p in probes),
                "probe_answers": sorted({str(p["answer"]) for p in probes if p["answer"] is not None})}

    def _missed(self, results: list[dict[str, Any]], followed: dict[str, Any], start: float, stop: float) -> int:
        """How many of its session's events (``FOLLOWED``) the follower did not get between
        ``start`` and ``stop``, that the session's own browser got."""
        target = None
        for t, session_id in followed["followed"]:
            if t <= start:
                target = session_id
        number = self.report["node_b_sessions"][0]
        own = next(r for r in results if r["number"] == number)
        mine = sum(1 for t, n, _ in own["events"] if start <= t <= stop and n in FOLLOWED)
        theirs = sum(1 for t, n, b in followed["events"] if start <= t <= stop and n in FOLLOWED
                     and (b or {}).get("session_id") == target)
        return max(0, mine - theirs)

    def _analyse_redis(self, info: dict[str, Any], results: list[dict[str, Any]], start: float,
                       followed: dict[str, Any] | None, bad: Any) -> None:
        """Redis SIGKILLed and started again: what the follower's cross-node probes got during the
        outage and when they were answered again; whether any browser noticed."""
        back = start + info["back_after_s"]
        ok = start + info["cluster_ok_after_s"]
        if followed is not None:
            active, passive = followed["active"], followed["passive"]
            during = [p for p in active["probes"] if start <= p["t"] <= back]
            answered = [p for p in during if p["answer"] is not None]
            again = next((p["t"] + p["after_s"] - back for p in active["probes"]
                          if p["t"] > back and p["answer"] == "state"), None)
            info["follower"] = {
                "probes_during_outage": len(during), "unanswered": len(during) - len(answered),
                "answers": sorted({str(p["answer"]) for p in answered}),
                "first_answer_after_s": min((p["t"] + p["after_s"] - start for p in answered), default=None),
                "state_again_after_back_s": again}
            told = [(t - start, n, b) for t, n, b in passive["events"]
                    if start <= t <= ok + 5 and n in ("error", "session_ended", "session_state")]
            info["passive_follower"] = {
                "told": [f"{n} {(b or {}).get('code') or (b or {}).get('status') or ''}".strip() + f" at +{t:.1f} s"
                         for t, n, b in told[:4]],
                "degraded_told_after_s": next((t for t, n, b in told if n == "error"
                                               and (b or {}).get("code") == "cluster_degraded"), None),
                "state_again_after_back_s": next((t + start - back for t, n, b in told
                                                  if n == "session_state" and t + start > back), None),
                "events_missed": self._missed(results, passive, start, ok + 2)}
        window = (start, ok + 5)
        info["neighbours_that_noticed"] = {r["number"]: bad(r, *window) for r in results if bad(r, *window)}


def print_report(rep: dict[str, Any]) -> None:
    p = print
    p(f"\nsoak: {rep['sessions']} sessions, {rep['minutes']:g} min, backend pace {rep['pace']:g}x")
    hb = rep["heartbeat"]
    p(f"heartbeat: engine.io ping every {hb['engineio_ping_interval_s']} s, timeout {hb['engineio_ping_timeout_s']} s; "
      f"uvicorn websocket ping every {hb['uvicorn_ws_ping_interval_s']} s, timeout {hb['uvicorn_ws_ping_timeout_s']} s")
    f = rep["faults"]
    if "restart" in f:
        r = f["restart"]
        per = r["sessions"]
        errs = [s["error_after_s"] for s in per if s["error_after_s"] is not None]
        ended = [s["session_ended_after_s"] for s in per if s["session_ended_after_s"] is not None]
        replies = [s["first_reply_after_backend_back_s"] for s in per if s["first_reply_after_backend_back_s"] is not None]
        codes = sorted({c for s in per for c in s["error_codes"]})
        p(f"\n[restart] backend SIGKILLed at {r['t']:.1f} s, back after {r['back_after_s']:.1f} s; "
          f"its child processes ({', '.join(r['worker_kinds'])}): {r['workers_before_kill']}, left 5 s after the kill: "
          f"{r['workers_left_after_5s']}")
        p(f"  {sum(s['mid_response'] for s in per)}/{len(per)} sessions mid-response; got an error: {len(errs)} "
          f"(after {_span(errs)}; codes {codes}); session_ended: {len(ended)} (after {_span(ended)}); "
          f"a reply after the backend was back: {len(replies)} (after {_span(replies)})")
        cut = [s["cut_reply_ended_after_s"] for s in per if s["cut_reply_ended_after_s"] is not None]
        kinds = sorted({s["cut_reply_ended_as"] for s in per if s["cut_reply_ended_as"]})
        p(f"  the cut reply ended for the browser after {_span(cut)} (as {kinds}); the utterance before the kill "
          f"transcribed and answered again after it: {sum(s['utterance_heard_again'] for s in per)}/{len(per)} sessions")
    if "vanish" in f:
        v = f["vanish"]
        closed = v["upstream_closed_after_s"]
        p(f"\n[vanish] session {v['session']}'s browser SIGKILLed mid-utterance at {v['t']:.1f} s: its upstream closed "
          f"{'never (30 s)' if closed is None else f'after {closed:.2f} s'}; neighbours that noticed: "
          f"{_neighbours(v)}")
    if "burst" in f:
        b = f["burst"]
        if "sent" in b:
            first = b["first_error_after_s"]
            p(f"\n[burst] session {b['session']} sent {b['sent']} malformed events at {b['t']:.1f} s "
              f"({b['errors_due']} due an error): {b['errors_received']} errors received, the first after "
              f"{'-' if first is None else f'{first * 1000:.0f} ms'}; session ended: {b['session_ended']}; "
              f"its next reply after {_s(b['reply_after_burst_s'])}; neighbours that noticed: {_neighbours(b)}")
    if "freeze" in f:
        z = f["freeze"]
        closed = z["upstream_closed_after_s"]
        p(f"\n[freeze] session {z['session']}'s browser SIGSTOPped while a reply streamed to it at {z['t']:.1f} s "
          f"(its receive buffer {FREEZE_RCVBUF // 1024} KiB), held {z['held_s']:.0f} s: its upstream closed "
          f"{'not while held' if closed is None else f'after {closed:.1f} s'} (by the {z['ended_by']}; the heartbeat's "
          f"bound {z['detection_bound_s']:g} s); gateway RSS {z['gateway_rss_mb_before']:.1f} -> peak "
          f"{z['gateway_rss_mb_peak']:.1f} MB, {z['gateway_rss_mb_after']:.1f} MB once it was dropped; "
          f"neighbours that noticed: {_neighbours(z)}")
    if "nodekill" in f:
        k = f["nodekill"]
        per = k["sessions_on_b"]
        dropped = [x["connection_dropped_after_s"] for x in per if x["connection_dropped_after_s"] is not None]
        again = [x["new_session_after_s"] for x in per if x["new_session_after_s"] is not None]
        p(f"\n[nodekill] node b SIGKILLed at {k['t']:.1f} s, up again after {k['back_after_s']:.1f} s, cluster ok after "
          f"{k['cluster_ok_after_s']:.1f} s: its {len(per)} browsers: connection dropped {len(dropped)} (after "
          f"{_span(dropped)}), a new session {len(again)} (after {_span(again)}; on "
          f"{sorted({str(x['reconnected_to']) for x in per})}); errors {sorted({c for x in per for c in x['errors']})}")
        fo, pa = k.get("follower"), k.get("passive_follower")
        if fo and pa:
            p(f"  two programs on node a following {fo['session_id']}: the one that acts got answers "
              f"{fo['probe_answers']} to its {fo['probes_after_kill']} actions after the kill ({fo['probes_unanswered']} "
              f"unanswered); the one that only listens was told {_s(pa['lost_told_after_s'])} after the kill "
              f"({'; '.join(pa['told']) or 'nothing'})")
        p(f"  neighbours that noticed: {_neighbours(k)}")
    if "redis" in f:
        r = f["redis"]
        p(f"\n[redis] Redis SIGKILLed at {r['t']:.1f} s, started again after {r['back_after_s']:.1f} s, both nodes ok "
          f"after {r['cluster_ok_after_s']:.1f} s")
        fo, pa = r.get("follower"), r.get("passive_follower")
        if fo and pa:
            p(f"  a program on node a acting on a session of node b: {fo['probes_during_outage']} actions during the "
              f"outage, unanswered {fo['unanswered']}, answers {fo['answers']} (the first after "
              f"{_s(fo['first_answer_after_s'])}); the session's state again {_s(fo['state_again_after_back_s'])} after "
              f"Redis was back")
            p(f"  one that only listens: missed {pa['events_missed']} of the session's events; told it was degraded "
              f"{_s(pa['degraded_told_after_s'])} after the kill, sent the state again "
              f"{_s(pa['state_again_after_back_s'])} after Redis was back ({'; '.join(pa['told']) or 'nothing'})")
        p(f"  neighbours that noticed: {_neighbours(r)}")
    c = rep["chunks"]
    p(f"\nchunks: sent {c['sent']}, counted at the backend {c['counted_at_backend']}, lost {c['lost']} "
      f"(while the upstream was up: {c['lost_while_upstream_up']}; outage window {c['outage_window_s']}"
      f"{'' if c.get('node_outage_window_s') is None else ', node b: ' + str(c['node_outage_window_s'])}), "
      f"reordered {c['reordered']}, sent again on a new connection {c['sent_again_on_new_connection']}")
    u = rep["user_transcripts"]
    p(f"replies: {rep['replies']}; final user transcripts {u['final']}, matching what was said {u['match_what_was_said']}")
    m = rep["memory"]
    p(f"RSS gateway: {_mb(m['gateway_rss_mb_1min'])} at minute 1 -> {m['gateway_rss_mb_end']:.1f} MB at the end"
      f"{_growth(m['gateway_rss_mb_1min'], m['gateway_rss_mb_end'])}")
    p(f"RSS backend: {_mb(m['backend_rss_mb_1min'])} one minute after its (re)start -> {m['backend_rss_mb_end']:.1f} "
      f"MB at the end{_growth(m['backend_rss_mb_1min'], m['backend_rss_mb_end'])}")
    for who, res in rep["resources"].items():
        p(f"{who} {rep['settle_s']:g} s after the sessions ended vs its idle baseline: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in res.items()))
    if rep.get("gateway_fds_left"):
        p(f"gateway file descriptors above the baseline at the end: {rep['gateway_fds_left']}"
          + f" (the backend listens on {rep['backend_port']}" + (f", Redis on {rep['redis_port']})" if rep.get("redis_port")
                                                                  else ")"))
    if rep.get("redis_clients_end"):
        p(f"Redis's clients at the end (both nodes): {rep['redis_clients_end']}")
    if rep["gateway_tasks_left"]:
        p(f"gateway tasks above the baseline at the end: {rep['gateway_tasks_left']}")
    if rep["browser_failures"]:
        p(f"browser failures: {rep['browser_failures']}")


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _mb(v: float | None) -> str:
    return "- (run shorter than that)" if v is None else f"{v:.1f} MB"


def _growth(a: float | None, b: float) -> str:
    return "" if not a else f" ({(b - a) / a * 100:+.1f} %)"


def _neighbours(info: dict[str, Any]) -> str:
    n = info.get("neighbours_that_noticed") or {}
    return "none" if not n else "; ".join(f"session {k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}"
                                          for k, v in n.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--faults", default=",".join(ALL_FAULTS), help="comma-separated: " + ",".join(ALL_FAULTS))
    ap.add_argument("--pace", type=float, default=1.0, help="the backend's reply pace (1 = real time)")
    ap.add_argument("--json", help="also write the report as JSON to this file")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="seconds after the sessions end before tasks and fds are counted (at least 5)")
    ap.add_argument("--role", default="main", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--backend-url", help=argparse.SUPPRESS)
    ap.add_argument("--numbers", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--end-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--burst-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--speaking-file", help=argparse.SUPPRESS)
    ap.add_argument("--urls", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--node-id", help=argparse.SUPPRESS)
    ap.add_argument("--rcvbuf", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role == "backend":
        backend_main(a.port, Path(a.run_dir), a.pace)
    elif a.role == "gateway":
        gateway_main(a.port, a.backend_url, a.redis_url, a.node_id)
    elif a.role == "browsers":
        browsers_main([int(x) for x in a.numbers.split(",")], json.loads(a.urls), a.end_at, a.out, a.burst_at,
                      a.speaking_file, a.run_dir, a.rcvbuf)
    elif a.role == "follower":
        follower_main(a.url, int(a.numbers), a.run_dir, a.end_at, a.out)
    else:
        faults = tuple(x for x in a.faults.split(",") if x)
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown:
            ap.error(f"unknown faults: {sorted(unknown)}")
        if a.sessions < 1 + sum(f in faults for f in ("vanish", "freeze")):
            ap.error("--sessions must leave at least one crowd session besides the victims")
        if any(f in faults for f in CLUSTER_FAULTS) and a.sessions < 2 + sum(f in faults for f in ("vanish", "freeze")):
            ap.error("the cluster faults need two crowd sessions at least: one on each node")
        run = Run(a.minutes, a.sessions, faults, a.pace, a.settle)
        try:
            rep = run.execute()
        finally:
            for proc in run.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
            for proc in run.procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        rep["run_dir"] = str(run.dir)
        print_report(rep)
        if a.json:
            Path(a.json).write_text(json.dumps(rep, indent=1, default=str))


if __name__ == "__main__":
    main()
