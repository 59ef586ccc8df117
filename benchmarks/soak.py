"""Soak and fault injection: browser-like sessions through the gateway to the embedded backend.

    python benchmarks/soak.py                         # 5 minutes, 20 sessions
    python benchmarks/soak.py --minutes 1 --sessions 4 --json out.json
    python benchmarks/soak.py --minutes 0.6 --sessions 3 --faults restart,vanish,burst   # the test's form

Processes (each its own, so that each can be killed alone and none shares a GIL):

- **The backend**: the embedded backend's own ``run()`` (what ``voicerelay backend`` runs), with
  reply audio paced at real time (``--pace 1``, so a reply lasts seconds and a kill can land in
  the middle of one). It counts at its door: every ``input_audio_buffer.append`` a session hands
  to its ``SessionPump`` is written (one ``O_APPEND`` write per chunk, so a SIGKILL loses none)
  to ``backend.log`` with its connection and the chunk's number; once a second it writes its
  RSS, open file descriptors, asyncio tasks and recognition worker pids to ``backend.stats``.
  It is restarted on the same port after its kill.
- **The gateway**: ``Gateway(backend=...).asgi_app()`` under uvicorn, configured as
  ``voicerelay serve`` runs it (``ws="websockets-sansio"``, defaults otherwise), plus one route,
  ``/soak-stats`` (RSS, fds, asyncio tasks, sessions, the heartbeat in force).
- **The browsers**: python-socketio ``AsyncClient`` s over the websocket transport, each sending
  ``start_session`` and then, like a microphone, an ``audio_data`` every 40 ms on a wall-clock
  schedule: the shipped recordings in turn, each followed by 4 s of their room noise. Every
  chunk carries a mark, its session's number and its own, in the least significant bits of its
  first 64 samples (a change of at most 1 in 32768 per sample: neither VAD nor recogniser notices). The crowd runs in one process; the two victims (the
  browser that vanishes and the one that freezes) in a process each. A session that gets
  ``session_ended`` starts a new one a second later, as a page would.

Faults, at fractions of the run: the backend SIGKILLed (``restart``, from 15 %, once a crowd
session has heard a reply for 0.4 s; its recognition workers are counted 5 s later) and started
again on the same port; a browser SIGKILLed while it speaks (``vanish``, 35 %: the kernel closes
its TCP connection, no Socket.IO disconnect is sent); a burst of malformed events from one crowd
session (``burst``, 50 %); a browser SIGSTOPped while it speaks (``freeze``, 60 %: it stops
reading; held until its upstream closes, 90 s, or 10 s before the end).

Printed: per fault, what the affected sessions saw and when, and whether any neighbour saw an
``error`` or ``session_ended``; for the whole run, chunks sent vs counted at the backend (lost,
reordered within a connection, sent again on a new connection), replies, user transcripts that
match what was said, RSS of the gateway and the backend at minute 1 (for the backend: one
minute after its restart) and at the end, tasks and fds at the end vs the idle baseline.
Nothing is asserted here; ``tests/test_soak.py`` runs a short form and asserts.
The two-node (Redis) faults are not part of this benchmark.
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

CHUNK_MS = 40
CHUNK_BYTES = CHUNK_MS * 48
MAGIC = 0xA55A  # 16 bits, then the session's number (16) and the chunk's (32): 64 bits in 64 samples' LSBs
MARK_SAMPLES = 64
GAP_MS = 4000  # room noise after each recording
RECORDINGS = {"hello_there": "hello there", "what_is_your_name": "what is your name",
              "how_are_you": "how are you today", "weather_in_paris": "what is the weather in paris",
              "what_can_you_do": "what can you do"}
ALL_FAULTS = ("restart", "vanish", "burst", "freeze")
AT = {"restart": 0.15, "vanish": 0.35, "burst": 0.5, "freeze": 0.6}


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


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
                    out.write(json.dumps({"t": time.time(), "pid": pid, "rss_mb": rss_mb(), "fds": fd_count(),
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


def gateway_main(port: int, backend_url: str) -> None:
    import uvicorn

    from voicerelay.gateway.server import Gateway

    gateway = Gateway(backend=backend_url, max_sessions=200)

    app = gateway.asgi_app()

    async def stats(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/soak-stats":
            await app(scope, receive, send)  # the gateway as serve runs it, lifespan included
            return
        eio = gateway.sio.eio
        from collections import Counter

        names = Counter(_task_name(t) for t in asyncio.all_tasks() if t is not asyncio.current_task())
        body = json.dumps({"rss_mb": rss_mb(), "fds": fd_count(), "tasks": sum(names.values()),
                           "task_names": dict(names),
                           "sessions": len(gateway.sessions), "ping_interval": eio.ping_interval,
                           "ping_timeout": eio.ping_timeout}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(stats, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", ws="websockets-sansio")
    print(json.dumps({"ws_ping_interval": config.ws_ping_interval, "ws_ping_timeout": config.ws_ping_timeout}),
          flush=True)
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
    def __init__(self, number: int, url: str, end_at: float, burst_at: float | None = None,
                 speaking_file: str | None = None) -> None:
        self.number = number
        self.url = url
        self.end_at = end_at
        self.burst_at = burst_at
        self.speaking_file = speaking_file
        self.events: list[tuple[float, str, Any]] = []
        self.sent: list[float] = []  # send time of chunk n
        self.active = False
        self.started = asyncio.Event()
        self.expected: list[str] = []  # sentences spoken, in order
        self.burst: dict[str, Any] | None = None

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
        elif name == "session_ended":
            self.active = False
            self.started.clear()

    async def run(self) -> None:
        import socketio

        sio = socketio.AsyncClient(reconnection=False)
        sio.on("*", self._on)
        await sio.connect(self.url, transports=["websocket"], wait_timeout=15)
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
                        elif now >= restart_at and sio.connected:
                            restart_at = None
                            self.events.append((now, "start_session (again)", None))
                            await sio.emit("start_session", {"chat_payload": {}})
                        continue
                    chunk = mark(pcm[i:i + CHUNK_BYTES], self.number, seq)
                    await sio.emit("audio_data", {"audio": base64.b64encode(chunk).decode()})
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
                "burst": self.burst}


def browsers_main(numbers: list[int], url: str, end_at: float, out: str, burst_at: float | None,
                  speaking_file: str | None) -> None:
    async def main() -> list[dict[str, Any]]:
        browsers = [Browser(n, url, end_at, burst_at if i == 0 else None, speaking_file if i == 0 else None)
                    for i, n in enumerate(numbers)]
        outcome = await asyncio.gather(*(b.run() for b in browsers), return_exceptions=True)
        results = []
        for b, o in zip(browsers, outcome):
            r = b.result()
            r["failure"] = None if o is None else repr(o)
            results.append(r)
        return results

    results = asyncio.run(main())
    Path(out).write_text(json.dumps(results))


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
        self.procs: list[subprocess.Popen[bytes]] = []
        self.report: dict[str, Any] = {"minutes": minutes, "sessions": sessions, "faults": {}, "pace": pace}

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

    def gateway_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/soak-stats", timeout=10) as response:
            return json.loads(response.read())

    def start_gateway(self) -> subprocess.Popen[bytes]:
        proc = self.spawn("--role", "gateway", "--port", str(self.gport),
                          "--backend-url", f"ws://127.0.0.1:{self.bport}/v1/realtime", name="gateway")
        deadline = time.time() + 60
        while True:
            try:
                self.gateway_stats()
                return proc
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the gateway did not start: {(self.dir / 'gateway.out').read_text()[-2000:]}")
                time.sleep(0.1)

    def browsers(self, numbers: list[int], end_at: float, burst_at: float | None = None,
                 speaking: bool = False) -> tuple[subprocess.Popen[bytes], Path, Path | None]:
        out = self.dir / f"browsers-{numbers[0]}.json"
        flag = self.dir / f"speaking-{numbers[0]}" if speaking else None
        args = ["--role", "browsers", "--numbers", ",".join(map(str, numbers)), "--url", self.url,
                "--end-at", str(end_at), "--out", str(out)]
        if burst_at is not None:
            args += ["--burst-at", str(burst_at)]
        if flag is not None:
            args += ["--speaking-file", str(flag)]
        return self.spawn(*args, name=f"browsers-{numbers[0]}"), out, flag

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
        gateway = self.start_gateway()
        heartbeat = json.loads((self.dir / "gateway.out").read_text().splitlines()[0])
        base_g = self.gateway_stats()
        rep["heartbeat"] = {"engineio_ping_interval_s": base_g["ping_interval"],
                            "engineio_ping_timeout_s": base_g["ping_timeout"],
                            "uvicorn_ws_ping_interval_s": heartbeat["ws_ping_interval"],
                            "uvicorn_ws_ping_timeout_s": heartbeat["ws_ping_timeout"]}
        time.sleep(1.5)
        base_b = self.backend_stats(backend.pid)
        t0 = time.time() + 3
        end_at = t0 + d
        rep["t0"] = t0
        victims = [n for n, f in ((self.sessions - 1, "vanish"), (self.sessions - 2, "freeze")) if f in self.faults]
        crowd = [n for n in range(self.sessions) if n not in victims]
        burst_at = t0 + AT["burst"] * d if "burst" in self.faults else None
        crowd_proc, crowd_out, crowd_flag = self.browsers(crowd, end_at, burst_at, speaking=True)
        victim_procs = {}
        for n, f in ((self.sessions - 1, "vanish"), (self.sessions - 2, "freeze")):
            if f in self.faults:
                victim_procs[f] = (n, *self.browsers([n], end_at, speaking=True))
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
                stop_t = self.when_speaking(flag, time.time())
                before = self.gateway_stats()["rss_mb"]
                os.kill(proc.pid, signal.SIGSTOP)
                hold = min(90.0, max(5.0, end_at - time.time() - 10))
                closed, peak = None, before
                while closed is None and time.time() < stop_t + hold:
                    time.sleep(0.5)
                    closed = self.closed_at(n, stop_t)
                    peak = max(peak, self.gateway_stats()["rss_mb"])
                proc.kill()
                os.kill(proc.pid, signal.SIGCONT)
                rep["faults"]["freeze"] = {"t": stop_t - t0, "session": n, "held_s": time.time() - stop_t,
                                           "upstream_closed_after_s": None if closed is None else closed - stop_t,
                                           "gateway_rss_mb_before": before, "gateway_rss_mb_peak": peak}
        at(end_at)
        crowd_proc.wait(timeout=120)
        for _, proc, _, _ in victim_procs.values():
            if proc.poll() is None:
                proc.wait(timeout=60)
        time.sleep(5)  # let the gateway and the backend close what the sessions left
        rep["resources_5s_after"] = {"gateway": self.gateway_stats(), "backend": self.backend_stats(backend.pid)}
        time.sleep(max(0.0, self.settle - 5))  # past engine.io's ping interval: its per-socket ping tasks end
        end_g = self.gateway_stats()
        end_b = self.backend_stats(backend.pid)
        rep["settle_s"] = max(5.0, self.settle)
        base_b_final = base_b  # the idle baseline of the first backend process: the same program, warmed up
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
        self.analyse(results, t0, end_at)
        return rep

    def _first_stats(self, pid: int) -> dict[str, Any]:
        lines = [json.loads(x) for x in (self.dir / "backend.stats").read_text().splitlines() if x.strip()]
        return next(x for x in lines if x["pid"] == pid)

    def analyse(self, results: list[dict[str, Any]], t0: float, end_at: float) -> None:
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
                    if outage is None or not outage[0] <= t <= outage[1]:
                        lost_up += 1
        replies = sum(1 for r in results for _, name, _ in r["events"] if name == "response_complete")
        finals = [(b or {}).get("text", "") for r in results for _, name, b in r["events"]
                  if name == "user_transcript" and (b or {}).get("final")]
        sentences = set(RECORDINGS.values())
        matched = sum(1 for text in finals if re.sub(r"[^a-z ]", "", text.lower()).strip() in sentences)
        rep["chunks"] = {"sent": sent, "counted_at_backend": sent - lost, "lost": lost,
                         "lost_while_upstream_up": lost_up, "reordered": reordered, "sent_again_on_new_connection": resent,
                         "outage_window_s": None if outage is None else [outage[0] - t0, outage[1] - t0]}
        rep["replies"] = replies
        rep["user_transcripts"] = {"final": len(finals), "match_what_was_said": matched}
        rep["browser_failures"] = [r["failure"] for r in results if r["failure"]]

        def bad(r: dict[str, Any], start: float, stop: float) -> list[str]:
            """What a session saw that a fault elsewhere should not cause (its own burst's errors aside)."""
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
        p(f"\n[freeze] session {z['session']}'s browser SIGSTOPped mid-utterance at {z['t']:.1f} s, held "
          f"{z['held_s']:.0f} s: its upstream closed {'not while held' if closed is None else f'after {closed:.1f} s'}; "
          f"gateway RSS {z['gateway_rss_mb_before']:.1f} -> peak {z['gateway_rss_mb_peak']:.1f} MB; "
          f"neighbours that noticed: {_neighbours(z)}")
    c = rep["chunks"]
    p(f"\nchunks: sent {c['sent']}, counted at the backend {c['counted_at_backend']}, lost {c['lost']} "
      f"(while the upstream was up: {c['lost_while_upstream_up']}; outage window {c['outage_window_s']}), "
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
    a = ap.parse_args()
    if a.role == "backend":
        backend_main(a.port, Path(a.run_dir), a.pace)
    elif a.role == "gateway":
        gateway_main(a.port, a.backend_url)
    elif a.role == "browsers":
        browsers_main([int(x) for x in a.numbers.split(",")], a.url, a.end_at, a.out, a.burst_at, a.speaking_file)
    else:
        faults = tuple(x for x in a.faults.split(",") if x)
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown:
            ap.error(f"unknown faults: {sorted(unknown)}")
        if a.sessions < 1 + sum(f in faults for f in ("vanish", "freeze")):
            ap.error("--sessions must leave at least one crowd session besides the victims")
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
