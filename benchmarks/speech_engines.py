"""Speed (and, with --accuracy, accuracy) of the embedded backend's speech engines.

    python benchmarks/speech_engines.py               # speed: about 15 s
    python benchmarks/speech_engines.py --accuracy    # + recognition in 10 voices: about 4 min

Speed: TTS real-time factor (synthesis seconds / audio seconds), recogniser build times, the
STT real-time factor on the recordings with the domain model and on the general-model fallback,
and the CPU time (this thread's, so other work on the machine matters less than to the
wall-clock figures) of one ``Recognizer.recognize`` and of its front end, per utterance.
Accuracy: every domain sentence and 20 out-of-domain utterances, in each voice, synthesised,
padded with 300 ms of silence before and 500 ms after, noised at 30 dB SNR, and recognised:
exact-sentence rates, the confidence distributions and how many fall back to the general model
(the numbers quoted in ``voicerelay/backend/stt.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
try:
    import voicerelay  # noqa: F401
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from voicerelay.backend import frontend, phrases, stt  # noqa: E402
from voicerelay.backend.tts import OPENAI_VOICES, OUTPUT_RATE, Synthesizer, add_noise  # noqa: E402

OUT_OF_DOMAIN = (
    "the quick brown fox jumps over the lazy dog",
    "please send the report to my manager",
    "i would like to order a pizza with mushrooms",
    "can you book a flight to tokyo next week",
    "my favourite colour is green",
    "remind me to call my mother tomorrow",
    "play some jazz music",
    "how many people live in canada",
    "open the garage door",
    "set an alarm for seven",
    "what is the capital of france",
    "tell me about the weather tomorrow",
    "is it going to rain",
    "where is the nearest station",
    "i need a doctor",
    "sorry",
    "okay",
    "maybe later",
    "music",
    "cancel that",
)

TOOL_PHRASES = (
    "get_weather",
    "Get the current weather for a city",
    "book_table",
    "Book a table at a restaurant for a number of people",
    "book a table for two",
    "set_timer",
    "Start a countdown timer for a number of minutes",
)


def timed(function: Callable[[], object], repeat: int = 1, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best seconds of ``repeat`` calls by ``clock`` (wall time by default)."""
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        function()
        best = min(best, clock() - start)
    return best


def cpu_timed(function: Callable[[], object], repeat: int = 3) -> float:
    """Least CPU seconds of this thread over ``repeat`` calls (pocketsphinx decodes in the calling thread)."""
    return timed(function, repeat, time.thread_time)


def utterance(synthesizer: Synthesizer, text: str, voice: str, seed: int) -> np.ndarray:
    """``text`` in ``voice`` as the backend would receive it: padded and lightly noised."""
    lead = np.zeros(OUTPUT_RATE * 3 // 10, dtype=np.int16)
    trail = np.zeros(OUTPUT_RATE // 2, dtype=np.int16)
    return add_noise(np.concatenate((lead, synthesizer.synthesize(text, voice), trail)), 30.0, seed)


def recordings() -> list[tuple[str, np.ndarray]]:
    found = []
    for stem, text in phrases.RECORDING_SENTENCES.items():
        pcm, rate = soundfile.read(ROOT / "recordings" / f"{stem}.wav", dtype="int16")
        assert rate == OUTPUT_RATE
        found.append((text, pcm))
    return found


def speed() -> None:
    print("== speed ==")
    synthesizer = Synthesizer()
    first = timed(lambda: synthesizer.synthesize("ready"))
    print(f"TTS first call (loads libespeak-ng, builds its data dir): {first * 1000:.0f} ms")
    sentences = phrases.domain_sentences()
    for voices in (["alloy"], list(OPENAI_VOICES)):
        seconds = audio = 0.0
        for voice in voices:
            for text in sentences:
                seconds += timed(lambda: synthesizer.synthesize(text, voice), repeat=3)
                audio += synthesizer.synthesize(text, voice).size / OUTPUT_RATE
        label = "alloy" if len(voices) == 1 else f"{len(voices)} voices"
        print(f"TTS real-time factor ({label}, {len(sentences)} sentences, {audio:.0f} s): {seconds / audio:.4f}")

    start = time.perf_counter()
    stt.normalize_phrase("index")  # first use reads the general dictionary's index
    print(f"STT dictionary index (first use): {(time.perf_counter() - start) * 1000:.0f} ms")
    build = timed(lambda: stt.Recognizer(), repeat=5)
    print(f"STT Recognizer build, static vocabulary: {build * 1000:.1f} ms")
    build = timed(lambda: stt.Recognizer(TOOL_PHRASES), repeat=5)
    print(f"STT Recognizer build, + {len(TOOL_PHRASES)} tool phrases: {build * 1000:.1f} ms")
    recognizer = stt.Recognizer()

    clips = recordings()
    audio = sum(pcm.size for _, pcm in clips) / OUTPUT_RATE
    seconds = 0.0
    for text, pcm in clips:
        seconds += timed(lambda: recognizer.transcribe(pcm), repeat=3)
        assert recognizer.transcribe(pcm) == text
    print(f"STT real-time factor, domain model, {len(clips)} recordings ({audio:.1f} s): {seconds / audio:.3f}")

    cpu(recognizer, clips, [(text, utterance(synthesizer, text, "alloy", seed))
                            for seed, text in enumerate(sentences)])

    load = timed(lambda: stt.transcribe_general(np.zeros(1600, dtype=np.int16)))
    print(f"STT general model load (first fallback) + tiny decode: {load * 1000:.0f} ms")
    seconds = sum(timed(lambda: stt.transcribe_general(pcm), repeat=3) for _, pcm in clips)
    print(f"STT real-time factor, general model only, same recordings: {seconds / audio:.3f}")
    outside = [utterance(synthesizer, text, "alloy", i) for i, text in enumerate(OUT_OF_DOMAIN[:8])]
    audio = sum(pcm.size for pcm in outside) / OUTPUT_RATE
    seconds = sum(timed(lambda: recognizer.transcribe(pcm), repeat=2) for pcm in outside)
    print(f"STT real-time factor, out-of-domain speech (domain decode + fallback): {seconds / audio:.3f}")


def cpu(recognizer: stt.Recognizer, *sets: Sequence[tuple[str, np.ndarray]]) -> None:
    """CPU ms per utterance of ``recognize`` and of its front end, over the utterances the domain
    model keeps (a fallback to the general model would cost several times more)."""
    for label, clips in zip(("recordings", "domain sentences (alloy, padded, 30 dB SNR)"), sets, strict=True):
        whole = front = audio = 0.0
        kept = [(text, pcm) for text, pcm in clips if recognizer.recognize(pcm).source == "domain"]
        for _, pcm in kept:
            whole += cpu_timed(lambda pcm=pcm: recognizer.recognize(pcm))
            front += cpu_timed(lambda pcm=pcm: frontend.condition(pcm))
            audio += pcm.size / OUTPUT_RATE
        n = len(kept)
        print(f"STT CPU per utterance, {label}, {n} x {audio / n:.1f} s: recognize {whole / n * 1000:.1f} ms "
              f"(front end {front / n * 1000:.1f} ms, domain decode {(whole - front) / n * 1000:.1f} ms); "
              f"CPU real-time factor {whole / audio:.4f}"
              + (f" ({len(clips) - n} fell back, not counted)" if n < len(clips) else ""))


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1]


def quantiles(values: Sequence[float]) -> str:
    if len(values) < 2:
        return " ".join(f"{value:.1f}" for value in values) or "-"
    cuts = statistics.quantiles(values, n=20, method="inclusive")  # 5 %, 10 %, ... 95 %
    pick = {"min": min(values), "p5": cuts[0], "median": cuts[9], "p95": cuts[18], "max": max(values)}
    return " ".join(f"{name}={value:.1f}" for name, value in pick.items())


def accuracy(voices: Sequence[str]) -> None:
    print(f"\n== accuracy: voices {', '.join(voices)} ==")
    synthesizer = Synthesizer()
    recognizer = stt.Recognizer()
    right: list[float] = []
    wrong: list[str] = []
    general_right = total = 0
    for voice in voices:
        for seed, text in enumerate(phrases.domain_sentences()):
            pcm = utterance(synthesizer, text, voice, seed)
            result = recognizer.recognize(pcm)
            total += 1
            if result.text == text and result.source == "domain":
                right.append(result.confidence)
            else:
                wrong.append(f"{voice}: {text!r} -> {result.text!r} ({result.source}, {result.confidence:.1f})")
            general_right += stt.transcribe_general(pcm) == text
    print(f"in-domain: {len(right)}/{total} exact with the domain model; confidence {quantiles(right)}")
    for line in wrong:
        print(f"    {line}")
    print(f"in-domain, general model alone: {general_right}/{total} exact")

    confidences: list[float] = []
    kept: list[str] = []
    errors = words = exact = 0
    for voice in voices:
        for seed, text in enumerate(OUT_OF_DOMAIN):
            result = recognizer.recognize(utterance(synthesizer, text, voice, seed))
            confidences.append(result.confidence)
            if result.source == "domain":
                kept.append(f"{voice}: {text!r} -> {result.text!r} ({result.confidence:.1f})")
            errors += word_errors(text, result.text)
            words += len(text.split())
            exact += result.text == text
    finite = [c for c in confidences if c > -1e9]
    fallen = len(confidences) - len(kept)
    print(f"out-of-domain: {fallen}/{len(confidences)} fall back; domain confidence {quantiles(finite)}")
    for line in kept:
        print(f"    kept: {line}")
    print(f"out-of-domain, final transcripts: {exact}/{len(confidences)} exact, word error rate {errors / words:.0%}")

    rng = np.random.default_rng(0)
    noise_texts = []
    for level in (10.0, 100.0, 1000.0):
        for _ in range(3):
            noise = np.clip(rng.standard_normal(2 * OUTPUT_RATE) * level, -32768, 32767).astype(np.int16)
            noise_texts.append(recognizer.transcribe(noise))
    print(f"white noise (RMS 10, 100, 1000; 2 s): {sum(not t for t in noise_texts)}/{len(noise_texts)} give ''")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", action="store_true", help="also measure recognition accuracy")
    parser.add_argument(
        "--voices",
        default=",".join(OPENAI_VOICES),
        help="comma-separated OpenAI or espeak-ng voices for --accuracy (default: the OpenAI voices)",
    )
    args = parser.parse_args()
    speed()
    if args.accuracy:
        accuracy([voice for voice in args.voices.split(",") if voice])


if __name__ == "__main__":
    main()
