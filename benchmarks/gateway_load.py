"""Load on ``voicerelay serve``: concurrent real-time browser sessions, and the bare-relay ceiling.

    python benchmarks/gateway_load.py                    # about 3.5 minutes on 2 cores
    python benchmarks/gateway_load.py --duration 10 --steps 1,8,16,32,48,64
    python benchmarks/gateway_load.py --steps 1 --profile 16   # where each server spends its CPU
    python benchmarks/gateway_load.py --paired 8 --steps 40 --duration 8   # the CPU ratio, side by side

Three kinds of process, so that no two of them share a GIL or an event loop:

- **The echo upstream** (one for the whole run): a ``websockets`` server at ``/v1/realtime``
  that sends ``session.created`` (with an ``expires_at`` half an hour away, as real servers
  do), answers ``session.update`` with ``session.updated``, and answers every
  ``input_audio_buffer.append`` at once with a ``response.output_audio.delta`` carrying the same
  base64 audio (after one ``response.created`` per connection, so the client sees a response in
  progress). No permessage-deflate, like the gateway's own upstream connections. It does
  nothing else, so what is measured is the relay in front of it.
- **The server under test** (a fresh one for every step): either the gateway,
  ``Gateway(backend="ws://127.0.0.1:PORT/v1/realtime").asgi_app()`` under uvicorn as
  ``voicerelay serve`` runs it (``gateway.uvicorn_options()``: ``ws="websockets-sansio"``, its
  message size and heartbeat; default configuration but for ``max_sessions``, raised above N
  when N needs it), or the
  **bare relay**: a python-socketio ``AsyncServer`` under the same uvicorn configuration
  (:func:`voicerelay.gateway.limits.uvicorn_options`, where ``serve`` gets it; no ``Gateway`` is
  built in its process, so nothing of the gateway's set-up, such as its JSON module, which
  python-socketio makes process-wide, helps it), with engine.io's same message size and
  heartbeat, that, on
  ``start_session``, opens a ``websockets`` connection to the same echo upstream and forwards
  ``audio_data`` -> ``input_audio_buffer.append`` and ``response.output_audio.delta`` ->
  ``audio_delta``, with no other logic. The bare relay is the ceiling of a python-socketio to
  websockets relay on this machine.
- **The browsers**: one process of N python-socketio ``AsyncClient`` s (websocket transport).
  Each sends ``start_session``, waits for ``session_started``, then streams 40 ms chunks (1920
  bytes of PCM16 noise, base64 in ``audio_data``) on a wall-clock schedule for ``--duration``
  seconds; the N schedules are spread evenly over one chunk period. The first 8 bytes of every
  chunk are its sequence number, read back from the echoed ``audio_delta``. A chunk's latency is
  emit -> its echo received, in the client: the relay both ways plus the echo upstream (the same
  for both systems) plus loopback. A chunk not echoed within 2 s is lost.

Each system is ramped over ``--steps`` (up to ``--max-sessions``), the two taking turns; a
system's ramp goes up to its first step that is not *sustained* (every session started, no
``error`` or ``session_ended`` event, nothing lost, p99 under 50 ms), then bisects between its
last sustained N and that one down to ``--resolution``. Per step: latency percentiles, lost
chunks, the server process's CPU (from /proc/PID/stat, over the streaming window; 100 % = one
core, all a single asyncio process can use) and RSS (/proc/PID/status at the end of streaming;
per session = growth over the idle server / N), and, to show what else used the machine, the
client's and the echo's CPU, the cores busy outside this benchmark ("other": /proc/stat busy and
steal time less our three processes) and the clients' p99 lag behind their send schedule.

The machine is shared: a step that fails while other work used more than ``--foreign-limit``
cores is marked "[other load on the machine]" and run again (``--retries``); before each step
the benchmark waits up to ``--quiet-wait`` seconds for the other load to drop below that limit.

The relay keeps every ``input_audio_buffer.append`` of a turn not yet answered (up to 15 s) to
re-send it after a reconnect; the echo upstream never ends a turn, so the gateway's RSS per
session grows with ``--duration`` up to about 1 MiB.

``--paired ROUNDS`` measures the CPU ratio alone, more tightly than the ramps can: instead of one
system after the other, both run at once, N sessions each (each N of ``--steps``), each server
with its own process of clients and both with the one echo upstream, ROUNDS times with fresh
servers. Whatever else the machine does (a neighbour's load, the CPU's clock) then weighs on both
alike: one round's ratio varies by about 3 %, where a ramp's steps vary by 5 to 15 %. Each
server's CPU is taken from the first chunk until the last echo reached its client, and divided
by the chunks relayed: all the work of the round, even when the machine is full and a server
finishes its share after the streaming window (CPU per session over that window alone, the
"window" column, then measures how the scheduler shared the cores as much as what the work
cost). It prints each round, the mean ratio per N and overall, with 95 % confidence intervals;
the target is met when the whole overall interval is at most 1.0. A round past capacity (p99
over 50 ms) still counts, as long as nothing was lost; ``--json FILE`` keeps every round.

``--profile N`` then runs each system once more at N under cProfile (in the server process,
over the streaming window only) and prints the own time per relayed chunk by package, and the
functions with the most of it; ``--profile-out DIR`` also keeps each whole profile
(``DIR/gateway.prof``, ``DIR/bare.prof``: ``python -m pstats DIR/gateway.prof``).

Printed figures (not asserted): the gateway's server CPU per session over the bare relay's, over
every N both ran to completion (every session started, nothing lost, no error; the p99 limit
aside, as other load on the machine may break it), each N and their mean; ``--paired`` judges
its CPU per chunk relayed against its target: at most 1.0, every feature of the gateway for
free. And sessions sustained by the gateway / sessions sustained by the bare relay. Target: at
least 0.9. Its short form, ``tests/gateway/test_load_benchmark.py``, asserts that the work it
times is done (every chunk of one side-by-side round echoed to its own client), never a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
try:
    import voicerelay  # noqa: F401
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    NCPU,
    cpu_seconds,
    foreign_cores,
    loadavg,
    machine_ticks,
    ramp,
    rss_mib,
    wait_quiet,
)

RATE = 24_000
CHUNK_MS = 40
CHUNK_BYTES = RATE * CHUNK_MS // 1000 * 2  # 1920
LOST_AFTER_S = 2.0
P99_LIMIT_MS = 50.0
TARGET_RATIO = 0.9  # sessions sustained, gateway / bare relay: at least
CPU_TARGET_RATIO = 1.0  # server CPU per session, gateway / bare relay: at most
DEFAULT_STEPS = "1,16,32,48,64,80,96,128,160,192"
MODEL = "gpt-realtime"


# ------------------------------------------------------------------------------------ /proc


# ------------------------------------------------------------------------------------ echo upstream


def _echo_main(conn: Any) -> None:
    asyncio.run(_echo(conn))


async def _echo(conn: Any) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    counter = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal counter
        if ws.request is None or ws.request.path.split("?")[0] != "/v1/realtime":
            await ws.close(1008, "not /v1/realtime")
            return
        counter += 1
        sid, rid, iid = f"sess_{counter}", f"resp_{counter}", f"item_{counter}"
        events = 0

        def event_id() -> str:
            nonlocal events
            events += 1
            return f"evt_{counter}_{events}"

        await ws.send(json.dumps({"type": "session.created", "event_id": event_id(),
                                  "session": {"id": sid, "object": "realtime.session", "type": "realtime",
                                              "model": MODEL, "expires_at": int(time.time()) + 1800}}))
        responding = False
        async for message in ws:
            event = json.loads(message)
            kind = event.get("type")
            if kind == "input_audio_buffer.append":
                if not responding:
                    responding = True
                    await ws.send(json.dumps({"type": "response.created", "event_id": event_id(),
                                              "response": {"id": rid, "object": "realtime.response",
                                                           "status": "in_progress", "output": [],
                                                           "conversation_id": f"conv_{counter}"}}))
                await ws.send(json.dumps({"type": "response.output_audio.delta", "event_id": event_id(),
                                          "response_id": rid, "item_id": iid, "output_index": 0,
                                          "content_index": 0, "delta": event.get("audio", "")}))
            elif kind == "session.update":
                session = {**(event.get("session") or {}), "id": sid, "object": "realtime.session"}
                await ws.send(json.dumps({"type": "session.updated", "event_id": event_id(), "session": session}))

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        conn.send(port)
        await asyncio.to_thread(_wait_stop, conn)


def _wait_stop(conn: Any) -> None:
    try:
        conn.recv()  # any message, or the parent going away, ends the process
    except (EOFError, OSError):
        pass


# ------------------------------------------------------------------------------------ servers under test


def bare_relay_app(echo_url: str) -> Any:
    """python-socketio straight to websockets: the ceiling, with no logic of its own."""
    import socketio
    from websockets.asyncio.client import connect

    from voicerelay.gateway.limits import MAX_MESSAGE_BYTES, PING_INTERVAL_S, PING_TIMEOUT_S

    # the gateway's engine.io limits and heartbeat, but python-socketio's own JSON (no orjson: it
    # is process-wide, and the gateway's choice) and nothing else of voicerelay
    sio = socketio.AsyncServer(async_mode="asgi", max_http_buffer_size=MAX_MESSAGE_BYTES,
                               ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S)
    upstreams: dict[str, tuple[Any, asyncio.Task[None]]] = {}

    @sio.on("start_session")
    async def start_session(sid: str, data: Any = None) -> None:
        ws = await connect(echo_url, compression=None, max_size=None)

        async def pump() -> None:
            index = 0
            async for message in ws:
                event = json.loads(message)
                if event.get("type") == "response.output_audio.delta":
                    index += 1
                    await sio.emit("audio_delta", {"audio": event["delta"], "index": index}, to=sid)

        upstreams[sid] = (ws, asyncio.create_task(pump()))
        await sio.emit("session_started", {"session_id": sid}, to=sid)

    @sio.on("audio_data")
    async def audio_data(sid: str, data: Any) -> None:
        entry = upstreams.get(sid)
        if entry is not None:
            await entry[0].send(json.dumps({"type": "input_audio_buffer.append", "audio": data["audio"]}))

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        entry = upstreams.pop(sid, None)
        if entry is not None:
            entry[1].cancel()
            await entry[0].close()

    return socketio.ASGIApp(sio)


def _server_main(conn: Any, kind: str, echo_url: str, max_sessions: int, profile: bool,
                 profile_out: str | None = None) -> None:
    import uvicorn

    if kind == "gateway":
        from voicerelay.gateway.server import Gateway

        gateway = Gateway(backend=echo_url, max_sessions=max_sessions)
        app, options = gateway.asgi_app(), gateway.uvicorn_options()
    else:  # no Gateway built: only the uvicorn options serve uses, from where serve gets them
        from voicerelay.gateway.limits import uvicorn_options

        app, options = bare_relay_app(echo_url + f"?model={MODEL}"), uvicorn_options()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                           **options))
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()  # wall time (a CPU-time timer costs a syscall per call and swamps it)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.01)
        conn.send(server.servers[0].sockets[0].getsockname()[1])
        while True:  # back in the loop's thread after each message: cProfile profiles this thread
            message = await asyncio.to_thread(_recv, conn)
            if message == "profile on" and profiler is not None:
                profiler.enable()
            elif message == "profile off" and profiler is not None:
                profiler.disable()
            elif message is None or message == "stop":
                break
        server.should_exit = True
        await task

    asyncio.run(main())
    if profiler is not None:
        if profile_out is not None:  # the whole profile, for pstats or a viewer
            profiler.dump_stats(str(Path(profile_out) / f"{kind}.prof"))
        conn.send(profile_summary(profiler))


def _recv(conn: Any) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _category(file: str, func: str) -> str:
    if file == "~":
        if "epoll" in func:
            return "epoll"  # the wait for I/O: left out
        if "_socket.socket" in func:
            return "socket send/recv syscalls"
        if "binascii" in func:
            return "base64 (binascii)"
        return "other built-ins"
    for key, name in (("/voicerelay/", "voicerelay (gateway, relay, session)"), ("gateway_load.py", "bare relay code"),
                      ("/socketio/", "python-socketio"), ("/engineio/", "python-engineio"),
                      ("/websockets/", "websockets"), ("/uvicorn/", "uvicorn"), ("/asyncio/", "asyncio"),
                      ("/json/", "json"), ("base64.py", "base64 (binascii)")):
        if key in file:
            return name
    return "other Python"


def profile_summary(profiler: Any) -> dict[str, Any]:
    """Own time (cProfile ``tottime``) by package, and the functions with the most of it."""
    import pstats

    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    top, ours = [], []
    for (file, line, func), (_cc, calls, own, cum, _callers) in stats.items():
        cat = _category(file, func)
        if cat == "epoll":
            continue  # waiting, not working
        groups[cat] = groups.get(cat, 0.0) + own
        label = func if file == "~" else f"{func} ({Path(file).parent.name}/{Path(file).name}:{line})"
        top.append((own, calls, label))
        if "/voicerelay/" in file:
            ours.append((cum, calls, label))
    top.sort(reverse=True)
    ours.sort(reverse=True)
    return {"groups": groups, "top": top[:20], "voicerelay": ours[:12]}


# ------------------------------------------------------------------------------------ browser-like clients


class LoadClient:
    """One browser: start a session, stream numbered chunks in real time, time their echoes."""

    def __init__(self, noise: bytes) -> None:
        import socketio

        self.noise = noise
        self.sio = socketio.AsyncClient(reconnection=False)
        self.started = asyncio.Event()
        self.pending: dict[int, float] = {}  # seq -> when it was emitted
        self.rtts: list[float] = []  # seconds
        self.lateness: list[float] = []  # seconds behind the schedule at each emit
        self.sent = 0
        self.unexpected = 0
        self.errors: list[Any] = []
        self.failure = ""
        self.sio.on("session_started", self._on_started)
        self.sio.on("audio_delta", self._on_delta)
        self.sio.on("error", self._on_error)
        self.sio.on("session_ended", self._on_ended)

    async def _on_started(self, data: Any = None) -> None:
        self.started.set()

    async def _on_delta(self, data: Any) -> None:
        now = time.perf_counter()
        seq = int.from_bytes(base64.b64decode(data["audio"][:12])[:8], "little")
        sent = self.pending.pop(seq, None)
        if sent is None:
            self.unexpected += 1
        else:
            self.rtts.append(now - sent)

    async def _on_error(self, data: Any = None) -> None:
        self.errors.append(data)

    async def _on_ended(self, data: Any = None) -> None:
        self.errors.append({"session_ended": data})

    async def open(self, url: str) -> bool:
        try:
            await self.sio.connect(url, transports=["websocket"], wait_timeout=10)
            await self.sio.emit("start_session", {"chat_payload": {"contextId": "load", "metadata": {}}})
            await asyncio.wait_for(self.started.wait(), 15)
            return True
        except Exception as exc:  # noqa: BLE001 (counted: a step with a session that did not start fails)
            self.failure = f"{type(exc).__name__}: {exc}"
            return False

    async def stream(self, t0: float, chunks: int) -> None:
        period = CHUNK_MS / 1000
        for seq in range(chunks):
            due = t0 + seq * period
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            audio = base64.b64encode(seq.to_bytes(8, "little") + self.noise[8:]).decode()
            now = time.perf_counter()
            self.lateness.append(max(0.0, now - due))
            self.pending[seq] = now
            self.sent += 1
            await self.sio.emit("audio_data", {"audio": audio})


def _clients_main(conn: Any, n: int, duration: float) -> None:
    url = _recv(conn)  # started with the server, to overlap the imports; told its URL once it listens
    if isinstance(url, str) and url.startswith("http"):
        asyncio.run(_clients(conn, url, n, duration))


async def _clients(conn: Any, url: str, n: int, duration: float) -> None:
    rng = np.random.default_rng(6)
    noise = rng.normal(0, 300, CHUNK_BYTES // 2).astype("<i2").tobytes()
    clients = [LoadClient(noise) for _ in range(n)]
    gate = asyncio.Semaphore(8)

    async def open_one(client: LoadClient) -> bool:
        async with gate:
            return await client.open(url)

    ok = await asyncio.gather(*(open_one(c) for c in clients))
    live = [c for c, good in zip(clients, ok) if good]
    conn.send(("ready", len(live), [c.failure for c in clients if c.failure][:3]))
    if await asyncio.to_thread(_recv, conn) != "go":  # told to stop instead
        await asyncio.gather(*(c.sio.disconnect() for c in clients if c.sio.connected), return_exceptions=True)
        return

    chunks = int(duration * 1000 / CHUNK_MS)
    period = CHUNK_MS / 1000
    cpu0, t0 = time.process_time(), time.perf_counter() + 0.05
    if live:
        await asyncio.gather(*(c.stream(t0 + i * period / len(live), chunks) for i, c in enumerate(live)))
    t1, cpu1 = time.perf_counter(), time.process_time()
    conn.send(("streamed",))
    deadline = t1 + LOST_AFTER_S
    while time.perf_counter() < deadline and any(c.pending for c in live):
        await asyncio.sleep(0.005)
    conn.send(("drained",))  # every echo is in (or lost): the server has done all the work of this step

    rtts = np.array([r for c in live for r in c.rtts]) * 1000
    in_time = rtts[rtts <= LOST_AFTER_S * 1000]
    lateness = np.array([x for c in live for x in c.lateness]) * 1000
    sent = sum(c.sent for c in live)
    result = {
        "started": len(live),
        "failures": [c.failure for c in clients if c.failure][:3],
        "sent": sent,
        "lost": sent - len(in_time),
        "unexpected": sum(c.unexpected for c in live),
        "errors": [e for c in live for e in c.errors][:3],
        "error_count": sum(len(c.errors) for c in live),
        "p50": float(np.percentile(in_time, 50)) if len(in_time) else float("nan"),
        "p95": float(np.percentile(in_time, 95)) if len(in_time) else float("nan"),
        "p99": float(np.percentile(in_time, 99)) if len(in_time) else float("nan"),
        "max": float(in_time.max()) if len(in_time) else float("nan"),
        "late_p99": float(np.percentile(lateness, 99)) if len(lateness) else float("nan"),
        "client_cpu": (cpu1 - cpu0) / max(1e-9, t1 - t0) * 100,
    }
    await asyncio.gather(*(c.sio.disconnect() for c in clients if c.sio.connected), return_exceptions=True)
    conn.send(("result", result))


# ------------------------------------------------------------------------------------ orchestration


class Child:
    """A spawned process with a pipe; stopped by a message, else terminated, else killed."""

    def __init__(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def recv(self, timeout: float, what: str) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.process.name}: no {what} within {timeout:g} s")
        return self.conn.recv()

    def stop(self, timeout: float = 10.0) -> Any:
        """Ask it to stop; returns its last message (the profile), if it sent one."""
        last = None
        try:
            self.conn.send("stop")
        except (OSError, BrokenPipeError):
            pass
        deadline = time.monotonic() + timeout
        while self.process.is_alive() and time.monotonic() < deadline:
            try:
                if self.conn.poll(0.05):
                    last = self.conn.recv()
            except (EOFError, OSError):
                self.process.join(0.05)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        try:
            while self.conn.poll(0):
                last = self.conn.recv()
        except (EOFError, OSError):
            pass
        self.conn.close()
        return last


def run_step(kind: str, n: int, echo: Child, echo_url: str, args: argparse.Namespace,
             profile: bool = False) -> dict[str, Any]:
    profile_out = args.profile_out if profile else None
    server = Child(_server_main, (kind, echo_url, max(100, n + 10), profile, profile_out), f"{kind} server")
    clients = Child(_clients_main, (n, args.duration), f"{n} clients")
    result: dict[str, Any] = {}
    try:
        port = server.recv(60, "port")
        time.sleep(0.2)  # let the fresh process settle before its baseline
        rss0 = rss_mib(server.pid)
        clients.conn.send(f"http://127.0.0.1:{port}")
        _, started, failures = clients.recv(60 + n, "sessions")
        cpu_a, echo_a, client_a = cpu_seconds(server.pid), cpu_seconds(echo.pid), cpu_seconds(clients.pid)
        mach_a, t_a = machine_ticks(), time.monotonic()
        if profile:
            server.conn.send("profile on")
        clients.conn.send("go")
        clients.recv(args.duration * 3 + 30, "end of streaming")
        if profile:
            server.conn.send("profile off")
        cpu_b, echo_b, client_b = cpu_seconds(server.pid), cpu_seconds(echo.pid), cpu_seconds(clients.pid)
        mach_b, t_b = machine_ticks(), time.monotonic()
        rss1 = rss_mib(server.pid)
        clients.recv(LOST_AFTER_S + 30, "the last echoes")
        _, result = clients.recv(30, "results")
        wall = t_b - t_a
        ours = (cpu_b - cpu_a + echo_b - echo_a + client_b - client_a) / wall
        result.update({
            "system": kind, "n": n, "wall": wall,
            "cpu": (cpu_b - cpu_a) / wall * 100, "echo_cpu": (echo_b - echo_a) / wall * 100,
            "machine": (mach_b[0] - mach_a[0]) / max(1, mach_b[1] - mach_a[1]) * 100,
            "foreign": foreign_cores(ours, mach_a, mach_b),
            "rss": rss1, "rss0": rss0, "rss_per": (rss1 - rss0) / n,
        })
        result["cpu_per"] = result["cpu"] / n
        result["sustained"] = (started == n and result["lost"] == 0 and result["error_count"] == 0
                               and result["unexpected"] == 0 and result["p99"] < P99_LIMIT_MS)
        result["disturbed"] = result["foreign"] > args.foreign_limit
        if failures:
            result["failures"] = failures
        return result
    finally:
        clients.stop(15)
        summary = server.stop(15)
        if profile and isinstance(summary, dict):
            result["profile"] = summary



def run_pair(n: int, echo: Child, echo_url: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Both systems at once, N sessions each, streaming over the same window (``--paired``): each
    server has its own clients' process and the echo upstream is shared, so whatever else the
    machine does meanwhile weighs on both alike. Each server's CPU is read at the end of the
    window (``cpu_per``) and when its last echo is back (``us_per_chunk``: all its work)."""
    kinds = ("bare", "gateway")
    servers = {k: Child(_server_main, (k, echo_url, max(100, n + 10), False), f"{k} server") for k in kinds}
    clients = {k: Child(_clients_main, (n, args.duration), f"{n} clients of {k}") for k in kinds}
    results: dict[str, dict[str, Any]] = {}
    try:
        ports = {k: servers[k].recv(60, "port") for k in kinds}
        time.sleep(0.2)
        rss0 = {k: rss_mib(servers[k].pid) for k in kinds}
        for k in kinds:
            clients[k].conn.send(f"http://127.0.0.1:{ports[k]}")
        started = {k: clients[k].recv(60 + n, "sessions")[1] for k in kinds}
        cpu_a = {k: cpu_seconds(servers[k].pid) for k in kinds}
        t_a = time.monotonic()
        for k in kinds:
            clients[k].conn.send("go")
        for k in kinds:
            clients[k].recv(args.duration * 3 + 30, "end of streaming")
        cpu_s = {k: cpu_seconds(servers[k].pid) for k in kinds}
        wall = time.monotonic() - t_a
        cpu_d = wait_drained(clients, servers)
        for k in kinds:
            rss1 = rss_mib(servers[k].pid)
            _, r = clients[k].recv(30, "results")
            r.update({"system": k, "n": n, "wall": wall, "cpu": (cpu_s[k] - cpu_a[k]) / wall * 100,
                      "rss": rss1, "rss0": rss0[k], "rss_per": (rss1 - rss0[k]) / n})
            r["cpu_per"] = r["cpu"] / n
            # all the work of the step: until the last echo reached its client, in microseconds per chunk
            r["us_per_chunk"] = (cpu_d[k] - cpu_a[k]) / max(1, r["sent"]) * 1e6
            r["complete"] = started[k] == n and complete(r)
            results[k] = r
        return results
    finally:
        for k in kinds:
            clients[k].stop(15)
            servers[k].stop(15)


def wait_drained(clients: dict[str, Child], servers: dict[str, Child]) -> dict[str, float]:
    """Each server's CPU seconds when the last echo of its step reached its clients (or was given
    up as lost): read as each one's clients say so, so that neither counts the other's drain."""
    from multiprocessing.connection import wait

    cpu: dict[str, float] = {}
    by_conn = {clients[k].conn: k for k in clients}
    deadline = time.monotonic() + LOST_AFTER_S + 30
    while len(cpu) < len(clients):
        ready = wait([c for c, k in by_conn.items() if k not in cpu], timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise RuntimeError(f"clients of {', '.join(k for k in clients if k not in cpu)}: no last echoes in time")
        for conn in ready:
            k = by_conn[conn]  # type: ignore[index]
            cpu[k] = cpu_seconds(servers[k].pid)
            message = conn.recv()  # type: ignore[union-attr]
            if message != ("drained",):
                raise RuntimeError(f"clients of {k}: expected the last echoes, got {message!r}")
    return cpu


def paired(steps: list[int], echo: Child, echo_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """``--paired ROUNDS``: the CPU ratio measured side by side, ROUNDS times at each N of --steps.
    Returns what it printed (``--json``): every round, and the ratio's mean per N and overall."""
    print(f"side by side: both systems at once, N sessions each, {args.paired} rounds per N; server CPU per chunk "
          "relayed, from the first chunk until the last echo reached its client (all the work of the round, "
          "however the machine scheduled it); 'window' = CPU per session over the streaming window alone\n")
    print(f"{'N':>5}{'round':>6}{'bare us/chunk':>15}{'gateway us/chunk':>18}{'ratio':>7}{'window':>8}"
          f"{'p99 bare':>10}{'p99 gw':>8}  verdict")
    ratios: dict[int, list[float]] = {}
    report: dict[str, Any] = {"rounds": [], "by_n": {}, "mean": None, "ci": None, "verdict": None}
    for n in steps:
        for i in range(args.paired):
            wait_quiet(args.foreign_limit, args.quiet_wait)
            r = run_pair(n, echo, echo_url, args)
            b, g = r["bare"], r["gateway"]
            ok = b["complete"] and g["complete"] and b["us_per_chunk"] > 0 and b["cpu_per"] > 0
            why = "" if ok else " (not counted: " + "; ".join(
                f"{k}: {x['started']} of {n} started, {x['lost']} lost, {x['error_count']} errors"
                for k, x in r.items() if not x["complete"]) + ")"
            ratio = g["us_per_chunk"] / b["us_per_chunk"] if b["us_per_chunk"] > 0 else float("nan")
            window = g["cpu_per"] / b["cpu_per"] if b["cpu_per"] > 0 else float("nan")
            if ok:
                ratios.setdefault(n, []).append(ratio)
            report["rounds"].append({"n": n, "round": i + 1, "counted": ok, "ratio": ratio, "window": window,
                                     "bare": b, "gateway": g})
            late = "" if max(b["p99"], g["p99"]) < P99_LIMIT_MS else " (past capacity: p99 over " \
                f"{P99_LIMIT_MS:g} ms)"
            print(f"{n:>5}{i + 1:>6}{b['us_per_chunk']:>15.1f}{g['us_per_chunk']:>18.1f}{ratio:>7.3f}{window:>8.3f}"
                  f"{b['p99']:>10.1f}{g['p99']:>8.1f}  {'counted' + late if ok else 'NOT counted'}{why}", flush=True)
    every = [x for xs in ratios.values() for x in xs]
    if len(every) < 2:
        print("\nserver CPU per chunk, gateway / bare relay, side by side: too few complete rounds to say")
        return report
    print()
    for n, xs in ratios.items():
        if len(xs) > 1:
            m, h = mean_ci(xs)
            report["by_n"][n] = {"mean": m, "ci": [m - h, m + h], "rounds": len(xs)}
            print(f"N={n}: mean {m:.3f} (95 % CI {m - h:.3f}-{m + h:.3f}) over {len(xs)} rounds")
    mean, half = mean_ci(every)
    if mean + half <= CPU_TARGET_RATIO:
        verdict = "meets target"
    elif mean - half > CPU_TARGET_RATIO:
        verdict = "MISSES target"
    else:
        verdict = "cannot tell from these rounds: run more"
    print(f"server CPU per chunk relayed, gateway / bare relay, side by side over {len(every)} rounds: mean "
          f"{mean:.3f} (95 % CI {mean - half:.3f}-{mean + half:.3f}), median {float(np.median(every)):.3f}, range "
          f"{min(every):.3f}-{max(every):.3f}  (target: at most {CPU_TARGET_RATIO}: {verdict})")
    report.update(mean=mean, ci=[mean - half, mean + half], verdict=verdict)
    return report


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95 % confidence interval (normal approximation)."""
    return float(np.mean(xs)), 1.96 * float(np.std(xs, ddof=1)) / len(xs) ** 0.5


HEADER = (f"{'system':<8}{'N':>5}{'p50':>7}{'p95':>7}{'p99':>7}{'max':>7}{'lost':>7}"
          f"{'srv CPU':>8}{'/sess':>6}{'RSS':>6}{'/sess':>6}"
          f"{'client':>7}{'echo':>6}{'other':>6}{'late99':>7}  verdict")
UNITS = (f"{'':<8}{'':>5}{'ms':>7}{'ms':>7}{'ms':>7}{'ms':>7}{'chunks':>7}"
         f"{'%':>8}{'%':>6}{'MiB':>6}{'KiB':>6}{'CPU %':>7}{'CPU %':>6}{'cores':>6}{'ms':>7}")


def row(r: dict[str, Any]) -> str:
    verdict = "sustained" if r["sustained"] else "NOT sustained"
    why = []
    if r["started"] != r["n"]:
        why.append(f"{r['n'] - r['started']} sessions did not start: {r.get('failures', [])[:1]}")
    if r["error_count"]:
        why.append(f"{r['error_count']} error events, e.g. {r['errors'][:1]}")
    if not r["sustained"] and not r["p99"] < P99_LIMIT_MS:
        why.append("p99 >= 50 ms")
    if r["lost"]:
        why.append(f"{r['lost']} of {r['sent']} lost")
    if r["unexpected"]:
        why.append(f"{r['unexpected']} echoes of unknown or repeated chunks")
    if why:
        verdict += " (" + "; ".join(why) + ")"
    if r["disturbed"]:
        verdict += " [other load on the machine]"
    return (f"{r['system']:<8}{r['n']:>5}{r['p50']:>7.1f}{r['p95']:>7.1f}{r['p99']:>7.1f}{r['max']:>7.1f}"
            f"{r['lost']:>7}{r['cpu']:>8.1f}{r['cpu_per']:>6.2f}{r['rss']:>6.0f}{r['rss_per'] * 1024:>6.0f}"
            f"{r['client_cpu']:>7.1f}{r['echo_cpu']:>6.1f}{r['foreign']:>6.2f}{r['late_p99']:>7.1f}  {verdict}")


def complete(r: dict[str, Any]) -> bool:
    """The step ran as planned, so its CPU per session counts: every session started and streamed
    its chunks, none lost, no error (its p99 may be over the limit: other load on the machine)."""
    return (r["started"] == r["n"] and r["sent"] > 0 and r["lost"] == 0 and r["error_count"] == 0
            and r["unexpected"] == 0)


def cpu_ratios(gateway: list[dict[str, Any]], bare: list[dict[str, Any]]) -> list[tuple[int, float, float, float]]:
    """(N, gateway / bare CPU per session, gateway's, bare's) at every N > 1 that both completed
    (the last run of each at that N)."""
    g_at = {r["n"]: r for r in gateway if complete(r) and r["n"] > 1}
    b_at = {r["n"]: r for r in bare if complete(r) and r["n"] > 1}
    return [(n, g_at[n]["cpu_per"] / b_at[n]["cpu_per"], g_at[n]["cpu_per"], b_at[n]["cpu_per"])
            for n in sorted(g_at.keys() & b_at.keys()) if b_at[n]["cpu_per"] > 0]


def measure(kind: str, n: int, echo: Child, echo_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One step, run again (up to --retries times) when it failed while other load shared the machine."""
    for attempt in range(args.retries + 1):
        wait_quiet(args.foreign_limit, args.quiet_wait)
        r = run_step(kind, n, echo, echo_url, args)
        print(row(r) + (f" (retry {attempt})" if attempt else ""), flush=True)
        if r["sustained"] or not r["disturbed"]:
            break
    return r


def profile_both(n: int, systems: list[str], echo: Child, echo_url: str, args: argparse.Namespace) -> None:
    """Each system once more at N, under cProfile over the streaming window: own time per chunk."""
    print(f"\ncProfile of the server process at N={n}, over the streaming window (wall time per function, so "
          "other load inflates it; profiling slows Python code: these runs are not capacity figures):")
    print(HEADER)
    runs = {}
    for kind in systems:
        wait_quiet(args.foreign_limit, args.quiet_wait)
        runs[kind] = run_step(kind, n, echo, echo_url, args, profile=True)
        print(row(runs[kind]))
    runs = {k: r for k, r in runs.items() if "profile" in r and r["sent"]}
    if not runs:
        print("(no profile came back)")
        return
    cats = sorted({c for r in runs.values() for c in r["profile"]["groups"]},
                  key=lambda c: -max(r["profile"]["groups"].get(c, 0) / r["sent"] for r in runs.values()))
    print("\nown CPU time per chunk relayed (one audio_data in, one audio_delta out), microseconds:")
    print(f"{'':<40}" + "".join(f"{k:>10}" for k in runs))
    totals = {k: 0.0 for k in runs}
    for cat in cats:
        cells = ""
        for k, r in runs.items():
            us = r["profile"]["groups"].get(cat, 0.0) / r["sent"] * 1e6
            totals[k] += us
            cells += f"{us:>10.1f}"
        print(f"{cat:<40}{cells}")
    print(f"{'total':<40}" + "".join(f"{totals[k]:>10.1f}" for k in runs))
    for kind, r in runs.items():
        print(f"\n{kind}: the functions with the most own time, microseconds per chunk (calls per chunk):")
        for own, calls, label in r["profile"]["top"][:14]:
            print(f"  {own / r['sent'] * 1e6:7.1f}  ({calls / r['sent']:4.1f})  {label}")
        if r["profile"]["voicerelay"]:
            print(f"{kind}: voicerelay's functions by cumulative time (callees included; a coroutine counts each "
                  "resumption as a call), microseconds per chunk:")
            for cum, calls, label in r["profile"]["voicerelay"]:
                print(f"  {cum / r['sent'] * 1e6:7.1f}  ({calls / r['sent']:4.1f})  {label}")


def write_json(path: str | None, report: dict[str, Any]) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(report, indent=1, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of real-time audio per session per step")
    parser.add_argument("--max-sessions", type=int, default=192,
                        help="the ramp's last N (a quiet 2-core machine sustains about 160 sessions)")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="the ramp's N values, comma-separated")
    parser.add_argument("--resolution", type=int, default=4,
                        help="after the first failure, bisect until sustained and failed N are this close")
    parser.add_argument("--systems", default="bare,gateway", help="which systems to ramp (bare, gateway)")
    parser.add_argument("--foreign-limit", type=float, default=0.25,
                        help="cores busy outside this benchmark above which a failed step is run again")
    parser.add_argument("--retries", type=int, default=1, help="runs again of a step failed under other load")
    parser.add_argument("--quiet-wait", type=float, default=2.0,
                        help="seconds to wait, before each step, for the machine to be free of other load")
    parser.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                        help="instead of the ramps, run both systems at once at each N of --steps, ROUNDS times, "
                             "and print their CPU ratio with its confidence interval")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the ramp, run the gateway once more at N sessions under cProfile and print it")
    parser.add_argument("--profile-out", metavar="DIR",
                        help="with --profile: also write each system's whole profile to DIR/<system>.prof "
                             "(read it with python -m pstats)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON (every step's "
                                                          "or round's results, and the verdicts)")
    args = parser.parse_args()
    if args.paired < 0:
        parser.error("--paired takes a number of rounds (at least 1)")
    if args.paired and args.profile:
        parser.error("--paired and --profile are separate runs: give one of them")
    if args.paired and {x.strip() for x in args.systems.split(",") if x.strip()} != {"bare", "gateway"}:
        parser.error("--paired runs both systems: leave out --systems")
    if args.profile_out is not None:
        if not args.profile:
            parser.error("--profile-out needs --profile N")
        if not Path(args.profile_out).is_dir():
            parser.error(f"--profile-out: {args.profile_out} is not a folder")

    steps = sorted({int(s) for s in args.steps.split(",") if s.strip() and 0 < int(s) <= args.max_sessions})
    if not steps:
        parser.error("no step in --steps is between 1 and --max-sessions")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in ("bare", "gateway"):
            parser.error(f"unknown system {s!r}")
    print(f"gateway load: {NCPU} CPUs, python {sys.version.split()[0]}, load average "
          f"{loadavg()}; each session streams {CHUNK_MS} ms chunks ({CHUNK_BYTES} "
          f"bytes PCM16, base64) in real time for {args.duration:g} s; sustained = all started, no error, nothing "
          f"lost (echoed within {LOST_AFTER_S:g} s), p99 < {P99_LIMIT_MS:g} ms")
    print("latency = emit -> echoed audio_delta, in the client; srv CPU 100 % = one core; RSS at the end of "
          "streaming, /sess = growth over the idle server / N;\nother = cores busy outside this benchmark; "
          "late99 = the clients' p99 lag behind their send schedule\n")

    started = time.monotonic()
    echo = Child(_echo_main, (), "echo upstream")
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    best: dict[str, int] = {}
    try:
        echo_port = echo.recv(30, "port")
        echo_url = f"ws://127.0.0.1:{echo_port}/v1/realtime"
        if args.paired:
            write_json(args.json, {"paired": paired(steps, echo, echo_url, args)})
            return  # (the finally below stops the echo; the time and children left are printed after it)
        print(HEADER)
        print(UNITS)
        plans = {kind: ramp(steps, args.resolution) for kind in systems}
        verdicts: dict[str, bool | None] = {kind: None for kind in systems}
        while plans:  # the systems take turns, one step each
            for kind in list(plans):
                try:
                    n = plans[kind].send(verdicts[kind])
                except StopIteration as stop:
                    best[kind] = stop.value
                    del plans[kind]
                    continue
                r = measure(kind, n, echo, echo_url, args)
                results[kind].append(r)
                verdicts[kind] = r["sustained"]

        print()
        for kind in systems:
            label = {"gateway": "gateway (voicerelay serve)", "bare": "bare relay (ceiling)"}[kind]
            capped = best[kind] == steps[-1]
            note = " (still sustained at the last step: raise --max-sessions)" if capped else ""
            at = [r for r in results[kind] if r["n"] == best[kind] and r["sustained"]]
            extra = ""
            if at:
                a = at[-1]
                extra = (f"; there: p99 {a['p99']:.1f} ms, server CPU {a['cpu']:.0f} % = {a['cpu_per']:.2f} %"
                         f"/session, RSS {a['rss_per'] * 1024:.0f} KiB/session")
            print(f"largest N sustained, {label}: {best[kind]}{note}{extra}")
        for kind in systems:
            deciding = [r for r in results[kind] if not r["sustained"] and r["disturbed"]]
            if deciding:
                steps_text = ", ".join(f"N={r['n']} ({r['foreign']:.2f} cores)" for r in deciding)
                print(f"caution: {kind} failed under other load at {steps_text}, even on retry: "
                      "its figure may be low; run again on a quieter machine")
        if "gateway" in systems and "bare" in systems:
            ratios = cpu_ratios(results["gateway"], results["bare"])
            if ratios:
                mean = sum(x for _, x, _, _ in ratios) / len(ratios)
                median = float(np.median([x for _, x, _, _ in ratios]))
                print("server CPU per session, gateway / bare relay, at the same N (every step both completed): "
                      + ", ".join(f"{x:.2f} (N={n}: {g:.2f} / {b:.2f} %)" for n, x, g, b in ratios)
                      + f"; mean {mean:.2f}, median {median:.2f}  (the two ran one after the other, so a step's "
                      f"ratio moves by 5-15 % with the machine: --paired measures it side by side, with its "
                      f"confidence interval, against the target of at most {CPU_TARGET_RATIO})")
            else:
                print("server CPU per session, gateway / bare relay: no N that both completed")
            if best["bare"]:
                ratio = best["gateway"] / best["bare"]
                verdict = "meets target" if ratio >= TARGET_RATIO else "MISSES target"
                if best["bare"] == steps[-1]:
                    verdict = "not a capacity figure: the bare relay never failed; raise --max-sessions"
                print(f"\nsessions sustained, gateway / bare relay: {best['gateway']} / {best['bare']} = {ratio:.2f}  "
                      f"(target >= {TARGET_RATIO}: {verdict})")
            else:
                print("\nsessions sustained, gateway / bare relay: undefined (the bare relay sustained no step)")
        write_json(args.json, {"ramps": results, "sustained": best})
        if args.profile:
            profile_both(args.profile, systems, echo, echo_url, args)
    finally:
        echo.stop(10)
        left = multiprocessing.active_children()
        print(f"\n{time.monotonic() - started:.0f} s; load average now {loadavg()}; "
              f"child processes left: {len(left)}")


if __name__ == "__main__":
    main()
