"""``voicerelay replay``: push a WAV file or a recorded session through the pipeline.

The input is streamed in 20 ms frames (:data:`PIECE_MS` pieces at speed 0) through a
:class:`~voicerelay.conversation.Conversation` (reply audio goes to an
:class:`~voicerelay.conversation.InstantPlayback`: the ``--out`` WAV, or nothing), paced at
``speed`` times real time. At speed 0 it goes as fast as the upstream takes
it, one utterance at a time (:class:`_Utterances` finds where each ends; the next waits for its
answer), in appends of up to :data:`BATCH_BYTES`. With server VAD, trailing silence closes the
last turn; with turn detection disabled the relay commits. Then it waits for the replies (with a
timeout; every wait wakes on what the relay reports, not on a poll), prints the transcript, and
optionally writes the assistant audio, a JSON report and a recording. Each turn's line, the
report and the summary say what the turns cost in dollars (:mod:`voicerelay.cost`; estimates on
the embedded backend). Several files go ``--jobs`` at a time through worker processes
(:func:`replay_all`).

Exit codes: 0 done; 1 an ``--expect`` pattern matched nothing, the upstream failed, the
replies timed out (``--timeout`` bounds every wait) or a worker process died; 2 unusable input
(a one-line message, never a traceback); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import io
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.text import Text

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from .protocol.audio import ms_to_bytes
from .protocol.config import RealtimeConfig
from .protocol.events import Dialect
from .console import transcript_line
from .conversation import Conversation, InstantPlayback
from .cost import PriceTable, format_usd, load_prices, session_cost, turn_cost, upstream_estimates
from .errors import UpstreamTimeout
from .protocol.session import Error, Transcript, TurnFinished
from .relay import Notice, Observation, Relay
from .upstream import UpstreamError, upstream_for

FRAME_MS = 20
FRAME_BYTES = ms_to_bytes(FRAME_MS)


#: Input that cannot be replayed (exit code 2): the tree's usage error, under its old name.
ReplayInputError = UsageError


@dataclasses.dataclass(slots=True)
class ReplayOptions:
    path: Path
    config: RealtimeConfig = dataclasses.field(default_factory=RealtimeConfig)
    backend: str | None = None
    dialect: Dialect = Dialect.GA
    speed: float = 1.0
    out: Path | None = None
    json_path: str | None = None
    expect: str | None = None
    record: Path | None = None
    compare: bool = False
    timeout: float = 30.0
    progress: bool = True


class _Source:
    """Frames of 24 kHz PCM16 with the time (s from the start) each should be sent at."""

    def __init__(self, path: Path, frame_ms: int = FRAME_MS) -> None:
        self.path = path
        self.recorded = None
        if path.is_dir():
            from .recording import RecordedSession, RecordingError

            try:
                self.recorded = RecordedSession.open(path)
            except RecordingError as exc:
                raise ReplayInputError(str(exc)) from None
            self.chunks = list(self.recorded.input_chunks())
            self.duration_s = sum(len(pcm) for _, pcm in self.chunks) / 48_000
            self.stream = None
        else:
            from .audio.files import AudioFileError, AudioFileStream

            try:
                self.stream = AudioFileStream(path, chunk_ms=frame_ms)
            except AudioFileError as exc:
                raise ReplayInputError(str(exc)) from None
            self.duration_s = self.stream.duration_s
        self.frame_ms = frame_ms

    async def frames(self) -> AsyncIterator[tuple[float, bytes]]:
        if self.stream is not None:
            from .audio.files import AudioFileError

            t = 0.0
            try:
                for chunk in self.stream:
                    yield t, chunk.tobytes()
                    t += chunk.size / 24_000
            except AudioFileError as exc:
                raise ReplayInputError(str(exc)) from None
            finally:
                self.stream.close()
        else:
            for t, pcm in self.chunks:
                yield t, pcm


def default_jobs(files: int) -> int:
    """``--jobs`` when not given: one process per core, no more than there are files."""
    return max(1, min(files, os.cpu_count() or 1))


async def replay_all(paths: list[Path], options: ReplayOptions, console: Console, err: Console,
                     jobs: int | None = None) -> int:
    """Replay each of ``paths`` (its own session), then print one summary table; returns the exit
    code: 0 when every file passed, 130 when interrupted, else 2 when one was unusable, else 1
    when one failed.

    One path is :func:`replay` itself. With several, ``--json`` holds ``{"files": [report, ...]}``
    and ``--out``/``--record`` (which name one output) are refused. ``jobs`` files are replayed at
    once, each in a worker process of its own (:func:`voicerelay.workers.run_in_processes`; default
    :func:`default_jobs`), and each file's output is printed as one block, in input order, as soon
    as it and the files before it are done; ``jobs=1`` replays them one after the other in this
    process, printing as it goes.
    """
    if len(paths) == 1:
        return await replay(dataclasses.replace(options, path=paths[0]), console, err)
    for option, value in (("--out", options.out), ("--record", options.record)):
        if value is not None:
            raise UsageError(f"{option} takes one input, not {len(paths)}: replay the files one at a time")
    if options.json_path not in (None, "-"):
        _check_writable("--json", Path(options.json_path))
    load_prices()  # a price table that cannot be used stops the run before the first file
    jobs = default_jobs(len(paths)) if jobs is None else jobs
    results: list[tuple[Path, int, str, dict[str, Any] | None]] = []
    if jobs <= 1:
        for path in paths:
            reports: list[dict[str, Any]] = []
            code, result = await _replay_file(dataclasses.replace(options, path=path, json_path=None), console,
                                              err, reports)
            results.append((path, code, result, reports[0] if reports else None))
            if code == EXIT_INTERRUPTED:
                break
    else:
        await _replay_in_processes(paths, options, console, err, jobs, results)
    reports = [report for _, _, _, report in results if report is not None]
    rows = [(str(path), *_summary_cells(report, options), result) for path, _, result, report in results]
    codes = [code for _, code, _, _ in results]
    if any((r.get("cost") or {}).get("estimate") for r in reports):  # (above the table: it ends the output)
        console.print("\n[dim]cost ~ is an estimate: the embedded backend's usage figures are estimates "
                      "(no model ran)[/]", highlight=False)
    _print_summary(rows, console)
    if options.json_path is not None:
        _write_json(options.json_path, {"files": reports})
    for code in (EXIT_INTERRUPTED, EXIT_USAGE, EXIT_FAILED):
        if code in codes:
            return code
    return 0


async def _replay_file(options: ReplayOptions, console: Console, err: Console,
                       reports: list[dict[str, Any]]) -> tuple[int, str]:
    """One file of several: its heading, its replay, a failure as one line; (exit code, result)."""
    console.print(f"[bold]── {options.path}[/]", highlight=False)
    try:
        code = await replay(options, console, err, reports=reports)
        return code, {0: "passed", EXIT_INTERRUPTED: "interrupted"}.get(code, "failed")
    except UsageError as exc:
        err.print(f"voicerelay: error: {exc}", highlight=False, markup=False)
        return exc.exit_code, f"unusable: {exc}"
    except UpstreamError as exc:
        err.print(f"voicerelay: error: upstream failed: {exc}", highlight=False, markup=False)
        return exc.exit_code, f"upstream failed: {exc}"


@dataclasses.dataclass(frozen=True, slots=True)
class _FileJob:
    """What a worker process needs to replay one file as this process would print it."""

    options: ReplayOptions
    width: int
    terminal: bool
    color_system: str | None

    def console(self, file: io.StringIO) -> Console:
        return Console(file=file, width=self.width, force_terminal=self.terminal, color_system=self.color_system,  # type: ignore[arg-type]
                       highlight=False, soft_wrap=True)


def _replay_in_worker(job: _FileJob) -> tuple[int, str, dict[str, Any] | None, str, str]:
    """In a worker process: (exit code, result, report, stdout text, stderr text) of one file."""
    from .workers import run_interruptible

    out, err = io.StringIO(), io.StringIO()
    reports: list[dict[str, Any]] = []
    code, result = run_interruptible(_replay_file(job.options, job.console(out), job.console(err), reports))
    return code, result, reports[0] if reports else None, out.getvalue(), err.getvalue()


async def _replay_in_processes(paths: list[Path], options: ReplayOptions, console: Console, err: Console,
                               jobs: int, results: list[tuple[Path, int, str, dict[str, Any] | None]]) -> None:
    """``jobs`` files at a time in worker processes; each file's output is printed when its turn comes."""
    from .workers import NOT_RUN, Died, Raised, run_in_processes

    def job(path: Path, screen: Console) -> _FileJob:
        return _FileJob(dataclasses.replace(options, path=path, json_path=None, progress=False), screen.width,
                        screen.is_terminal, screen.color_system)

    def done(index: int, outcome: Any) -> None:
        path = paths[index]
        if outcome is NOT_RUN:
            return
        if isinstance(outcome, Died | Raised):
            if outcome.interrupted:
                results.append((path, EXIT_INTERRUPTED, "interrupted", None))
                return
            why = outcome.describe()
            console.print(f"[bold]── {path}[/]", highlight=False)
            err.print(f"voicerelay: error: {path}: the replay failed: {why}", highlight=False, markup=False,
                      soft_wrap=True)
            results.append((path, EXIT_FAILED, f"failed: {why}", None))
            return
        code, result, report, out_text, err_text = outcome
        for screen, text in ((console, out_text), (err, err_text)):
            if text:
                screen.file.write(text)
                screen.file.flush()
        results.append((path, code, result, report))

    await run_in_processes(_replay_in_worker, [job(path, console) for path in paths], jobs, done)


def _summary_cells(report: dict[str, Any] | None, options: ReplayOptions) -> tuple[str, str, str, str]:
    """turns, transcripts match, median latency, cost."""
    if report is None:
        return "-", "-", "-", "-"
    turns = report["turns"]
    if "compare" in report:
        match = "yes" if all(r["same"] for r in report["compare"].values()) else "no"
    elif options.expect is not None:
        match = "yes" if report.get("expect_matched") else "no"
    else:
        match = "-"
    latencies = sorted(t["latency_ms"]["first_audio"] for t in turns if t["latency_ms"]["first_audio"] is not None)
    latency = f"{latencies[len(latencies) // 2]:.0f} ms" if latencies else "-"
    cost = report.get("cost") or {}
    dollars = format_usd(cost.get("usd"), bool(cost.get("estimate"))) if "usd" in cost else "-"
    return str(len(turns)), match, latency, dollars


SUMMARY_COLUMNS = ("file", "turns", "transcripts match", "latency", "cost", "result")
_RIGHT = (1, 3, 4)  # right-aligned columns: the figures


def _print_summary(rows: list[tuple[str, ...]], console: Console) -> None:
    """One line per file, columns aligned, never wrapped or cut (a script may read it)."""
    widths = [max(len(cells[i]) for cells in [SUMMARY_COLUMNS, *rows]) for i in range(len(SUMMARY_COLUMNS) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(w) if i in _RIGHT else cell.ljust(w) for i, (cell, w) in
                         enumerate(zip(cells, widths))) + "  "

    console.print()
    console.print(Text(line(SUMMARY_COLUMNS) + SUMMARY_COLUMNS[-1], style="bold"))
    for row in rows:
        console.print(Text(line(row[:-1])) + Text(row[-1], style="green" if row[-1] == "passed" else "red"))


def _write_json(json_path: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2)
    if json_path == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(json_path).write_text(text + "\n")


async def replay(options: ReplayOptions, console: Console, err: Console,
                 reports: list[dict[str, Any]] | None = None) -> int:
    """Run one replay; returns the exit code. Input problems raise :class:`~voicerelay.errors.UsageError`,
    a failed upstream :class:`~voicerelay.errors.UpstreamError` (after the report is written).

    ``reports``, if given, receives the report instead of ``--json``."""
    expect = None
    if options.expect is not None:
        try:
            expect = re.compile(options.expect, re.IGNORECASE)
        except re.error as exc:
            raise ReplayInputError(f"--expect is not a valid regular expression: {exc}") from None
    if options.compare and not options.path.is_dir():
        raise UsageError(f"--compare needs a recorded session folder (made with --record), not the file "
                         f"{options.path}: a WAV has no transcripts to compare with")
    if options.json_path not in (None, "-"):
        _check_writable("--json", Path(options.json_path))
    prices = load_prices()  # before the run: a price table that cannot be used is a usage error
    source = _Source(options.path, PIECE_MS if options.speed == 0 else FRAME_MS)
    writer = None
    if options.out is not None:
        from .audio.files import AudioFileError, WavWriter

        try:
            writer = WavWriter(options.out)
        except AudioFileError as exc:
            raise ReplayInputError(str(exc)) from None
        except (OSError, RuntimeError) as exc:  # soundfile reports an unwritable path as either
            raise ReplayInputError(f"cannot write {options.out}: {exc}") from None
    recorder = None
    if options.record is not None:
        from .recording import Recorder, RecordingError

        try:
            recorder = Recorder(options.record, {"command": "replay", "input": str(options.path)})
        except RecordingError as exc:
            raise ReplayInputError(str(exc)) from None

    errors: list[str] = []
    started = time.monotonic()
    # an embedded backend paces nothing at speed 0, and loads the general recognition model only
    # if an utterance needs it (its warm-up runs while the first utterances are recognised)
    embedded: dict[str, object] = {"warm_general": False, **({"pace": 0.0} if options.speed == 0 else {})}
    exit_code = 0
    failure: UpstreamError | None = None
    interrupted = False
    relay: Relay | None = None
    try:
        async with upstream_for(options.backend, options.config.model, options.dialect, **embedded) as spec:
            relay = Relay(options.config, spec, recorder=recorder)
            conversation = Conversation(relay, InstantPlayback(writer.write if writer is not None else None),
                                        ready_timeout=options.timeout)
            screen = _Screen(console, err)
            conversation.subscribe(_printer(screen, errors, relay, prices))
            await _drive(conversation, source, options, screen)
    except UpstreamError as exc:
        errors.append(str(exc))
        failure = exc
    except asyncio.CancelledError:  # Ctrl-C: the report of what finished is still written
        interrupted = True
        errors.append("interrupted")
    finally:
        if writer is not None:
            writer.close()
        if recorder is not None:
            recorder.close()

    turns = relay.session.turns if relay is not None else []
    cost = session_cost(relay.session, estimate=upstream_estimates(relay.spec), table=prices) \
        if relay is not None else None
    report = {
        "input": str(options.path), "backend": relay.spec.describe() if relay else options.backend,
        "dialect": options.dialect.value, "model": options.config.model, "speed": options.speed,
        "audio_seconds": {"in": round(source.duration_s, 3),
                          "out": round(sum(t.audio_out_ms for t in turns) / 1000, 3)},
        "wall_seconds": round(time.monotonic() - started, 3),
        "turns": [{**t.report(), "cost": c.report()} for t, c in zip(turns, cost.turns if cost else ())],
        "cost": cost.report() if cost is not None else None,
        "errors": errors, "recycles": relay.recycles if relay else 0, "interrupted": interrupted,
    }
    if options.compare and not interrupted and failure is None:
        report["compare"] = _compare(source, turns, console)
        if not all(result["same"] for result in report["compare"].values()):
            exit_code = EXIT_FAILED
    if expect is not None:
        texts = [t.user_transcript for t in turns] + [t.assistant_transcript for t in turns]
        report["expect_matched"] = any(expect.search(text) for text in texts)
    if reports is not None:
        reports.append(report)
    elif options.json_path is not None:
        _write_json(options.json_path, report)
    if failure is not None:
        raise failure  # after the report of what finished
    if interrupted:
        err.print("voicerelay: interrupted (the report holds what finished)", highlight=False)
        return EXIT_INTERRUPTED
    if not turns:
        err.print(f"voicerelay: no speech was detected in {options.path}", highlight=False, soft_wrap=True)
    if exit_code == 0 and expect is not None:
        if not report["expect_matched"]:
            err.print(f"[bold red]voicerelay: --expect {options.expect!r} matched no transcript[/]", highlight=False)
            exit_code = 1
    return exit_code


class _Screen:
    """Where replay's lines go: transcripts to ``console`` (stdout), the rest to ``err``. While the
    progress bar is drawn, lines bound for the same terminal go through the bar's own console,
    which prints them above the bar (rich's consoles write past each other's live displays)."""

    def __init__(self, console: Console, err: Console) -> None:
        self._console = console
        self._err = err
        self.live: Console | None = None  # the progress bar's console, while it is drawn

    @property
    def console(self) -> Console:
        return self.live if self.live is not None and self._console.is_terminal else self._console

    @property
    def err(self) -> Console:
        return self.live if self.live is not None else self._err


def _printer(screen: _Screen, errors: list[str], relay: Relay, prices: PriceTable) -> Any:
    estimate = upstream_estimates(relay.spec)

    def observe(obs: Observation) -> None:
        if isinstance(obs, Transcript) and obs.final and obs.text:
            screen.console.print(transcript_line(obs.role, obs.text))
        elif isinstance(obs, TurnFinished):
            turn = obs.turn
            latency = f"{turn.first_audio_ms:.0f} ms to first audio" if turn.first_audio_ms is not None else "no audio"
            cost = turn_cost(relay.session, turn, estimate=estimate, table=prices)
            screen.console.print(Text(f"{'':>9}  turn {turn.index}: {turn.status}, {latency}, "
                                      f"{turn.audio_out_ms / 1000:.1f} s of reply audio, {cost.line()}", style="dim"))
        elif isinstance(obs, Error):
            errors.append(f"{obs.code}: {obs.message}")
            screen.err.print(f"[red]error[/] {obs.code}: {obs.message}", highlight=False)
        elif isinstance(obs, Notice) and obs.kind in ("recycled", "reconnecting"):
            screen.err.print(f"[yellow]{obs.message}[/]", highlight=False)

    return observe


async def _drive(conversation: Conversation, source: _Source, options: ReplayOptions, screen: _Screen) -> None:
    """Send the input, close the last turn, wait for the replies; raise the upstream's failure
    (:class:`~voicerelay.errors.UpstreamTimeout` when it did not configure or answer in time)."""
    relay = conversation.relay
    run = conversation.start()
    news = _News(conversation)
    progress = None
    try:
        await conversation.wait_ready()
        progress = _progress(source, options, screen.err)
        screen.live = progress.console if progress is not None else None
        utterances = _Utterances(options) if options.speed == 0 else None
        pending = bytearray()  # --speed 0: frames not sent yet (see BATCH_BYTES)
        t0 = time.monotonic()
        async for t, pcm in source.frames():
            if run.done():
                break
            if utterances is None:
                delay = t0 + t / options.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await relay.send_audio(pcm)
            else:  # PIECE_MS at a time (a recording's chunks may be longer), so an utterance ends on time
                for i in range(0, len(pcm), PIECE_BYTES):
                    piece = pcm[i:i + PIECE_BYTES]
                    pending += piece
                    ended = utterances.ended(piece)
                    if ended or len(pending) >= BATCH_BYTES:
                        await relay.send_audio(bytes(pending))
                        pending.clear()
                    if ended and not await _wait_for_turn(relay, run, news, utterances.count, options.timeout):
                        # (as fast as possible, but one utterance at a time: the next would interrupt this reply)
                        raise _unanswered(relay, options)
            if progress is not None:
                progress.update(progress.task_ids[0], completed=t + len(pcm) / 48_000)
        if pending and not run.done():
            await relay.send_audio(bytes(pending))
        if progress is not None:
            progress.stop()
            progress = screen.live = None
        expected = await _finish_turn(relay, options, utterances)
        if not await _wait_for_replies(relay, run, news, options.timeout, expected) and not run.done():
            raise _unanswered(relay, options)
    finally:
        news.close()
        if progress is not None:  # (a failure or Ctrl-C mid-input)
            progress.stop()
            screen.live = None
        await conversation.close()  # raises the upstream's failure, if it failed


def _unanswered(relay: Relay, options: ReplayOptions) -> UpstreamTimeout:
    return UpstreamTimeout(f"{relay.spec.describe()} did not answer every turn within --timeout {options.timeout:g} s")


class _News:
    """Wakes the waits below whenever the relay reports anything (a state change, a transcript, a
    finished turn...), so that at ``--speed 0`` they go on the moment the condition holds instead
    of at the next tick of a poll."""

    def __init__(self, conversation: Conversation) -> None:
        self._event = asyncio.Event()
        self._unsubscribe = conversation.subscribe(lambda _: self._event.set())

    async def wait(self, timeout: float) -> None:
        """Until the next observation, or ``timeout`` seconds (a safety net: nothing relies on it)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass
        self._event.clear()

    def close(self) -> None:
        self._unsubscribe()


async def _finish_turn(relay: Relay, options: ReplayOptions, utterances: _Utterances | None) -> int | None:
    """Close the last turn: trailing silence for server VAD, a commit otherwise. Returns the turns
    the input holds when replay knows it (``--speed 0``: the utterances it found, and a commit),
    else None."""
    td = options.config.turn_detection()
    if td is None:
        if relay.session.buffered_ms >= 100:
            relay.commit()
        return len(relay.session.turns) if options.speed == 0 else None
    silence = bytes(ms_to_bytes(FRAME_MS))
    frames = (td["silence_duration_ms"] + 400) // FRAME_MS
    if utterances is None:
        for _ in range(frames):
            await asyncio.sleep(FRAME_MS / 1000 / options.speed)
            await relay.send_audio(silence)
        return None
    for _ in range(frames):
        utterances.ended(silence)  # (an utterance the input ended in ends here)
    await relay.send_audio(silence * frames)  # one append (see BATCH_BYTES)
    return utterances.count


#: At ``--speed 0``, frames go upstream in appends of up to this many bytes (1 s): a 20 ms append
#: per frame made the JSON, base64 and WebSocket work of ~1,400 events for 28 s of input, on both
#: sides, for no gain when nothing is paced. An append always ends where replay found an utterance
#: to end, so the server hears the same audio cut at the same places, in fewer events.
BATCH_BYTES = ms_to_bytes(1000)

#: At ``--speed 0``, replay reads the input and looks for the end of an utterance this much at a
#: time (:class:`_Utterances` judges 20 ms frames, but is fed and asked once per piece), and an
#: utterance's last append ends at the end of the piece in which its end was found. Fed 20 ms at a
#: time, the detector's resampler and the per-frame Python around it were ~5 % of a replay's CPU
#: (27 of ~530 ms for 28 s of input); in 80 ms pieces about a third of that. The piece is shorter
#: than the START_FRAMES (100 ms) of voiced audio that start a turn, so the up to 60 ms sent past
#: an utterance's end can never start the next turn while this one is being answered: the server
#: hears the same audio, with its turns cut up to 60 ms later, in silence.
PIECE_MS = 80
PIECE_BYTES = ms_to_bytes(PIECE_MS)


class _Utterances:
    """Where the user's utterances end in the input, found as server VAD would find them (the same
    detector and settings as the embedded backend's), for ``--speed 0`` with server VAD."""

    def __init__(self, options: ReplayOptions) -> None:
        td = options.config.turn_detection()
        self.count = 0
        self._vad = None
        if td is not None:
            from .backend.vad import VoiceActivityDetector

            self._vad = VoiceActivityDetector(float(td.get("threshold", 0.5)), int(td["prefix_padding_ms"]),
                                              int(td["silence_duration_ms"]))

    def ended(self, pcm: bytes) -> bool:
        """Does this audio (a piece, or the closing silence) complete an utterance, its trailing silence included?"""
        if self._vad is None:
            return False
        stops = sum(e.kind == "speech_stopped" for e in self._vad.feed(np.frombuffer(pcm, dtype="<i2")))
        self.count += stops
        return stops > 0


#: After an utterance was sent, how long the server may stay silent before replay concludes it
#: heard no turn there (its VAD judged otherwise) and goes on.
UNHEARD_AFTER_S = 2.0


async def _wait_for_turn(relay: Relay, run: asyncio.Task[None], news: _News, utterances: int,
                         timeout: float) -> bool:
    """Hold the input until the server answered ``utterances`` turns (or, quiet for
    ``UNHEARD_AFTER_S`` with no turn under way, it evidently heard none): True; False after
    ``timeout`` seconds (the caller's UpstreamTimeout: going on would talk over a reply still
    under way, and the run could end as if every turn had been answered) or when the relay ended."""
    session = relay.session
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline and not run.done():
        finished = sum(t.done_at is not None for t in session.turns)
        # (not ready: the connection was lost and the relay reconnects; a reply it cut ended as
        # interrupted, which is not an answer: wait until it is back, or has failed)
        busy = session.response_active or session.state.value in ("user_speaking", "thinking") or not relay.ready
        if finished >= utterances and not busy:
            return True
        if not busy and time.monotonic() - started >= UNHEARD_AFTER_S and all(t.done_at for t in session.turns):
            return True
        await news.wait(0.1)
    return run.done()  # (the relay's end is the relay's failure, raised when the conversation closes)


#: Without a count of the turns to expect (``--speed`` above 0, where replay does not look for the
#: utterances), or when fewer turns came than utterances were sent: how long every turn must stay
#: answered, with nothing new, before replay concludes that nothing more is coming.
QUIET_S = 0.3


async def _wait_for_replies(relay: Relay, run: asyncio.Task[None], news: _News, timeout: float,
                            expected: int | None = None) -> bool:
    """Until every turn has its response and its user transcript: True at once when there are
    ``expected`` turns, else once that held for ``QUIET_S``; False after ``timeout`` seconds or
    when the relay ended first."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline and not run.done():
        session = relay.session
        answered = (relay.ready  # (see _wait_for_turn)
                    and not session.response_active
                    and all(t.done_at is not None for t in session.turns)
                    and all(t.user_transcribed or t.user_item_id is None for t in session.turns)
                    and session.state.value in ("listening", "speaking"))
        if answered and expected is not None and len(session.turns) >= expected:
            return True  # (audio still queued is closing silence after the last utterance: no turn of its own)
        if answered and relay.queued_audio_ms == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= QUIET_S:
                return True
            await news.wait(quiet_since + QUIET_S - time.monotonic())
        else:
            quiet_since = None
            await news.wait(0.1)
    return False


def _progress(source: _Source, options: ReplayOptions, err: Console) -> Any:
    if not options.progress or not err.is_terminal or source.duration_s < 10:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("replaying"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                        TimeRemainingColumn(), console=err, transient=True)
    progress.add_task("replay", total=source.duration_s)
    progress.start()
    return progress


def _check_writable(option: str, path: Path) -> None:
    """Fail before the run, not after it, when ``path`` cannot be written."""
    folder = path.parent
    if path.is_dir():
        raise UsageError(f"cannot write {option} {path}: it is a folder")
    if not folder.is_dir():
        raise UsageError(f"cannot write {option} {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {option} {path}: {folder} is not writable")


def _compare(source: _Source, turns: list[Any], console: Console) -> dict[str, Any]:
    assert source.recorded is not None  # (checked before the run)
    before = source.recorded.transcripts()
    after = {"user": [t.user_transcript for t in turns if t.user_transcript],
             "assistant": [t.assistant_transcript for t in turns if t.assistant_transcript]}
    result: dict[str, Any] = {}
    for role in ("user", "assistant"):
        diff = list(difflib.unified_diff(before.get(role, []), after[role], f"recorded {role}", f"replayed {role}",
                                         lineterm="", n=0))
        result[role] = {"recorded": before.get(role, []), "replayed": after[role], "same": not diff}
        if diff:
            console.print(f"[yellow]{role} transcripts differ from the recording:[/]")
            for line in diff:
                console.print(f"  {line}", highlight=False, markup=False)
        else:
            console.print(f"[green]{role} transcripts match the recording[/]")
    return result
