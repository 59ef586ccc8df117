"""How fast ``voicerelay replay --speed 0`` runs, for one file and for many, and what the relay
itself costs per audio chunk. Every replay's figure counts only if the replay was right: each row
says whether every utterance got its own completed, spoken answer and the user transcripts were
the input's sentences, in order; the summaries count the right runs only, and say so.

    python benchmarks/replay_speed.py             # about 40 s on 2 cores
    python benchmarks/replay_speed.py --runs 10 --files 8 --rounds 3 --frames 50000
    python benchmarks/replay_speed.py --runs 5 --files 0 --frames 0   # one file only

1. One file. The input is every recording, ``--repeat`` times over (2: 10 utterances, 28.4 s),
   with 1 s of the recordings' own background noise between utterances, written to a temporary
   WAV. It is replayed ``--runs`` times in this process with :func:`voicerelay.replay.replay` at
   speed 0 and ``backend=None``, which (OPENAI_API_KEY is removed from this process's
   environment) starts the in-process embedded backend for each run, with pace 0. Speed is input
   audio seconds per wall second of the whole ``replay()`` call, the embedded backend's start and
   stop included. The first run is cold (it loads pocketsphinx and libespeak-ng); later runs reuse
   what the process has loaded, so they are the figure without loading the engines. Each row
   also splits the wall time (the ``Relay`` that ``replay`` builds is swapped, in this process
   only, for a subclass that notes when ``wait_ready`` returns, when audio goes in and when
   ``stop`` is called): CPU (this process's CPU time over the call, all its threads: a figure
   less moved by other work on the machine), start-up (backend bound, connected,
   ``session.update`` answered), streaming (ready -> last audio sent, the closing silence
   included), settle (last audio -> replies and transcripts settled) and close. "STT" is the
   wall time the backend spent in ``Engines.transcribe``/``transcribe_async`` during the run (the
   methods are wrapped to add it up). "from ready" is the speed without the start-up. "others" is
   how many cores other work kept busy meanwhile (the machine's busy time less this process's):
   the summary gives the warm runs' CPU, and their speed over the runs during which other work
   kept under ``QUIET_CORES`` busy, or says that none did. Then the same input once through the command line
   (``python -m voicerelay replay FILE --speed 0``, a new process): what a user waits for,
   Python's start and the imports included.
2. Many files (``--files N``, 0 skips it): N WAVs, each the five recordings once in a rotated
   order (1 s of noise between), replayed by the command line with ``--jobs 1`` and with
   ``--jobs 2``, alternating, ``--rounds`` times each; wall time of the whole command, median.
   Each command's ``--json`` report is checked as above, file by file.
3. The relay's own cost per 20 ms chunk.
   - sans-I/O: ``RealtimeSession.audio(frame)`` alone, and its parts (base64, the
     ``json.dumps`` the sender does, and the zlib deflate that permessage-deflate does),
     timed with ``time.perf_counter`` over ``--calls`` calls each;
   - end to end: ``Relay.send_audio(frame)`` for ``--frames`` frames as fast as they are taken,
     to an upstream that only reads (a ``websockets`` server on loopback in a child process
     that sends ``session.created``, answers ``session.update`` with ``session.updated`` and
     drains everything else). Wall = first frame handed to the relay -> last append received by
     the upstream (same monotonic clock in both processes); CPU = this process's CPU time over
     the same frames, the relay alone. Run with permessage-deflate (what ``websockets`` and the
     embedded backend negotiate by default) and with the upstream declining it.

Target printed beside the figure (not asserted): one file at speed 0 at least 50x real time.

Measured on 2 cores with nothing else running (2026-12-06, ``--runs 6 --files 8 --rounds 2
--frames 0``): one file, warm, p50 42.9x (34x before the domain decoders dropped the phone-loop
lookahead; about 21x when the issue was filed), recognition 82 % of the wall time (57 ms a
turn, one utterance at a time); through the command line 24.8x; 8 files ``--jobs 1`` 3.18 s,
``--jobs 2`` 2.20 s (1.45x faster, 50x real time together). The target is not met for one file:
its turns are answered one after another, so recognition's ~57 ms a turn bounds it.

Again on 2026-12-07, same command, quiet (load 0.8), after recognition's cheaper first pass and the
acoustic model adapted to espeak-ng (``stt.py``): one file, warm, p50 45.6x (best 47.2x),
recognition 65 % of the wall time (44 ms a turn); through the command line 21.7x; 8 files
``--jobs 1`` 3.60 s, ``--jobs 2`` 3.16 s (1.14x). Still short of 50x for one file; the 8-file
figures moved the wrong way against the day before (why: "Why ``--jobs 2`` gained so little" below).

Where the time went, and what was done about it (2026-12-07, 2 cores with 1-1.6 of them busy with
other work throughout, so CPU time and profiles decided, not wall time). py-spy over 20 warm
in-process replays of the one-file input: recognition (``stt.py``, its front end included) was 62 %
of the busy CPU samples; of the rest, the two speech detectors 24 % (the replay's own, fed 20 ms at a
time, 18 %: a soxr call, numpy and webrtcvad per frame), the relay's client side 15 %, synthesis 10 %,
printing (rich) 7 %, reading the WAV 6 %, the backend's handling of appends and replies most of the
remainder. Per warm run, in each thread's CPU time: recognition 390-410 ms, synthesis 30-34 ms,
the engines' warm-up 7-10 ms, everything else ~140 ms. Changes, each A/B'd in one process (12 warm
runs each, interleaved, CPU min / median):

- ``replay --speed 0`` reads the input and asks its detector 80 ms at a time (``replay.PIECE_MS``):
  534 / 627 -> 495 / 577 ms;
- the embedded backend's speech cache is one per process (``engines._SpeechCache``): every file of
  a many-file replay (one backend per file) and every warm run here found the replies said before
  instead of synthesising them again, 617 -> 576 ms median; a single command-line run does not
  gain from it;
- espeak-ng's private data directory is built once and kept in the user's cache (``tts.py``), not
  built (~230 files: 15-55 ms of CPU, up to 0.2 s of a busy disk) and removed at exit (~50 ms) by
  every process, each ``--jobs`` worker included;
- this benchmark writes voicerelay's bytecode before the command-line runs, as pip does at install:
  with PYTHONDONTWRITEBYTECODE set, as on this project's machines, every process compiled all of
  voicerelay's sources again (~85 ms of CPU; each ``--jobs`` worker too).

After them, recognition is 74-77 % of the busy samples, and what remains outside it is spread thin
(the detectors' resampling and webrtcvad ~25 % of it, base64, JSON, websockets, rich). The code
before (7b8d073) and after, alternately, six processes each of one cold and six warm replays, other
work keeping 1.1-1.5 of the 2 cores busy (load average 6-9): warm CPU per replay, median of the
processes' medians, 0.67 -> 0.49 s (lower in every pair), speed p50 29.2x -> 36.3x on that busy
machine. This benchmark, same conditions: every run right; in the one stretch where the second core
was mostly ours, three warm runs in a row at 53.9-55.9x (0.51-0.53 s, CPU 0.43-0.44 s, recognition
0.39-0.42 s), and one more later at 56.1x; no such stretch for the code before. Through the command
line, CPU p50 1.05-1.39 s against 1.17-1.47 s; 8 files ``--jobs 1`` CPU 2.71-3.24 s against
2.82-3.47 s, ``--jobs 2`` 3.67-4.21 s against 4.15-4.66 s (their wall times, every one flagged as a
busy machine's, say nothing about ``--jobs``).

Why ``--jobs 2`` gained so little on 2026-12-07: the machine, not the code. The code of the
2026-12-06 figures (5d22d56) and of 2026-12-07 (7b8d073), run alternately under the same load,
one file / 8 files ``--jobs 1`` / ``--jobs 2``, median CPU: 1.63 / 4.42 / 5.54 s against 1.35 / 3.12 /
3.90 s, ``--jobs 2`` costing 0.8-1.1 s of CPU more than ``--jobs 1`` in both. ``--jobs 1`` got
slower that day (3.18 -> 3.60 s) although recognition had become ~13 ms a turn cheaper (~0.5 s less
work over 40 turns): something else was running, and ``--jobs 2`` needs the second core, so it lost
most. The command-line rows now print their CPU time and how many cores other work kept busy
meanwhile, and a ``--jobs`` comparison made with more than ``QUIET_CORES`` of them busy says it is
not a quiet machine's figure (with 1.3-1.6 busy, ``--jobs 2`` ran 0.7x as fast as ``--jobs 1``).
What ``--jobs 2`` costs more is its workers' start: each is a new Python process that imports replay
and the backend and loads the engines (~0.3 s of CPU each beyond the parent's). Forking the workers
from the parent, which has imported all that already, cut ``--jobs 2``'s CPU from 3.76 to 3.31 s
(``--jobs 1`` 2.77-2.93 s) in a trial; not kept: the parent runs an event loop and may run threads
by then (``workers.py`` spawns for that reason), and a forkserver would keep a process alive beside
the parent (the tests count a run's leftover processes) and change who a worker's parent is (its
orphan watch). Another ~0.2 s of the critical path: the parent imports all of ``replay``'s
modules (numpy, websockets, the relay: ~0.24 s of CPU) before it spawns the workers, which import
them again; imported lazily there, the workers would start that much sooner (not done: the
benchmark and tests reach ``voicerelay.replay.Relay`` and friends as module attributes).

Tried or weighed and not kept:

- reply audio in 1 s deltas instead of 100 ms at pace 0 (a tenth of the events on both sides):
  CPU min 498 -> 501 ms, median 620 -> 621 ms, nothing: the per-event work is not where the time
  goes;
- a cheaper resampler for the speech detectors (soxr's quick quality resamples in about half the
  time): it moves the turn boundaries, so the audio the recogniser hears, by a frame now and then;
- no engines warm-up for a replay in a process that has loaded them (7-10 ms a run): the warm-up's
  silence is part of what the pooled decoders heard before a replay, which their words depend on
  (``stt.py``, "What a decoder heard before");
- the command line's start: typer (0.29) coerces every option through a pydantic ``TypeAdapter``
  (typer, pydantic and its plugin loader, ~0.1 s of each command's start), numpy ~50-70 ms, the
  package's own modules' dataclasses ~20 ms; nothing of it is replay's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
try:
    import voicerelay  # noqa: F401
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from websockets.asyncio.server import ServerConnection, serve  # noqa: E402

import voicerelay.replay  # noqa: E402
from voicerelay.backend.engines import Engines  # noqa: E402
from voicerelay.backend.phrases import RECORDING_SENTENCES  # noqa: E402
from voicerelay.protocol.audio import pcm16_to_b64  # noqa: E402
from voicerelay.protocol.config import RealtimeConfig  # noqa: E402
from voicerelay.protocol.events import input_audio_append  # noqa: E402
from voicerelay.protocol.session import RealtimeSession  # noqa: E402
from voicerelay.relay import Relay  # noqa: E402
from voicerelay.replay import ReplayOptions, replay  # noqa: E402
from voicerelay.upstream import UpstreamSpec  # noqa: E402

RATE = 24_000
FRAME_SAMPLES = RATE // 50  # 20 ms
TARGET_SPEED = 50.0
#: Other work busier than this (cores, median over the many-file commands) and the --jobs
#: comparison is flagged as not a quiet machine's.
QUIET_CORES = 0.3


# ------------------------------------------------------------------------------------ audio


from common import foreign_cores, machine_ticks, read_recording, room_noise  # noqa: E402


def long_input(path: Path, repeat: int) -> tuple[float, list[str]]:
    """Write every recording, ``repeat`` times, 1 s of noise between; return (seconds, sentences)."""
    gap = room_noise(1000)
    parts: list[np.ndarray] = []
    said: list[str] = []
    for _ in range(repeat):
        for stem, text in RECORDING_SENTENCES.items():
            if parts:
                parts.append(gap)
            parts.append(read_recording(stem))
            said.append(text)
    pcm = np.concatenate(parts)
    soundfile.write(path, pcm, RATE, subtype="PCM_16")
    return pcm.size / RATE, said


# ------------------------------------------------------------------------------------ replay speed


class TimedRelay(Relay):
    """The relay ``replay()`` builds, noting when it became ready and when frames went in."""

    last: TimedRelay | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.created_at = time.monotonic()
        self.ready_at: float | None = None
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        self.stopped_at: float | None = None
        TimedRelay.last = self

    async def wait_ready(self, timeout: float = 15.0) -> None:
        await super().wait_ready(timeout)
        if self.ready_at is None:
            self.ready_at = time.monotonic()

    async def send_audio(self, pcm: bytes) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
        await super().send_audio(pcm)
        self.last_frame_at = time.monotonic()

    async def stop(self) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        await super().stop()


class SttClock:
    """Wraps ``Engines.transcribe`` and ``Engines.transcribe_async`` (what the backend's event loop
    awaits) to add up the wall time the embedded backend spends recognising."""

    seconds = 0.0
    calls = 0

    @classmethod
    @contextlib.contextmanager
    def one(cls) -> Iterator[None]:
        """Count one recognition and add up its wall time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            cls.seconds += time.perf_counter() - start
            cls.calls += 1

    @classmethod
    def install(cls) -> None:
        original, original_async = Engines.transcribe, Engines.transcribe_async

        def transcribe(self: Engines, pcm24: np.ndarray, extra_phrases: Any = ()) -> str:
            with cls.one():
                return original(self, pcm24, extra_phrases)

        async def transcribe_async(self: Engines, pcm24: np.ndarray, extra_phrases: Any = ()) -> str:
            with cls.one():
                return await original_async(self, pcm24, extra_phrases)

        Engines.transcribe = transcribe  # type: ignore[method-assign]
        Engines.transcribe_async = transcribe_async  # type: ignore[method-assign]


def check(turns: list[dict[str, Any]], heard: list[str], said: list[str]) -> str:
    """'' when the replay was right: one completed turn with a spoken answer per utterance, the
    user transcripts (report and printed lines) the input's sentences in order; else what was wrong."""
    users = [t["user"] for t in turns]
    if len(turns) != len(said):
        return f"{len(turns)} turns for {len(said)} utterances"
    unanswered = [f"{t['index']} ({t['status']}, user {t['user']!r}, assistant {t['assistant']!r}, "
                  f"{t['audio_seconds']['out']} s of audio, errors {t['errors']})" for t in turns
                  if t["status"] != "completed" or not t["assistant"] or not t["audio_seconds"]["out"]]
    if unanswered:
        return f"turns not answered: {'; '.join(unanswered)}"
    wrong = sum(a != b for a, b in zip(users, said))
    if wrong:
        return f"{wrong} user transcripts differ from the input's sentences: {users}"
    if heard != said:
        return f"the printed user lines differ: {heard}"
    return ""


def user_lines(text: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.strip().startswith("user ") and len(line.split(None, 1)) == 2]


async def replay_runs(path: Path, seconds: float, said: list[str], runs: int, workdir: Path) -> None:
    print(f"== one file, replay --speed 0, embedded backend in process: {seconds:.1f} s of audio, "
          f"{len(said)} utterances ==")
    print(f"{'run':>4} {'wall':>7} {'speed':>7} {'CPU':>6} {'start-up':>9} {'streaming':>10} {'settle':>7} "
          f"{'close':>6} {'STT':>6}  {'from ready':>10} {'others':>6}  right?")
    voicerelay.replay.Relay = TimedRelay  # type: ignore[misc]  # this process only: see the module doc
    SttClock.install()
    totals: list[float] = []
    from_ready: list[float] = []
    streaming: list[float] = []
    quiet: list[tuple[float, float]] = []  # (wall, CPU) of the warm runs while other work stayed under QUIET_CORES
    cpus: list[float] = []
    wrong = 0
    for run in range(1, runs + 1):
        report = workdir / f"report{run}.json"
        options = ReplayOptions(path=path, speed=0, backend=None, json_path=str(report), progress=False)
        out, err = io.StringIO(), io.StringIO()
        stt_before = SttClock.seconds
        cpu, machine = time.process_time(), machine_ticks()
        started = time.monotonic()
        code = await replay(options, Console(file=out, width=200), Console(file=err, width=200))
        ended = time.monotonic()
        cpu = time.process_time() - cpu
        others = foreign_cores(cpu / (ended - started), machine, machine_ticks())
        relay = TimedRelay.last
        if code != 0 or relay is None or None in (relay.ready_at, relay.last_frame_at, relay.stopped_at):
            print(f"{run:>4} replay failed (exit code {code}): {err.getvalue().strip()[:300]}")
            wrong += 1
            continue
        assert relay.ready_at is not None and relay.last_frame_at is not None and relay.stopped_at is not None
        problem = check(json.loads(report.read_text())["turns"], user_lines(out.getvalue()), said)
        wall = ended - started
        print(f"{run:>4} {wall:>6.2f}s {seconds / wall:>6.1f}x {cpu:>5.2f}s {relay.ready_at - started:>8.2f}s "
              f"{relay.last_frame_at - relay.ready_at:>9.2f}s {relay.stopped_at - relay.last_frame_at:>6.2f}s "
              f"{ended - relay.stopped_at:>5.2f}s {SttClock.seconds - stt_before:>5.2f}s  "
              f"{seconds / (ended - relay.ready_at):>9.1f}x {others:>6.1f}  "
              + (f"WRONG: {problem}" if problem else f"right ({len(said)}/{len(said)} answered, transcripts as said)")
              + ("  [cold]" if run == 1 else ""))
        if problem:
            wrong += 1
            continue
        totals.append(wall)
        streaming.append(relay.last_frame_at - relay.ready_at)
        if run > 1:
            from_ready.append(ended - relay.ready_at)
            cpus.append(cpu)
            if others < QUIET_CORES:
                quiet.append((wall, cpu))
    print(f"{runs - wrong} of {runs} runs right" + (" (only those count below)" if wrong else ""))
    if not totals:
        return
    speeds = [seconds / wall for wall in totals]
    print(f"audio seconds per wall second, all {len(speeds)} right runs: p50 {statistics.median(speeds):.1f}x  "
          f"best {max(speeds):.1f}x")
    if len(speeds) > 1:
        warm = speeds[1:] if len(totals) == runs else speeds
        print(f"  warm runs only (engines already loaded):    p50 {statistics.median(warm):.1f}x  "
              f"best {max(warm):.1f}x   target >= {TARGET_SPEED:.0f}x: "
              f"{'meets target' if statistics.median(warm) >= TARGET_SPEED else 'MISSES target'}")
    if cpus:
        print(f"  warm runs' CPU (this process, all threads):  p50 {statistics.median(cpus):.2f} s  "
              f"min {min(cpus):.2f} s")
    if quiet:
        fast = [seconds / wall for wall, _ in quiet]
        print(f"  warm runs while other work kept under {QUIET_CORES} cores busy ({len(quiet)} of {len(cpus)}): "
              f"p50 {statistics.median(fast):.1f}x  best {max(fast):.1f}x  (CPU p50 "
              f"{statistics.median(cpu for _, cpu in quiet):.2f} s)")
    elif cpus:
        print(f"  no warm run had the machine otherwise quiet (other work under {QUIET_CORES} cores): "
              "the wall figures above are a busy machine's")
    if from_ready:
        fast = [seconds / t for t in from_ready]
        print(f"  warm runs, from relay ready (no start-up):  p50 {statistics.median(fast):.1f}x  "
              f"best {max(fast):.1f}x")
    fast = [seconds / t for t in streaming]
    print(f"  streaming phase alone (ready -> last audio): p50 {statistics.median(fast):.1f}x  "
          f"best {max(fast):.1f}x")
    print(f"  STT: {SttClock.calls} recognitions, {SttClock.seconds:.2f} s in all runs "
          f"({SttClock.seconds / sum(totals):.0%} of the replays' wall time)")


def cli_env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    return env


def compile_bytecode() -> None:
    """Write voicerelay's bytecode before the command-line runs, as pip does when it installs the
    package: with PYTHONDONTWRITEBYTECODE set (as on this project's machines) nothing writes it,
    and every new process, each ``--jobs`` worker too, compiled all of voicerelay's sources again
    (~85 ms of CPU a process)."""
    import compileall

    compileall.compile_dir(ROOT / "voicerelay", quiet=1)


@dataclasses.dataclass(frozen=True, slots=True)
class CliRun:
    wall: float
    code: int
    stderr: str
    cpu: float  # the command's CPU seconds, its worker processes included
    others: float  # cores busy with other work meanwhile (the machine's busy time less ours)


def cli_replay(paths: list[Path], report: Path, jobs: int | None = None) -> CliRun:
    """``python -m voicerelay replay PATHS --speed 0 --json REPORT [--jobs N]``, timed."""
    command = [sys.executable, "-m", "voicerelay", "replay", *map(str, paths), "--speed", "0", "--json", str(report)]
    if jobs is not None:
        command += ["--jobs", str(jobs)]
    before, machine = resource.getrusage(resource.RUSAGE_CHILDREN), machine_ticks()
    started = time.monotonic()
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=cli_env())
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # (the command and its workers, all waited for)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return CliRun(wall, result.returncode, result.stderr, cpu, foreign_cores(cpu / wall, machine, machine_ticks()))


def cli_one_file(path: Path, seconds: float, said: list[str], workdir: Path, runs: int) -> None:
    print(f"\n== one file through the command line (a new process each time: Python and the imports "
          f"included), {runs} runs ==")
    walls, cpus = [], []
    for run in range(1, runs + 1):
        report = workdir / f"cli{run}.json"
        done = cli_replay([path], report)
        problem = f"exit code {done.code}: {done.stderr.strip()[:200]}" if done.code else ""
        if not problem:
            data = json.loads(report.read_text())
            problem = check(data["turns"], [t["user"] for t in data["turns"]], said)
        print(f"{run:>4} {done.wall:>6.2f}s {seconds / done.wall:>6.1f}x  CPU {done.cpu:.2f}s  other work "
              f"{done.others:.1f} cores  " + (f"WRONG: {problem}" if problem else "right"))
        if not problem:
            walls.append(done.wall)
            cpus.append(done.cpu)
    if walls:
        print(f"  right runs: {len(walls)}/{runs}, p50 {statistics.median(walls):.2f} s = "
              f"{seconds / statistics.median(walls):.1f}x real time (CPU p50 {statistics.median(cpus):.2f} s)")


def many_files(workdir: Path, count: int, rounds: int, settings: list[int]) -> None:
    stems = list(RECORDING_SENTENCES)
    gap = room_noise(1000)
    paths, expected, seconds = [], [], 0.0
    for n in range(count):
        order = stems[n % len(stems):] + stems[:n % len(stems)]
        pcm = np.concatenate([part for i, stem in enumerate(order) for part in ((gap,) if i else ()) +
                              (read_recording(stem),)])
        path = workdir / f"file{n + 1}.wav"
        soundfile.write(path, pcm, RATE, subtype="PCM_16")
        paths.append(path)
        expected.append([RECORDING_SENTENCES[stem] for stem in order])
        seconds += pcm.size / RATE
    names = " vs ".join(f"--jobs {n}" if n else "no --jobs" for n in settings)
    print(f"\n== {count} files through the command line, {names} ({seconds:.1f} s of audio, "
          f"{sum(map(len, expected))} utterances in all; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}) ==")
    walls: dict[int, list[float]] = {n: [] for n in settings}
    cpus: dict[int, list[float]] = {n: [] for n in settings}
    others: list[float] = []
    for round_ in range(1, rounds + 1):
        for jobs in (settings if round_ % 2 else settings[::-1]):  # who goes first alternates
            report = workdir / f"many{jobs}.json"
            done = cli_replay(paths, report, jobs or None)
            wall = done.wall
            problem = f"exit code {done.code}: {done.stderr.strip()[:200]}" if done.code else ""
            if not problem:
                files = json.loads(report.read_text())["files"]
                problems = [f"{path.name}: {p}" for path, data, said in zip(paths, files, expected)
                            if (p := check(data["turns"], [t["user"] for t in data["turns"]], said))]
                problem = "; ".join(problems) if len(files) == count else f"{len(files)} reports for {count} files"
            print(f"  round {round_} {'--jobs ' + str(jobs) if jobs else 'no --jobs'}: {wall:6.2f} s  "
                  f"{seconds / wall:5.1f}x  CPU {done.cpu:5.2f} s  other work {done.others:.1f} cores  "
                  + (f"WRONG: {problem}" if problem else f"right ({count} files, every utterance answered)"))
            others.append(done.others)
            if not problem:
                walls[jobs].append(wall)
                cpus[jobs].append(done.cpu)
    for jobs, right in walls.items():
        if right:
            print(f"  {'--jobs ' + str(jobs) if jobs else 'no --jobs'}: median of {len(right)} right runs "
                  f"{statistics.median(right):.2f} s, CPU {statistics.median(cpus[jobs]):.2f} s")
    if walls.get(1) and walls.get(2):
        one, two = statistics.median(walls[1]), statistics.median(walls[2])
        print(f"  median of the right runs: --jobs 1 {one:.2f} s, --jobs 2 {two:.2f} s: {one / two:.2f}x faster "
              f"(load average now {os.getloadavg()[0]:.1f})")
        busy = statistics.median(others)
        if busy >= QUIET_CORES:
            print(f"  NOT a quiet machine's figure: other work kept {busy:.1f} of {os.cpu_count()} cores busy "
                  "(median over the commands); --jobs 2 needs the second core, so it gains less, or nothing")


# ------------------------------------------------------------------------------------ relay overhead


def per_call_us(function: Any, calls: int) -> float:
    """Best of 3 batches of ``calls`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def input_frames() -> list[bytes]:
    """Distinct 20 ms frames of speech and noise (the long input), so compression sees real audio."""
    gap = room_noise(1000)
    pcm = np.concatenate([part for stem in RECORDING_SENTENCES for part in (read_recording(stem), gap)])
    return [pcm[i:i + FRAME_SAMPLES].tobytes() for i in range(0, pcm.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)]


def sans_io(frames: list[bytes], calls: int) -> None:
    print(f"\n== relay cost per 20 ms chunk ({len(frames[0])} bytes; {len(frames)} distinct frames of speech "
          "and noise, cycled) ==")
    session = RealtimeSession(RealtimeConfig())
    cycle = itertools.cycle(frames)
    audio = per_call_us(lambda: session.audio(next(cycle)), calls)
    b64 = per_call_us(lambda: pcm16_to_b64(next(cycle)), calls)
    events = itertools.cycle([input_audio_append(pcm16_to_b64(frame)) for frame in frames])
    dumps = per_call_us(lambda: json.dumps(next(events)), calls)
    messages = [json.dumps(input_audio_append(pcm16_to_b64(frame))).encode() for frame in frames]
    encoder = zlib.compressobj(wbits=-12, memLevel=5)  # websockets' permessage-deflate settings
    sizes = [len(encoder.compress(m) + encoder.flush(zlib.Z_SYNC_FLUSH)) for m in messages]
    cycled = itertools.cycle(messages)
    deflate = per_call_us(lambda: encoder.compress(next(cycled)) + encoder.flush(zlib.Z_SYNC_FLUSH), calls)
    print(f"sans-I/O RealtimeSession.audio(frame):     {audio:6.2f} us   (of which base64 of the frame {b64:.2f} us)")
    print(f"  + the sender's json.dumps(event):        {dumps:6.2f} us   ({len(messages[0])} bytes)")
    print(f"  + permessage-deflate of the message:     {deflate:6.2f} us   ({len(messages[0])} -> "
          f"{statistics.median(sizes):.0f} bytes, median)")


def _drain(conn: Any, expected: int, compression: bool) -> None:
    asyncio.run(_drain_async(conn, expected, compression))


async def _drain_async(conn: Any, expected: int, compression: bool) -> None:
    async def handle(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "session.created", "session": {"type": "realtime"}}))
        count = 0
        async for message in ws:
            if '"input_audio_buffer.append"' in message:
                count += 1
                if count == expected:
                    conn.send(("received", count, time.monotonic()))
            elif '"session.update"' in message:
                session = json.loads(message)["session"]
                await ws.send(json.dumps({"type": "session.updated", "session": session}))

    async with serve(handle, "127.0.0.1", 0, compression="deflate" if compression else None, max_size=None,
                     ping_interval=None) as server:
        conn.send(server.sockets[0].getsockname()[1])
        await asyncio.to_thread(conn.recv)


async def relay_end_to_end(pcm_frames: list[bytes], frames: int, compression: bool) -> None:
    warmup = 1000
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    process = context.Process(target=_drain, args=(child, warmup + frames, compression), daemon=True)
    process.start()
    try:
        if not await asyncio.to_thread(conn.poll, 30):
            raise RuntimeError("the draining upstream did not start")
        port = conn.recv()
        spec = UpstreamSpec(f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime", label="draining upstream")
        relay = Relay(RealtimeConfig(), spec)
        run = asyncio.create_task(relay.run())
        await relay.wait_ready(10)
        negotiated = relay.connection.extensions if relay.connection is not None else []  # type: ignore[attr-defined]

        async def drained() -> None:
            while relay.snapshot()["queued_events"] or relay.queued_audio_ms:
                await asyncio.sleep(0.001)

        cycle = itertools.cycle(pcm_frames)
        for _ in range(warmup):
            await relay.send_audio(next(cycle))
        await drained()
        cpu, start = time.process_time(), time.monotonic()
        for _ in range(frames):
            await relay.send_audio(next(cycle))
        await drained()
        relay_done, cpu = time.monotonic(), time.process_time() - cpu
        if not await asyncio.to_thread(conn.poll, 30):
            raise RuntimeError("the upstream did not receive every frame")
        _, received, last_at = conn.recv()
        await relay.stop()
        await asyncio.wait_for(run, 5)
    finally:
        try:
            conn.send("stop")
        except OSError:
            pass
        await asyncio.to_thread(process.join, 10)
        if process.is_alive():
            process.terminate()
    label = "with permessage-deflate" if negotiated else "without compression    "
    wall = last_at - start
    print(f"Relay.send_audio -> upstream, {label}: {wall / frames * 1e6:6.1f} us/chunk wall, "
          f"{cpu / frames * 1e6:6.1f} us/chunk relay CPU  ({frames} chunks in {wall:.2f} s, "
          f"{frames * 0.02 / wall:.0f}x real time; relay queue empty after {(relay_done - start):.2f} s; "
          f"{received - warmup} received)")


# ------------------------------------------------------------------------------------ main


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="voicerelay-bench-") as tmp:
        workdir = Path(tmp)
        path = workdir / "long_input.wav"
        seconds, said = long_input(path, args.repeat)
        if args.runs > 0 or args.files > 0:
            compile_bytecode()
        if args.runs > 0:
            await replay_runs(path, seconds, said, args.runs, workdir)
            await asyncio.to_thread(cli_one_file, path, seconds, said, workdir, min(args.runs, 3))
        if args.files > 0:
            await asyncio.to_thread(many_files, workdir, args.files, args.rounds,
                                    [int(n) for n in args.jobs.split(",")])
    frames = input_frames()
    sans_io(frames, args.calls)
    if args.frames > 0:
        for compression in (True, False):
            await relay_end_to_end(frames, args.frames, compression)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="replays of the long input (the first is cold)")
    parser.add_argument("--repeat", type=int, default=2, help="times the set of recordings appears in the input")
    parser.add_argument("--files", type=int, default=8, help="files replayed with --jobs 1 and --jobs 2 (0: none)")
    parser.add_argument("--rounds", type=int, default=2, help="times each --jobs setting replays the files")
    parser.add_argument("--jobs", default="1,2", help="--jobs settings compared, comma-separated (0: no --jobs)")
    parser.add_argument("--frames", type=int, default=20_000, help="chunks sent through the relay end to end")
    parser.add_argument("--calls", type=int, default=100_000, help="calls per sans-I/O timing batch")
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)  # backend=None must mean the embedded backend
    started = time.perf_counter()
    asyncio.run(main_async(args))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
