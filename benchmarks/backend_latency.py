"""Latency and capacity of the embedded Realtime backend, as a client on loopback sees them.

    python benchmarks/backend_latency.py            # about 2 minutes on 2 cores
    python benchmarks/backend_latency.py --fast     # turn latency with audio sent as fast as possible

The backend is a real :class:`~voicerelay.backend.server.BackendServer` (pace 10, warmed up,
like ``voicerelay backend``) in a child process of its own, so the load generator below does not
share its event loop or its GIL. The clients are raw ``websockets`` connections to
``server.url + "?model=gpt-realtime"`` with the backend's default session (server VAD: 500 ms
of silence ends a turn; no input transcription).

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
3. Concurrent real-time sessions: N = 1, 2, 4, ... sessions at once (starts staggered over
   0.5 s), each streaming the recordings in a loop, in real time, for ``--ramp-seconds``. N is
   held when no session's sending fell behind its wall-clock schedule by more than 100 ms, the
   p95 of every turn's speech_stopped -> first delta stayed under 1 s, and every utterance got a
   reply. The ramp stops at the first N that fails or at ``--max-sessions``.
   The "stop delay" column is how long after the client sent the audio that let the VAD decide
   (``audio_end_ms`` + 500 ms) the speech_stopped event arrived: the backend's own backlog,
   which the first-delta figure cannot show.

Targets printed beside the figures (not asserted): first delta p50 <= 250 ms; STT RTF <= 0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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


from common import read_recording, room_noise  # noqa: E402


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

    @classmethod
    def load(cls) -> Audio:
        clips = {stem: read_recording(stem) for stem in RECORDING_SENTENCES}
        pad = room_noise(PAD_MS)
        return cls(clips, {stem: append_messages(np.concatenate((pcm, pad))) for stem, pcm in clips.items()},
                   append_messages(room_noise(1000)))


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
    from voicerelay.backend.server import BackendServer

    engines = Engines()
    async with BackendServer("127.0.0.1", 0, pace=pace, engines=engines) as server:
        await asyncio.to_thread(engines.warm_up)
        conn.send(server.url)
        await asyncio.to_thread(conn.recv)  # any message (or the parent going away) ends it


class BackendProcess:
    """A warmed-up BackendServer in a child process; ``url`` once started."""

    def __init__(self, pace: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        # not daemonic: the backend runs its own speech-recognition worker processes
        self._process = context.Process(target=_serve, args=(child, pace), name="embedded backend", daemon=False)
        self.url = ""

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

    def __init__(self, url: str, audio: Audio, realtime: bool) -> None:
        self.url = url + "?model=gpt-realtime"
        self.audio = audio
        self.realtime = realtime
        self.turns: list[Turn] = []
        self.utterances = 0
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
                for stem in stems:
                    frames = self.audio.utterances[stem]
                    if self._frame_due(len(frames)) > stop_at:
                        break
                    await self._speak(stem, frames)
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

    async def _speak(self, stem: str, frames: list[str]) -> None:
        self._stem = stem
        self.utterances += 1
        answered = len([t for t in self.turns if t.status])
        self._reply_done.clear()
        for message in frames:
            await self._send(message)
        deadline = time.perf_counter() + REPLY_TIMEOUT
        if self.realtime:  # a microphone keeps sending: background noise until the reply is done
            while not self._reply_done.is_set() and time.perf_counter() < deadline:
                await self._send(self.audio.noise[self._noise_index % len(self.audio.noise)])
                self._noise_index += 1
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


async def ramp(url: str, audio: Audio, seconds: float, max_sessions: int) -> None:
    print(f"\n== concurrent real-time sessions ({seconds:g} s each step; held: send lag <= {MAX_LAG_MS:.0f} ms, "
          f"first delta p95 < {MAX_P95_MS:.0f} ms, every utterance answered) ==")
    print(f"{'N':>4} {'turns':>6} {'delta p50':>10} {'p95':>7} {'max':>7} {'send lag max':>13} "
          f"{'stop delay p95':>15} {'missed':>7}  verdict")
    stems = list(audio.clips)
    held, failed_at = 0, None
    n = 1
    while n <= max_sessions:
        begin = time.perf_counter() + 0.3  # let every connection open first
        clients, runs = [], []
        for i in range(n):
            start_at = begin + 0.5 * i / n
            order = [stems[(i + k) % len(stems)] for k in range(100)]
            client = ClientSession(url, audio, realtime=True)
            clients.append(client)
            runs.append(client.run(order, start_at=start_at, stop_at=start_at + seconds))
        results = await asyncio.gather(*runs, return_exceptions=True)
        crashed = [r for r in results if isinstance(r, BaseException)]
        latencies = [t.first_delta_ms for c in clients for t in c.turns if t.first_delta_ms is not None]
        lag = max(c.max_lag_ms for c in clients)
        delays = [d for c in clients for d in c.stop_delays_ms()]
        missed = sum(len(c.missed) for c in clients)
        p95 = pct(latencies, 95)
        reasons = []
        if crashed:
            reasons.append(f"{len(crashed)} sessions failed: {crashed[0]!r}")
        if lag > MAX_LAG_MS:
            reasons.append("fell behind")
        if not latencies or p95 >= MAX_P95_MS:
            reasons.append("slow replies")
        if missed:
            reasons.append("unanswered turns")
        ok = not reasons
        print(f"{n:>4} {len(latencies):>6} {pct(latencies, 50):>7.0f} ms {p95:>7.0f} "
              f"{max(latencies, default=0):>7.0f} {lag:>10.0f} ms {pct(delays, 95):>12.0f} ms {missed:>7}  "
              + ("held" if ok else "NOT held: " + ", ".join(reasons)))
        if not ok:
            failed_at = n
            break
        held = n
        n *= 2
    if failed_at is None:
        print(f"concurrent real-time sessions held: {held} (every step passed; raise --max-sessions to go further)")
    else:
        print(f"concurrent real-time sessions held: {held} (failed at {failed_at})")


# ------------------------------------------------------------------------------------ main


async def network_phases(url: str, audio: Audio, args: argparse.Namespace) -> None:
    await turn_latency(url, audio, args.reps, realtime=not args.fast)
    if args.max_sessions > 0:
        await ramp(url, audio, args.ramp_seconds, args.max_sessions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="times each recording is spoken for the latency figure")
    parser.add_argument("--fast", action="store_true", help="send the latency phase's audio as fast as possible")
    parser.add_argument("--pace", type=float, default=10.0, help="the backend's reply pace (times real time)")
    parser.add_argument("--engine-repeats", type=int, default=3, help="timed calls per text for the STT/TTS RTF")
    parser.add_argument("--ramp-seconds", type=float, default=8.0,
                        help="how long each ramp step streams (seconds)")
    parser.add_argument("--max-sessions", type=int, default=32,
                        help="largest N of the concurrency ramp (0 skips the ramp)")
    args = parser.parse_args()

    audio = Audio.load()
    started = time.perf_counter()
    with BackendProcess(args.pace) as backend:
        print(f"embedded backend (pace {args.pace:g}) in a child process at {backend.url}, "
              f"ready in {time.perf_counter() - started:.1f} s")
        engine_speed(audio, args.engine_repeats)
        asyncio.run(network_phases(backend.url, audio, args))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
