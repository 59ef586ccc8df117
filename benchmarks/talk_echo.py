"""Echo cancellation in ``voicerelay talk`` on laptop speakers, reproduced on the virtual sound card.

    python benchmarks/talk_echo.py                      # every candidate, 20 replies, 20 barge-ins
    python benchmarks/talk_echo.py --replies 5 --barge-ins 5 --candidates webrtc,none

Set-up: the tests' private PulseAudio server (``tests/audio_rig.py``) with its echo loopback on
(:meth:`AudioRig.echo`: what the speakers play is fed back into the microphone at -6 dB after
30 ms), the embedded backend in a child process (pace 10), and :func:`voicerelay.talk.talk` in
this process, exactly as the CLI runs it (``--duplex auto --echo-canceller NAME``, or
``--duplex full`` for ``none``), so its parts can be watched. Prompts are typed
(``Relay.user_text``: nobody speaks); the user's speech is a recording played into the
microphone with ``paplay``, where it mixes with the echo.

For each candidate:

1. **Self-interruptions** over ``--replies`` replies with nobody speaking: every barge-in the
   session carried out (``Interrupted``) and every user turn the server heard (the echo taken
   for speech). Each reply gets until it has played out, or 8 s (without cancellation the echo
   sets off a loop of turns that never ends). Counted only when the reply did play and its echo
   did reach the microphone (its level is checked on the microphone path, before cancellation).
2. **Barge-ins** over ``--barge-ins`` tries: a 4 s reply plays, 1 s into it the user says
   "hello there" over it; detected when the session interrupts the reply after the user started
   (a try the echo had already interrupted does not count either way: it is reported). The
   truncate's ``audio_end_ms`` is compared with what the speakers really played (from a capture
   of ``vr_speaker.monitor``, as ``tests/test_talk.py`` does): within 60 ms is the target.
   **Double talk**: the same tries measure what the canceller and its gate leave of the user's
   voice where it starts (a voice under the assistant's echo starts as quietly as a residue):
   what was sent upstream is matched with the recording (cross-correlation, so audio the gate
   held back and sent late is found), and the onset lost is the time from the voice's first
   10 ms frame within 30 dB of its loudest to the first one sent at most 6 dB below what was
   said; the user's transcript of each try is compared with "hello there".
3. **ERLE** (dB) on the microphone path over the self-interruption run: the microphone's energy
   over the canceller's output while the far end sounds, without the residual echo gate (the
   canceller's own figure) and with it (what goes upstream).
4. **CPU** added per second of microphone audio: the input thread's CPU time spent in the echo
   path (matching the far end, the canceller, the gate), over the audio processed.

Prints one line per candidate as it finishes, and the comparison table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import backend_and_rig, until_live, read_recording  # noqa: E402
from tests.audio_rig import AudioRig  # noqa: E402

CANDIDATES = ["none", "webrtc", "aec-audio-processing", "speex"]
LOUD = 8
REPLY_WAIT_S = 8.0
PROMPT = "what can you do"  # a 4.1 s reply


class Probe:
    """One talk session: its Talk, the barge-ins and user turns it saw, the reply audio and truncates."""

    def __init__(self) -> None:
        self.talk: Any = None
        self.interrupted: list[float] = []  # monotonic times of Interrupted observations
        self.user_turns: list[tuple[float, str]] = []
        self.deltas: dict[str, list[bytes]] = {}
        self.truncates: list[dict[str, Any]] = []
        self.mic_peak_dbfs = float("-inf")  # the microphone before cancellation, loudest 20 ms
        self.sent: list[tuple[float, bytes]] = []  # (monotonic time, pcm) of each append sent upstream

    def attach(self, talk: Any) -> None:
        from voicerelay.conversation import Interrupted
        from voicerelay.protocol.session import Transcript

        self.talk = talk
        record = talk.record

        def on_event(direction: str, event: Any) -> None:
            kind = event.get("type")
            if kind == "response.output_audio.delta":
                self.deltas.setdefault(event["item_id"], []).append(base64.b64decode(event["delta"]))
            elif kind == "conversation.item.truncate":
                self.truncates.append(dict(event))
            elif kind == "input_audio_buffer.append":
                self.sent.append((time.monotonic(), base64.b64decode(event["audio"])))
            record(direction, event)

        talk.record = on_event

        def observe(obs: Any) -> None:
            if isinstance(obs, Interrupted) and obs.item_id:
                self.interrupted.append(time.monotonic())
            elif isinstance(obs, Transcript) and obs.role == "user" and obs.final and obs.text != PROMPT:
                self.user_turns.append((time.monotonic(), obs.text))  # (a typed prompt is a user turn too)

        talk.conversation.subscribe(observe)
        process = talk.mic.process  # the echo path's, or None

        def measured(frames: list[bytes], adc_time: float) -> list[bytes]:
            pcm = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)
            level = 10 * np.log10(float(pcm @ pcm) / pcm.size + 1e-9) - 90.309
            self.mic_peak_dbfs = max(self.mic_peak_dbfs, level)
            return process(frames, adc_time) if process is not None else frames

        talk.mic.process = measured


def heard_extent_ms(capture: np.ndarray, reply: np.ndarray) -> tuple[float, float]:
    """How much of ``reply`` reached the speakers (at least, at most) in ms; see tests/test_talk.py."""
    onset = int(np.flatnonzero(np.abs(capture) > LOUD)[0]) - int(np.flatnonzero(np.abs(reply) > LOUD)[0])
    loud = np.abs(capture[onset:].astype(np.int32)) > LOUD
    quiet_run = 24 * 600
    window = np.convolve(loud, np.ones(quiet_run, dtype=np.int32), mode="valid")
    quiet = np.flatnonzero(window == 0)
    end = int(quiet[0]) if quiet.size else loud.size
    later_sound = np.flatnonzero(np.abs(reply[end:]) > LOUD)
    return end / 24, (end + (int(later_sound[0]) if later_sound.size else reply.size - end)) / 24


FRAME = 240  # 10 ms at 24 kHz


def frame_levels(pcm: np.ndarray) -> np.ndarray:
    x = pcm[: pcm.size // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    return 10 * np.log10((x * x).mean(axis=1) + 1e-3)


def onset_lost_ms(sent: np.ndarray, voice: np.ndarray) -> float | None:
    """How much of ``voice``'s start is missing from ``sent`` (what went upstream around it), in ms.

    ``voice`` is found in ``sent`` by cross-correlation of its loud part (from 200 ms after its
    onset); then frame by frame: the onset is its first 10 ms frame within 30 dB of its loudest,
    and what is lost runs until the first frame sent no more than 6 dB below the voice's own."""
    levels = frame_levels(voice)
    speech = np.flatnonzero(levels > levels.max() - 30)
    onset = int(speech[0])
    body = voice[(onset + 20) * FRAME:].astype(np.float64)
    if sent.size < voice.size or body.size < FRAME:
        return None
    size = 1 << int(np.ceil(np.log2(sent.size + body.size)))  # (by FFT: the direct way holds the GIL for seconds)
    corr = np.fft.irfft(np.fft.rfft(sent.astype(np.float64), size) * np.conj(np.fft.rfft(body, size)), size)
    at = int(np.argmax(corr[: sent.size - body.size + 1])) - (onset + 20) * FRAME  # where voice[0] is in sent
    if at < 0 or at + voice.size > sent.size:
        return None
    loss = frame_levels(sent[at:at + voice.size])[: levels.size] - levels
    within = [k for k in speech if loss[k] > -6]
    return (within[0] - onset) * 10.0 if within else None


async def until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


async def played_out(talk: Any, timeout: float) -> bool:
    """Until the reply has played and the session listens again."""
    return await until(lambda: talk.buffer.idle and talk.relay.session.state.value == "listening"
                       and not talk.relay.session.response_active, timeout)


async def run_candidate(name: str, args: argparse.Namespace, url: str, rig: AudioRig) -> dict[str, Any]:
    from rich.console import Console

    from voicerelay.protocol.events import Dialect
    from voicerelay.talk import TalkOptions, talk

    probe = Probe()
    options = TalkOptions(backend=url, dialect=Dialect.GA, text=True,
                          duplex="full" if name == "none" else "auto",
                          echo_canceller="webrtc" if name == "none" else name)
    quiet = Console(file=io.StringIO(), width=160)
    result: dict[str, Any] = {"candidate": name}
    with rig.echo():
        session = asyncio.create_task(talk(options, quiet, quiet, on_start=probe.attach))
        try:
            talk_ = await until_live(session, probe)
            if name != "none" and talk_.echo is None:
                raise SystemExit(f"{name}: echo cancellation did not start: {talk_.echo_off}")
            if talk_.echo is not None and args.no_gate:
                talk_.echo.gate = False
            if talk_.echo is not None and args.no_preroll:
                talk_.echo.preroll = False
            await asyncio.sleep(0.5)

            # 1. self-interruptions, nobody speaking
            cut_before, turns_before = len(probe.interrupted), len(probe.user_turns)
            affected = valid = 0
            for k in range(args.replies):
                n_int, n_turns = len(probe.interrupted), len(probe.user_turns)
                probe.mic_peak_dbfs = float("-inf")
                talk_.relay.user_text(PROMPT)
                sounded = await until(lambda: not talk_.buffer.idle, 10)
                await played_out(talk_, REPLY_WAIT_S)
                await asyncio.sleep(0.5)
                heard = probe.mic_peak_dbfs > -40  # the echo did reach the microphone
                if sounded and heard:
                    valid += 1
                    hit = len(probe.interrupted) > n_int or len(probe.user_turns) > n_turns
                    affected += hit
                    if hit and args.verbose:
                        print(f"  reply {k}: {len(probe.interrupted) - n_int} barge-ins, "
                              f"turns {[text for _, text in probe.user_turns[n_turns:]]}", flush=True)
            result["self_interruptions"] = (len(probe.interrupted) - cut_before) + (len(probe.user_turns) - turns_before)
            result["replies_affected"] = affected
            result["replies_valid"] = valid
            echo = talk_.echo
            if echo is not None:
                result["erle_db"] = echo.stats.erle_db
                result["erle_gated_db"] = echo.stats.erle_gated_db
                result["cpu"] = echo.stats.cpu_per_audio_s
                result["relearns"] = echo.stats.relearns
                result["preroll_frames"] = getattr(echo.stats, "preroll_frames", None)
            if name == "none":
                await played_out(talk_, 0.1)
                return result  # no barge-in can be told from the echo's own

            # 2. barge-ins through the echo
            await played_out(talk_, 15)
            detected = early = tries = 0
            onsets_lost: list[float] = []
            heard_right = heard_tries = 0
            voice = read_recording("hello_there")
            errors_ms: list[float] = []
            within = 0
            with tempfile.TemporaryDirectory(prefix="vr-echo-") as folder:
                for k in range(args.barge_ins):
                    capture = Path(folder) / f"speaker-{k}.wav"
                    recorder = subprocess.Popen(
                        ["parecord", "--latency-msec=20", "--device=vr_speaker.monitor", "--rate=24000",
                         "--channels=1", "--format=s16le", "--file-format=wav", str(capture)], env=rig.env(None, None))
                    await asyncio.sleep(0.3)
                    n_int, n_trunc = len(probe.interrupted), len(probe.truncates)
                    talk_.relay.user_text(PROMPT)
                    await until(lambda: not talk_.buffer.idle, 10)
                    await asyncio.sleep(1.0)
                    tries += 1
                    if len(probe.interrupted) > n_int:
                        early += 1  # the echo cut it off before the user spoke
                    else:
                        said = time.monotonic()
                        n_turns = len(probe.user_turns)
                        play = await asyncio.create_subprocess_exec(
                            "paplay", "--device=vr_mic_feed", str(ROOT / "recordings" / "hello_there.wav"),
                            env=rig.env(None, None))
                        if await until(lambda: len(probe.interrupted) > n_int, 5) and probe.interrupted[n_int] > said:
                            detected += 1
                        await play.wait()
                        await until(lambda: len(probe.user_turns) > n_turns, 10)
                        heard_tries += 1
                        said_text = probe.user_turns[n_turns][1] if len(probe.user_turns) > n_turns else ""
                        heard_right += said_text.strip().lower() == "hello there"
                        sent = np.frombuffer(b"".join(pcm for t, pcm in probe.sent if said - 0.5 <= t <= said + 4.0),
                                             dtype="<i2")
                        lost = onset_lost_ms(sent, voice)
                        if lost is not None:
                            onsets_lost.append(lost)
                        if args.verbose:
                            print(f"  barge-in {k}: onset lost {lost} ms, heard {said_text!r}", flush=True)
                    await played_out(talk_, 15)
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait(5)
                    if len(probe.truncates) > n_trunc and len(probe.interrupted) > n_int:
                        import soundfile

                        truncate = probe.truncates[n_trunc]
                        reply = np.frombuffer(b"".join(probe.deltas.get(truncate["item_id"], [])), dtype="<i2")
                        heard_pcm, _ = soundfile.read(capture, dtype="int16")
                        if reply.size and np.abs(heard_pcm).max() > LOUD:
                            at_least, at_most = heard_extent_ms(heard_pcm, reply)
                            end = truncate["audio_end_ms"]
                            error = 0.0 if at_least <= end <= at_most else min(abs(end - at_least), abs(end - at_most))
                            errors_ms.append(error)
                            within += error <= 60
                    await asyncio.sleep(0.3)
            result.update(onset_lost_ms=onsets_lost, heard_right=heard_right, heard_tries=heard_tries)
            result.update(barge_tries=tries, barge_detected=detected, barge_early=early,
                          truncate_within_60=within, truncate_measured=len(errors_ms),
                          truncate_worst_ms=max(errors_ms) if errors_ms else None)
            if echo is not None:
                result["cpu"] = echo.stats.cpu_per_audio_s
            return result
        finally:
            if probe.talk is not None:
                probe.talk.quit()
            await asyncio.wait_for(session, 10)


def fmt(value: Any, spec: str = "", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [("candidate", f"self-interruptions ({args.replies} replies)", "replies affected",
             f"barge-ins detected ({args.barge_ins})", "truncate ≤ 60 ms", "onset lost ms p50/max",
             "\"hello there\" heard", "ERLE dB (gate)", "CPU / s audio")]
    for r in results:
        barge = ("—" if "barge_tries" not in r else
                 f"{r['barge_detected']}/{r['barge_tries'] - r['barge_early']}"
                 + (f" ({r['barge_early']} cut by echo first)" if r["barge_early"] else ""))
        trunc = "—" if "truncate_measured" not in r else (
            f"{r['truncate_within_60']}/{r['truncate_measured']} (worst {fmt(r['truncate_worst_ms'], '.0f')} ms)")
        erle = "—" if r.get("erle_db") is None else f"{r['erle_db']:.1f} ({fmt(r.get('erle_gated_db'), '.1f')})"
        cpu = "—" if r.get("cpu") is None else f"{r['cpu'] * 100:.2f} %"
        lost = r.get("onset_lost_ms") or []
        onset = "—" if not lost else f"{np.median(lost):.0f}/{max(lost):.0f} ({len(lost)})"
        heard = "—" if not r.get("heard_tries") else f"{r['heard_right']}/{r['heard_tries']}"
        rows.append((r["candidate"], f"{r['self_interruptions']}", f"{r['replies_affected']}/{r['replies_valid']}",
                     barge, trunc, onset, heard, erle, cpu))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


async def main(args: argparse.Namespace, url: str, rig: AudioRig) -> None:
    results = []
    for name in args.candidates.split(","):
        started = time.monotonic()
        result = await run_candidate(name, args, url, rig)
        results.append(result)
        print(f"{name}: {result}  ({time.monotonic() - started:.0f} s)", flush=True)
    print()
    print(table(results, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=20, help="replies with nobody speaking (default 20)")
    parser.add_argument("--barge-ins", type=int, default=20, help="barge-in tries (default 20)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help=f"comma-separated, of {', '.join(CANDIDATES)} (default all)")
    parser.add_argument("--verbose", action="store_true", help="say which replies were cut off and by what")
    parser.add_argument("--no-gate", action="store_true", help="without the residual echo gate (the canceller alone)")
    parser.add_argument("--no-preroll", action="store_true",
                        help="the gate without its pre-roll (a voice onset it held back is not sent)")
    args = parser.parse_args()
    with backend_and_rig() as (url, rig):
        asyncio.run(main(args, url, rig))
