"""In-domain phrases through what real channels do to audio, heard by the real recogniser: the short form
of ``benchmarks/stt_channels.py``. Correctness only (the right intent), never timing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voicerelay.backend import responder
from voicerelay.backend.phrases import domain_sentences
from voicerelay.backend.stt import Recognizer
from voicerelay.backend.tts import Synthesizer, add_noise

from .. import channels
from ..audio_rig import available as pulse_available
from ..conftest import read_recording

ROOT = Path(__file__).resolve().parents[2]


def utterance(text: str, voice: str) -> np.ndarray:
    """``text`` as the benchmark makes it: 300 ms before, 500 ms after, 35 dB SNR, seeded by the phrase."""
    pcm = Synthesizer(voice).synthesize(text)
    padded = np.concatenate((np.zeros(7200, np.int16), pcm, np.zeros(12000, np.int16)))
    return add_noise(padded, 35.0, domain_sentences().index(text))


@pytest.fixture
def recognizer() -> Recognizer:
    """A recogniser of its own, warmed by one recording: pocketsphinx carries its noise estimate from one
    utterance to the next (see stt.py), so a shared one would hear differently in another test order."""
    fresh = Recognizer()
    fresh.transcribe(read_recording("hello_there"))
    return fresh


# Each of these was heard with the wrong intent before the front end (backend/frontend.py) existed.
@pytest.mark.parametrize(("voice", "text", "channel"), [
    ("echo", "hi", "browser (sim)"),
    ("echo", "hi", "gain -20 dB"),
    ("echo", "hi", "gain +6 dB"),
    ("echo", "hi", "16>48>24 kHz"),
    ("alloy", "what is the weather in paris", "telephone"),
    ("coral", "help", "telephone"),
    ("echo", "thanks", "telephone"),
    ("sage", "turn off the lights", "telephone"),
    ("sage", "tell me a joke", "telephone"),
])
def test_phrases_once_misheard_through_a_channel_get_their_intent(
        recognizer: Recognizer, voice: str, text: str, channel: str) -> None:
    heard = recognizer.transcribe(channels.SIMULATED[channel](utterance(text, voice)))
    assert responder.respond(heard) == responder.respond(text), heard


@pytest.mark.parametrize("channel", sorted(channels.SIMULATED))
def test_a_few_phrases_get_their_intent_in_every_simulated_channel(recognizer: Recognizer, channel: str) -> None:
    for voice, text in (("alloy", "what is your name"), ("coral", "turn on the lights"), ("ash", "tell me a joke")):
        heard = recognizer.transcribe(channels.SIMULATED[channel](utterance(text, voice)))
        assert responder.respond(heard) == responder.respond(text), (voice, text, heard)


@pytest.mark.skipif(not pulse_available(), reason="PulseAudio is not installed")
def test_the_benchmark_short_form_through_a_real_pulseaudio_microphone(tmp_path: Path) -> None:
    """Three phrases in three voices played into a private PulseAudio server's 44.1 kHz virtual
    microphone with a -60 dBFS noise stream mixed in, recorded, aligned and recognised."""
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stt_channels.py"), "--quick", "--phrases", "3",
                          "--no-browser", "--no-ood", "--channels", "clean", "--json", str(report)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(report.read_text())
    assert figures["lost"] == 0
    pulse = figures["channels"]["PulseAudio 44.1k -60 dBFS"]
    assert pulse["own"]["right"] == pulse["own"]["total"] == 3, pulse["own"]["misses"]
    assert pulse["held_out"]["total"] == 6
    assert figures["channels"]["clean"]["own"]["right"] == 3



def _benchmark() -> Any:
    """``benchmarks/stt_channels.py`` as a module (it imports ``speech_engines`` from beside it)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("stt_channels_benchmark", ROOT / "benchmarks" / "stt_channels.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # (its dataclasses look their module up)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_a_capture_that_slips_is_followed_and_a_spliced_utterance_is_captured_again(tmp_path: Path) -> None:
    """What a CPU-starved browser did to the benchmark's tape (dropped 10 ms buffers, utterances cut
    and spliced): the alignment follows the slips, counts a spliced utterance lost rather than
    misheard, and :func:`capture_again` captures it again in a tape of its own."""
    bench = _benchmark()
    texts = ["hello there", "what is your name", "tell me a joke", "thank you"]
    items = [bench.Utterance("alloy", text, utterance(text, "alloy")) for text in texts]
    buffer = bench.RATE // 100  # 10 ms
    passes: list[list[str]] = []
    correlations: list[float] = []

    def starved_browser(subset: list[Any], folder: Path) -> list[np.ndarray | None]:
        """The tape as a starved browser captures it, the first time only."""
        assert folder.is_dir()
        tape, starts = bench.tape_of(subset)
        capture = tape.copy()
        if not passes:
            second, third = starts[1], starts[2]
            inner = slice(second + subset[1].pcm.size // 10, second + subset[1].pcm.size * 9 // 10)
            blocks = np.array_split(capture[inner], 16)  # its speech cut in pieces and spliced out of order
            capture[inner] = np.concatenate([blocks[i] for i in np.random.default_rng(7).permutation(16)])
            correlations.append(bench.correlation(capture[second : second + subset[1].pcm.size], subset[1].pcm))
            capture = np.delete(capture, slice(third - 30 * buffer, third - 25 * buffer))  # 50 ms dropped before the 3rd
        passes.append([item.text for item in subset])
        return bench.cut(capture, tape, starts, subset, looped=False)

    found, counts = bench.capture_again(starved_browser, items, tmp_path)
    assert correlations[0] < bench.MATCH_CORRELATION  # the spliced one does not pass for what was said
    assert passes == [texts, ["what is your name"]] and counts == [1]
    for item, pcm in zip(items, found, strict=True):
        assert pcm is not None and bench.correlation(pcm, item.pcm) > 0.99, item.text  # the slip was followed
