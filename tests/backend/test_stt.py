"""pocketsphinx with the domain model, on real (synthesised) speech: no mocks."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from voicerelay.backend.engines import Engines
from voicerelay.backend.phrases import RECORDING_SENTENCES, domain_sentences
from voicerelay.backend.stt import (
    Recognizer,
    Transcription,
    normalize_phrase,
    recognizer_for,
    transcribe_general,
)
from voicerelay.backend.tts import OPENAI_VOICES, OUTPUT_RATE, Synthesizer, add_noise

from ..conftest import read_recording

SYNTHESIZER = Synthesizer()


def speech(text: str, voice: str = "alloy", seed: int = 0) -> np.ndarray:
    """``text`` as the backend receives it: 300 ms before, 500 ms after, 30 dB SNR."""
    lead = np.zeros(OUTPUT_RATE * 3 // 10, dtype=np.int16)
    trail = np.zeros(OUTPUT_RATE // 2, dtype=np.int16)
    return add_noise(np.concatenate((lead, SYNTHESIZER.synthesize(text, voice), trail)), 30.0, seed)


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return recognizer_for()


@pytest.mark.parametrize("stem", sorted(RECORDING_SENTENCES))
def test_each_recording_transcribes_exactly(recognizer: Recognizer, stem: str) -> None:
    assert recognizer.transcribe(read_recording(stem)) == RECORDING_SENTENCES[stem]


@pytest.mark.parametrize("text", domain_sentences())
def test_each_domain_sentence_is_recognised(recognizer: Recognizer, text: str) -> None:
    result = recognizer.recognize(speech(text))
    assert (result.text, result.source) == (text, "domain")


@pytest.mark.parametrize("voice", sorted(OPENAI_VOICES))
def test_every_voice_is_recognised(recognizer: Recognizer, voice: str) -> None:
    for seed, text in enumerate(RECORDING_SENTENCES.values()):
        assert recognizer.transcribe(speech(text, voice, seed)) == text


def test_tool_phrase_is_recognised_once_passed_as_extra_phrases() -> None:
    pcm = speech("book a table for two")
    result = recognizer_for(["book_table", "Book a table for two"]).recognize(pcm)
    assert (result.text, result.source) == ("book a table for two", "domain")
    # Without them, the domain model lacks "book" and "table": the general model takes over.
    assert recognizer_for().recognize(pcm).source == "general"


def test_extra_phrases_leave_the_domain_sentences_recognised() -> None:
    with_tools = recognizer_for(["get_weather", "Get the current weather for a city", "book_table"])
    for stem in ("hello_there", "weather_in_paris"):
        assert with_tools.transcribe(read_recording(stem)) == RECORDING_SENTENCES[stem]
    assert with_tools.transcribe(speech("get the current weather for a city")) == "get the current weather for a city"


def silence() -> np.ndarray:
    return np.zeros(2 * OUTPUT_RATE, dtype=np.int16)


def light_noise() -> np.ndarray:
    return add_noise(silence(), seed=1)


def loud_noise() -> np.ndarray:
    rng = np.random.default_rng(2)
    return np.clip(rng.standard_normal(2 * OUTPUT_RATE) * 3000, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("make", [silence, light_noise, loud_noise])
def test_silence_and_noise_give_nothing(recognizer: Recognizer, make: object) -> None:
    assert recognizer.transcribe(make()) == ""  # type: ignore[operator]


@pytest.mark.parametrize("samples", [0, 1, 100])
def test_empty_or_tiny_audio_gives_nothing(recognizer: Recognizer, samples: int) -> None:
    assert recognizer.recognize(np.ones(samples, dtype=np.int16)) == Transcription("", "none", float("-inf"))


def test_out_of_domain_speech_goes_to_the_general_model(recognizer: Recognizer) -> None:
    pcm = speech("play some jazz music")
    result = recognizer.recognize(pcm)
    assert result.source == "general"
    assert result.text == transcribe_general(pcm)
    assert "jazz" in result.text.split()  # the domain model could only have said domain words


def test_concurrent_transcription_matches_sequential(recognizer: Recognizer) -> None:
    clips = [read_recording(stem) for stem in sorted(RECORDING_SENTENCES)] + [speech("play some jazz music")]
    expected = [recognizer.transcribe(clip) for clip in clips]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(recognizer.transcribe, clips * 2)) == expected * 2


def test_recognizer_for_caches_one_recognizer_per_vocabulary() -> None:
    weather = recognizer_for(["get_weather", "Get the weather"])
    assert recognizer_for(("get the weather", "GET_WEATHER!")) is weather  # same words, any order or case
    assert recognizer_for(["book_table"]) is not weather
    assert recognizer_for() is recognizer_for([])
    assert recognizer_for(["1234", "???"]) is recognizer_for()  # nothing left after normalising


def test_recognizer_vocabulary() -> None:
    recognizer = Recognizer(["get_weather", "Get the current weather for a city", "xyzzyq 42"])
    assert set(domain_sentences()) <= set(recognizer.sentences)
    assert {"get weather", "get the current weather for a city"} <= set(recognizer.sentences)
    assert "city" in recognizer.vocabulary and "xyzzyq" not in recognizer.vocabulary


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("get_weather", "get weather"),
        ("getWeather", "get weather"),
        ("Get the current weather for a city.", "get the current weather for a city"),
        ("Book a table for 2 people!", "book a table for people"),
        ("what's up", "what's up"),
        ("xyzzyq plugh", ""),
        ("", ""),
    ],
)
def test_normalize_phrase(text: str, expected: str) -> None:
    assert normalize_phrase(text) == expected


@pytest.mark.parametrize("text", ["what is the weather in paris", "hello", "", "two  spaces ", " leading"])
def test_stream_words_reassembles_the_text(text: str) -> None:
    assert "".join(Engines.stream_words(text)) == text


def test_stream_words_gives_each_word_with_its_space() -> None:
    assert Engines.stream_words("what is the weather") == ["what ", "is ", "the ", "weather"]
    assert Engines.stream_words("") == []


async def test_the_event_loop_awaits_recognition_in_the_workers_without_a_thread(engines: Engines) -> None:
    """Turns being recognised hold no thread of the loop's executor: with its only thread busy (as
    every thread was when each waiting turn held one), 15 turns at once are still all recognised,
    each as the recogniser itself hears it."""
    assert engines.stt_processes > 0
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    release = threading.Event()
    busy = asyncio.ensure_future(asyncio.to_thread(release.wait))
    stems = sorted(RECORDING_SENTENCES) * 3
    try:
        texts = await asyncio.gather(*(engines.transcribe_async(read_recording(stem)) for stem in stems))
    finally:
        release.set()
        await busy
    assert texts == [RECORDING_SENTENCES[stem] for stem in stems]


async def test_recognition_without_workers_runs_in_a_thread() -> None:
    in_process = Engines(stt_processes=0)
    try:
        assert await in_process.transcribe_async(read_recording("weather_in_paris")) == "what is the weather in paris"
    finally:
        in_process.close()
