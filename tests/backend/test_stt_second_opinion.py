"""The warped second opinion (``stt.SECOND_OPINION_WARPS``): doubtful decodes of voices the recogniser was not
tuned on, decoded again with the front end's frequency axis warped. Real espeak-ng audio, the real recogniser."""

from __future__ import annotations

import numpy as np
import pytest

from voicerelay.backend import responder, stt
from voicerelay.backend.phrases import domain_sentences
from voicerelay.backend.stt import Recognizer
from voicerelay.backend.tts import Synthesizer, add_noise

from .. import channels
from ..conftest import read_recording


def utterance(text: str, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
    """``text`` as ``benchmarks/stt_channels.py`` makes it: 300 ms before, 500 ms after, 35 dB SNR."""
    pcm = Synthesizer(voice, words_per_minute, pitch).synthesize(text)
    padded = np.concatenate((np.zeros(7200, np.int16), pcm, np.zeros(12000, np.int16)))
    return add_noise(padded, 35.0, domain_sentences().index(text))


def fresh_recognizer() -> Recognizer:
    """Warmed by one recording, as in test_stt_channels: the decoders carry their noise estimate along."""
    recognizer = Recognizer()
    recognizer.transcribe(read_recording("hello_there"))
    return recognizer


# Voices of the tuning set the warps were chosen on (none is a backend voice or one of stt_channels' held-out
# voices), through a telephone line: each decode was doubtful, and fell back to the general model, which lost
# the intent.
CASES = [
    ("en-gb-x-gbclan+Edward", 160, 40, "what time is it"),
    ("en+Robert", 190, 40, "what time is it"),
    ("en-us-nyc+Gene", 160, 45, "turn off the lights"),
]


@pytest.mark.parametrize(("voice", "words_per_minute", "pitch", "text"), CASES)
def test_a_doubtful_phrase_of_an_unfamiliar_voice_gets_its_intent_from_a_warped_decode(
        voice: str, words_per_minute: int, pitch: int, text: str) -> None:
    heard = fresh_recognizer().recognize(channels.telephone(utterance(text, voice, words_per_minute, pitch)))
    assert heard.source == "domain", heard
    assert responder.respond(heard.text) == responder.respond(text), heard


@pytest.mark.parametrize(("voice", "words_per_minute", "pitch", "text"), CASES[:1])
def test_without_the_second_opinion_the_same_audio_falls_back(
        monkeypatch: pytest.MonkeyPatch, voice: str, words_per_minute: int, pitch: int, text: str) -> None:
    monkeypatch.setattr(stt, "SECOND_OPINION_WARPS", ())
    heard = fresh_recognizer().recognize(channels.telephone(utterance(text, voice, words_per_minute, pitch)))
    assert heard.source == "general", heard


def test_every_warped_decoder_warps_even_when_its_factor_was_set_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """pocketsphinx ignores a warp spelled as the last one it parsed, after a plain decoder reset it (see stt's
    module doc): a second warped decoder, built after a plain one with the same factor, must warp as the first.
    (One factor, so that the same one is set twice in a row; with several, sets begin and end differently.)"""
    monkeypatch.setattr(stt, "SECOND_OPINION_WARPS", (1.15,))
    recognizer = Recognizer()
    pcm16k = stt._to_decoder_rate(read_recording("what_is_your_name"))

    def confidences(decoders: tuple) -> list[float]:
        return [stt._decode(decoder, pcm16k)[1] for decoder in decoders]

    first = confidences(recognizer._new_warped_decoders())
    plain = stt._decode(recognizer._new_decoder(), pcm16k)[1]
    second = confidences(recognizer._new_warped_decoders())
    assert first != [plain]
    assert second == first, (first, second, plain)

