"""The speech engines behind every embedded-backend session, shared by all of them.

Loading pocketsphinx and libespeak-ng takes a moment, so :class:`Engines` loads each on first
use and shares it between sessions. Its methods are blocking, but for
:meth:`Engines.transcribe_async`, which the server's sessions await on the event loop itself
(recognition runs in worker processes: a thread only waiting for one would be wasted); they call
synthesis through ``asyncio.to_thread``.

Speech recognition runs in worker *processes*: pocketsphinx's decoder is one C call that holds
the GIL, so in a thread it still stalled the event loop (the loop kept ~15 % of its throughput
during a decode, and the backend held only 8 real-time sessions: benchmarks/backend_latency.py).
Synthesis stays in-process: espeak-ng releases the GIL and takes ~1 ms per second of speech.

The workers start with multiprocessing's "spawn" method (the parent runs threads, so fork is
unsafe), which imports the main module again in each worker: a script that embeds the backend
(or a Gateway) must keep its start-up code under ``if __name__ == "__main__":``, as for any
use of multiprocessing. ``python -m voicerelay``, console scripts, uvicorn and pytest are fine.
If the workers die, recognition falls back to the calling thread with a warning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from ..workers import worker_started
from . import responder

log = logging.getLogger(__name__)


#: Speech kept by :meth:`Engines.synthesize` for the replies said again (about 5.8 minutes of it).
SPEECH_CACHE_BYTES = 16 * 1024 * 1024


class _SpeechCache:
    """The newest :data:`SPEECH_CACHE_BYTES` of speech synthesised in this process, by (text, voice).

    One per process, shared by every :class:`Engines`: espeak-ng is loaded once per process anyway
    (``tts.py``), and the same text and voice always give the same samples, so an entry is valid
    for any of them. ``replay`` starts an embedded backend, with engines of its own, for each file,
    and the replies repeat from file to file: kept per :class:`Engines`, every file synthesised
    them again (about 5 of a file's 10 replies, ~20 ms of CPU of its ~500).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._speech: OrderedDict[tuple[str, str | None], np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, str | None]) -> np.ndarray | None:
        """A copy of the speech kept for ``key``, or None."""
        with self._lock:
            kept = self._speech.get(key)
            if kept is None:
                return None
            self._speech.move_to_end(key)
            return kept.copy()

    def put(self, key: tuple[str, str | None], pcm: np.ndarray) -> None:
        """Keep a copy of ``pcm`` (unless it alone is larger than the cache), dropping the oldest."""
        if pcm.nbytes > SPEECH_CACHE_BYTES:
            return
        with self._lock:
            if key not in self._speech:
                self._speech[key] = pcm.copy()
                self._bytes += pcm.nbytes
            while self._bytes > SPEECH_CACHE_BYTES:
                self._bytes -= self._speech.popitem(last=False)[1].nbytes


_SPEECH = _SpeechCache()


def _worker_ready() -> bool:
    return True


def _transcribe_in_worker(pcm: bytes, extra_phrases: tuple[str, ...]) -> str:
    from .stt import recognizer_for

    return recognizer_for(extra_phrases).transcribe(np.frombuffer(pcm, dtype=np.int16))


def _warm_up_in_worker(general: bool) -> None:
    from .stt import recognizer_for

    silence = np.zeros(2400, dtype=np.int16)
    if general:  # the domain model hears no words in silence: the general model loads and decodes it too
        recognizer_for(()).transcribe(silence)
    else:
        recognizer_for(()).warm_up(silence)


class Engines:
    """``stt_processes``: recognition worker processes (default: one per core, at most 4);
    0 recognises in the calling thread (simpler to debug, but it blocks the event loop)."""

    def __init__(self, stt_processes: int | None = None) -> None:
        self._lock = threading.Lock()
        self._tts = None
        self.stt_processes = min(4, os.cpu_count() or 1) if stt_processes is None else stt_processes
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._closed = False

    def _stt_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the speech engines are closed")
            if self._pool is None:
                # spawn, not fork: the parent runs threads (asyncio.to_thread, espeak-ng)
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.stt_processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=worker_started, initargs=(os.getpid(),))
            return self._pool

    def start_workers(self) -> None:
        """Spawn every recognition worker now. Called from the main thread, Ctrl-C is ignored while
        they are spawned (about 10 ms: call it before anything tells the user the program is up),
        and a spawned process keeps an ignored signal ignored through its start-up: a terminal's
        Ctrl-C, which reaches the whole process group, then never interrupts a worker still
        importing its modules (the parent stops the pool). Elsewhere it only spawns them."""
        if self.stt_processes == 0:
            return
        import signal

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            pool = self._stt_pool()
            for _ in range(self.stt_processes):  # no worker is idle yet: each submission spawns one
                pool.submit(_worker_ready)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def close(self) -> None:
        """Stop the recognition workers."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _synthesizer(self):  # noqa: ANN202 - typed by tts.Synthesizer
        with self._lock:
            if self._tts is None:
                from .tts import Synthesizer

                self._tts = Synthesizer()
            return self._tts

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        """int16 mono 24 kHz speech for ``text`` (empty for empty text).

        The same text and voice always give the same samples (``tts.py``), and the responder says
        the same few replies over and over, so the newest :data:`SPEECH_CACHE_BYTES` of speech
        are kept, for every Engines of the process (:class:`_SpeechCache`), and a reply said
        before is not synthesised again."""
        if not isinstance(voice, (str, type(None))):  # (a voice object: synthesised as it is, not kept)
            return self._synthesizer().synthesize(text, voice)
        key = (text, voice)
        kept = _SPEECH.get(key)
        if kept is not None:
            return kept
        pcm = self._synthesizer().synthesize(text, voice)
        _SPEECH.put(key, pcm)
        return pcm

    def transcribe(self, pcm24: np.ndarray, extra_phrases: Iterable[str] = ()) -> str:
        """Lower-case words heard in int16 mono 24 kHz audio ('' for none)."""
        pcm = np.ascontiguousarray(pcm24, dtype=np.int16).tobytes()
        if self.stt_processes == 0:
            return _transcribe_in_worker(pcm, tuple(extra_phrases))
        try:
            return self._stt_pool().submit(_transcribe_in_worker, pcm, tuple(extra_phrases)).result()
        except concurrent.futures.process.BrokenProcessPool:
            self._workers_died()
            return _transcribe_in_worker(pcm, tuple(extra_phrases))

    async def transcribe_async(self, pcm24: np.ndarray, extra_phrases: Iterable[str] = ()) -> str:
        """:meth:`transcribe` for the event loop: the loop awaits the worker's future itself, so a turn
        waiting for recognition holds no thread (through ``asyncio.to_thread`` each did, and with the
        default executor's few threads all waiting on a busy pool, the replies' synthesis waited too).
        Without workers it recognises in a thread."""
        pcm = np.ascontiguousarray(pcm24, dtype=np.int16).tobytes()
        phrases = tuple(extra_phrases)
        if self.stt_processes == 0:
            return await asyncio.to_thread(_transcribe_in_worker, pcm, phrases)
        try:
            return await asyncio.wrap_future(self._stt_pool().submit(_transcribe_in_worker, pcm, phrases))
        except concurrent.futures.process.BrokenProcessPool:
            self._workers_died()
            return await asyncio.to_thread(_transcribe_in_worker, pcm, phrases)

    def _workers_died(self) -> None:
        log.warning("speech recognition workers died; recognising in-process from now on (a script that "
                    "starts voicerelay needs `if __name__ == '__main__':`)")
        with self._lock:
            self.stt_processes = 0
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def stream_words(text: str) -> list[str]:
        """``text`` cut into transcript deltas (:func:`.responder.stream_words`)."""
        return responder.stream_words(text)

    def warm_up(self, general: bool = True) -> None:
        """Load both engines (in every recognition worker) now, so the first turn does not pay for it.

        ``general``: the general recognition model too (~95 MB, loaded in ~0.3 s of CPU), which only
        an utterance outside the domain needs. A server wants it ready; one replay, whose warm-up
        runs while its first utterances are recognised, does better to load it if and when it is
        needed."""
        self.synthesize("ready")
        if self.stt_processes == 0:
            _warm_up_in_worker(general)
            return
        pool = self._stt_pool()
        jobs = [pool.submit(_warm_up_in_worker, general) for _ in range(self.stt_processes)]
        for job in jobs:
            job.result()
