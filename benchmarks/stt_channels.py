"""How well the embedded backend hears its own domain through real audio channels.

    python benchmarks/stt_channels.py             # 10 voices x 24 phrases x 11 channels: about 25 min
    python benchmarks/stt_channels.py --quick     # 3 voices x 8 phrases, all channels: about 3 min
    python benchmarks/stt_channels.py --no-browser --no-pulse --json out.json

Every domain phrase (``phrases.domain_sentences()``) is synthesised in six voices the recogniser
was not tuned on (:data:`HELD_OUT`: espeak-ng language voices and variants that
``tts.OPENAI_VOICES`` does not use, at several speeds and pitches) and in four of the backend's
own voices (:data:`OWN`), padded with 300 ms before and 500 ms after and lightly noised
(35 dB SNR: espeak's exact digital silence defeats pocketsphinx), then sent through each channel:

- simulated (``tests/channels.py``): clean; 16 -> 48 -> 24 kHz and 44.1 -> 24 kHz resampling
  chains; gain -20 dB and +6 dB (clipped); pink noise at -45 dBFS; a telephone line (8 kHz,
  300-3400 Hz, mu-law); a browser's processing (48 kHz, high-pass, AGC, resampled); a 44.1 kHz
  device with a -60 dBFS noise floor;
- real: **PulseAudio** (a private server started like the tests' rig, with its own 44.1 kHz null
  sink and virtual microphone: the phrases are played at 24 kHz into it, Pulse resamples them and
  mixes a -60 dBFS pink noise stream, and the microphone is recorded at 44.1 kHz and resampled
  to 24 kHz with soxr, as ``talk`` does); **Chromium**'s fake microphone (headless Debian
  chromium through Playwright: the phrases as the fake capture file, heard through
  ``getUserMedia`` with the demo page's constraints, so with the browser's echo canceller and
  automatic gain control, and captured at 24 kHz by the demo page's AudioWorklet).

The real channels play one long tape of all the utterances in real time; the capture is aligned
with the tape by cross-correlation and cut back into utterances. Each utterance is then given to
``stt.Recognizer().recognize`` (in this process, one at a time) and its transcript to
``responder.respond``: the intent is right when the reply equals the reply to the phrase itself.

Printed: per channel, intent accuracy, word accuracy (1 - word error rate) and the STT real-time
factor (recognition seconds / audio seconds), by the wall clock and by the recognising thread's CPU
time (``CPU RTF``: what other work on a shared machine changes least); per voice, the clean accuracy; and out-of-domain
speech (``speech_engines.OUT_OF_DOMAIN``, clean) taken for a domain phrase.

A real channel's capture can glitch: when the machine starves Chromium's audio threads of CPU
(other work, or the hypervisor's steal), its pipeline drops and repeats 10 ms buffers, up to a
second of them, and an utterance comes back cut and spliced (correlation with what was said below
:data:`MATCH_CORRELATION`). That is the machine's fault, not the channel's processing, so such an
utterance is captured again, in a tape of its own, up to :data:`RECAPTURES` times; the table's
notes say how many were, per channel. The benchmark fails (exit 1) when an utterance is still lost
after that.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
from scipy import signal as scipy_signal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speech_engines import OUT_OF_DOMAIN, word_errors

from tests import channels
from voicerelay.backend import phrases, responder, stt
from voicerelay.backend.tts import OUTPUT_RATE, Synthesizer, add_noise

RATE = OUTPUT_RATE
#: (espeak-ng voice, words per minute, pitch 0-100) the recogniser was not tuned on: none is one of
#: tts.OPENAI_VOICES, and none was used while choosing the front end (that was done on en+Andy,
#: en-us+Michael, en+f4 and en-us-nyc+m2).
HELD_OUT: tuple[tuple[str, int, int], ...] = (
    ("en-gb-x-rp+m7", 175, 35),
    ("en-us+Annie", 150, 65),
    ("en-029+m8", 190, 45),
    ("en-us+klatt", 160, 50),
    ("en-gb-scotland+f3", 200, 60),
    ("en-us-nyc+Lee", 140, 45),
)
#: Voices of the backend's own (tts.OPENAI_VOICES, the ones the recogniser was tuned on): what the
#: shipped recordings and replies use.
OWN: tuple[tuple[str, int, int], ...] = (("alloy", 175, 50), ("coral", 175, 50), ("echo", 175, 50), ("sage", 175, 50))
QUICK_HELD_OUT, QUICK_OWN = HELD_OUT[:2], OWN[:1]
QUICK_PHRASES = ("hello there", "what is your name", "what is the weather in paris", "help",
                 "thank you", "what time is it", "turn on the lights", "tell me a joke")
LEAD_S, TRAIL_S, SNR_DB = 0.3, 0.5, 35.0
GAP_S = 1.0  # between two utterances on a real channel's tape
#: How many times a real channel's utterances that came back glitched are captured again.
RECAPTURES = 2
PULSE_RATE = 44_100
PULSE_NOISE_DBFS = -60.0
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass(frozen=True)
class Utterance:
    voice: str
    text: str
    pcm: np.ndarray  # int16 24 kHz, padded and lightly noised


@dataclass
class Score:
    """What one channel did to the utterances."""

    right: int = 0
    total: int = 0
    word_errors: int = 0
    words: int = 0
    seconds: float = 0.0  # spent recognising (wall clock)
    cpu: float = 0.0  # spent recognising (this thread's CPU: less sensitive to other work on the machine)
    audio: float = 0.0
    misses: list[str] = field(default_factory=list)
    by_voice: dict[str, list[int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"intent_accuracy": self.right / max(self.total, 1), "right": self.right, "total": self.total,
                "word_accuracy": 1 - self.word_errors / max(self.words, 1), "rtf": self.seconds / max(self.audio, 1e-9),
                "cpu_rtf": self.cpu / max(self.audio, 1e-9),
                "by_voice": {voice: {"right": r, "total": t} for voice, (r, t) in self.by_voice.items()},
                "misses": self.misses}


def voice_label(voice: tuple[str, int, int]) -> str:
    return f"{voice[0]}@{voice[1]}wpm/p{voice[2]}"


def utterances(voices: Sequence[tuple[str, int, int]], texts: Sequence[str]) -> list[Utterance]:
    lead, trail = np.zeros(int(LEAD_S * RATE), np.int16), np.zeros(int(TRAIL_S * RATE), np.int16)
    made = []
    for voice in voices:
        synthesizer = Synthesizer(voice[0], voice[1], voice[2])
        for seed, text in enumerate(texts):
            speech = synthesizer.synthesize(text)
            made.append(Utterance(voice_label(voice), text, add_noise(np.concatenate((lead, speech, trail)), SNR_DB, seed)))
    return made


# -- real channels: one tape in real time, aligned and cut back -----------------------------------


def tape_of(items: Sequence[Utterance]) -> tuple[np.ndarray, list[int]]:
    """All the utterances one after the other, with :data:`GAP_S` of light noise around each; their starts."""
    gap = add_noise(np.zeros(int(GAP_S * RATE), np.int16), seed=99)
    parts, starts, at = [gap], [], gap.size
    for item in items:
        starts.append(at)
        parts += [item.pcm, gap]
        at += item.pcm.size + gap.size
    return np.concatenate(parts), starts


def circular_offset(capture: np.ndarray, tape: np.ndarray) -> int:
    """k such that capture[n] best matches tape[(n + k) % len(tape)] (capture at least as long as the tape)."""
    period = tape.size
    a = np.fft.rfft(capture[:period].astype(np.float64))
    b = np.fft.rfft(tape.astype(np.float64))
    return int(np.argmax(np.fft.irfft(np.conj(a) * b, period)))


def refine(capture: np.ndarray, reference: np.ndarray, guess: int, slack: int) -> int | None:
    """Where ``reference`` starts in ``capture``, within ``slack`` samples of ``guess``; None if it is not whole there."""
    low, high = max(guess - slack, 0), min(guess + slack, capture.size - reference.size)
    if high < low:
        return None
    window = capture[low : high + reference.size].astype(np.float64)
    scores = scipy_signal.correlate(window, reference.astype(np.float64), mode="valid", method="fft")
    return low + int(np.argmax(scores))


#: How far from where the capture's clock so far puts it an utterance is looked for: a real channel can
#: drop or repeat a buffer mid-capture (Chromium's fake microphone did, once in a 10-minute tape), which
#: shifts everything after it; less than half of :data:`GAP_S`, so a neighbour can never be taken for it.
SEARCH_S = 0.4
#: An utterance whose best match in the capture correlates less than this with what was said is
#: counted lost (the capture is garbled there), not scored as misheard.
MATCH_CORRELATION = 0.3


def cut(capture: np.ndarray, tape: np.ndarray, starts: Sequence[int], items: Sequence[Utterance],
        looped: bool) -> list[np.ndarray | None]:
    """The utterances as captured (None when one is not whole in the capture, or is garbled there).

    One offset, found over the whole tape, puts each utterance near its place; each is then found
    within :data:`SEARCH_S` of where the ones before it were (following any slip of the capture), and
    kept only if it correlates with what was said."""
    offset = circular_offset(capture, tape) if looped else _linear_offset(capture, tape)
    found: list[np.ndarray | None] = []
    slip = 0
    for start, item in zip(starts, items, strict=True):
        guesses = [start - offset + slip + k * tape.size for k in range(-1, 3)] if looped else [start - offset + slip]
        inside = [g for g in guesses if 0 <= g and g + item.pcm.size <= capture.size]
        at = refine(capture, item.pcm, inside[0], slack=int(SEARCH_S * RATE)) if inside else None
        if at is not None and correlation(capture[at : at + item.pcm.size], item.pcm) < MATCH_CORRELATION:
            at = None
        if at is not None:
            slip += at - inside[0]
        found.append(None if at is None else capture[at : at + item.pcm.size])
    return found


def correlation(heard: np.ndarray, said: np.ndarray) -> float:
    """Normalised correlation of two equally long signals (1: the same up to a gain)."""
    a, b = heard.astype(np.float64), said.astype(np.float64)
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-9))


def _linear_offset(capture: np.ndarray, tape: np.ndarray) -> int:
    """-d such that the tape starts d samples into the capture."""
    scores = scipy_signal.correlate(capture.astype(np.float64), tape.astype(np.float64), mode="full", method="fft")
    return -(int(np.argmax(scores)) - (tape.size - 1))


def through_pulse(items: Sequence[Utterance], folder: Path) -> list[np.ndarray | None]:
    """The utterances through a 44.1 kHz PulseAudio virtual microphone with a -60 dBFS noise floor."""
    from tests.audio_rig import AudioRig

    tape, starts = tape_of(items)
    tape_path, noise_path, raw_path = folder / "tape.wav", folder / "noise.wav", folder / "capture.raw"
    soundfile.write(tape_path, tape, RATE, subtype="PCM_16")
    noise = channels.pink_noise(PULSE_RATE * 10, channels.dbfs_to_rms(PULSE_NOISE_DBFS), 5)
    soundfile.write(noise_path, channels.to_int16(noise), PULSE_RATE, subtype="PCM_16")
    with AudioRig(folder / "pulse") as rig:
        env = rig.env(None, None)
        rig.pactl("load-module", "module-null-sink", "sink_name=vr_dev44", f"rate={PULSE_RATE}", "channels=1",
                  "format=s16le", "sink_properties=device.description=vr_dev44")
        rig.pactl("load-module", "module-virtual-source", "source_name=vr_mic44", "master=vr_dev44.monitor")
        background = [subprocess.Popen(["pacat", "--playback", "--latency-msec=20", "--device=vr_dev44",
                                        f"--rate={PULSE_RATE}", "--channels=1", "--format=s16le", "/dev/zero"],
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        stop_noise = threading.Event()

        def loop_noise() -> None:  # the noise floor: its own stream, mixed by Pulse
            while not stop_noise.is_set():
                subprocess.run(["paplay", "--device=vr_dev44", str(noise_path)], env=env, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        noise_thread = threading.Thread(target=loop_noise, daemon=True)
        try:
            time.sleep(0.5)
            with open(raw_path, "wb") as out:
                recorder = subprocess.Popen(["parecord", "--raw", "--latency-msec=20", "--device=vr_mic44",
                                             f"--rate={PULSE_RATE}", "--channels=1", "--format=s16le"],
                                            env=env, stdout=out, stderr=subprocess.DEVNULL)
                background.append(recorder)
                noise_thread.start()
                time.sleep(0.5)
                subprocess.run(["paplay", "--device=vr_dev44", str(tape_path)], env=env, check=True,
                               timeout=tape.size / RATE * 2 + 30)
                time.sleep(0.5)
                recorder.send_signal(signal.SIGINT)
                recorder.wait(10)
        finally:
            stop_noise.set()
            for process in background:
                if process.poll() is None:
                    process.terminate()
                process.wait(10)
            if noise_thread.is_alive():  # its last paplay ends within the noise file's 10 s
                noise_thread.join(20)
    captured = np.frombuffer(raw_path.read_bytes(), dtype="<i2")
    at_24k = channels.to_int16(soxr.resample(captured.astype(np.float32), PULSE_RATE, RATE))
    return cut(at_24k, tape, starts, items, looped=False)


def capture_again(run: Callable[[Sequence[Utterance], Path], list[np.ndarray | None]], items: Sequence[Utterance],
                  folder: Path, passes: int = RECAPTURES) -> tuple[list[np.ndarray | None], list[int]]:
    """``run(items, folder)`` (a real channel), then again on the utterances it lost, in a tape of
    their own (in ``folder/again-N``), at most ``passes`` times; returns what was captured and how
    many utterances each further pass was given."""
    found = run(items, folder)
    counts: list[int] = []
    for attempt in range(1, passes + 1):
        missing = [index for index, pcm in enumerate(found) if pcm is None]
        if not missing:
            break
        counts.append(len(missing))
        again = folder / f"again-{attempt}"
        again.mkdir()
        for index, pcm in zip(missing, run([items[i] for i in missing], again), strict=True):
            found[index] = pcm
    return found, counts


_CAPTURE_PAGE = """<!doctype html><meta charset="utf-8"><title>capture</title>
<script id="worklet" type="text/plain">WORKLET</script><script>
window.captured = [];
window.startCapture = async () => {
  const ctx = new AudioContext({ sampleRate: 24000 });
  const stream = await navigator.mediaDevices.getUserMedia(CONSTRAINTS);
  const code = new Blob([document.getElementById("worklet").textContent], { type: "text/javascript" });
  await ctx.audioWorklet.addModule(URL.createObjectURL(code));
  const node = new AudioWorkletNode(ctx, "pcm-capture");
  node.port.onmessage = (e) => window.captured.push(e.data);
  ctx.createMediaStreamSource(stream).connect(node);
  window.samples = () => window.captured.reduce((n, b) => n + b.length, 0);
  window.take = () => {
    const all = new Int16Array(window.samples()); let i = 0;
    for (const b of window.captured) for (const v of b) all[i++] = Math.max(-1, Math.min(1, v)) * 0x7fff;
    let s = ""; const bytes = new Uint8Array(all.buffer);
    for (let k = 0; k < bytes.length; k += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(k, k + 0x8000));
    return btoa(s);
  };
};
</script>"""
#: The demo page's getUserMedia constraints (voicerelay/gateway/static/app.js).
DEMO_CONSTRAINTS = '{ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false } }'


def through_chromium(items: Sequence[Utterance], folder: Path) -> list[np.ndarray | None]:
    """The utterances as the demo page's AudioWorklet captures them from Chromium's fake microphone."""
    tape, starts = tape_of(items)
    mic = folder / "fake-mic.wav"
    soundfile.write(mic, tape, RATE, subtype="PCM_16")
    longest = max(item.pcm.size for item in items)
    wanted = tape.size + longest + 2 * RATE  # the fake microphone loops: one whole turn plus any utterance
    worklet = (ROOT / "voicerelay" / "gateway" / "static" / "worklet.js").read_text()
    page = _CAPTURE_PAGE.replace("CONSTRAINTS", DEMO_CONSTRAINTS).replace("WORKLET", worklet)

    async def run() -> np.ndarray:
        from playwright.async_api import Route, async_playwright

        async def serve(route: Route) -> None:
            await route.fulfill(body=page, content_type="text/html")

        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic}",
                "--autoplay-policy=no-user-gesture-required"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
            try:
                context = await browser.new_context()
                origin = "http://127.0.0.1:9"  # never reached: every request is answered by route()
                await context.grant_permissions(["microphone"], origin=origin)
                page_ = await context.new_page()
                await page_.route("**/*", serve)
                await page_.goto(f"{origin}/capture.html")
                await page_.evaluate("window.startCapture()")
                deadline = time.monotonic() + wanted / RATE * 1.5 + 30
                while await page_.evaluate("window.samples()") < wanted:
                    if time.monotonic() > deadline:
                        raise RuntimeError("Chromium's fake microphone delivered too little audio")
                    await asyncio.sleep(1.0)
                data = base64.b64decode(await page_.evaluate("window.take()"))
            finally:
                await browser.close()
        return np.frombuffer(data, dtype="<i2")

    capture = asyncio.run(run())
    soundfile.write(folder / "capture.wav", capture, RATE, subtype="PCM_16")  # for --keep-captures
    return cut(capture, tape, starts, items, looped=True)


# -- recognition and scoring ----------------------------------------------------------------------


def domain_intent(text: str) -> bool:
    """Whether ``text`` gets the reply of some domain phrase (an out-of-domain utterance taken for one)."""
    reply = responder.respond(text)
    return bool(text) and any(reply == responder.respond(phrase) for phrase in phrases.domain_sentences())


def score(recognizer: stt.Recognizer, items: Sequence[Utterance], heard_audio: Sequence[np.ndarray | None]) -> Score:
    result = Score()
    for item, pcm in zip(items, heard_audio, strict=True):
        result.total += 1
        right_wrong = result.by_voice.setdefault(item.voice, [0, 0])
        right_wrong[1] += 1
        result.words += len(item.text.split())
        if pcm is None:
            result.word_errors += len(item.text.split())
            result.misses.append(f"{item.voice}: {item.text!r} -> LOST")
            continue
        start, start_cpu = time.perf_counter(), time.thread_time()
        heard = recognizer.recognize(pcm)
        result.seconds += time.perf_counter() - start
        result.cpu += time.thread_time() - start_cpu
        result.audio += pcm.size / RATE
        result.word_errors += word_errors(item.text, heard.text)
        if responder.respond(heard.text) == responder.respond(item.text):
            result.right += 1
            right_wrong[0] += 1
        else:
            result.misses.append(f"{item.voice}: {item.text!r} -> {heard.text!r} ({heard.source}, {heard.confidence:.1f})")
    return result


def print_row(name: str, held: Score, own: Score) -> None:
    def cells(result: Score) -> str:
        if not result.total:
            return f"{'-':>20}"
        return (f"{result.right:>4}/{result.total:<4} {result.right / result.total:6.1%} "
                f"{1 - result.word_errors / result.words:6.1%}")

    seconds, cpu, audio = held.seconds + own.seconds, held.cpu + own.cpu, held.audio + own.audio
    print(f"{name:26} {cells(held)}   {cells(own)} {seconds / max(audio, 1e-9):8.3f} {cpu / max(audio, 1e-9):8.3f}",
          flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 held-out voices and 1 own x 8 phrases")
    parser.add_argument("--no-pulse", action="store_true", help="skip the PulseAudio channel")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium channel")
    parser.add_argument("--channels", help="comma-separated simulated channels (default: all; 'none' for none)")
    parser.add_argument("--phrases", type=int, metavar="N", help="only the first N phrases")
    parser.add_argument("--no-ood", action="store_true", help="skip the out-of-domain check")
    parser.add_argument("--verbose", action="store_true", help="print every miss")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep-captures", metavar="DIR", type=Path,
                        help="keep each real channel's tape and raw capture in DIR (one folder per channel, "
                             "with starts.json: where each utterance starts in the tape, in samples at 24 kHz)")
    args = parser.parse_args(argv)

    held_out, own = (QUICK_HELD_OUT, QUICK_OWN) if args.quick else (HELD_OUT, OWN)
    texts = (QUICK_PHRASES if args.quick else tuple(phrases.domain_sentences()))[: args.phrases]
    items = utterances(held_out, texts) + utterances(own, texts)
    is_held = [index < len(held_out) * len(texts) for index in range(len(items))]
    audio_s = sum(item.pcm.size for item in items) / RATE
    print(f"({len(held_out)} held-out + {len(own)} own voices) x {len(texts)} phrases = {len(items)} utterances "
          f"({audio_s:.0f} s) per channel")

    simulated = {name: channel for name, channel in channels.SIMULATED.items()
                 if not args.channels or name in args.channels.split(",")}
    heard: dict[str, list[np.ndarray | None]] = {name: [channel(item.pcm) for item in items]
                                                 for name, channel in simulated.items()}
    real: list[tuple[str, Callable[[Sequence[Utterance], Path], list[np.ndarray | None]]]] = []
    if not args.no_pulse:
        from tests.audio_rig import available

        if available():
            real.append(("PulseAudio 44.1k -60 dBFS", through_pulse))
        else:
            print("PulseAudio is not installed: its channel is skipped (apt-get install pulseaudio pulseaudio-utils)")
    if not args.no_browser:
        if Path(CHROMIUM).exists():
            real.append(("Chromium fake mic", through_chromium))
        else:
            print("chromium is not installed: its channel is skipped (apt-get install chromium)")
    recaptured: dict[str, list[int]] = {}  # per real channel: how many utterances were captured again, per pass
    if real:  # both in real time, side by side, before any recognition (whose speed is measured)
        print(f"capturing {', '.join(name for name, _ in real)} in real time ({audio_s + GAP_S * len(items):.0f} s)...")
        with tempfile.TemporaryDirectory(prefix="vr-stt-channels-") as folder:
            outcomes: dict[str, Any] = {}

            def capture(name: str, run: Callable[..., list[np.ndarray | None]], where: Path) -> None:
                try:
                    outcomes[name], recaptured[name] = capture_again(run, items, where)
                except Exception as exc:  # noqa: BLE001 - reported as the channel's failure
                    outcomes[name] = exc

            threads = []
            for index, (name, run) in enumerate(real):
                where = Path(folder) / str(index)
                where.mkdir()
                threads.append(threading.Thread(target=capture, args=(name, run, where)))
                threads[-1].start()
            for thread in threads:
                thread.join()
            if args.keep_captures:
                tape_starts = tape_of(items)[1]
                for index, (name, _) in enumerate(real):
                    kept = args.keep_captures / name.split()[0].lower()
                    shutil.rmtree(kept, ignore_errors=True)
                    shutil.copytree(Path(folder) / str(index), kept, ignore=shutil.ignore_patterns("pulse"))
                    (kept / "starts.json").write_text(json.dumps(
                        {"rate": RATE, "starts": tape_starts, "lengths": [item.pcm.size for item in items],
                         "texts": [item.text for item in items], "voices": [item.voice for item in items]}))
                print(f"captures kept in {args.keep_captures}")
        for name, _ in real:
            if isinstance(outcomes[name], Exception):
                print(f"{name}: FAILED: {outcomes[name]!r}")
                return 1
            heard[name] = outcomes[name]
            if recaptured[name]:
                print(f"{name}: the capture glitched on {recaptured[name][0]} utterances (machine load: the browser's "
                      f"audio buffers were dropped and repeated); captured again: "
                      + ", then ".join(str(n) for n in recaptured[name]))

    recognizer = stt.Recognizer()
    recognizer.recognize(items[0].pcm)  # load the decoder before timing anything
    stt.transcribe_general(items[0].pcm[:1600])  # and the general model
    table: dict[str, tuple[Score, Score]] = {}
    print(f"\n{'':26} {'held-out voices':^20}   {'own voices':^20}")
    print(f"{'channel':26} {'intent':>13} {'words':>6}   {'intent':>13} {'words':>6} {'STT RTF':>8} {'CPU RTF':>8}")
    for name, audio in heard.items():
        held = [index for index, flag in enumerate(is_held) if flag]
        others = [index for index, flag in enumerate(is_held) if not flag]
        table[name] = (score(recognizer, [items[i] for i in held], [audio[i] for i in held]),
                       score(recognizer, [items[i] for i in others], [audio[i] for i in others]))
        print_row(name, *table[name])
        for line in [*table[name][0].misses, *table[name][1].misses] if args.verbose else ():
            print(f"    {line}")
    total_s = sum(r.seconds for pair in table.values() for r in pair)
    total_cpu = sum(r.cpu for pair in table.values() for r in pair)
    total_audio = sum(r.audio for pair in table.values() for r in pair)
    print(f"{'all channels':26} {'':>20}   {'':>20} {total_s / total_audio:8.3f} {total_cpu / total_audio:8.3f}")
    worst = min(r.right / r.total for pair in table.values() for r in pair if r.total)
    print(f"worst channel: {worst:.1%} of the phrases get the right intent (target: at least 95 % in every channel)")

    if "clean" in table:
        by_voice = {**table["clean"][0].by_voice, **table["clean"][1].by_voice}
        print("\nclean, per voice: " + ", ".join(f"{voice} {r}/{t}" for voice, (r, t) in by_voice.items()))
    ood = [] if args.no_ood else utterances(held_out[:1] + own[:1] if args.quick else held_out[:3] + own[:2],
                                            OUT_OF_DOMAIN)
    taken = [f"{item.voice}: {item.text!r} -> {text!r}" for item in ood
             if domain_intent(text := recognizer.transcribe(item.pcm)) and not domain_intent(item.text)]
    if ood:
        print(f"out of domain (clean) taken for a domain phrase: {len(taken)}/{len(ood)}")
    for line in taken:
        print(f"    {line}")
    lost = sum(1 for pair in table.values() for r in pair for m in r.misses if m.endswith("-> LOST"))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "held_out_voices": [voice_label(v) for v in held_out], "own_voices": [voice_label(v) for v in own],
            "phrases": list(texts),
            "channels": {name: {"held_out": held.as_dict(), "own": own_.as_dict()} for name, (held, own_) in table.items()},
            "rtf": total_s / total_audio, "cpu_rtf": total_cpu / total_audio, "worst_intent_accuracy": worst,
            "out_of_domain": {"taken": len(taken), "total": len(ood), "lines": taken}, "lost": lost,
            "captured_again": recaptured}, indent=1))
    if lost:
        print(f"{lost} utterances were lost in a real channel (no alignment with the tape)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
