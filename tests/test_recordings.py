"""The sample WAVs in recordings/: present, in the protocol's format, noisy, and documented."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from voicerelay.backend.phrases import RECORDING_SENTENCES, domain_sentences

from .conftest import RECORDINGS

STEMS = sorted(RECORDING_SENTENCES)


def longest_zero_run(samples: np.ndarray) -> int:
    """Length of the longest run of exact-zero samples."""
    padded = np.concatenate(([False], samples == 0, [False]))
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return int((edges[1::2] - edges[::2]).max()) if edges.size else 0


def test_longest_zero_run_helper() -> None:
    assert longest_zero_run(np.array([1, 0, 0, 2, 0, 0, 0, 3])) == 3
    assert longest_zero_run(np.array([1, 2])) == 0
    assert longest_zero_run(np.zeros(5)) == 5


@pytest.mark.parametrize("stem", STEMS)
def test_recording_is_24khz_mono_pcm16(stem: str) -> None:
    info = soundfile.info(RECORDINGS / f"{stem}.wav")
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 24_000, 1)
    assert 1.0 < info.duration < 10.0


@pytest.mark.parametrize("stem", STEMS)
def test_recording_has_noise_not_digital_silence(stem: str) -> None:
    pcm, _ = soundfile.read(RECORDINGS / f"{stem}.wav", dtype="int16")
    assert longest_zero_run(pcm) < 100


@pytest.mark.parametrize("stem", STEMS)
def test_recording_has_quiet_lead_and_tail(stem: str) -> None:
    pcm, rate = soundfile.read(RECORDINGS / f"{stem}.wav", dtype="int16")
    level = pcm.astype(np.float64)

    def rms(part: np.ndarray) -> float:
        return float(np.sqrt(np.mean(part**2)))

    speech = rms(level)
    assert rms(level[: rate // 4]) < speech / 10  # ~300 ms of noise before the speech
    assert rms(level[-rate * 6 // 10 :]) < speech / 10  # ~700 ms after


@pytest.mark.parametrize("stem", STEMS)
def test_recording_text_is_in_the_domain(stem: str) -> None:
    assert RECORDING_SENTENCES[stem] in domain_sentences()


def test_readme_lists_every_recording_with_its_text() -> None:
    readme = (RECORDINGS / "README.md").read_text(encoding="utf-8")
    for stem, text in RECORDING_SENTENCES.items():
        assert f"| `{stem}.wav` | {text} |" in readme
    assert "python recordings/make_recordings.py" in readme
