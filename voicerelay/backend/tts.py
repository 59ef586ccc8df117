"""Text to speech with libespeak-ng, in-process, through ctypes.

The library and its data come from the ``espeakng-loader`` wheel, so speech synthesis needs
nothing but pip. libespeak-ng keeps all of its state (current voice, rate, output callback,
the waveform generator's filters) in process-global variables, so it is loaded and initialised
once per process, lazily on first use, and every synthesis runs under one module-level lock.
Synthesis is fast (a few ms per second of audio, see ``benchmarks/speech_engines.py``), so
serialising it costs little.

Determinism
-----------
Out of the box, espeak-ng gives a slightly different waveform every time it says the same
thing, because three pieces of state carry over from one utterance to the next: a pitch
"flutter" index (a function-local static in ``wavegen.c``, never reset), the glottal-cycle
counter that drives the "roughness" modulation, and the random generator of the breath noise.
We want the same text and voice to give the same samples whatever was said before and by
which thread (tests, recordings and replays rely on it), so:

- libespeak-ng reads its data from a private directory (symlinks to the wheel's data, built once
  and kept in the user's cache, see :func:`_kept_data_dir`) whose voice variants end with
  ``flutter 0`` and ``roughness 0``, and a voice without a variant gets our ``steady`` variant,
  which says just that;
- :func:`espeak_ng_SetRandSeed` runs before every synthesis.

Measured: 400 syntheses of 3 texts in the 10 OpenAI voices, in random order, all equal the
first synthesis of the same text and voice; with the wheel's data and no seed, all 400
differed. The voices lose a little pitch jitter and roughness. A non-English voice reading
English words switches to espeak-ng's plain English voice mid-text and is not deterministic.
If the private directory cannot be kept, each process builds its own in a temporary directory;
if that fails too, the wheel's data is used as it is, with a warning.

espeak-ng produces 22,050 Hz mono PCM16; :class:`Synthesizer` resamples it to the 24 kHz of the
Realtime protocol with soxr. Pauses in espeak's output are exact digital zeros, which real
microphones never produce and which defeat pocketsphinx: :func:`add_noise` turns them into light
noise for recordings and tests.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import espeakng_loader
import numpy as np
import soxr

__all__ = [
    "DEFAULT_VOICE",
    "NOISE_FLOOR_RMS",
    "OPENAI_VOICES",
    "OUTPUT_RATE",
    "Synthesizer",
    "add_noise",
    "espeak_voice_for",
]

logger = logging.getLogger(__name__)

#: Sample rate of :meth:`Synthesizer.synthesize`'s output.
OUTPUT_RATE = 24_000

#: Minimum RMS of the noise :func:`add_noise` adds, in int16 units (about -70 dBFS).
NOISE_FLOOR_RMS = 10.0

#: The espeak-ng voice used for unknown voice names.
DEFAULT_VOICE = "en-us"

#: OpenAI Realtime voice name -> espeak-ng voice (language voice + optional ``+variant``).
#: The variants change pitch and formants, so each name sounds different. They were chosen
#: among espeak-ng's English voices and variants for how well pocketsphinx's en-us model
#: recognises them (``benchmarks/speech_engines.py --accuracy``); en-029, en-gb-scotland and
#: the +f3/+f4/+m2 variants were the worst.
OPENAI_VOICES: dict[str, str] = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en+m6",
    "coral": "en-us+f2",
    "echo": "en-us+m1",
    "sage": "en+f2",
    "shimmer": "en-us+f5",
    "verse": "en-us+m4",
    "marin": "en-us+f1",
    "cedar": "en-us+m5",
}

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flag values (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_EE_OK = 0
_MIN_RATE, _MAX_RATE = 80, 450
_DEFAULT_PITCH = 50  # espeak-ng's own default on its 0-100 scale

_RAND_SEED = 1
_STEADY_VARIANT = "steady"
_STEADY_SETTINGS = "\nflutter 0\nroughness 0\n"  # appended to every variant (see module doc)

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass
class _Engine:
    """The process-wide libespeak-ng handle; use only while holding ``_LOCK``."""

    lib: ctypes.CDLL
    sample_rate: int
    callback: object  # the ctypes callback: referenced here so it is never garbage-collected
    chunks: list[np.ndarray]  # where the callback puts samples during one synthesis
    steady: bool  # whether the data directory has the steady variants


_LOCK = threading.Lock()
_engine: _Engine | None = None


def _remove_if_owner(directory: Path, owner_pid: int) -> None:
    """atexit: delete ``directory``, unless this is a forked child of the process that made it."""
    if os.getpid() == owner_pid:
        shutil.rmtree(directory, ignore_errors=True)


def _steady_data_dir() -> Path | None:
    """The private espeak-ng data directory (see module doc); None if it cannot be had.

    It is built once for the user and kept (:func:`_kept_data_dir`); where that is impossible,
    each process builds one of its own in a temporary directory, removed when it exits."""
    source = Path(espeakng_loader.get_data_path())
    kept = _kept_data_dir(source)
    if kept is not None:
        return kept
    try:
        top = Path(tempfile.mkdtemp(prefix="voicerelay-espeak-"))
        atexit.register(_remove_if_owner, top, os.getpid())
        return _build_data_dir(source, top)
    except OSError as exc:
        logger.warning("espeak-ng output will vary slightly between calls: %s", exc)
        return None


#: Marks a kept data directory as complete (written last, before the directory takes its name).
_COMPLETE = "complete"


def _kept_data_dir(source: Path) -> Path | None:
    """The data directory kept in the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``, then
    ``voicerelay/``), built there by the first process that needs it; None if that fails.

    Building it makes ~230 files and links: ~55 ms of CPU and up to 0.2 s on a busy disk, then
    as long again to remove at exit, in every process that spoke (a replay, each ``replay --jobs``
    worker). Its name holds a digest of the wheel's data path, the modification time of its
    variants folder (a reinstall or an upgrade changes it) and the settings appended, so a kept
    directory always has what this process would build. It is built under a temporary name and
    renamed when complete, so processes racing to build it never use a partial one."""
    try:
        variants = source / "voices" / "!v"
        digest = hashlib.sha256(f"{source}\0{variants.stat().st_mtime_ns}\0{_STEADY_SETTINGS}\0{_STEADY_VARIANT}"
                                .encode()).hexdigest()[:16]
        home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        top = Path(home) / "voicerelay" / f"espeak-ng-data-{digest}"
        if (top / _COMPLETE).is_file():
            return top / "espeak-ng-data"
        top.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f"{top.name}.", dir=top.parent))
    except (OSError, RuntimeError) as exc:  # (RuntimeError: Path.home() without a home)
        logger.debug("no kept espeak-ng data directory: %s", exc)
        return None
    try:
        _build_data_dir(source, building)
        (building / _COMPLETE).write_text("")
        try:
            building.rename(top)
        except OSError:  # another process built it first: use theirs
            shutil.rmtree(building, ignore_errors=True)
            if not (top / _COMPLETE).is_file():
                return None
    except OSError as exc:
        logger.debug("no kept espeak-ng data directory: %s", exc)
        shutil.rmtree(building, ignore_errors=True)
        return None
    return top / "espeak-ng-data"


def _build_data_dir(source: Path, top: Path) -> Path:
    """Fill ``top`` with the private data directory (see module doc); returns it. Raises OSError."""
    data = top / "espeak-ng-data"
    data.mkdir()
    for entry in source.iterdir():
        if entry.name != "voices":
            (data / entry.name).symlink_to(entry)
    variants = data / "voices" / "!v"
    variants.mkdir(parents=True)
    for entry in (source / "voices").iterdir():
        if entry.name != "!v":
            (data / "voices" / entry.name).symlink_to(entry)
    for variant in (source / "voices" / "!v").iterdir():
        (variants / variant.name).write_bytes(variant.read_bytes() + _STEADY_SETTINGS.encode())
    (variants / _STEADY_VARIANT).write_text(
        f"language variant\nname {_STEADY_VARIANT}{_STEADY_SETTINGS}", encoding="utf-8"
    )
    return data


def _load_engine() -> _Engine:
    """Load and initialise libespeak-ng once per process. Call with ``_LOCK`` held."""
    global _engine
    if _engine is not None:
        return _engine
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,  # text
        ctypes.c_size_t,  # size in bytes, terminating NUL included
        ctypes.c_uint,  # position
        ctypes.c_int,  # position_type
        ctypes.c_uint,  # end_position
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unique_identifier
        ctypes.c_void_p,  # user_data
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int

    data = _steady_data_dir()
    data_path = str(data) if data is not None else espeakng_loader.get_data_path()
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
    if sample_rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed ({sample_rate})")

    chunks: list[np.ndarray] = []

    def on_samples(wav: ctypes._Pointer, count: int, _events: int | None) -> int:
        if count > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = go on synthesising

    callback = _SYNTH_CALLBACK(on_samples)
    lib.espeak_SetSynthCallback(callback)
    _engine = _Engine(lib, sample_rate, callback, chunks, steady=data is not None)
    logger.debug("libespeak-ng initialised at %d Hz from %s", sample_rate, data_path)
    return _engine


@cache
def _known_voices() -> tuple[frozenset[str], frozenset[str]]:
    """(language voice names, variant names) shipped in espeak-ng's data directory.

    espeak_SetVoiceByName matches a language voice by its file name, case-insensitively, and a
    ``+variant`` by the file name in ``voices/!v``.
    """
    data = Path(espeakng_loader.get_data_path())
    languages = frozenset(p.name.lower() for p in (data / "lang").rglob("*") if p.is_file())
    variants = frozenset(p.name for p in (data / "voices" / "!v").iterdir() if p.is_file())
    return languages, variants


def espeak_voice_for(name: str) -> str:
    """Map a voice name onto the espeak-ng voice to synthesise with.

    OpenAI Realtime voice names (alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin,
    cedar; case-insensitive) map through :data:`OPENAI_VOICES`. A name espeak-ng itself knows
    (``en-us``, ``en-gb-x-rp+f2``...) is returned as it is. Anything else gives ``en-us``, with a
    warning logged once per name (``en-gb`` is not an espeak-ng voice name: British English is
    ``en`` or ``en-gb-x-rp``; a tool that meant it would otherwise get American English unawares).
    """
    key = name.strip().lower()
    if key in OPENAI_VOICES:
        return OPENAI_VOICES[key]
    language, _, variant = name.strip().partition("+")
    languages, variants = _known_voices()
    if language.lower() in languages and (not variant or variant in variants):
        return name.strip()
    if name not in _WARNED_VOICES and len(_WARNED_VOICES) < 100:  # (a bound: names may come from clients)
        _WARNED_VOICES.add(name)
        logger.warning("%r is neither an OpenAI voice nor an espeak-ng voice: speaking %s", name, DEFAULT_VOICE)
    return DEFAULT_VOICE


_WARNED_VOICES: set[str] = set()


def add_noise(pcm: np.ndarray, snr_db: float = 30.0, seed: int = 0) -> np.ndarray:
    """Return ``pcm`` (int16) plus white Gaussian noise, as int16.

    The noise level is ``snr_db`` below the RMS of the non-zero samples (so digital silence
    around the speech does not lower the speech level), and at least :data:`NOISE_FLOOR_RMS`
    so that exact digital silence becomes light noise. The same input and seed always give the
    same output.
    """
    samples = np.asarray(pcm, dtype=np.int16)
    if samples.size == 0:
        return samples.copy()
    audio = samples.astype(np.float64)
    voiced = audio[audio != 0]
    speech_rms = float(np.sqrt(np.mean(voiced**2))) if voiced.size else 0.0
    noise_rms = max(speech_rms * 10.0 ** (-snr_db / 20.0), NOISE_FLOOR_RMS)
    noise = np.random.default_rng(seed).standard_normal(samples.size) * noise_rms
    return np.clip(np.rint(audio + noise), -32768, 32767).astype(np.int16)


class Synthesizer:
    """Text to speech with libespeak-ng in-process (the library and data shipped by the espeakng-loader wheel)."""

    def __init__(self, voice: str = DEFAULT_VOICE, words_per_minute: int = 175, pitch: int = _DEFAULT_PITCH) -> None:
        """``voice``: an OpenAI or espeak-ng voice name (see :func:`espeak_voice_for`);
        ``words_per_minute``: speaking rate, clamped to espeak-ng's 80-450; ``pitch``: espeak-ng's
        base pitch, 0-100 (50, its default, leaves the voice as it is), clamped."""
        self.voice = voice
        self.words_per_minute = min(max(int(words_per_minute), _MIN_RATE), _MAX_RATE)
        self.pitch = min(max(int(pitch), 0), 100)

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        """Return int16 mono PCM at 24 kHz (resampled from espeak's 22050 Hz with soxr). Thread-safe.

        ``voice`` overrides the synthesizer's voice for this call. Empty or whitespace-only text
        gives an empty array. The same text, voice and rate always give the same samples.
        """
        text = text.replace("\0", " ")  # espeak-ng reads a C string: a NUL would end it early
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        espeak_voice = espeak_voice_for(self.voice if voice is None else voice)
        encoded = text.encode("utf-8") + b"\0"
        with _LOCK:
            engine = _load_engine()
            native = self._synthesize_locked(engine, encoded, espeak_voice)
            native_rate = engine.sample_rate
        if native.size == 0:
            return native
        return np.asarray(soxr.resample(native, native_rate, OUTPUT_RATE), dtype=np.int16)

    def _synthesize_locked(self, engine: _Engine, encoded: bytes, espeak_voice: str) -> np.ndarray:
        lib = engine.lib
        if engine.steady and "+" not in espeak_voice:
            espeak_voice += "+" + _STEADY_VARIANT
        if lib.espeak_SetVoiceByName(espeak_voice.encode()) != _EE_OK:
            logger.warning("espeak-ng rejected voice %r; using %s", espeak_voice, DEFAULT_VOICE)
            lib.espeak_SetVoiceByName(DEFAULT_VOICE.encode())
        lib.espeak_SetParameter(_ESPEAK_RATE, self.words_per_minute, 0)
        lib.espeak_SetParameter(_ESPEAK_PITCH, self.pitch, 0)  # set every time: it is process-global
        lib.espeak_ng_SetRandSeed(_RAND_SEED)
        engine.chunks.clear()
        try:
            status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed ({status})")
            return np.concatenate(engine.chunks) if engine.chunks else np.zeros(0, np.int16)
        finally:
            engine.chunks.clear()
