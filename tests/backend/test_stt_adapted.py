"""The acoustic model adapted to espeak-ng speech (``stt.ADAPTED_PARAMETERS``, made by
``tools/adapt_acoustic_model.py``): voices it was not adapted on, real espeak-ng audio, the real recogniser."""

from __future__ import annotations

import os

import pytest

from voicerelay.backend import responder, stt

from .. import channels
from .test_stt_second_opinion import fresh_recognizer, utterance

# benchmarks/stt_channels.py's held-out voices (never adapted on): the plain model loses these intents.
# Through a telephone line, the plain model heard them as other domain sentences ("who are you", "what can you
# do", "hello there"), confidently enough that no second opinion was asked for.
CASES = [
    ("en-gb-x-rp+m7", 175, 35, "tell me a joke", "telephone"),
    ("en-029+m8", 190, 45, "what time is it", "telephone"),
    ("en-us+klatt", 160, 50, "help", "telephone"),
]


def test_the_adapted_parameters_ship_with_the_package() -> None:
    assert set(stt.ADAPTED_PARAMETERS) == {"mean", "var", "tmat", "sendump"}
    assert all(os.path.getsize(path) > 0 for path in stt.ADAPTED_PARAMETERS.values())


@pytest.mark.parametrize(("voice", "words_per_minute", "pitch", "text", "channel"), CASES)
def test_an_unadapted_voice_gets_its_intent_from_the_adapted_model(
        voice: str, words_per_minute: int, pitch: int, text: str, channel: str) -> None:
    heard = fresh_recognizer().recognize(getattr(channels, channel)(utterance(text, voice, words_per_minute, pitch)))
    assert heard.source == "domain", heard
    assert responder.respond(heard.text) == responder.respond(text), heard


@pytest.mark.parametrize(("voice", "words_per_minute", "pitch", "text", "channel"), CASES)
def test_the_plain_model_loses_the_same_intents(
        monkeypatch: pytest.MonkeyPatch, voice: str, words_per_minute: int, pitch: int, text: str, channel: str) -> None:
    monkeypatch.setattr(stt, "ADAPTED_PARAMETERS", {})
    heard = fresh_recognizer().recognize(getattr(channels, channel)(utterance(text, voice, words_per_minute, pitch)))
    assert responder.respond(heard.text) != responder.respond(text), heard
