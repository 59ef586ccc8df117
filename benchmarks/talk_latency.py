"""Latency and CPU of ``voicerelay talk`` on the virtual sound card of the tests.

    python benchmarks/talk_latency.py               # about 30 s
    python benchmarks/talk_latency.py --replies 5 --listen-seconds 10
    python benchmarks/talk_latency.py --terminal    # with the live state line a terminal shows
    python benchmarks/talk_latency.py --duplex full # without echo cancellation (the default is auto, as talk's)

Set-up: a private PulseAudio server (``tests/audio_rig.py``: microphone ``vr_mic``, speakers
``vr_speaker``), reached by PortAudio through ALSA's ``pulse`` device at its own rate (44.1 kHz,
so both directions go through the soxr resamplers). The embedded backend runs in a child process
(``voicerelay backend``, pace 10), so only the talk side is measured: :func:`voicerelay.talk.talk`
runs in this process, exactly as the CLI runs it, against ``ws://`` that backend. Speech is played
into the microphone with ``paplay``.

1. Microphone frame -> sent upstream: from a 20 ms frame being complete to its
   ``input_audio_buffer.append`` having been written to the WebSocket (the relay's recorder
   hook, called right after the send, notes it; frames are matched by content, in order). The
   microphone delivers 40 ms blocks, two frames each: the first frame of a block was complete
   20 ms before the callback, and that wait counts. The device's own input latency
   (``stream.latency``) is printed beside it: it comes before the callback.
2. Delta received -> played: for each reply, from its first ``response.output_audio.delta``
   arriving to the first sample of it reaching the speaker (the output callback's
   ``outputBufferDacTime``): the pre-roll wait, the next output block, the resampler and the
   device's output latency. (Later deltas queue behind the audio already playing: their wait
   is the reply itself, not latency.)
3. CPU % of one core: this process's CPU time (all its threads: PortAudio's callbacks, soxr,
   the event loop, the WebSocket) over wall time, while listening (``--listen-seconds`` of
   microphone input and no reply, before the first reply and again after the last: the output
   stream has not started yet, then rests or, with echo cancellation, runs on) and while
   playing (2.5 s from 0.3 s into each reply, the microphone still streaming). By default the console is not a terminal,
   so the plain view prints lines only; ``--terminal`` renders its live state line (redrawn every
   tick) as a person at a terminal sees it. Both figures are also split by thread (Linux:
   ``/proc/self/task/*/schedstat``): the event loop, PortAudio's input thread (the microphone's
   callback), the PulseAudio client threads of ALSA's pulse plugin (one per stream), and the
   rest, which is PortAudio's output thread (the speaker's callback; a new one each time the
   output stream starts). With echo cancellation (``--duplex auto``, talk's default) the echo
   path runs on PortAudio's input thread, and the output stream never rests: its CPU, and the
   time the echo path spent (its own thread CPU clock), are printed too.

The CPU figures move by a few tenths of a percent from run to run on a busy machine: compare
runs made in the same conditions, alternating.

Targets printed beside the figures (not asserted): <= 30 ms, <= 60 ms, < 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import backend_and_rig, until_live  # noqa: E402

FRAME_MS = 20
#: Utterances whose replies last 3.4 s or more.
REPLIES = ["what_can_you_do", "hello_there", "what_is_your_name"]
PLAYING_WINDOW_S = 2.5


class Probe:
    """Watches one running talk session: frame times in, append times out, replies played."""

    def __init__(self) -> None:
        self.talk: Any = None
        self.frames: dict[bytes, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.mic_to_sent: list[float] = []
        self.items: list[str] = []  # reply items, in order
        self.input_thread: int | None = None  # PortAudio's input thread (its native id)

    def attach(self, talk: Any) -> None:
        self.talk = talk
        forward = talk.on_mic_frames

        def on_frames(frames: list[bytes]) -> None:  # PortAudio's input thread, once per block
            now = time.monotonic()
            self.input_thread = threading.get_native_id()
            for k, frame in enumerate(frames):  # the earlier frames of a block were complete earlier
                self.frames[frame].append(now - (len(frames) - 1 - k) * FRAME_MS / 1000)
            forward(frames)

        talk.mic.on_frames = on_frames
        talk.relay.recorder = self  # record() is called after each send and on each receive

    def record(self, direction: str, event: dict[str, Any]) -> None:
        if direction == "up" and event.get("type") == "input_audio_buffer.append":
            stamps = self.frames.get(base64.b64decode(event["audio"]))
            if stamps:
                self.mic_to_sent.append((time.monotonic() - stamps.popleft()) * 1000)
        elif direction == "down" and event.get("type") == "response.output_item.added":
            self.items.append(event["item"]["id"])


def thread_times() -> dict[int, tuple[str, int]]:
    """CPU nanoseconds of each of this process's threads, with its name (Linux; empty elsewhere)."""
    found = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat, open(f"/proc/self/task/{tid}/comm") as comm:
                found[int(tid)] = (comm.read().strip(), int(stat.read().split()[0]))
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return found


def by_thread(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], probe: Probe,
              into: collections.Counter[str]) -> None:
    """Add each thread's CPU between two :func:`thread_times` to its group in ``into``."""
    for tid, (name, ns) in after.items():
        if tid == threading.main_thread().native_id:
            group = "event loop"
        elif tid == probe.input_thread:
            group = "PortAudio input"
        elif name == "threaded-ml":
            group = "PulseAudio clients"
        else:
            group = "PortAudio output and other"
        into[group] += ns - before.get(tid, (name, 0))[1]


async def listen(talk: Any, probe: Probe, seconds: float) -> dict[str, Any]:
    """CPU while listening for ``seconds`` (nobody speaks, no reply): % of one core in all, by
    thread, and in the echo path (if any); whether the output stream ran meanwhile."""
    echo = talk.echo
    echo0 = echo.stats.cpu_s if echo is not None else 0.0
    threads: collections.Counter[str] = collections.Counter()
    tasks0, cpu0, wall0 = thread_times(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - wall0
    cpu = (time.process_time() - cpu0) / wall * 100
    by_thread(tasks0, thread_times(), probe, threads)
    return {"cpu": cpu, "threads": threads, "wall": wall, "output": talk.speaker.active,
            "echo": (echo.stats.cpu_s - echo0) / wall * 100 if echo is not None else None}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(args: argparse.Namespace, backend_url: str) -> None:
    from rich.console import Console

    from voicerelay.protocol.events import Dialect
    from voicerelay.talk import TalkOptions, talk

    probe = Probe()
    options = TalkOptions(backend=backend_url, dialect=Dialect.GA, duplex=args.duplex)
    quiet = Console(file=io.StringIO(), force_terminal=args.terminal, width=120)
    session = asyncio.create_task(talk(options, quiet, quiet, on_start=probe.attach))
    try:
        talk_ = await until_live(session, probe)
        mic, speaker = talk_.mic, talk_.speaker
        await asyncio.sleep(1.0)

        echo = talk_.echo
        listening = await listen(talk_, probe, args.listen_seconds)

        first_audio, playing_cpu, playing_wall, playing_echo = [], 0.0, 0.0, 0.0
        threads: collections.Counter[str] = collections.Counter()
        for n in range(args.replies):
            stem = REPLIES[n % len(REPLIES)]
            replies_before = len(probe.items)
            play = await asyncio.create_subprocess_exec(
                "paplay", "--device=vr_mic_feed", str(ROOT / "recordings" / f"{stem}.wav"),
                env={**os.environ, "PULSE_SINK": "vr_mic_feed"})
            await play.wait()
            deadline = time.monotonic() + 20
            while len(probe.items) == replies_before or talk_.buffer.idle:  # until the reply sounds
                await asyncio.sleep(0.02)
                if time.monotonic() > deadline:
                    raise SystemExit(f"no reply to {stem}")
            await asyncio.sleep(0.3)  # into the reply (all replies here last 3 s or more)
            echo0 = echo.stats.cpu_s if echo is not None else 0.0
            tasks0, cpu0, wall0 = thread_times(), time.process_time(), time.monotonic()
            await asyncio.sleep(PLAYING_WINDOW_S)  # one sleep: no polling of ours inside the window
            playing_cpu += time.process_time() - cpu0
            playing_echo += echo.stats.cpu_s - echo0 if echo is not None else 0.0
            playing_wall += time.monotonic() - wall0
            by_thread(tasks0, thread_times(), probe, threads)
            if talk_.buffer.idle:
                raise SystemExit(f"the reply to {stem} ended inside the measuring window")
            while not talk_.buffer.idle:
                await asyncio.sleep(0.05)
            latency = talk_.buffer.first_audio_latency(probe.items[-1])
            if latency is not None:
                first_audio.append(latency * 1000)
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)
        listening_after = await listen(talk_, probe, args.listen_seconds)  # the output stream may run on
        underruns, overflows, underflows = talk_.buffer.underruns, mic.overflows, speaker.underflows
        talk_.quit()
        await session
    finally:
        if not session.done():
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)

    sent = probe.mic_to_sent
    print(f"duplex {talk_.duplex}" + (f" (echo cancellation: {echo.engine.name})" if echo is not None else ""))
    print(f"devices: microphone {mic.device.name!r} at {mic.rate} Hz (input latency {mic.latency * 1000:.1f} ms), "
          f"speaker {speaker.device.name!r} at {speaker.rate} Hz (output latency {speaker.latency * 1000:.1f} ms); "
          f"20 ms frames; input blocks of 40 ms, output blocks of 20 ms")
    print(f"microphone frame -> sent upstream:  p50 {statistics.median(sent):5.1f} ms   p95 {pct(sent, 95):5.1f} ms"
          f"   max {max(sent):5.1f} ms   ({len(sent)} frames)      target <= 30 ms")
    print(f"delta received -> played:           p50 {statistics.median(first_audio):5.1f} ms   "
          f"max {max(first_audio):5.1f} ms   ({len(first_audio)} replies: "
          f"{', '.join(f'{v:.0f}' for v in first_audio)})      target <= 60 ms")
    print(f"CPU, one core:  listening {listening['cpu']:4.1f} %  ({args.listen_seconds:g} s)   "
          f"playing {playing_cpu / playing_wall * 100:4.1f} %  ({playing_wall:.1f} s of replies)   "
          f"listening after the replies {listening_after['cpu']:4.1f} %"
          f" (output stream {'running' if listening_after['output'] else 'resting'})      target < 5 %"
          + ("   (live state line drawn)" if args.terminal else ""))
    for what, counts, wall in (("listening", listening["threads"], listening["wall"]),
                               ("playing", threads, playing_wall),
                               ("listening after", listening_after["threads"], listening_after["wall"])):
        if counts:
            print(f"  {what}, by thread: " + ",  ".join(f"{group} {ns / 1e9 / wall * 100:.2f} %"
                                                       for group, ns in counts.most_common()))
    if echo is not None:
        print(f"  echo path (in PortAudio input): listening {listening['echo']:.2f} %,  "
              f"playing {playing_echo / playing_wall * 100:.2f} %,  listening after {listening_after['echo']:.2f} %")
    print(f"playback underruns {underruns}, microphone overflows {overflows}, speaker underflows {underflows}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=3, help="replies to play (default 3)")
    parser.add_argument("--listen-seconds", type=float, default=5.0, help="listening window (default 5)")
    parser.add_argument("--terminal", action="store_true",
                        help="render the live state line, as in a terminal (the default console is not one)")
    parser.add_argument("--duplex", choices=("auto", "full", "half"), default="auto",
                        help="talk's --duplex (default auto: echo cancellation, as talk's default)")
    args = parser.parse_args()
    with backend_and_rig() as (url, _rig):
        asyncio.run(main(args, url))
