"""What `voicerelay proxy` adds to each event: proxied vs direct in the same run.

    python benchmarks/proxy_overhead.py [--sessions 50] [--seconds 10] [--rounds 3] [--record] [--no-lint] [--no-monitor] [--watch]

Three processes: a scripted Realtime upstream, the real `voicerelay proxy` command in front of it,
and this one with N concurrent client sessions. Each session sends a 20 ms
`input_audio_buffer.append` every 20 ms (real time); the upstream answers each with a
`response.output_audio.delta` of 20 ms at once. Every event carries its send time on the
machine's monotonic clock (shared by the processes), so each event's one-way latency is measured
where it arrives: up (client → upstream, reported back in the answer) and down (upstream →
client). The same sessions run straight to the upstream and through the proxy, in rounds that
take turns going first (``--rounds``); the added latency is the difference of the two
distributions' percentiles in a round, and the figure is its median over the rounds (one round's
p99 moves by a millisecond or more with whatever else the two CPUs are doing).

The timed work is checked: every session must receive every answer, in order, with the audio the
upstream put in it byte for byte, and the upstream must have seen every append in order; a run
that loses, reorders or changes anything exits 1 instead of printing figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_seconds  # noqa: E402 - benchmarks/common.py, beside this script

FRAME_MS = 20
AUDIO = base64.b64encode(bytes(range(256)) * (FRAME_MS * 48 // 256 + 1))[: FRAME_MS * 64].decode()  # 20 ms, 1280 chars


# ------------------------------------------------------------------------------- the upstream


async def upstream(port_file: str) -> None:
    """A scripted Realtime server: session.created, then one delta per append, at once."""
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        await ws.send(json.dumps({"type": "session.created", "session": {"id": "bench"}}))
        expected = 0
        try:
            async for message in ws:
                now = time.monotonic()
                event = json.loads(message)
                seq = event["event_id"]
                in_order = seq == f"e{expected}"
                expected += 1
                await ws.send(json.dumps({"type": "response.output_audio.delta", "event_id": f"d{seq}",
                                          "response_id": "resp", "item_id": "item", "output_index": 0,
                                          "content_index": 0, "delta": AUDIO,
                                          "t_up": now - event["t"], "in_order": in_order, "t": time.monotonic()}))
        except ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        await asyncio.Future()


# ------------------------------------------------------------------------------- the clients


class Result:
    def __init__(self) -> None:
        self.up: list[float] = []
        self.down: list[float] = []
        self.problems: list[str] = []
        self.events = 0


async def session_timed(url: str, frames: int, result: Result, start_at: float) -> None:
    """One session: sends paced appends, reads answers as they come, times each on arrival."""
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=None) as ws:
        first = json.loads(await ws.recv())
        if first["type"] != "session.created":
            result.problems.append(f"first event {first['type']}")

        async def reader() -> None:
            for seq in range(frames):
                message = await ws.recv()
                arrived = time.monotonic()
                event = json.loads(message)
                if event.get("event_id") != f"de{seq}" or not event.get("in_order"):
                    result.problems.append(f"answer {seq}: out of order or missing ({event.get('event_id')})")
                    return
                if event.get("delta") != AUDIO:
                    result.problems.append(f"answer {seq}: audio changed")
                    return
                result.down.append(arrived - event["t"])
                result.up.append(event["t_up"])
                result.events += 2

        task = asyncio.ensure_future(reader())
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        next_at = time.monotonic()
        for seq in range(frames):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "event_id": f"e{seq}", "audio": AUDIO,
                                      "t": time.monotonic()}))
            next_at += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.wait_for(task, 60)


async def run_mode(url: str, sessions: int, seconds: float) -> Result:
    result = Result()
    frames = int(seconds * 1000 / FRAME_MS)
    start_at = time.monotonic() + 1.0  # every session connected before the first append
    # staggered over one frame, as independent apps would be
    await asyncio.gather(*(session_timed(url, frames, result, start_at + i * FRAME_MS / 1000 / sessions)
                           for i in range(sessions)))
    expected = sessions * frames * 2
    if result.events != expected and not result.problems:
        result.problems.append(f"{result.events} of {expected} events arrived")
    return result


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] * 1000 if values else float("nan")


def start_proxy(upstream_url: str, record: str | None, lint: bool = True,
                monitor: bool = True) -> tuple[subprocess.Popen[str], str, str | None]:
    """The real command, as a user runs it (live lint and the monitor on) unless told otherwise;
    returns it, its URL and its monitor's."""
    args = [sys.executable, "-m", "voicerelay", "proxy", "--port", "0", "--backend", upstream_url,
            "--log-level", "warning", "--max-sessions", "1000", "--lint" if lint else "--no-lint",
            "--monitor-port", "0", "--monitor" if monitor else "--no-monitor"]
    if record:
        args += ["--record", record]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "COLUMNS": "300",
                                 "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))})
    assert proc.stderr is not None
    url = None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("the proxy did not start")
        found = re.search(r"ws://127\.0\.0\.1:(\d+)/v1/realtime", line)
        if found and "Ctrl-C" in line:
            url = found.group(0)
            if not monitor:
                return proc, url, None
        watch = re.search(r"voicerelay inspect (http://\S+)", line)
        if url and watch:
            return proc, url, watch.group(1)


def drain(proc: subprocess.Popen[str]) -> list[str]:
    """Read the proxy's log from now on, in a thread (a pipe nobody reads fills up and blocks the
    proxy at its next log line); returns the list the lines are added to."""
    assert proc.stderr is not None
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    return lines


async def watcher(url: str) -> None:
    """What ``voicerelay inspect`` does to the proxy: every session's state, and one session's
    events (the first it sees, selected), until killed."""
    import socketio

    sio = socketio.AsyncClient()
    selected: list[str] = []

    async def update(data: dict) -> None:  # type: ignore[type-arg]
        if not selected:
            selected.append(data["session_id"])
            await sio.emit("select", {"session_id": data["session_id"]}, namespace="/monitor")

    async def sessions(data: dict) -> None:  # type: ignore[type-arg]
        for state in data["sessions"]:
            await update(state)

    sio.on("session_update", update, namespace="/monitor")
    sio.on("sessions", sessions, namespace="/monitor")
    sio.on("session_detail", lambda data: None, namespace="/monitor")
    await sio.connect(url, namespaces=["/monitor"], transports=["websocket"])
    await sio.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="how many times direct and proxied each run (taking turns); the figure is the median")
    parser.add_argument("--record", action="store_true", help="the proxy records every session too")
    parser.add_argument("--no-lint", dest="lint", action="store_false",
                        help="the proxy without its live linter (voicerelay proxy --no-lint)")
    parser.add_argument("--no-monitor", dest="monitor", action="store_false",
                        help="the proxy without its monitor for inspect (voicerelay proxy --no-monitor)")
    parser.add_argument("--watch", action="store_true",
                        help="a monitor watches the proxy during the proxied run, as voicerelay inspect does")
    parser.add_argument("--upstream", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--watcher", metavar="URL", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.upstream:
        asyncio.run(upstream(options.upstream))
        return 0
    if options.watcher:
        asyncio.run(watcher(options.watcher))
        return 0
    if options.watch and not options.monitor:
        parser.error("--watch needs the monitor (leave out --no-monitor)")

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, __file__, "--upstream", str(port_file)])
        proxy = watching = None
        proxy_log: list[str] = []
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            direct_url = f"ws://127.0.0.1:{port_file.read_text()}/v1/realtime"
            proxy, proxy_url, monitor_url = start_proxy(
                direct_url, str(Path(tmp) / "rec") if options.record else None, options.lint, options.monitor)
            proxy_log = drain(proxy)
            if options.watch:
                watching = subprocess.Popen([sys.executable, __file__, "--watcher", str(monitor_url)])
            rounds: list[dict[str, Result]] = []
            proxy_cpu = 0.0
            for number in range(options.rounds):
                # direct and proxied take turns going first: a machine that gets busier or quieter
                # during the run weighs on both
                order = (("direct", direct_url), ("proxied", proxy_url))
                results = {}
                for label, url in order if number % 2 == 0 else order[::-1]:
                    before = cpu_seconds(proxy.pid)
                    results[label] = asyncio.run(run_mode(url + "?model=bench", options.sessions, options.seconds))
                    if label == "proxied":
                        proxy_cpu += cpu_seconds(proxy.pid) - before
                rounds.append(results)
        finally:
            for proc in (watching, proxy, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)

    problems = [f"{label}: {p}" for results in rounds for label, r in results.items() for p in r.problems[:3]]
    problems += [f"the proxy logged: {line.rstrip()}" for line in proxy_log
                 if re.search(r"\b(ERROR|CRITICAL)\b|^Traceback", line)][:3]
    if problems:
        print("FAILED: the timed work was wrong:\n  " + "\n  ".join(problems))
        return 1
    n = options.sessions * int(options.seconds * 1000 / FRAME_MS)
    print(f"voicerelay proxy overhead: {options.sessions} concurrent sessions, {options.seconds:g} s each, "
          f"a 20 ms append up and a 20 ms delta down every 20 ms per session"
          f"{', proxy recording every session' if options.record else ''}"
          f"; live lint {'on' if options.lint else 'off'}, monitor {'on' if options.monitor else 'off'}"
          f"{' and watched (as inspect does)' if options.watch else ''}; {options.rounds} rounds of direct and "
          f"proxied, taking turns; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other "
          f"work on the machine shows up as stalls of a process hop: compare runs at a load below the CPU count)")
    print(f"every event arrived, in order, unchanged: {n} up and {n} down per mode and round\n")
    print(f"{'one-way latency (ms)':<24}{'p50':>10}{'p99':>10}{'max':>10}")
    added: dict[str, list[tuple[float, float]]] = {"up": [], "down": []}
    for number, results in enumerate(rounds, 1):
        print(f"round {number}")
        rows = {}
        for direction in ("up", "down"):
            for label in ("direct", "proxied"):
                values = getattr(results[label], direction)
                rows[label, direction] = (pct(values, 50), pct(values, 99))
                print(f"  {direction + ' ' + label:<22}{rows[label, direction][0]:>10.3f}"
                      f"{rows[label, direction][1]:>10.3f}{max(values) * 1000:>10.2f}")
            added[direction].append((rows["proxied", direction][0] - rows["direct", direction][0],
                                     rows["proxied", direction][1] - rows["direct", direction][1]))
    print()
    worst = 0.0
    for direction in ("up", "down"):
        p50 = statistics.median(a for a, _ in added[direction])
        p99 = statistics.median(b for _, b in added[direction])
        worst = max(worst, p99)
        spread = ", ".join(f"{b:+.2f}" for _, b in added[direction])
        print(f"added by the proxy, {direction:<4}  p50 {p50:+.3f} ms   p99 {p99:+.3f} ms   (median of the rounds; "
              f"p99 per round: {spread})")
    events = 2 * n * options.rounds
    print(f"the proxy's CPU: {proxy_cpu:.2f} s for {events} events = {proxy_cpu / events * 1e6:.0f} µs per event "
          f"({proxy_cpu / options.seconds / options.rounds * 100:.0f} % of one core)")
    print(f"\ntarget: at most 1 ms added at p99 per event: {'met' if worst <= 1.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
