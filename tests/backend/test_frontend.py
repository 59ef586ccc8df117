"""The recogniser's front end (voicerelay/backend/frontend.py): pure functions on real synthesised speech."""

from __future__ import annotations

import numpy as np
import pytest

from voicerelay.backend import frontend
from voicerelay.backend.tts import Synthesizer, add_noise

from ..channels import dbfs_to_rms, gain, pink_noise

RATE = frontend.DECODER_RATE


def dbfs(audio: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.asarray(audio, dtype=np.float64) ** 2)) / 32768)


def band_energy(audio: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(np.asarray(audio, dtype=np.float64))) ** 2
    frequencies = np.fft.rfftfreq(audio.size, 1 / RATE)
    return float(spectrum[(frequencies >= low) & (frequencies < high)].sum())


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """ "what is the weather in paris" at 24 kHz with 300 ms before and 500 ms after, 35 dB SNR."""
    pcm = Synthesizer().synthesize("what is the weather in paris")
    return add_noise(np.concatenate((np.zeros(7200, np.int16), pcm, np.zeros(12000, np.int16))), 35.0, 3)


def tone(frequency: float, seconds: float = 1.0, amplitude: float = 8000.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(int(RATE * seconds)) / RATE)


def test_condition_gives_int16_at_16_khz_of_the_same_duration(speech: np.ndarray) -> None:
    out = frontend.condition(speech)
    assert out.dtype == np.int16 and out.ndim == 1
    assert out.size == round(speech.size * 2 / 3)
    assert frontend.condition(np.zeros(0, np.int16)).shape == (0,)


def test_condition_is_deterministic(speech: np.ndarray) -> None:
    assert np.array_equal(frontend.condition(speech), frontend.condition(speech.copy()))


@pytest.mark.parametrize("db", [-20.0, -10.0, 0.0, 6.0])
def test_the_level_comes_out_the_same_whatever_the_input_gain(speech: np.ndarray, db: float) -> None:
    reference = frontend.condition(speech)
    out = frontend.condition(gain(db)(speech))
    speaking = slice(int(0.4 * RATE), int(1.6 * RATE))
    assert abs(dbfs(out[speaking]) - dbfs(reference[speaking])) < 1.0


def test_level_gain_brings_the_loud_frames_to_the_target() -> None:
    quiet_speech = np.concatenate((np.zeros(RATE // 2), tone(440) * 0.05, np.zeros(RATE // 2)))
    out = quiet_speech * frontend.level_gain(quiet_speech)
    loud_part = out[RATE // 2 : RATE // 2 + RATE]
    assert dbfs(loud_part) == pytest.approx(frontend.TARGET_DBFS, abs=0.5)


def test_level_gain_is_bounded() -> None:
    whisper = np.concatenate((np.zeros(RATE // 2), tone(440, amplitude=10.0), np.zeros(RATE // 2)))
    assert 20 * np.log10(frontend.level_gain(whisper)) == pytest.approx(frontend.MAX_GAIN_DB)


@pytest.mark.parametrize("level", [-70.0, -45.0, -20.0])
def test_noise_without_speech_keeps_its_level(level: float) -> None:
    noise = pink_noise(2 * RATE, dbfs_to_rms(level), seed=4)
    assert frontend.level_gain(noise) == 1.0
    assert frontend.level_gain(np.zeros(2 * RATE)) == 1.0


def test_high_pass_removes_dc_and_rumble_and_keeps_speech_frequencies() -> None:
    rumble = 3000.0 + tone(20.0)
    out = frontend.high_pass(rumble + tone(1000.0), RATE)
    assert abs(out.mean()) < 1.0
    assert band_energy(out, 0, 40) < band_energy(rumble, 0, 40) * 1e-4
    assert band_energy(out, 900, 1100) == pytest.approx(band_energy(tone(1000.0), 900, 1100), rel=1e-3)


def test_spectral_floor_fills_silence_with_pink_noise_at_its_level() -> None:
    out = frontend.spectral_floor(np.zeros(4 * RATE))
    assert dbfs(out) == pytest.approx(frontend.FLOOR_DBFS, abs=1.0)
    # pink: equal energy per octave, so the 250-500 Hz octave holds about what the 4-8 kHz one does
    assert band_energy(out, 250, 500) == pytest.approx(band_energy(out, 4000, 8000), rel=0.3)
    assert np.array_equal(out, frontend.spectral_floor(np.zeros(4 * RATE)))


def test_spectral_floor_leaves_what_is_above_it_unchanged() -> None:
    loud = np.random.default_rng(5).standard_normal(3 * RATE) * 1e6  # every bin far above the floor
    assert np.max(np.abs(frontend.spectral_floor(loud) - loud)) < 1e-4 * 1e6  # a rare bin may still be floored


def test_spectral_floor_fills_the_bands_a_telephone_line_removed(speech: np.ndarray) -> None:
    pcm = frontend.condition(speech).astype(np.float64)
    narrow = np.fft.irfft(np.fft.rfft(pcm) * ((np.fft.rfftfreq(pcm.size, 1 / RATE) > 300)
                                              & (np.fft.rfftfreq(pcm.size, 1 / RATE) < 3400)), pcm.size)
    floored = frontend.spectral_floor(narrow)
    assert band_energy(narrow, 5000, 8000) < 1e-6 * band_energy(narrow, 300, 3400)
    assert dbfs(np.fft.irfft(np.fft.rfft(floored) * (np.fft.rfftfreq(pcm.size, 1 / RATE) > 5000), pcm.size)) > -70
    in_band = slice(int(0.5 * RATE), int(1.5 * RATE))
    assert np.corrcoef(floored[in_band], narrow[in_band])[0, 1] > 0.99  # the speech itself passes
