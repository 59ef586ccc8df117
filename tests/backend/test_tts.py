"""espeak-ng in-process: real synthesis, no mocks."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from voicerelay.backend.tts import (
    DEFAULT_VOICE,
    NOISE_FLOOR_RMS,
    OPENAI_VOICES,
    OUTPUT_RATE,
    Synthesizer,
    add_noise,
    espeak_voice_for,
)

SENTENCE = "what is the weather in paris"


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def synthesizer() -> Synthesizer:
    return Synthesizer()


def test_sentence_gives_plausible_24khz_speech(synthesizer: Synthesizer) -> None:
    pcm = synthesizer.synthesize(SENTENCE)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    seconds = pcm.size / OUTPUT_RATE
    assert 1.0 < seconds < 3.0  # six words at 175 words per minute
    assert rms(pcm) > 1000  # clearly audible, not silence
    assert np.abs(pcm.astype(np.int32)).max() > 8000


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\0"])
def test_empty_text_gives_empty_audio(synthesizer: Synthesizer, text: str) -> None:
    pcm = synthesizer.synthesize(text)
    assert pcm.dtype == np.int16 and pcm.shape == (0,)


def test_nul_characters_are_spoken_around(synthesizer: Synthesizer) -> None:
    assert np.array_equal(synthesizer.synthesize("\0hello\0there"), synthesizer.synthesize(" hello there"))


def test_slower_rate_gives_longer_audio() -> None:
    slow = Synthesizer(words_per_minute=120).synthesize(SENTENCE)
    fast = Synthesizer(words_per_minute=260).synthesize(SENTENCE)
    assert slow.size > 1.5 * fast.size


def test_synthesis_is_deterministic(synthesizer: Synthesizer) -> None:
    assert np.array_equal(synthesizer.synthesize(SENTENCE), synthesizer.synthesize(SENTENCE))


def test_voices_sound_different(synthesizer: Synthesizer) -> None:
    outputs = {name: synthesizer.synthesize(SENTENCE, name) for name in OPENAI_VOICES}
    names = list(outputs)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = outputs[first], outputs[second]
            assert a.size != b.size or not np.array_equal(a, b), (first, second)
    # The voice given to the constructor is the default for every call.
    assert np.array_equal(Synthesizer("coral").synthesize(SENTENCE), outputs["coral"])


def test_openai_voice_names_map_to_distinct_espeak_voices() -> None:
    mapped = [espeak_voice_for(name) for name in OPENAI_VOICES]
    assert len(set(mapped)) == len(mapped)
    for espeak_voice in mapped:
        assert espeak_voice_for(espeak_voice) == espeak_voice  # espeak-ng knows it
    assert espeak_voice_for("CORAL") == espeak_voice_for("coral")


@pytest.mark.parametrize("name", ["nova", "", "en-gb", "en-us+nosuchvariant", "../../etc"])
def test_unknown_voice_names_fall_back_to_en_us(synthesizer: Synthesizer, name: str) -> None:
    assert espeak_voice_for(name) == DEFAULT_VOICE
    assert np.array_equal(synthesizer.synthesize("hello", name), synthesizer.synthesize("hello", "en-us"))


def test_an_unknown_voice_name_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    name = "en-gb+m1"  # not an espeak-ng voice: British English is "en" (or "en-gb-x-rp")
    with caplog.at_level(logging.WARNING, logger="voicerelay.backend.tts"):
        assert espeak_voice_for(name) == DEFAULT_VOICE
        assert espeak_voice_for(name) == DEFAULT_VOICE
        assert espeak_voice_for("en") == "en"
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"'en-gb+m1' is neither an OpenAI voice nor an espeak-ng voice: speaking {DEFAULT_VOICE}"]


def test_espeak_voice_names_pass_through() -> None:
    assert espeak_voice_for("en-gb-x-rp+f2") == "en-gb-x-rp+f2"
    assert espeak_voice_for("en") == "en"


def test_concurrent_synthesis_matches_sequential(synthesizer: Synthesizer) -> None:
    texts = ("hello there", SENTENCE, "tell me a joke")
    jobs = [(text, voice) for text in texts for voice in ("alloy", "coral", "sage")]
    expected = [synthesizer.synthesize(text, voice) for text, voice in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        for _ in range(3):
            results = list(pool.map(lambda job: synthesizer.synthesize(*job), jobs))
            assert all(np.array_equal(a, b) for a, b in zip(results, expected, strict=True))


def test_add_noise_is_deterministic_and_seeded() -> None:
    pcm = Synthesizer().synthesize("hello there")
    assert np.array_equal(add_noise(pcm, seed=3), add_noise(pcm, seed=3))
    assert not np.array_equal(add_noise(pcm, seed=3), add_noise(pcm, seed=4))
    noisy = add_noise(pcm)
    assert noisy.dtype == np.int16 and noisy.shape == pcm.shape


@pytest.mark.parametrize("snr_db", [20.0, 30.0, 40.0])
def test_add_noise_reaches_the_requested_snr(snr_db: float) -> None:
    pcm = Synthesizer().synthesize(SENTENCE)
    noise = add_noise(pcm, snr_db).astype(np.float64) - pcm
    speech = pcm[pcm != 0]
    measured = 20 * np.log10(rms(speech) / rms(noise))
    assert abs(measured - snr_db) < 0.5


def test_add_noise_turns_digital_silence_into_light_noise() -> None:
    noisy = add_noise(np.zeros(24_000, dtype=np.int16))
    assert abs(rms(noisy) - NOISE_FLOOR_RMS) < 1.0
    zeros = np.flatnonzero(noisy != 0)
    assert np.diff(zeros).max() < 20  # no long run of exact zeros left
    assert add_noise(np.zeros(0, dtype=np.int16)).shape == (0,)


def test_add_noise_clips_instead_of_wrapping() -> None:
    loud = np.full(1000, 32767, dtype=np.int16)
    noisy = add_noise(loud, snr_db=20.0)
    assert noisy.min() > 0  # wrapped samples would be hugely negative


def test_output_does_not_depend_on_what_was_said_before() -> None:
    synthesizer = Synthesizer()
    first = synthesizer.synthesize(SENTENCE, "echo")
    for voice in OPENAI_VOICES:  # every voice leaves the generator in another state
        synthesizer.synthesize("hello there, how are you today?", voice)
    assert np.array_equal(synthesizer.synthesize(SENTENCE, "echo"), first)



def test_pitch_changes_the_voice_and_50_is_espeaks_own() -> None:
    default = Synthesizer().synthesize(SENTENCE)
    assert np.array_equal(Synthesizer(pitch=50).synthesize(SENTENCE), default)
    low, high = Synthesizer(pitch=15).synthesize(SENTENCE), Synthesizer(pitch=85).synthesize(SENTENCE)
    assert not np.array_equal(low[: default.size], high[: default.size])
    assert abs(low.size - high.size) < 0.1 * default.size  # the pitch, not the rate
    assert np.array_equal(Synthesizer().synthesize(SENTENCE), default)  # nothing left set for the next call
    assert Synthesizer(pitch=500).pitch == 100 and Synthesizer(pitch=-3).pitch == 0


def test_engines_say_a_reply_again_with_the_same_samples_and_each_caller_gets_its_own() -> None:
    from voicerelay.backend.engines import Engines

    engines = Engines(stt_processes=0)
    text = "I am fine, thank you for asking."
    first = engines.synthesize(text, "coral")
    first[:100] = 0  # a caller's own array: what it does with it changes nothing kept
    again = engines.synthesize(text, "coral")
    assert np.array_equal(again, Synthesizer().synthesize(text, "coral"))
    assert not np.array_equal(engines.synthesize(text, "ash"), again)  # the voice is part of what is kept
    again[:] = 0
    assert np.array_equal(engines.synthesize(text, "coral"), Synthesizer().synthesize(text, "coral"))


def test_a_reply_one_engines_said_is_not_synthesised_again_by_another() -> None:
    """replay starts a backend, with engines of its own, per file; the replies repeat from file to file."""
    from voicerelay.backend.engines import Engines

    text = "Sorry, I did not catch that."
    said = Engines(stt_processes=0).synthesize(text, "sage")
    later = Engines(stt_processes=0)
    assert np.array_equal(later.synthesize(text, "sage"), said)
    assert later._tts is None  # its synthesizer was never needed

def test_the_private_data_directory_is_built_once_and_kept(tmp_path, monkeypatch) -> None:
    """Every process used to build (and at exit remove) its own ~230 files; now the first one keeps it."""
    from voicerelay.backend import tts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = tts._steady_data_dir()
    assert first is not None and first.is_relative_to(tmp_path / "voicerelay")
    assert (first.parent / "complete").is_file() and (first / "voices" / "!v" / "steady").is_file()
    built = (first / "voices" / "!v" / "steady").stat().st_mtime_ns
    assert tts._steady_data_dir() == first  # found, not built again
    assert (first / "voices" / "!v" / "steady").stat().st_mtime_ns == built
    assert [p.name for p in (tmp_path / "voicerelay").iterdir()] == [first.parent.name]  # nothing left half-built


def test_a_data_directory_left_half_built_is_not_used(tmp_path, monkeypatch) -> None:
    from voicerelay.backend import tts

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kept = tts._steady_data_dir()
    assert kept is not None
    (kept.parent / "complete").unlink()  # as if its builder died before it was complete
    assert tts._kept_data_dir(tts.Path(tts.espeakng_loader.get_data_path())) is None  # (it is not complete)


def test_without_a_usable_cache_each_process_builds_its_own(tmp_path, monkeypatch) -> None:
    from voicerelay.backend import tts

    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # no folder can be made under it
    data = tts._steady_data_dir()
    assert data is not None and not data.is_relative_to(blocked) and (data / "voices" / "!v" / "steady").is_file()
