"""In-domain phrases through what real channels do to audio, heard by the real recogniser: the short form
of ``benchmarks/stt_channels.py``. Correctness only (the right intent), never timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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

