"""Latency and capacity of the embedded Realtime backend, as a client on loopback sees them.

    python benchmarks/backend_latency.py            # about 3 minutes on 2 cores
    python benchmarks/backend_latency.py --fast     # turn latency with audio sent as fast as possible
    python benchmarks/backend_latency.py --only capacity              # continuous speech ceiling
    python benchmarks/backend_latency.py --only capacity --duty 0.2   # speech 20 % of the time

The backend is what ``voicerelay backend`` runs (:func:`voicerelay.backend.server.run`: a
:class:`~voicerelay.backend.server.BackendServer`, pace 10, warmed up) in a child process of its
own, so the load generator below does not share its event loop or its GIL. The clients are raw
``websockets`` connections to ``server.url + "?model=gpt-realtime"`` with the backend's default
session (server VAD: 500 ms of silence ends a turn; no input transcription).

1. Speech engines, in this process, warm: STT real-time factor (``Engines.transcribe`` wall time
   / audio duration) on each recording, and TTS real-time factor (``Engines.synthesize`` wall
   time / audio duration) on the responder's intent replies. Each is timed ``--engine-repeats``
   times; p50 and max of the single calls.
2. Turn latency: one session streams each recording followed by 800 ms of the recordings' own
   background noise, ``--reps`` times over, in 20 ms appends paced by the wall clock (``--fast``:
   back to back), and keeps streaming noise until the reply is done. Latency is the time from
   receiving ``input_audio_buffer.speech_stopped`` to receiving the first
   ``response.output_audio.delta``: the backend's transcription, reply and synthesis, plus the
   loopback hops.
3. Concurrent real-time sessions (``--only capacity`` runs this section alone): N sessions at
   once, each streaming the recordings in a loop, in real time, for ``--ramp-seconds``, always
   sending audio as a microphone does (the recordings' noise between utterances). With
   ``--duty 1`` (the default: continuous speech) a session speaks its next recording as soon as
   the reply to the last one is done, starts staggered over 0.5 s. With ``--duty D`` below 1,
   each utterance starts a cycle 1/D times as long as its speech (the span the backend's VAD hears
   as speech, about 1 s of each 1.7-2.3 s recording): the recording, the reply, then noise to
   the end of the cycle; each session's first cycle starts at a random point of it (noise until
   then), so the turns of N sessions are spread over time as real callers' are. The "speech"
   column is the fraction of the audio sent that was speech (continuous speech: about 40 %).
   N is held when no session's sending fell behind its wall-clock schedule by more than 100 ms,
   the p95 of every turn's speech_stopped -> first delta stayed under 1 s, and every utterance
   got a reply. N goes up the ``--steps`` (1, 2, 4, ... by default) to the first N that fails,
   then bisects between the last N held and it down to ``--resolution`` sessions: the ceiling
   printed is within that of the real one.
   The "stop delay" column is how long after the client sent the audio that let the VAD decide
   (``audio_end_ms`` + 500 ms) the speech_stopped event arrived: the backend's own backlog,
   which the first-delta figure cannot show.
   The clients run in ``--client-procs`` processes of their own (by default one per 32
   sessions), so that the load generator is not what gives out first. Each step prints the CPU
   over its streaming window (100 % = one core) of the backend process ("loop": its main thread,
   which runs the event loop and every session's per-frame work), of its recognition worker
   processes ("stt") and of the client processes, and the cores that other work on the machine
   kept busy meanwhile ("other": /proc/stat less our processes). The machine may be shared: before
   each step the ramp waits up to ``--quiet-wait`` seconds for other work to drop below
   ``--foreign-limit`` cores, and a step that fails while other work used more than that is
   marked "[other load on the machine]" and run again (``--retries``). The load average is printed
   at the start and the end.

Measured on 2 cores, with ``--foreign-limit 1.0 --quiet-wait 10 --retries 1``, nothing else
running (2026-12-06), after the domain decoders dropped the phone-loop lookahead and the backend
moved to orjson: continuous speech 56 sessions held (``--steps 48,56,64,72 --max-sessions 80
--resolution 4``; 60 failed: slow replies), ``--duty 0.2 --steps 88,96,104,112 --resolution 4``:
108 (112 failed: slow replies; at 108 recognition workers 113 %, loop 41 %, clients 40 %).
Earlier, while the other work on the machine was idle (under 0.05 cores busy): continuous speech 32 sessions held
(``--steps 16,24,32,40,48``; 34 failed once other work took 0.55 cores), ``--duty 0.2 --steps
72,80,96 --resolution 8``: 88 (96 failed with both cores full: recognition workers 107 %, the
backend's loop 47 %, clients 41 %). With other work keeping 0.3-0.9 cores busy: continuous 28,
``--duty 0.2``: 32-52. Before recognition started early, without permessage-deflate and with a
thread held per turn waiting for recognition, under that load: continuous 12-20, 20 %: 12-24.
Recognition cost about 85 ms of CPU per turn then, about 70 now (pocketsphinx, 81 % of it in the
acoustic model's scoring): it is what gives out first.

Targets printed beside the figures (not asserted): first delta p50 <= 250 ms; STT RTF <= 0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
try:
    import voicerelay  # noqa: F401
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from voicerelay.backend import responder  # noqa: E402
from voicerelay.backend.engines import Engines  # noqa: E402
from voicerelay.backend.phrases import RECORDING_SENTENCES  # noqa: E402

RATE = 24_000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000
PAD_MS = 800
SILENCE_MS = 500  # the backend's default silence_duration_ms
REPLY_TIMEOUT = 5.0  # seconds of waiting (streaming noise) for a reply before counting it missed
TARGET_FIRST_DELTA_MS = 250.0
TARGET_STT_RTF = 0.1
MAX_LAG_MS = 100.0
MAX_P95_MS = 1000.0


# ------------------------------------------------------------------------------------ audio


from common import (  # noqa: E402
    NCPU,
    cpu_seconds_or_zero,
    descendants,
    foreign_cores,
    loadavg,
    machine_ticks,
    ramp,
    read_recording,
    room_noise,
    wait_quiet,
)


def append_messages(pcm: np.ndarray) -> list[str]:
    """``pcm`` as ready-to-send ``input_audio_buffer.append`` messages of 20 ms each."""
    pcm = np.concatenate((pcm, np.zeros(-pcm.size % FRAME_SAMPLES, dtype=np.int16)))
    return [json.dumps({"type": "input_audio_buffer.append",
                        "audio": base64.b64encode(pcm[i:i + FRAME_SAMPLES].tobytes()).decode()})
            for i in range(0, pcm.size, FRAME_SAMPLES)]


@dataclasses.dataclass(frozen=True)
class Audio:
    clips: dict[str, np.ndarray]
    utterances: dict[str, list[str]]  # stem -> the recording + 800 ms of noise, as append messages
    noise: list[str]  # 1 s of noise, as append messages, sent while waiting for a reply
    speech_frames: dict[str, int]  # stem -> 20 ms frames of speech in it, as the backend's VAD hears them

    @classmethod
    def load(cls) -> Audio:
        clips = {stem: read_recording(stem) for stem in RECORDING_SENTENCES}
        pad = room_noise(PAD_MS)
        return cls(clips, {stem: append_messages(np.concatenate((pcm, pad))) for stem, pcm in clips.items()},
                   append_messages(room_noise(1000)),
                   {stem: speech_ms(np.concatenate((pcm, pad))) // FRAME_MS for stem, pcm in clips.items()})


def speech_ms(pcm: np.ndarray) -> int:
    """The span of speech in ``pcm``, first voiced frame to last, as the backend's VAD (default
    settings, no prefix padding) hears it: the recordings' own lead and trail of noise are not speech."""
    from voicerelay.backend.vad import VoiceActivityDetector

    events = VoiceActivityDetector(prefix_padding_ms=0).feed(pcm)
    start = next(e.ms for e in events if e.kind == "speech_started")
    end = next(e.ms for e in events if e.kind == "speech_stopped")
    return end - start


# ------------------------------------------------------------------------------------ statistics


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "no samples"
    return (f"p50 {fmt.format(pct(values, 50))}  p95 {fmt.format(pct(values, 95))}  "
            f"max {fmt.format(max(values))}  (n={len(values)})")


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


# ------------------------------------------------------------------------------------ the backend process


def _serve(conn: Any, pace: float) -> None:
    asyncio.run(_serve_async(conn, pace))


async def _serve_async(conn: Any, pace: float) -> None:
    """``voicerelay backend``'s own loop (:func:`voicerelay.backend.server.run`) until the parent says stop."""
    from voicerelay.backend.server import run

    serving = asyncio.ensure_future(run("127.0.0.1", 0, pace, 3600.0, ready=lambda server: conn.send(server.url)))
    told = asyncio.ensure_future(asyncio.to_thread(conn.recv))  # any message (or the parent going away) ends it
    await asyncio.wait({serving, told}, return_when=asyncio.FIRST_COMPLETED)
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)


class BackendProcess:
    """A warmed-up BackendServer in a child process; ``url`` once started."""

    def __init__(self, pace: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        # not daemonic: the backend runs its own speech-recognition worker processes
        self._process = context.Process(target=_serve, args=(child, pace), name="embedded backend", daemon=False)
        self.url = ""

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def __enter__(self) -> BackendProcess:
        self._process.start()
        if not self._conn.poll(60):
            raise RuntimeError("the backend process did not start within 60 s")
        self.url = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


# ------------------------------------------------------------------------------------ one client session


@dataclasses.dataclass
class Turn:
    stem: str
    stopped_at: float
    audio_end_ms: int
    first_delta_at: float | None = None
    reply: str = ""
    status: str = ""

    @property
    def first_delta_ms(self) -> float | None:
        return None if self.first_delta_at is None else (self.first_delta_at - self.stopped_at) * 1000


class ClientSession:
    """One raw-websockets Realtime client that speaks the recordings and times the replies."""

    def __init__(self, url: str, audio: Audio, realtime: bool, duty: float = 1.0, lead_frames: int = 0) -> None:
        """``duty`` below 1 (real time only): after each utterance and its reply, noise until the cycle
        that the utterance started is its speech / ``duty`` long; ``lead_frames``: noise frames sent
        before the first utterance."""
        self.url = url + "?model=gpt-realtime"
        self.audio = audio
        self.realtime = realtime
        self.duty = duty
        self.lead_frames = lead_frames
        self.turns: list[Turn] = []
        self.utterances = 0
        self.speech_frames = 0  # 20 ms frames of speech sent (the VAD's span of each recording)
        self.missed: list[str] = []
        self.errors: list[str] = []
        self.max_lag_ms = 0.0
        self.sent_at: list[float] = []  # send time of each 20 ms frame
        self._stem = ""
        self._t0 = 0.0
        self._noise_index = 0
        self._reply_done = asyncio.Event()
        self._ws: ClientConnection | None = None

    async def run(self, stems: Sequence[str], start_at: float = 0.0, stop_at: float = float("inf")) -> None:
        """Speak ``stems`` in order; with ``stop_at``, no utterance starts that would end after it."""
        delay = start_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with connect(self.url, max_size=None, ping_interval=None) as ws:
            self._ws = ws
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created", created
            reader = asyncio.create_task(self._read(ws))
            try:
                self._t0 = time.perf_counter()
                while len(self.sent_at) < self.lead_frames and self._frame_due() < stop_at:
                    await self._send_noise()
                for stem in stems:
                    frames = self.audio.utterances[stem]
                    if self._frame_due(len(frames)) > stop_at:
                        break
                    cycle_start = len(self.sent_at)
                    await self._speak(stem, frames)
                    if self.realtime and self.duty < 1.0:  # the rest of the cycle: no speech, the mic still sends
                        cycle = round(self.audio.speech_frames[stem] / self.duty)
                        while len(self.sent_at) - cycle_start < cycle and self._frame_due() < stop_at:
                            await self._send_noise()
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    def _frame_due(self, ahead: int = 0) -> float:
        """When frame ``len(sent_at) + ahead`` is due on the real-time schedule."""
        return self._t0 + (len(self.sent_at) + ahead) * FRAME_MS / 1000

    async def _send(self, message: str) -> None:
        assert self._ws is not None
        if self.realtime:
            due = self._frame_due()
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
        await self._ws.send(message)
        now = time.perf_counter()
        if self.realtime:
            self.max_lag_ms = max(self.max_lag_ms, (now - self._frame_due()) * 1000)
        self.sent_at.append(now)

    async def _send_noise(self) -> None:
        await self._send(self.audio.noise[self._noise_index % len(self.audio.noise)])
        self._noise_index += 1

    async def _speak(self, stem: str, frames: list[str]) -> None:
        self._stem = stem
        self.utterances += 1
        self.speech_frames += self.audio.speech_frames[stem]
        answered = len([t for t in self.turns if t.status])
        self._reply_done.clear()
        for message in frames:
            await self._send(message)
        deadline = time.perf_counter() + REPLY_TIMEOUT
        if self.realtime:  # a microphone keeps sending: background noise until the reply is done
            while not self._reply_done.is_set() and time.perf_counter() < deadline:
                await self._send_noise()
        else:
            try:
                await asyncio.wait_for(self._reply_done.wait(), REPLY_TIMEOUT)
            except TimeoutError:
                pass
        if len([t for t in self.turns if t.status]) == answered:
            self.missed.append(stem)

    async def _read(self, ws: ClientConnection) -> None:
        async for message in ws:
            now = time.perf_counter()
            event = json.loads(message)
            kind = event["type"]
            turn = self.turns[-1] if self.turns else None
            if kind == "response.output_audio.delta":
                if turn is not None and turn.first_delta_at is None:
                    turn.first_delta_at = now
            elif kind == "input_audio_buffer.speech_stopped":
                self.turns.append(Turn(self._stem, now, int(event["audio_end_ms"])))
            elif kind == "response.output_audio_transcript.done" and turn is not None:
                turn.reply = event["transcript"]
            elif kind == "response.done":
                if turn is not None:
                    turn.status = event["response"]["status"]
                self._reply_done.set()
            elif kind == "error":
                self.errors.append(f"{event['error'].get('code')}: {event['error'].get('message')}")

    def result(self) -> dict[str, Any]:
        """What the ramp needs of this session, picklable (it comes back from a client process)."""
        return {"latencies": [t.first_delta_ms for t in self.turns if t.first_delta_ms is not None],
                "max_lag_ms": self.max_lag_ms, "stop_delays": self.stop_delays_ms(), "missed": len(self.missed),
                "utterances": self.utterances, "errors": self.errors[:3],
                "speech_frames": self.speech_frames, "frames": len(self.sent_at),
                "expected": sum(t.reply == expected_reply(t.stem) for t in self.turns), "turns": len(self.turns)}

    def stop_delays_ms(self) -> list[float]:
        """speech_stopped arrival minus the send time of the frame that let the VAD decide."""
        delays = []
        for turn in self.turns:
            index = (turn.audio_end_ms + SILENCE_MS) // FRAME_MS - 1
            if 0 <= index < len(self.sent_at):
                delays.append((turn.stopped_at - self.sent_at[index]) * 1000)
        return delays


def expected_reply(stem: str) -> str:
    return responder.respond(RECORDING_SENTENCES[stem]).text


# ------------------------------------------------------------------------------------ phases


def engine_speed(audio: Audio, repeats: int) -> None:
    print("== speech engines (in this process, warm) ==")
    engines = Engines()
    start = time.perf_counter()
    engines.warm_up()
    print(f"warm-up (load libespeak-ng and pocketsphinx): {(time.perf_counter() - start) * 1000:.0f} ms")

    stt_rtf: list[float] = []
    right = 0
    for stem, pcm in audio.clips.items():
        for _ in range(repeats):
            start = time.perf_counter()
            text = engines.transcribe(pcm)
            stt_rtf.append((time.perf_counter() - start) / (pcm.size / RATE))
            right += text == RECORDING_SENTENCES[stem]
    p50 = pct(stt_rtf, 50)
    print(f"STT real-time factor, {len(audio.clips)} recordings x {repeats}: p50 {p50:.3f}  max {max(stt_rtf):.3f}"
          f"   target <= {TARGET_STT_RTF}: {verdict(p50 <= TARGET_STT_RTF)}   ({right}/{len(stt_rtf)} exact)")

    tts_rtf: list[float] = []
    seconds = 0.0
    for _, reply in responder.INTENTS:
        for _ in range(repeats):
            start = time.perf_counter()
            pcm = engines.synthesize(reply, "alloy")
            tts_rtf.append((time.perf_counter() - start) / (pcm.size / RATE))
        seconds += pcm.size / RATE
    print(f"TTS real-time factor, {len(responder.INTENTS)} intent replies ({seconds:.1f} s) x {repeats}: "
          f"p50 {pct(tts_rtf, 50):.4f}  max {max(tts_rtf):.4f}")


async def turn_latency(url: str, audio: Audio, reps: int, realtime: bool) -> None:
    mode = "real time, 20 ms appends" if realtime else "--fast: appends back to back"
    print(f"\n== turn latency: speech_stopped -> first audio delta ({mode}) ==")
    stems = [stem for _ in range(reps) for stem in audio.clips]
    client = ClientSession(url, audio, realtime)
    start = time.perf_counter()
    await client.run(stems)
    wall = time.perf_counter() - start
    latencies = [t.first_delta_ms for t in client.turns if t.first_delta_ms is not None]
    by_stem: dict[str, list[float]] = {}
    for turn in client.turns:
        if turn.first_delta_ms is not None:
            by_stem.setdefault(turn.stem, []).append(turn.first_delta_ms)
    for stem, values in by_stem.items():
        print(f"  {stem:<18} {len(values)} turns  p50 {statistics.median(values):6.0f} ms  max {max(values):6.0f} ms")
    expected = sum(t.reply == expected_reply(t.stem) for t in client.turns)
    print(f"first delta (ms): {summary(latencies)}   target p50 <= {TARGET_FIRST_DELTA_MS:.0f} ms: "
          f"{verdict(bool(latencies) and pct(latencies, 50) <= TARGET_FIRST_DELTA_MS)}")
    print(f"turns: {len(client.turns)} for {client.utterances} utterances, {expected} with the expected reply, "
          f"{len(client.missed)} unanswered; {wall:.1f} s wall"
          + (f"; send lag max {client.max_lag_ms:.0f} ms" if realtime else ""))
    for error in client.errors[:5]:
        print(f"  server error: {error}")


def session_plans(n: int, audio: Audio, begin: float, seconds: float, duty: float) -> list[dict[str, Any]]:
    """What each of ``n`` sessions does in one ramp step (see the module doc, section 3)."""
    stems = list(audio.clips)
    rng = np.random.default_rng(n)
    mean_cycle = statistics.mean(audio.speech_frames.values()) / duty if duty < 1.0 else 0.0
    plans = []
    for i in range(n):
        start_at = begin + 0.5 * i / n
        plans.append({"start_at": start_at, "stop_at": start_at + seconds, "duty": duty,
                      "order": [stems[(i + k) % len(stems)] for k in range(1000)],
                      "lead_frames": int(rng.uniform(0, mean_cycle))})
    return plans


async def run_plans(url: str, audio: Audio, plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run sessions concurrently in this process; one result (or ``{"crashed": ...}``) each."""
    clients = [ClientSession(url, audio, realtime=True, duty=p["duty"], lead_frames=p["lead_frames"])
               for p in plans]
    outcomes = await asyncio.gather(*(c.run(p["order"], start_at=p["start_at"], stop_at=p["stop_at"])
                                      for c, p in zip(clients, plans, strict=True)), return_exceptions=True)
    return [{**c.result(), "crashed": repr(o) if isinstance(o, BaseException) else None}
            for c, o in zip(clients, outcomes, strict=True)]


def _client_main(conn: Any, url: str) -> None:
    """A client process: runs each list of session plans it is sent, sends back their results."""
    import gc

    audio = Audio.load()
    gc.collect()
    gc.freeze()  # (as the backend does: a full collection here would stall every session's sending at once)
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    conn.send("ready")
    while True:
        plans = conn.recv()
        if plans is None:
            return
        conn.send(asyncio.run(run_plans(url, audio, plans)))


class ClientProcesses:
    """Client processes for the ramp, started as a step needs them and kept for the next steps."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[tuple[Any, Any]] = []  # (process, connection)
        self._busy = 0

    def start(self, procs: int) -> None:
        """Have at least ``procs`` client processes, ready."""
        while len(self._procs) < procs:
            conn, child = self._context.Pipe()
            process = self._context.Process(target=_client_main, args=(child, self.url), daemon=True,
                                            name=f"clients {len(self._procs)}")
            process.start()
            if not conn.poll(60) or conn.recv() != "ready":
                raise RuntimeError("a client process did not start within 60 s")
            self._procs.append((process, conn))

    def send(self, plans: list[dict[str, Any]], procs: int) -> None:
        """Have the sessions' plans run, spread over the first ``procs`` processes."""
        self.start(procs)
        self._busy = procs
        for k, (_, conn) in enumerate(self._procs[:procs]):
            conn.send(plans[k::procs])

    def collect(self) -> list[dict[str, Any]]:
        """The results of the plans sent, once every session has finished."""
        return [r for _, conn in self._procs[:self._busy] for r in conn.recv()]

    def pids(self) -> list[int]:
        return [process.pid for process, _ in self._procs]

    def close(self) -> None:
        for process, conn in self._procs:
            with contextlib.suppress(OSError):
                conn.send(None)
            process.join(5)
            if process.is_alive():
                process.terminate()


class CpuMeter:
    """CPU seconds of the backend (its main thread, the rest of it, its child processes), of the
    client processes, and the machine's busy ticks: :meth:`sample` before and after a step."""

    def __init__(self, backend_pid: int, clients: ClientProcesses) -> None:
        self.backend_pid = backend_pid
        self.clients = clients

    def sample(self) -> dict[str, Any]:
        children = descendants(self.backend_pid)
        return {"t": time.perf_counter(), "machine": machine_ticks(),
                "backend": cpu_seconds_or_zero(self.backend_pid),
                "loop": cpu_seconds_or_zero(self.backend_pid, self.backend_pid),
                "stt": sum(cpu_seconds_or_zero(pid) for pid in children),
                "clients": sum(cpu_seconds_or_zero(pid) for pid in self.clients.pids()),
                "me": time.process_time()}

    @staticmethod
    def between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        """Cores (1.0 = one core, fully) each used between two samples; ``other``: the rest of the machine."""
        wall = max(1e-9, b["t"] - a["t"])
        used = {k: (b[k] - a[k]) / wall for k in ("backend", "loop", "stt", "clients", "me")}
        # (a child process that ended within the step takes its CPU time with it: stt is then low)
        ours = used["backend"] + used["stt"] + used["clients"] + used["me"]
        return {**used, "other": foreign_cores(ours, a["machine"], b["machine"])}


def client_procs_for(n: int, args: argparse.Namespace) -> int:
    return args.client_procs or max(1, -(-n // 32))


def capacity(url: str, backend_pid: int, audio: Audio, args: argparse.Namespace) -> int:
    """Section 3: the ramp. Returns the largest N held."""
    seconds = args.ramp_seconds
    duty = args.duty
    load = ("continuous speech" if duty >= 1.0 else
            f"speech {duty:.0%} of the time: each recording, then noise until the cycle is {1 / duty:g} times "
            "its speech")
    print(f"\n== concurrent real-time sessions, {load} ({seconds:g} s each step; held: send lag <= "
          f"{MAX_LAG_MS:.0f} ms, first delta p95 < {MAX_P95_MS:.0f} ms, every utterance answered) ==")
    print(f"load average {loadavg()} at the start; {NCPU} CPUs")
    print(f"{'N':>4} {'turns':>6} {'speech':>6} {'first delta':>20} {'send':>5} {'stop':>6} {'missed':>6} "
          f"{'backend':>5} {'loop':>5} {'stt':>5} {'client':>6} {'other':>5}")
    print(f"{'':>4} {'/s':>6} {'%':>6} {'p50':>6} {'p95':>6} {'max':>6} {'lag':>5} {'delay':>6} {'turns':>6} "
          f"{'%':>5} {'%':>5} {'%':>5} {'CPU %':>6} {'cores':>5}  verdict")
    clients = ClientProcesses(url)
    meter = CpuMeter(backend_pid, clients)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else \
        [2 ** k for k in range(16) if 2 ** k <= args.max_sessions]
    plan = ramp([n for n in steps if n <= args.max_sessions], args.resolution)
    verdict: bool | None = None
    failed_any = False
    try:
        while True:
            try:
                n = plan.send(verdict)
            except StopIteration as stop:
                held = stop.value
                break
            procs = client_procs_for(n, args)
            clients.start(procs)
            for attempt in range(args.retries + 1):
                wait_quiet(args.foreign_limit, args.quiet_wait)
                begin = time.perf_counter() + 1.0 + 0.01 * n  # every process has its plans
                plans = session_plans(n, audio, begin, seconds, duty)
                clients.send(plans, procs)
                # CPU over the streaming window: from when the last session started to shortly before the first stops
                time.sleep(max(0.0, begin + 1.0 - time.perf_counter()))
                before = meter.sample()
                time.sleep(max(0.1, begin + seconds - 0.5 - time.perf_counter()))
                cores = CpuMeter.between(before, meter.sample())
                disturbed = cores["other"] > args.foreign_limit
                verdict = report_step(n, seconds, clients.collect(), cores, disturbed, attempt)
                if verdict or not disturbed:
                    break
            failed_any = failed_any or not verdict
    finally:
        clients.close()
    failed = f"to within {args.resolution}" if failed_any else "every step passed; raise --max-sessions to go further"
    print(f"concurrent real-time sessions held ({load}): {held} ({failed}); load average {loadavg()} at the end")
    return held


def report_step(n: int, seconds: float, results: list[dict[str, Any]], cores: dict[str, float], disturbed: bool,
                attempt: int) -> bool:
    crashed = [r["crashed"] for r in results if r["crashed"]]
    latencies = [v for r in results for v in r["latencies"]]
    delays = [v for r in results for v in r["stop_delays"]]
    lag = max((r["max_lag_ms"] for r in results), default=0.0)
    missed = sum(r["missed"] for r in results)
    speech = sum(r["speech_frames"] for r in results) / max(1, sum(r["frames"] for r in results))
    p95 = pct(latencies, 95)
    reasons = []
    if crashed:
        reasons.append(f"{len(crashed)} sessions failed: {crashed[0]}")
    if lag > MAX_LAG_MS:
        reasons.append("fell behind")
    if not latencies or p95 >= MAX_P95_MS:
        reasons.append("slow replies")
    if missed:
        reasons.append("unanswered turns")
    ok = not reasons
    errors = [e for r in results for e in r["errors"]]
    verdict = "held" if ok else "NOT held: " + ", ".join(reasons)
    print(f"{n:>4} {len(latencies) / seconds:>6.1f} {speech * 100:>6.0f} {pct(latencies, 50):>6.0f} {p95:>6.0f} "
          f"{max(latencies, default=0):>6.0f} {lag:>5.0f} {pct(delays, 95):>6.0f} {missed:>6} "
          f"{cores['backend'] * 100:>5.0f} {cores['loop'] * 100:>5.0f} {cores['stt'] * 100:>5.0f} "
          f"{cores['clients'] * 100:>6.0f} {cores['other']:>5.2f}  " + verdict
          + (f" ({len(errors)} error events, e.g. {errors[0]})" if errors else "")
          + (" [other load on the machine]" if disturbed and not ok else "")
          + (f" (retry {attempt})" if attempt else ""), flush=True)
    return ok


# ------------------------------------------------------------------------------------ main


SECTIONS = ("engines", "latency", "capacity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (engines, latency, capacity); may be given more than once")
    parser.add_argument("--reps", type=int, default=5, help="times each recording is spoken for the latency figure")
    parser.add_argument("--fast", action="store_true", help="send the latency phase's audio as fast as possible")
    parser.add_argument("--pace", type=float, default=10.0, help="the backend's reply pace (times real time)")
    parser.add_argument("--engine-repeats", type=int, default=3, help="timed calls per text for the STT/TTS RTF")
    parser.add_argument("--duty", type=float, default=1.0,
                        help="capacity: fraction of the time each session speaks (1: continuous speech)")
    parser.add_argument("--ramp-seconds", type=float, default=None,
                        help="how long each ramp step streams (seconds; default 8, or 30 with --duty below 1)")
    parser.add_argument("--max-sessions", type=int, default=256,
                        help="largest N of the concurrency ramp (0 skips the ramp)")
    parser.add_argument("--steps", default="",
                        help="the ramp's N before it bisects, comma-separated (default: 1, 2, 4, ... up to "
                             "--max-sessions)")
    parser.add_argument("--resolution", type=int, default=2,
                        help="bisect between the last N held and the first failing one down to this many sessions")
    parser.add_argument("--foreign-limit", type=float, default=0.5,
                        help="a step that fails while other work kept more cores than this busy is run again")
    parser.add_argument("--retries", type=int, default=2, help="how often such a step is run again")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each step, wait up to this many seconds for other work to drop below the limit")
    parser.add_argument("--client-procs", type=int, default=0,
                        help="client processes for the ramp (default: one per 32 sessions)")
    args = parser.parse_args()
    if not 0.0 < args.duty <= 1.0:
        parser.error("--duty must be in (0, 1]")
    if args.ramp_seconds is None:
        args.ramp_seconds = 8.0 if args.duty >= 1.0 else 30.0
    sections = set(args.only or SECTIONS)
    if args.max_sessions <= 0:
        sections.discard("capacity")

    audio = Audio.load()
    started = time.perf_counter()
    print(f"load average {loadavg()}; {NCPU} CPUs")
    with BackendProcess(args.pace) as backend:
        print(f"embedded backend (pace {args.pace:g}) in a child process (pid {backend.pid}) at {backend.url}, "
              f"ready in {time.perf_counter() - started:.1f} s", flush=True)
        if "engines" in sections:
            engine_speed(audio, args.engine_repeats)
        if "latency" in sections:
            asyncio.run(turn_latency(backend.url, audio, args.reps, realtime=not args.fast))
        if "capacity" in sections:
            capacity(backend.url, backend.pid, audio, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {loadavg()}")


if __name__ == "__main__":
    main()
