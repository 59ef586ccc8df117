"""The recogniser's front end: audio as devices deliver it, made to look like what pocketsphinx knows.

pocketsphinx's en-us acoustic model was trained on recorded speech: speech at a normal level over a
room's noise floor, every frequency band holding some energy. What reaches the backend may be 20 dB
too quiet or clipped, band-limited (a telephone line: nothing below 300 Hz or above 3.4 kHz), gated
or processed by a browser, or synthetic, with exact digital silence between the harmonics. The
recogniser's features are log filter-bank energies, so a band with (next to) no energy takes
whatever value the rounding gives it, and the decode goes astray. :func:`condition` therefore, on a
whole utterance (int16 mono 24 kHz in, int16 mono 16 kHz out, what the decoders read):

1. resamples it to 16 kHz with soxr's high-quality filter, and removes DC and rumble below
   :data:`HIGH_PASS_HZ` (a device's offset would otherwise count as level);
2. normalises its level: the loudest fifth of its 10 ms frames brought to :data:`TARGET_DBFS`, by at
   most :data:`MAX_GAIN_DB` up or down. Audio without speech in it (its loud frames within
   :data:`SPEECH_OVER_FLOOR_DB` of its quiet ones) keeps its level, so noise is never pumped up into
   something the decoder could take for words;
3. gives it a spectral floor (:func:`spectral_floor`): every short-time spectral bin below a pink
   noise at :data:`FLOOR_DBFS` (28 dB under the normalised speech) is raised to it, so empty bands
   look like a quiet room instead of nothing, while everything above the floor passes unchanged.

Chosen on four espeak-ng voices that ``benchmarks/stt_channels.py`` does not use (``en+Andy``,
``en-us+Michael``, ``en+f4``, ``en-us-nyc+m2``; 24 domain sentences each), counting the domain
decodes the recogniser keeps with the right intent. Without a front end: clean 61/96, telephone
37/96, the simulated browser 57/96. Normalisation alone: clean 66/96. With this floor at -45, -48
and -51 dBFS: clean 75, 76, 71; telephone 59, 59, 55; browser 74, 73, 72. Adding pink noise at
-45 dBFS instead of flooring did as well on those voices (75, 62, 73) but turned short words of the
backend's own voices into others ("help" -> "hello" in four of the ten OpenAI voices, against one
with the floor), and white noise did worse than pink (clean 66/96). The whole front end costs about
1 ms of CPU per second of audio (numpy and soxr; 1.5-1.9 ms per 1.5-1.9 s utterance, measured by
``python benchmarks/speech_engines.py`` on 2026-12-06; 3.7-6.0 ms before :func:`high_pass` padded
its FFT to a fast length). The benchmark's figures, before and after, are in the
README.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import soxr

__all__ = [
    "DECODER_RATE",
    "FLOOR_DBFS",
    "HIGH_PASS_HZ",
    "INPUT_RATE",
    "MAX_GAIN_DB",
    "SPEECH_OVER_FLOOR_DB",
    "TARGET_DBFS",
    "condition",
    "high_pass",
    "level_gain",
    "spectral_floor",
]

#: The rate :func:`condition` takes (the Realtime protocol's) and the one it returns (the decoder's).
INPUT_RATE = 24_000
DECODER_RATE = 16_000

#: Below this, energy is removed (DC offset, rumble, handling noise); pocketsphinx's filter bank starts at 130 Hz.
HIGH_PASS_HZ = 60.0
#: The level the loudest fifth of an utterance's 10 ms frames is brought to (RMS, dB below full scale).
TARGET_DBFS = -20.0
#: The most the level normalisation changes the gain, either way.
MAX_GAIN_DB = 30.0
#: Audio whose loud frames are less than this above its quiet ones is taken for no speech: its level stays.
SPEECH_OVER_FLOOR_DB = 10.0
#: The level of the pink noise added as a spectral floor (RMS, dB below full scale).
FLOOR_DBFS = -48.0

_FULL_SCALE = 32768.0
_FRAME = DECODER_RATE // 100  # 10 ms
_FFT_SIZE = 512  # 32 ms
_WINDOW = np.sqrt(np.hanning(_FFT_SIZE + 1)[:-1])  # periodic: its square overlap-adds to one at half a frame
_PHASE_FRAMES = 1024
_FLOOR_SEED = 20_240_601


def _rms(dbfs: float) -> float:
    return _FULL_SCALE * 10.0 ** (dbfs / 20.0)


def high_pass(audio: np.ndarray, rate: int, cutoff_hz: float = HIGH_PASS_HZ) -> np.ndarray:
    """``audio`` (float) without its energy below ``cutoff_hz``: a linear-phase filter over the whole
    utterance, with a raised-cosine transition from 0 at half the cutoff to 1 at the cutoff."""
    if audio.size < 2:
        return audio - audio.mean() if audio.size else audio
    # The mean goes first (the filter's DC bin is zero), then the FFT runs on the audio followed by
    # zeros up to a length with no prime factor above 5: an utterance's own length is often a large
    # prime, which took pocketfft ~2.6 ms of the front end's ~3.6 ms per utterance (1.6 s of speech).
    size = _fast_length(audio.size)
    spectrum = np.fft.rfft(audio - audio.mean(), size)
    frequencies = np.fft.rfftfreq(size, 1.0 / rate)
    ramp = np.clip((frequencies - cutoff_hz / 2) / (cutoff_hz / 2), 0.0, 1.0)
    return np.fft.irfft(spectrum * (0.5 - 0.5 * np.cos(np.pi * ramp)), size)[: audio.size]


def _fast_length(n: int) -> int:
    """The least length >= ``n`` whose prime factors are 2, 3 and 5 only (fast for pocketfft)."""
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            length = power35 << max(-(-n // power35) - 1, 0).bit_length()  # power35 * 2**k >= n
            best = min(best, length)
            power35 *= 3
        power5 *= 5
    return best


def level_gain(audio: np.ndarray) -> float:
    """The gain (a factor) that brings the loudest fifth of ``audio``'s 10 ms frames to :data:`TARGET_DBFS`,
    within :data:`MAX_GAIN_DB`; 1.0 when the audio holds no speech (see the module doc) or is too short."""
    frames = audio.size // _FRAME
    if frames < 5:
        return 1.0
    levels = np.sqrt(np.mean(audio[: frames * _FRAME].reshape(frames, _FRAME) ** 2, axis=1))
    ordered = np.sort(levels)
    loud = float(np.sqrt(np.mean(ordered[-max(frames // 5, 1) :] ** 2)))
    quiet = float(ordered[frames // 10])
    if loud <= 0.0 or loud < max(quiet, 1.0) * 10.0 ** (SPEECH_OVER_FLOOR_DB / 20.0):
        return 1.0
    limit = 10.0 ** (MAX_GAIN_DB / 20.0)
    return float(np.clip(_rms(TARGET_DBFS) / loud, 1.0 / limit, limit))


@cache
def _floor_magnitudes() -> np.ndarray:
    """Per rfft bin of a :data:`_FFT_SIZE` frame: the magnitude of pink noise at :data:`FLOOR_DBFS`."""
    frequencies = np.fft.rfftfreq(_FFT_SIZE, 1.0 / DECODER_RATE)
    frequencies[0] = frequencies[1]
    shape = 1.0 / np.sqrt(frequencies)  # pink: power falls as 1/f
    shape /= np.sqrt(np.mean(shape**2))
    # a frame of bins of mean power P comes out of irfft with power P / n, and the two square-root Hann
    # windows that overlap at any sample add up to one: so the floor sounds at RMS r for |X| = r * sqrt(n)
    magnitudes = _rms(FLOOR_DBFS) * np.sqrt(_FFT_SIZE) * shape
    magnitudes.flags.writeable = False
    return magnitudes


@cache
def _floor_phases() -> np.ndarray:
    """Fixed random phases for :data:`_PHASE_FRAMES` frames (about 16 s); longer audio reuses them."""
    phases = np.exp(2j * np.pi * np.random.default_rng(_FLOOR_SEED).random((_PHASE_FRAMES, _FFT_SIZE // 2 + 1)))
    phases.flags.writeable = False
    return phases


def spectral_floor(audio: np.ndarray) -> np.ndarray:
    """``audio`` (float, 16 kHz) with every short-time spectral bin raised to at least the floor's.

    Frames of 32 ms every 16 ms, square-root Hann windows in and out (they overlap-add to one, so
    what is above the floor passes unchanged); a bin below the pink floor of :data:`FLOOR_DBFS` is
    replaced by the floor's magnitude with a fixed random phase. Deterministic: the same audio gives
    the same samples.
    """
    if audio.size == 0:
        return audio
    hop = _FFT_SIZE // 2
    frames = -(-audio.size // hop) + 1
    padded = np.zeros((frames + 1) * hop)
    padded[hop : hop + audio.size] = audio
    blocks = np.lib.stride_tricks.sliding_window_view(padded, _FFT_SIZE)[::hop]
    spectra = np.fft.rfft(blocks * _WINDOW, axis=1)
    floor = _floor_magnitudes()
    spectra = np.where(np.abs(spectra) < floor, floor * _floor_phases()[np.arange(frames) % _PHASE_FRAMES], spectra)
    out = np.fft.irfft(spectra, _FFT_SIZE, axis=1) * _WINDOW
    joined = (out[1:, :hop] + out[:-1, hop:]).reshape(-1)  # sample hop + i lies in frames i // hop and the next
    return joined[: audio.size]


def condition(pcm24: np.ndarray) -> np.ndarray:
    """int16 mono 24 kHz speech in, int16 mono 16 kHz out: resampled, high-passed, level-normalised, floored."""
    samples = np.asarray(pcm24, dtype=np.int16).reshape(-1)
    if samples.size == 0:
        return np.zeros(0, dtype=np.int16)
    audio = soxr.resample(samples.astype(np.float64), INPUT_RATE, DECODER_RATE, quality="HQ")
    audio = high_pass(audio, DECODER_RATE)
    audio = spectral_floor(audio * level_gain(audio))
    return np.clip(np.rint(audio), -32768, 32767).astype(np.int16)
