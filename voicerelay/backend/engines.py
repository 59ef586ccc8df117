"""The speech engines behind every embedded-backend session, created once per process.

Loading pocketsphinx and libespeak-ng takes a moment, so :class:`Engines` loads each on first
use and shares it between sessions. Its methods are blocking: sessions call them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

import numpy as np

_DELTA = re.compile(r"\s*\S+\s*")


class Engines:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tts = None

    def _synthesizer(self):  # noqa: ANN202 - typed by tts.Synthesizer
        with self._lock:
            if self._tts is None:
                from .tts import Synthesizer

                self._tts = Synthesizer()
            return self._tts

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        """int16 mono 24 kHz speech for ``text`` (empty for empty text)."""
        return self._synthesizer().synthesize(text, voice)

    def transcribe(self, pcm24: np.ndarray, extra_phrases: Iterable[str] = ()) -> str:
        """Lower-case words heard in int16 mono 24 kHz audio ('' for none)."""
        from .stt import recognizer_for

        return recognizer_for(tuple(extra_phrases)).transcribe(pcm24)

    @staticmethod
    def stream_words(text: str) -> list[str]:
        """``text`` cut into transcript deltas: each word with the spaces after it.

        ``"".join(stream_words(text)) == text``; leading spaces, if any, go with the first chunk.
        """
        return _DELTA.findall(text) or ([text] if text else [])

    def warm_up(self) -> None:
        """Load both engines now, so the first turn does not pay for it."""
        self.synthesize("ready")
        self.transcribe(np.zeros(2400, dtype=np.int16))
