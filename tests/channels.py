"""What real audio channels do to speech, simulated with numpy, soxr and scipy: for tests and benchmarks.

Each channel takes int16 mono 24 kHz speech (what the Realtime protocol carries) and returns int16 mono
24 kHz speech as it would arrive after passing through a device, a resampling chain, a gain, a noise
floor, a telephone line or a browser's processing. They are deterministic (fixed seeds), so a test that
uses one always hears the same samples. ``benchmarks/stt_channels.py`` runs every domain phrase through
each of them, and through two real ones: a PulseAudio virtual microphone and Chromium's fake microphone.

The simulations use maintained resamplers (soxr at several qualities, scipy's polyphase filter) rather
than ideal ones, because the point is what imperfect, real-world chains do.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import soxr
from scipy import signal

RATE = 24_000
FULL_SCALE = 32768.0

Channel = Callable[[np.ndarray], np.ndarray]


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float samples in int16 units, rounded and clipped as a converter would."""
    return np.clip(np.rint(audio), -32768, 32767).astype(np.int16)


def dbfs_to_rms(dbfs: float) -> float:
    """The RMS, in int16 units, of a signal ``dbfs`` below full scale."""
    return FULL_SCALE * 10.0 ** (dbfs / 20.0)


def pink_noise(samples: int, rms: float, seed: int) -> np.ndarray:
    """Noise with a 1/f power spectrum (the usual shape of a room's or a device's noise floor), at ``rms``."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    frequencies = np.arange(spectrum.size, dtype=np.float64)
    frequencies[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(frequencies), samples)
    noise -= noise.mean()
    return noise * (rms / max(float(np.sqrt(np.mean(noise**2))), 1e-12))


def clean(pcm: np.ndarray) -> np.ndarray:
    """The speech as it is."""
    return np.asarray(pcm, dtype=np.int16)


def resample_16_48_24(pcm: np.ndarray) -> np.ndarray:
    """A 16 kHz device, upsampled to 48 kHz by a polyphase filter (an app or browser), then to 24 kHz by
    soxr at low quality."""
    device = soxr.resample(pcm.astype(np.float32), RATE, 16_000, quality="HQ")
    upsampled = signal.resample_poly(device, 3, 1)
    return to_int16(soxr.resample(upsampled.astype(np.float32), 48_000, RATE, quality="LQ"))


def resample_44_24(pcm: np.ndarray) -> np.ndarray:
    """A 44.1 kHz device, brought to 24 kHz by scipy's polyphase filter (24000/44100 = 80/147)."""
    device = soxr.resample(pcm.astype(np.float32), RATE, 44_100, quality="HQ")
    return to_int16(signal.resample_poly(device, 80, 147))


def gain(db: float) -> Channel:
    """A fixed gain (a quiet or a hot microphone); above full scale the samples clip."""

    def channel(pcm: np.ndarray) -> np.ndarray:
        return to_int16(pcm.astype(np.float64) * 10.0 ** (db / 20.0))

    channel.__doc__ = f"A gain of {db:+g} dB, clipped at full scale."
    return channel


def noise_floor(dbfs: float, seed: int = 7) -> Channel:
    """Pink noise at ``dbfs`` (RMS) added to the speech: a noisy room or a cheap device."""

    def channel(pcm: np.ndarray) -> np.ndarray:
        return to_int16(pcm.astype(np.float64) + pink_noise(pcm.size, dbfs_to_rms(dbfs), seed))

    channel.__doc__ = f"Pink noise at {dbfs:g} dBFS."
    return channel


def _mu_law(audio: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """G.711 mu-law companding to 8 bits and back: the quantisation a telephone line adds."""
    x = np.clip(audio / FULL_SCALE, -1.0, 1.0)
    code = np.rint(np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) * 127.0)
    return np.sign(code) * np.expm1(np.abs(code) / 127.0 * np.log1p(mu)) / mu * FULL_SCALE


def telephone(pcm: np.ndarray) -> np.ndarray:
    """A telephone line: 8 kHz, band-passed to 300-3400 Hz, mu-law, back to 24 kHz."""
    narrow = soxr.resample(pcm.astype(np.float64), RATE, 8_000, quality="HQ")
    band = signal.butter(4, (300.0, 3400.0), btype="bandpass", fs=8_000, output="sos")
    line = _mu_law(signal.sosfilt(band, narrow))
    return to_int16(soxr.resample(line, 8_000, RATE, quality="HQ"))


def agc(audio: np.ndarray, rate: int, target_dbfs: float = -20.0, max_gain_db: float = 30.0) -> np.ndarray:
    """An automatic gain control like a browser's: per 10 ms, the gain moves (at most 10 dB/s) toward the
    one that brings the speech level to ``target_dbfs``, at most ``max_gain_db``. The speech level is
    estimated on frames 10 dB above the quietest tenth only, so pauses are not pumped up; it starts
    converged, as it would be after earlier speech."""
    frame = rate // 100
    frames = audio.size // frame
    if frames == 0:
        return audio
    blocks = audio[: frames * frame].reshape(frames, frame)
    levels = np.sqrt(np.mean(blocks**2, axis=1)) + 1.0
    floor = np.quantile(levels, 0.1)
    speech = levels > floor * 10 ** (10 / 20)
    level = float(np.sqrt(np.mean(levels[speech] ** 2))) if speech.any() else float(levels.max())
    limit = 10.0 ** (max_gain_db / 20.0)
    gain_db = 20 * np.log10(min(dbfs_to_rms(target_dbfs) / level, limit))
    gains = np.empty(frames)
    for i in range(frames):
        if speech[i]:  # follow the speech level: a fast-attack, slow-release envelope
            level = levels[i] if levels[i] > level else level + (levels[i] - level) * 0.05
            wanted = 20 * np.log10(min(dbfs_to_rms(target_dbfs) / level, limit))
            gain_db += float(np.clip(wanted - gain_db, -0.1, 0.1))
        gains[i] = 10 ** (gain_db / 20)
    per_sample = np.interp(np.arange(audio.size), np.arange(frames) * frame + frame / 2, gains)
    return audio * per_sample


def browser_processing(pcm: np.ndarray) -> np.ndarray:
    """A browser's microphone path, approximated: a 48 kHz device, a high-pass filter (as WebRTC's
    audio processing has), an automatic gain control, and the browser's own resampling to 24 kHz."""
    device = soxr.resample(pcm.astype(np.float64), RATE, 48_000, quality="HQ")
    high_pass = signal.butter(2, 100.0, btype="highpass", fs=48_000, output="sos")
    processed = agc(signal.sosfilt(high_pass, device), 48_000)
    return to_int16(soxr.resample(processed, 48_000, RATE, quality="MQ"))


def device_44k_noise(pcm: np.ndarray) -> np.ndarray:
    """A 44.1 kHz microphone with a -60 dBFS noise floor, resampled to 24 kHz with soxr (as ``talk``
    does): the PulseAudio virtual microphone, simulated."""
    device = soxr.resample(pcm.astype(np.float64), RATE, 44_100, quality="HQ")
    device = device + pink_noise(device.size, dbfs_to_rms(-60.0), 11)
    return to_int16(soxr.resample(to_int16(device).astype(np.float64), 44_100, RATE, quality="HQ"))


#: The simulated channels, by the name the benchmark prints.
SIMULATED: dict[str, Channel] = {
    "clean": clean,
    "16>48>24 kHz": resample_16_48_24,
    "44.1>24 kHz": resample_44_24,
    "gain -20 dB": gain(-20.0),
    "gain +6 dB": gain(6.0),
    "noise -45 dBFS": noise_floor(-45.0),
    "telephone": telephone,
    "browser (sim)": browser_processing,
    "44.1k -60 dBFS (sim)": device_44k_noise,
}
